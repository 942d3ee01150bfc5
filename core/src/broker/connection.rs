//! A connection's lifecycle: connect (limits, reserved agent slots, ACL), the Hello
//! handshake, Goodbye, close and removal, and the encoded frames it is sent. What a
//! connection's frames ask for is handled elsewhere (frames.rs dispatches them).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use rustc_hash::FxHashMap;

use daemoneye_proto::frame::{Hello, Role};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use daemoneye_proto::{FrameDecoder, PROTOCOL_VERSION};

use super::stats::Counters;
use super::{Broker, CloseReason, ConnId, Output, PeerCreds};
use crate::Instant;
use crate::acl::Principal;
use crate::topic::TopicName;

/// Where a connection is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for Hello until `deadline`.
    Handshaking { deadline: Instant },
    /// Hello answered with Welcome.
    Open,
}

/// Which limit a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// One of `max_connections`.
    Ordinary,
    /// One of the slots reserved for the agent's own clients.
    Reserved,
}

/// Publishes a stalled connection may have waiting before the broker stops reading it.
pub(super) const MAX_DEFERRED_PUBLISHES: usize = 256;
/// Payload bytes a stalled connection may have waiting before the broker stops reading it.
pub(super) const MAX_DEFERRED_BYTES: usize = 1 << 20;

/// One connection's protocol state.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) peer: PeerCreds,
    pub(super) phase: Phase,
    pub(super) decoder: FrameDecoder,
    pub(super) session_id: u64,
    pub(super) principal: Principal,
    pub(super) client_name: String,
    pub(super) publisher_id: Arc<str>,
    pub(super) collector_id: Option<String>,
    /// Client subscription id to subscription key.
    pub(super) subs: BTreeMap<u64, u64>,
    /// QoS1 delivery id to subscription key.
    pub(super) unacked: FxHashMap<u64, u64>,
    pub(super) next_delivery: u64,
    /// Encoded frames not yet handed to the driver.
    pub(super) out: BytesMut,
    /// Bytes handed to the driver and not yet reported written.
    pub(super) in_flight: usize,
    /// Publishes waiting, in order, behind one that found a full Block queue (the front).
    /// Other frames (acks, pings, subscription changes) are still handled meanwhile, so a
    /// client blocked on its own subscription can still ack its way out.
    pub(super) deferred: VecDeque<daemoneye_proto::frame::Publish>,
    pub(super) deferred_bytes: usize,
    pub(super) blocked_notified: bool,
    /// The client said Goodbye: its frames are no longer read, and once what it has
    /// waiting is routed the broker answers Goodbye and closes.
    pub(super) goodbye: bool,
    /// When the frame the decoder holds in part started to arrive (while the broker reads
    /// the connection); `None` on a frame boundary.
    pub(super) frame_started: Option<Instant>,
    /// The limit it counts against (`None` for a connection refused at connect).
    pub(super) slot: Option<Slot>,
    /// The topic of this connection's last publish: publishers repeat topics, and a hit
    /// skips parsing and allocating it again.
    pub(super) last_topic: Option<TopicName>,
    pub(super) read_paused: bool,
    pub(super) last_recv: Instant,
    pub(super) last_ping: Instant,
    pub(super) slow_down_sent: Option<Instant>,
    pub(super) counters: Counters,
    /// Round-robin position among this connection's subscriptions when delivering.
    pub(super) cursor: u64,
}

impl Broker {
    /// A new connection from a peer with these OS credentials. Refused connections (limit,
    /// ACL, shutdown) get an Error frame and a Close output at once.
    pub fn handle_connect(&mut self, now: Instant, peer: PeerCreds) -> ConnId {
        self.start_clock(now);
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        let conn = Connection {
            peer,
            phase: Phase::Handshaking {
                deadline: now + self.config.handshake_timeout,
            },
            decoder: FrameDecoder::new(self.config.max_frame),
            session_id: 0,
            principal: Principal {
                uid: peer.uid,
                role: Role::Client,
            },
            client_name: String::new(),
            publisher_id: Arc::from(""),
            collector_id: None,
            subs: BTreeMap::new(),
            unacked: FxHashMap::default(),
            next_delivery: 0,
            out: BytesMut::new(),
            in_flight: 0,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            blocked_notified: false,
            goodbye: false,
            frame_started: None,
            slot: None,
            last_topic: None,
            read_paused: false,
            last_recv: now,
            last_ping: now,
            slow_down_sent: None,
            counters: Counters::default(),
            cursor: 0,
        };
        let refusal = if self.shutting_down {
            Some((
                pb::ErrorCode::ShuttingDown,
                "broker is shutting down".to_string(),
            ))
        } else if self.ordinary_conns >= self.config.max_connections
            && !(peer.uid == self.config.owner_uid
                && self.reserved_conns < self.config.reserved_agent_slots)
        {
            Some((
                pb::ErrorCode::TooManyConnections,
                format!(
                    "connection limit of {} reached",
                    self.config.max_connections
                ),
            ))
        } else if !self.acl.allows_connect(peer.uid) {
            self.totals.denied += 1;
            Some((
                pb::ErrorCode::PermissionDenied,
                format!("uid {} may not connect to this broker", peer.uid),
            ))
        } else {
            None
        };
        let mut conn = conn;
        // Until its Hello says what it is, a connection takes an ordinary slot if one is
        // free, else (the owner's uid only) a reserved one it keeps only as the agent.
        if refusal.is_none() {
            if self.ordinary_conns < self.config.max_connections {
                conn.slot = Some(Slot::Ordinary);
                self.ordinary_conns += 1;
            } else {
                conn.slot = Some(Slot::Reserved);
                self.reserved_conns += 1;
            }
        }
        self.conns.insert(id, conn);
        self.arm_phase_timer(id);
        if let Some((code, message)) = refusal {
            self.refuse(now, id, code, message);
        }
        self.flush();
        id
    }

    pub(super) fn handle_hello(&mut self, now: Instant, conn: ConnId, hello: Hello) {
        if hello.protocol_version != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version mismatch: client speaks version {}, this broker speaks version {}",
                hello.protocol_version, PROTOCOL_VERSION
            );
            self.refuse(now, conn, pb::ErrorCode::VersionMismatch, msg);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if hello.role == Role::Agent && c.peer.uid != self.config.owner_uid {
            let msg = format!("uid {} may not connect in the agent role", c.peer.uid);
            self.totals.denied += 1;
            self.refuse(now, conn, pb::ErrorCode::PermissionDenied, msg);
            return;
        }
        // The agent's own clients move to a reserved slot while one is free; anyone else
        // holding one (it connected when the ordinary slots were full) must find an
        // ordinary slot or go.
        match (hello.role == Role::Agent, c.slot) {
            (true, Some(Slot::Ordinary))
                if self.reserved_conns < self.config.reserved_agent_slots =>
            {
                c.slot = Some(Slot::Reserved);
                self.ordinary_conns -= 1;
                self.reserved_conns += 1;
            }
            (false, Some(Slot::Reserved)) => {
                if self.ordinary_conns >= self.config.max_connections {
                    let msg = format!(
                        "connection limit of {} reached",
                        self.config.max_connections
                    );
                    self.refuse(now, conn, pb::ErrorCode::TooManyConnections, msg);
                    return;
                }
                c.slot = Some(Slot::Ordinary);
                self.reserved_conns -= 1;
                self.ordinary_conns += 1;
            }
            _ => {}
        }
        self.next_session += 1;
        let session_id = self.next_session;
        c.phase = Phase::Open;
        c.session_id = session_id;
        c.principal.role = hello.role;
        c.client_name = hello.client_name;
        c.publisher_id = Arc::from(hello.publisher_id.as_str());
        if let Some(col) = hello.collector {
            // The newest connection of a collector id wins: a restarted collector may
            // reconnect before its old connection is noticed dead.
            self.collectors.insert(col.id.clone(), conn);
            c.collector_id = Some(col.id);
        }
        self.sessions.insert(session_id, conn);
        let welcome = pb::Welcome {
            protocol_version: PROTOCOL_VERSION,
            session_id,
            max_frame: self.config.max_frame,
            heartbeat_interval_ms: u64::try_from(self.config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            publisher_id: hello.publisher_id,
        };
        self.send_frame(conn, Body::Welcome(welcome));
        // The keepalive replaces the handshake deadline, and may come sooner.
        self.arm_phase_timer(conn);
    }

    /// A client's Goodbye: a clean close. What the broker still holds for the connection
    /// (publishes stalled behind a full Block queue) is routed first; no further frame is
    /// read; then the broker answers Goodbye and closes.
    pub(super) fn handle_goodbye(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.goodbye = true;
        c.frame_started = None;
        // Its subscriptions end now, as at any close: it will ack nothing more, and a
        // publisher stalled on its own subscription must not wait on itself.
        self.end_subscriptions(now, conn);
        if self.conns.get(&conn).is_some_and(|c| c.deferred.is_empty()) {
            self.answer_goodbye(now, conn);
        }
    }

    /// Ends a live connection's subscriptions: unacknowledged deliveries go back to their
    /// queues, durable subscriptions wait for their owner, the others are removed.
    pub(super) fn end_subscriptions(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let keys: Vec<u64> = std::mem::take(&mut c.subs).into_values().collect();
        c.unacked.clear();
        for key in &keys {
            self.requeue_unacked(*key);
        }
        for key in keys {
            self.detach_or_remove(now, key, conn);
        }
    }

    /// Answers a client's Goodbye once nothing it published waits, and closes.
    pub(super) fn answer_goodbye(&mut self, now: Instant, conn: ConnId) {
        self.send_frame(
            conn,
            Body::Goodbye(pb::Goodbye {
                reason: "goodbye".into(),
            }),
        );
        self.close(now, conn, CloseReason::Goodbye);
    }

    pub(super) fn send_frame(&mut self, conn: ConnId, body: Body) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let frame = pb::Frame { body: Some(body) };
        // Broker-built control frames are small; a failure here would be a bug, and the
        // frame is then skipped rather than panicking.
        if daemoneye_proto::encode(&frame, u32::MAX, &mut c.out).is_ok() {
            self.dirty.insert(conn);
        }
    }

    pub(super) fn send_error(
        &mut self,
        conn: ConnId,
        code: pb::ErrorCode,
        message: String,
        answers: u64,
        kind: pb::AnswerKind,
    ) {
        self.send_frame(
            conn,
            Body::Error(pb::Error {
                code: code as i32,
                message,
                answers,
                answers_kind: kind as i32,
            }),
        );
    }

    /// Hands every connection's encoded frames to the driver.
    pub(super) fn flush(&mut self) {
        while let Some(id) = self.dirty.pop_first() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.out.is_empty() {
                continue;
            }
            let data = c.out.split().freeze();
            c.in_flight += data.len();
            self.outputs.push_back(Output::Transmit { conn: id, data });
        }
    }

    /// Flushes the connection's pending frames, forgets it and tells the driver to close it.
    pub(super) fn close(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.dirty.insert(conn);
        self.flush();
        self.remove_conn(now, conn);
        self.outputs.push_back(Output::Close { conn, reason });
    }

    pub(super) fn remove_conn(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.disarm_connection(conn);
        match c.slot {
            Some(Slot::Ordinary) => self.ordinary_conns -= 1,
            Some(Slot::Reserved) => {
                self.reserved_conns -= 1;
                // An agent connection that had to take an ordinary slot moves to the freed
                // reserved one, giving its ordinary slot back to everyone else.
                let waiting = self.conns.values_mut().find(|o| {
                    o.slot == Some(Slot::Ordinary)
                        && o.principal.role == Role::Agent
                        && o.session_id != 0
                });
                if let Some(o) = waiting {
                    o.slot = Some(Slot::Reserved);
                    self.ordinary_conns -= 1;
                    self.reserved_conns += 1;
                }
            }
            None => {}
        }
        if !c.deferred.is_empty() {
            // Publishes the broker held for a connection that went without a clean close.
            self.totals.lost_on_disconnect += c.deferred.len() as u64;
        }
        self.ready.remove(&conn);
        self.dirty.remove(&conn);
        self.budget_blocked.remove(&conn);
        if c.session_id != 0 {
            self.sessions.remove(&c.session_id);
        }
        if let Some(id) = &c.collector_id
            && self.collectors.get(id) == Some(&conn)
        {
            self.collectors.remove(id);
        }
        // Unacked deliveries go back to their queues first, so that redelivery sees them.
        for key in c.subs.values() {
            self.requeue_unacked(*key);
        }
        for key in c.subs.values().copied().collect::<Vec<_>>() {
            self.detach_or_remove(now, key, conn);
        }
    }

    /// The owner of subscription `key` is gone: a durable subscription waits for it (and
    /// starts its expiry), any other is removed.
    fn detach_or_remove(&mut self, now: Instant, key: u64, conn: ConnId) {
        match self.subs.get_mut(&key) {
            Some(s) if s.durable.is_some() => {
                s.owner = None;
                s.detached_at = Some(now);
                s.blocked.retain(|b| *b != conn);
                self.arm_durable_expiry(key);
            }
            Some(_) => self.remove_subscription(now, key, true),
            None => {}
        }
    }
}
