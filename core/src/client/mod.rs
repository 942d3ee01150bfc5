//! The client-side protocol machine used by the client library and by simulations.
//!
//! It owns the handshake, the client's subscriptions (re-sent after every reconnect), the
//! QoS1 publisher state (each QoS1 publish is kept until its PubAck and re-sent, with its
//! original sequence and marked `resent`, after a reconnect) and subscriber-side
//! deduplication by (subscription, publisher id, sequence), so that the application sees
//! each message at most once per subscription. Duplicates are acknowledged to the broker
//! and dropped.
//!
//! A QoS1 delivery is acknowledged only when the application says so: each one surfaced as a
//! [`ClientEvent::Message`] awaits an [`ack`](ClientSession::ack) on the connection it came
//! from (or, for a subscription opened with [`AckMode::OnHandOver`], the driver's
//! [`handed_over`](ClientSession::handed_over)). One never acked is redelivered by the broker
//! when its subscription or connection goes away. Deliveries for a subscription the client
//! no longer has are discarded, never acked. No IO: bytes in with
//! [`ClientSession::handle_bytes`], bytes out with [`ClientSession::poll_transmit`], events
//! out with [`ClientSession::poll_output`].
//!
//! It also decides what follows a lost connection ([`reconnect`](ClientSession::reconnect)):
//! dial again after a backoff, or give up (closed by the owner, reconnecting off, refused
//! by the broker for good); the rule is [`ReconnectPolicy`] and [`Backoff`].

mod config;
mod dedup;
mod reconnect;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use daemoneye_proto::frame::{
    ClientFrame, ErrorFrame, Hello, Publish, QoS, ServerFrame, Subscribe,
};
use daemoneye_proto::pb::bus as pb;
use daemoneye_proto::{FrameDecoder, PROTOCOL_VERSION};

use crate::Instant;
pub use config::{AckMode, ClientConfig, ClientEvent, SessionError};
use dedup::DedupWindow;
pub use reconnect::{Backoff, Disconnect, GiveUp, Reconnect, ReconnectPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    Handshaking,
    Open { session_id: u64 },
}

/// Why a [`ClientSession`] wants [`handle_timeout`](ClientSession::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The broker has been quiet: ping it, or give the connection up after three intervals.
    Keepalive,
    /// The transport is gone and its backoff has run out: the driver dials the broker (see
    /// [`ClientSession::reconnect`]); `handle_timeout` has nothing to do for it.
    Reconnect,
}

/// The client protocol machine.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    decoder: FrameDecoder,
    max_frame: u32,
    out: BytesMut,
    subs: BTreeMap<u64, Subscribe>,
    ack_modes: BTreeMap<u64, AckMode>,
    /// QoS1 deliveries of the current connection surfaced to the application and not yet
    /// acknowledged: delivery id to subscription.
    awaiting: BTreeMap<u64, u64>,
    /// Counts transports: a delivery id means something only on the connection it came from.
    connection: u64,
    /// Goodbye sent: nothing more is acknowledged on this connection.
    closing: bool,
    /// The driver stopped reading because the application is not keeping up: silence from
    /// the broker is then ours, not a dead link.
    receive_paused: bool,
    discarded: u64,
    next_sub_id: u64,
    next_sequence: u64,
    pending: BTreeMap<u64, Publish>,
    dedup: BTreeMap<(u64, String), DedupWindow>,
    events: VecDeque<ClientEvent>,
    heartbeat: Duration,
    last_recv: Instant,
    last_ping: Instant,
    duplicates: u64,
    /// The driver holds a transport (from `connect` to `handle_disconnect`), even one this
    /// side already gave up.
    transport: bool,
    /// What follows the loss of the last transport.
    next: Option<Reconnect>,
    backoff: Option<Backoff>,
    /// Why the last connection ended.
    last_disconnect: Option<Disconnect>,
    /// The broker's refusal that rules out another connection.
    refusal: Option<ErrorFrame>,
    /// A Welcome came on some connection: later refusals may be transient.
    welcomed_before: bool,
    /// The owner closed the session: no more connections.
    owner_closed: bool,
}

impl ClientSession {
    /// A disconnected session.
    pub fn new(config: ClientConfig) -> Self {
        let max_frame = config.max_frame;
        let backoff = config.reconnect.clone().map(Backoff::new);
        Self {
            config,
            state: State::Disconnected,
            decoder: FrameDecoder::new(max_frame),
            max_frame,
            out: BytesMut::new(),
            subs: BTreeMap::new(),
            ack_modes: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            connection: 0,
            closing: false,
            receive_paused: false,
            discarded: 0,
            next_sub_id: 0,
            next_sequence: 0,
            pending: BTreeMap::new(),
            dedup: BTreeMap::new(),
            events: VecDeque::new(),
            heartbeat: Duration::from_secs(10),
            last_recv: Instant::ZERO,
            last_ping: Instant::ZERO,
            duplicates: 0,
            transport: false,
            next: None,
            backoff,
            last_disconnect: None,
            refusal: None,
            welcomed_before: false,
            owner_closed: false,
        }
    }

    /// Whether the session has no live transport (never connected, or given up).
    pub fn is_closed(&self) -> bool {
        self.state == State::Disconnected
    }

    /// Whether the handshake is done.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// The broker's session id, once connected.
    pub fn session_id(&self) -> Option<u64> {
        match self.state {
            State::Open { session_id } => Some(session_id),
            _ => None,
        }
    }

    /// QoS1 publishes waiting for their PubAck.
    pub fn pending_publishes(&self) -> usize {
        self.pending.len()
    }

    /// Encoded bytes waiting for [`poll_transmit`](Self::poll_transmit).
    pub fn buffered_bytes(&self) -> usize {
        self.out.len()
    }

    /// Duplicate QoS1 deliveries dropped so far.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates
    }

    /// Deliveries discarded (unacknowledged) because their subscription was already closed
    /// or dropped on this side.
    pub fn discarded_deliveries(&self) -> u64 {
        self.discarded
    }

    /// The number of the current (or last) transport; a delivery id is only meaningful
    /// together with it.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// QoS1 deliveries handed out on the current connection and not yet acknowledged.
    pub fn awaiting_ack(&self) -> usize {
        self.awaiting.len()
    }

    /// Whether the owner closed the session: a transport that comes up now is not used.
    pub fn closed_by_owner(&self) -> bool {
        self.owner_closed
    }

    /// The broker's refusal that rules out another connection, once one came (the session
    /// gives up when this connection ends).
    pub fn refusal(&self) -> Option<&ErrorFrame> {
        self.refusal.as_ref()
    }

    /// Why the last connection ended, once one has.
    pub fn last_disconnect(&self) -> Option<&Disconnect> {
        self.last_disconnect.as_ref()
    }

    /// What follows the loss of the transport: dial again at an instant, or give up. `None`
    /// while the driver holds a transport (or before the first one).
    pub fn reconnect(&self) -> Option<&Reconnect> {
        self.next.as_ref()
    }

    fn queue(&mut self, frame: ClientFrame) -> Result<(), SessionError> {
        let frame: pb::Frame = frame.into();
        daemoneye_proto::encode(&frame, self.max_frame, &mut self.out)
            .map(|_| ())
            .map_err(SessionError::TooLarge)
    }

    /// A transport is up: start the handshake. Subscriptions and pending QoS1 publishes are
    /// sent again once the broker welcomes us.
    pub fn connect(&mut self, now: Instant) {
        self.decoder = FrameDecoder::new(self.config.max_frame);
        self.max_frame = self.config.max_frame;
        self.out.clear();
        self.state = State::Handshaking;
        self.transport = true;
        self.next = None;
        self.refusal = None;
        if let Some(b) = self.backoff.as_mut() {
            b.reset();
        }
        self.connection += 1;
        self.awaiting.clear();
        self.closing = false;
        self.receive_paused = false;
        self.last_recv = now;
        self.last_ping = now;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: self.config.client_name.clone(),
            role: self.config.role,
            publisher_id: self
                .config
                .publisher_id
                .clone()
                .unwrap_or_else(|| self.config.client_name.clone()),
            collector: self.config.collector.clone(),
        };
        let _ = self.queue(ClientFrame::Hello(hello));
    }

    /// The transport is gone. Subscriptions and unacknowledged QoS1 publishes are kept.
    /// Decides what follows ([`reconnect`](Self::reconnect)): the backoff starts now.
    pub fn handle_disconnect(&mut self, now: Instant, reason: impl Into<Disconnect>) {
        self.end_connection(reason.into());
        if std::mem::take(&mut self.transport) {
            self.next = Some(self.after_loss(now));
        }
    }

    /// A dial the session asked for ([`Reconnect::At`]) failed: the next one waits longer.
    pub fn handle_dial_failed(&mut self, now: Instant) {
        if matches!(self.next, Some(Reconnect::At(_))) {
            self.next = Some(self.after_loss(now));
        }
    }

    /// This side is done with the connection (the driver may still hold its transport).
    fn end_connection(&mut self, reason: Disconnect) {
        if self.state != State::Disconnected {
            self.state = State::Disconnected;
            self.out.clear();
            // The broker requeues whatever was not acked; those ids are void now.
            self.awaiting.clear();
            self.events.push_back(ClientEvent::Closed {
                reason: reason.to_string(),
            });
            self.last_disconnect = Some(reason);
        }
    }

    /// The rule after a lost transport or a failed dial.
    fn after_loss(&mut self, now: Instant) -> Reconnect {
        if self.owner_closed {
            return Reconnect::GiveUp(GiveUp::Closed);
        }
        if let Some(refusal) = &self.refusal {
            return Reconnect::GiveUp(GiveUp::Refused(refusal.clone()));
        }
        match self.backoff.as_mut() {
            Some(b) => Reconnect::At(now + b.next_wait()),
            None => Reconnect::GiveUp(GiveUp::Disabled),
        }
    }

    /// Opens a subscription whose QoS1 deliveries the application acknowledges
    /// ([`AckMode::Manual`]); `spec.sub_id` is assigned here. Returns the id.
    pub fn subscribe(&mut self, spec: Subscribe) -> u64 {
        self.subscribe_with(spec, AckMode::Manual)
    }

    /// Opens a subscription with the given acknowledgement mode. Returns the id.
    pub fn subscribe_with(&mut self, mut spec: Subscribe, ack: AckMode) -> u64 {
        self.next_sub_id += 1;
        spec.sub_id = self.next_sub_id;
        self.subs.insert(spec.sub_id, spec.clone());
        self.ack_modes.insert(spec.sub_id, ack);
        if self.is_connected() {
            let _ = self.queue(ClientFrame::Subscribe(spec));
        }
        self.next_sub_id
    }

    /// Closes a subscription.
    pub fn unsubscribe(&mut self, sub_id: u64) -> Result<(), SessionError> {
        if self.forget(sub_id).is_none() {
            return Err(SessionError::UnknownSubscription(sub_id));
        }
        if self.is_connected() && !self.closing {
            self.queue(ClientFrame::Unsubscribe { sub_id })?;
        }
        Ok(())
    }

    /// The application let go of a subscription (dropped its handle). A plain or group
    /// subscription is closed at the broker, which redelivers what was not acked (to another
    /// member of a group). A durable one is only forgotten here: an Unsubscribe would delete
    /// it, and the application dropping a handle means "stop reading", not "delete my queue".
    /// The broker keeps it attached to this connection until the connection ends (its
    /// deliveries in the meantime are discarded unacknowledged, at most its capacity), then
    /// keeps its queue for the next resume.
    pub fn drop_subscription(&mut self, sub_id: u64) -> Result<(), SessionError> {
        let durable = self
            .subs
            .get(&sub_id)
            .ok_or(SessionError::UnknownSubscription(sub_id))?
            .durable_name
            .is_some();
        if durable {
            self.forget(sub_id);
            Ok(())
        } else {
            self.unsubscribe(sub_id)
        }
    }

    fn forget(&mut self, sub_id: u64) -> Option<Subscribe> {
        let spec = self.subs.remove(&sub_id)?;
        self.ack_modes.remove(&sub_id);
        self.dedup.retain(|(s, _), _| *s != sub_id);
        // Never acked: the broker redelivers them once the subscription is gone.
        self.awaiting.retain(|_, s| *s != sub_id);
        Some(spec)
    }

    /// Publishes; the sequence is assigned here and returned. A QoS1 publish is kept until
    /// its PubAck (and re-sent after a reconnect); a QoS0 publish needs a connection.
    pub fn publish(&mut self, mut p: Publish) -> Result<u64, SessionError> {
        if p.qos == QoS::AtMostOnce && !self.is_connected() {
            return Err(SessionError::NotConnected);
        }
        self.next_sequence += 1;
        p.sequence = self.next_sequence;
        self.send_publish(p)
    }

    /// Keeps a QoS1 publish until its PubAck and sends it if connected.
    fn send_publish(&mut self, p: Publish) -> Result<u64, SessionError> {
        let sequence = p.sequence;
        if p.qos == QoS::AtLeastOnce {
            self.pending.insert(sequence, p.clone());
        }
        if self.is_connected()
            && let Err(e) = self.queue(ClientFrame::Publish(p))
        {
            self.pending.remove(&sequence);
            return Err(e);
        }
        Ok(sequence)
    }

    /// Publishes under a sequence the caller assigned (a WAL's), keeping `p.resent` as
    /// given: a record replayed from a log is sent as a resend. QoS1 only, since the
    /// sequence exists so that the record can be re-sent. Later [`publish`](Self::publish)
    /// calls continue after the highest sequence seen.
    pub fn publish_sequenced(&mut self, p: Publish) -> Result<u64, SessionError> {
        if p.sequence == 0 || p.qos != QoS::AtLeastOnce {
            return Err(SessionError::Unsequenced);
        }
        self.next_sequence = self.next_sequence.max(p.sequence);
        self.send_publish(p)
    }

    /// Acknowledges a QoS1 delivery of the current connection.
    pub fn ack(&mut self, delivery_id: u64) {
        self.ack_on(self.connection, delivery_id);
    }

    /// Acknowledges a QoS1 delivery that arrived on connection number `connection`: only
    /// if that is still the current one, the delivery awaits its ack (not acked yet, its
    /// subscription still open) and no Goodbye was sent. Returns whether an Ack was sent.
    pub fn ack_on(&mut self, connection: u64, delivery_id: u64) -> bool {
        if connection != self.connection
            || !self.is_connected()
            || self.closing
            || self.awaiting.remove(&delivery_id).is_none()
        {
            return false;
        }
        self.queue(ClientFrame::Ack { delivery_id }).is_ok()
    }

    /// The driver handed a delivery to the application: acknowledges it if its subscription
    /// acks on hand-over. Returns whether it still awaits the application's ack.
    pub fn handed_over(&mut self, connection: u64, delivery_id: u64) -> bool {
        if connection != self.connection {
            return false;
        }
        let Some(&sub_id) = self.awaiting.get(&delivery_id) else {
            return false;
        };
        if self.ack_modes.get(&sub_id) == Some(&AckMode::OnHandOver) {
            self.ack_on(connection, delivery_id);
            return false;
        }
        true
    }

    /// The driver stopped reading from the broker because the application is not taking its
    /// messages: until [`resume_receive`](Self::resume_receive), the broker's silence does
    /// not end the connection (we keep pinging, so the broker sees us alive).
    pub fn pause_receive(&mut self) {
        self.receive_paused = true;
    }

    /// The driver reads again.
    pub fn resume_receive(&mut self, now: Instant) {
        if self.receive_paused {
            self.receive_paused = false;
            self.last_recv = now;
        }
    }

    /// Says Goodbye. The broker routes what it holds of ours, answers with its own Goodbye
    /// and closes; no more acks are sent after it, and no connection follows this one.
    pub fn close(&mut self, reason: impl Into<String>) {
        self.owner_closed = true;
        if matches!(self.next, Some(Reconnect::At(_))) {
            self.next = Some(Reconnect::GiveUp(GiveUp::Closed));
        }
        if self.is_connected() && !self.closing {
            self.closing = true;
            let _ = self.queue(ClientFrame::Goodbye {
                reason: reason.into(),
            });
        }
    }

    /// Bytes from the broker.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Disconnected {
            return;
        }
        self.last_recv = now;
        let _ = self.decoder.push(data);
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => match ServerFrame::try_from(frame) {
                    Ok(f) => self.handle_frame(f),
                    Err(e) => return self.end_connection(Disconnect::InvalidFrame(e)),
                },
                Ok(None) => return,
                Err(e) => return self.end_connection(Disconnect::Framing(e)),
            }
            if self.state == State::Disconnected {
                return;
            }
        }
    }

    fn handle_frame(&mut self, f: ServerFrame) {
        match f {
            ServerFrame::Welcome(w) => {
                self.state = State::Open {
                    session_id: w.session_id,
                };
                self.welcomed_before = true;
                self.max_frame = w.max_frame.min(self.config.max_frame).max(1);
                if w.heartbeat_interval_ms > 0 {
                    self.heartbeat = Duration::from_millis(w.heartbeat_interval_ms);
                }
                let subs: Vec<Subscribe> = self.subs.values().cloned().collect();
                for s in subs {
                    let _ = self.queue(ClientFrame::Subscribe(s));
                }
                // Unacknowledged QoS1 publishes go again, marked so that subscribers treat
                // them as redeliveries (deduplicated, exempt from ordering).
                let pending: Vec<Publish> = self
                    .pending
                    .values_mut()
                    .map(|p| {
                        p.resent = true;
                        p.clone()
                    })
                    .collect();
                for p in pending {
                    let _ = self.queue(ClientFrame::Publish(p));
                }
                self.events.push_back(ClientEvent::Connected {
                    session_id: w.session_id,
                });
            }
            ServerFrame::SubAck(a) => self.events.push_back(ClientEvent::Subscribed {
                sub_id: a.sub_id,
                backlog: a.resumed_backlog,
            }),
            ServerFrame::Deliver(d) => {
                // A subscription closed or dropped on this side: nobody takes the message, and
                // it is not acked, so the broker redelivers it (or counts it).
                if !self.subs.contains_key(&d.sub_id) {
                    self.discarded += 1;
                    return;
                }
                // Every publish has a unique (publisher, sequence), whatever its QoS: a QoS0
                // subscription must not see a re-sent QoS1 publish twice either.
                if d.sequence != 0 {
                    let cap = self.config.dedup_window;
                    let window = self
                        .dedup
                        .entry((d.sub_id, d.publisher_id.clone()))
                        .or_default();
                    if !window.insert(d.sequence, cap) {
                        self.duplicates += 1;
                        if d.qos == QoS::AtLeastOnce && d.delivery_id != 0 && !self.closing {
                            let _ = self.queue(ClientFrame::Ack {
                                delivery_id: d.delivery_id,
                            });
                        }
                        return;
                    }
                }
                if d.qos == QoS::AtLeastOnce && d.delivery_id != 0 {
                    self.awaiting.insert(d.delivery_id, d.sub_id);
                }
                self.events.push_back(ClientEvent::Message(d));
            }
            ServerFrame::PubAck(a) => {
                self.pending.remove(&a.sequence);
                self.events.push_back(ClientEvent::PubAck {
                    sequence: a.sequence,
                    delivered: a.delivered,
                    dropped: a.dropped,
                    no_interest: a.no_interest,
                });
            }
            ServerFrame::Error(e) => {
                // A refused publish will never get a PubAck: stop re-sending it.
                if e.answers_kind == pb::AnswerKind::Publish {
                    self.pending.remove(&e.answers);
                }
                if e.answers_kind == pb::AnswerKind::Subscription {
                    self.subs.remove(&e.answers);
                }
                let answers_one_call = matches!(
                    e.answers_kind,
                    pb::AnswerKind::Publish | pb::AnswerKind::Subscription
                );
                if !answers_one_call
                    && self.refusal.is_none()
                    && reconnect::refusal_is_final(e.code, self.welcomed_before)
                {
                    self.refusal = Some(e.clone());
                }
                self.events.push_back(ClientEvent::Error(e));
            }
            ServerFrame::Ping { nonce } => {
                let _ = self.queue(ClientFrame::Pong { nonce });
            }
            ServerFrame::Pong { .. } => {}
            ServerFrame::Backpressure { level, reason } => self
                .events
                .push_back(ClientEvent::Backpressure { level, reason }),
            ServerFrame::Goodbye { reason } => self.end_connection(Disconnect::Goodbye(reason)),
            ServerFrame::Dropped(d) => self.events.push_back(ClientEvent::Dropped {
                sub_id: d.sub_id,
                count: d.count,
                total: d.total,
            }),
        }
    }

    /// Keepalive: ping when the broker has been quiet for a heartbeat interval; give the
    /// connection up when it has been quiet for three (a broker that is frozen, or a link
    /// that no longer carries anything). The driver then sees [`is_closed`](Self::is_closed)
    /// and reconnects.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.receive_paused {
            if self.is_connected() && self.last_ping + self.heartbeat <= now {
                self.last_ping = now;
                let _ = self.queue(ClientFrame::Ping {
                    nonce: now.as_nanos(),
                });
            }
            return;
        }
        if self.is_connected() && self.last_recv + self.heartbeat * 3 <= now {
            self.end_connection(Disconnect::BrokerSilent);
            return;
        }
        if self.is_connected()
            && self.last_recv + self.heartbeat <= now
            && self.last_ping + self.heartbeat <= now
        {
            self.last_ping = now;
            let _ = self.queue(ClientFrame::Ping {
                nonce: now.as_nanos(),
            });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run, and why.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        if let Some(Reconnect::At(at)) = self.next {
            return Some((at, Timer::Reconnect));
        }
        if !self.is_connected() {
            return None;
        }
        if self.receive_paused {
            return Some((self.last_ping + self.heartbeat, Timer::Keepalive));
        }
        let at = (self.last_recv + self.heartbeat).max(self.last_ping + self.heartbeat);
        Some((at, Timer::Keepalive))
    }

    /// Bytes to write to the broker, coalesced.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// The next event.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}
