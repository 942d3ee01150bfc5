//! Bytes in: what a connection sends is decoded into frames, each handled whole (the
//! deliveries it makes possible included) before the next, so that what the broker sends
//! never depends on how the peer's bytes were split into reads; and the end of a stream.

use daemoneye_proto::FrameError;
use daemoneye_proto::frame::{ClientFrame, ProtocolError};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::connection::{MAX_DEFERRED_BYTES, MAX_DEFERRED_PUBLISHES, Phase};
use super::{Broker, CloseReason, ConnId, Output, TimerKey};
use crate::Instant;

impl Broker {
    /// Bytes read from a connection.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.goodbye {
            // After its Goodbye a client's frames are not read, and do not count as
            // traffic: a Goodbye whose publishes can never be routed ends at the idle
            // timeout (3 heartbeat intervals), and they are counted lost.
            return;
        }
        // Time only moves on: a keepalive deadline moving later is re-filed lazily, but a
        // driver's clock stepping back must re-arm it.
        let stepped_back = now < c.last_recv;
        c.last_recv = now;
        // A framing error is reported by next_frame after the frames before it.
        let _ = c.decoder.push(data);
        if stepped_back {
            self.arm_phase_timer(conn);
        }
        self.process_frames(now, conn);
        self.note_partial_frame(now, conn);
        self.pump(now);
        self.flush();
    }

    /// Starts or stops the frame timeout after the decoder took what it could: it runs while
    /// a frame has arrived in part and the broker is reading the connection.
    pub(super) fn note_partial_frame(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.goodbye || c.read_paused || c.decoder.buffered() == 0 {
            c.frame_started = None;
        } else if c.frame_started.is_none() {
            c.frame_started = Some(now);
            self.deadlines
                .arm(TimerKey::frame(conn), now + self.config.frame_timeout);
        }
    }

    /// The driver wrote `n` bytes of earlier Transmits to the connection.
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, n: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.in_flight = c.in_flight.saturating_sub(n);
        self.ready.insert(conn);
        self.pump(now);
        self.flush();
    }

    /// The connection failed (or the peer vanished without Goodbye). The broker forgets the
    /// connection; its subscriptions end (durable ones wait for their owner), its
    /// unacknowledged deliveries are redelivered, and publishes it still held for the
    /// connection are counted in `lost_on_disconnect`.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        // Frames that arrived whole before the end are still processed; a truncated tail is
        // discarded (never delivered in part) and counted.
        if self.conns.get(&conn).is_some_and(|c| !c.goodbye) {
            self.process_frames(now, conn);
            self.check_truncation(conn);
        }
        self.remove_conn(now, conn);
        self.pump(now);
        self.flush();
    }

    /// The peer closed its sending side (a read returned end of stream); it may still be
    /// reading. Whole frames before the end are processed. A frame cut short by the end is
    /// counted and answered with an Error before the close; otherwise this is
    /// [`handle_disconnect`](Self::handle_disconnect). After a Goodbye, the end of stream
    /// changes nothing: the broker still routes what it holds, then answers and closes.
    pub fn handle_eof(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.goodbye {
            return;
        }
        self.process_frames(now, conn);
        match self.check_truncation(conn) {
            Some(err) => {
                let msg = format!("connection ended inside a frame: {err}");
                self.protocol_error(now, conn, pb::ErrorCode::Protocol, msg);
            }
            None => self.remove_conn(now, conn),
        }
        self.pump(now);
        self.flush();
    }

    /// At the end of a connection's stream: the truncation error if it ended inside a
    /// frame (counted), `None` on a frame boundary or where the broker had stopped reading.
    pub(super) fn check_truncation(&mut self, conn: ConnId) -> Option<FrameError> {
        let c = self.conns.get_mut(&conn)?;
        if c.deferred.len() >= MAX_DEFERRED_PUBLISHES || c.deferred_bytes >= MAX_DEFERRED_BYTES {
            // Whole frames may still wait in the decoder behind a stall: not a truncation.
            return None;
        }
        if c.decoder.is_failed() {
            return None;
        }
        let err = c.decoder.finish().err()?;
        c.counters.truncated += 1;
        self.totals.truncated += 1;
        Some(err)
    }

    /// Handles the connection's whole frames in order. Each frame is handled completely,
    /// the deliveries it makes possible included, before the next is looked at: so what the
    /// broker sends never depends on how the peer's bytes were split into reads.
    pub(super) fn process_frames(&mut self, now: Instant, conn: ConnId) {
        if self.in_frames.contains(&conn) {
            return;
        }
        self.in_frames.push(conn);
        self.process_frames_inner(now, conn);
        self.in_frames.retain(|c| *c != conn);
    }

    fn process_frames_inner(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.goodbye {
                return;
            }
            if c.deferred.len() >= MAX_DEFERRED_PUBLISHES || c.deferred_bytes >= MAX_DEFERRED_BYTES
            {
                if !c.read_paused {
                    c.read_paused = true;
                    self.outputs.push_back(Output::PauseRead { conn });
                }
                return;
            }
            match c.decoder.next_frame() {
                Ok(Some(frame)) => {
                    // The next frame's clock starts with its first byte (note_partial_frame).
                    c.frame_started = None;
                    self.handle_frame(now, conn, frame);
                    self.pump(now);
                }
                Ok(None) => return,
                Err(err) => {
                    let code = match err {
                        FrameError::TooLarge { .. } => pb::ErrorCode::FrameTooLarge,
                        _ => pb::ErrorCode::Protocol,
                    };
                    self.protocol_error(now, conn, code, err.to_string());
                    return;
                }
            }
        }
    }

    pub(super) fn protocol_error(
        &mut self,
        now: Instant,
        conn: ConnId,
        code: pb::ErrorCode,
        message: String,
    ) {
        self.send_error(conn, code, message.clone(), 0, pb::AnswerKind::Connection);
        self.close(now, conn, CloseReason::Protocol(message));
    }

    pub(super) fn refuse(
        &mut self,
        now: Instant,
        conn: ConnId,
        code: pb::ErrorCode,
        message: String,
    ) {
        self.send_error(conn, code, message.clone(), 0, pb::AnswerKind::Connection);
        self.close(now, conn, CloseReason::Refused(message));
    }

    pub(super) fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: pb::Frame) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let handshaking = matches!(c.phase, Phase::Handshaking { .. });
        // A Subscribe with a bad name or option is refused on its own; the connection stays.
        let sub_id = match &frame.body {
            Some(Body::Subscribe(s)) if !handshaking && s.sub_id != 0 => Some(s.sub_id),
            _ => None,
        };
        let frame = match ClientFrame::try_from(frame) {
            Ok(f) => f,
            Err(err @ (ProtocolError::InvalidName { .. } | ProtocolError::DurableNeedsQos1))
                if sub_id.is_some() =>
            {
                let id = sub_id.unwrap_or_default();
                let msg = format!("subscription {id} refused: {err}");
                self.send_error(
                    conn,
                    pb::ErrorCode::InvalidSubscription,
                    msg,
                    id,
                    pb::AnswerKind::Subscription,
                );
                return;
            }
            Err(err) => {
                self.protocol_error(now, conn, pb::ErrorCode::Protocol, err.to_string());
                return;
            }
        };
        match (handshaking, frame) {
            (true, ClientFrame::Hello(hello)) => self.handle_hello(now, conn, hello),
            (true, other) => {
                let msg = format!(
                    "the first frame must be Hello, got {}",
                    client_frame_name(&other)
                );
                self.protocol_error(now, conn, pb::ErrorCode::Protocol, msg);
            }
            (false, ClientFrame::Hello(_)) => {
                self.protocol_error(
                    now,
                    conn,
                    pb::ErrorCode::Protocol,
                    "Hello sent twice".into(),
                );
            }
            (false, ClientFrame::Subscribe(s)) => self.handle_subscribe(conn, s),
            (false, ClientFrame::Unsubscribe { sub_id }) => {
                self.handle_unsubscribe(now, conn, sub_id)
            }
            (false, ClientFrame::Publish(p)) => self.handle_publish(now, conn, p),
            (false, ClientFrame::Ack { delivery_id }) => self.handle_ack(now, conn, delivery_id),
            (false, ClientFrame::Ping { nonce }) => {
                self.send_frame(conn, Body::Pong(pb::Pong { nonce }))
            }
            (false, ClientFrame::Pong { .. }) => {}
            (false, ClientFrame::Goodbye { .. }) => self.handle_goodbye(now, conn),
        }
    }
}

fn client_frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello(_) => "Hello",
        ClientFrame::Subscribe(_) => "Subscribe",
        ClientFrame::Unsubscribe { .. } => "Unsubscribe",
        ClientFrame::Publish(_) => "Publish",
        ClientFrame::Ack { .. } => "Ack",
        ClientFrame::Ping { .. } => "Ping",
        ClientFrame::Pong { .. } => "Pong",
        ClientFrame::Goodbye { .. } => "Goodbye",
    }
}
