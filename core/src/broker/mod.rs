//! The broker state machine.
//!
//! It owns every connection's protocol state, the subscription index, queue groups, the
//! bounded per-subscription queues, QoS1 bookkeeping, durable subscriptions, the memory
//! budget, the ACL decision and statistics. It performs no IO:
//!
//! - the driver reports a new connection with [`Broker::handle_connect`] (peer credentials
//!   from the OS), bytes read with [`Broker::handle_bytes`], bytes written to the socket with
//!   [`Broker::handle_written`], the peer going away with [`Broker::handle_disconnect`], and
//!   the passage of time with [`Broker::handle_timeout`];
//! - after every `handle_*` it drains [`Broker::poll_output`] until `None` (bytes to write,
//!   connections to close, reading to pause or resume) and sleeps until
//!   [`Broker::poll_timeout`].
//!
//! Flow control: a connection gets at most `write_window` bytes handed to the driver and not
//! yet reported written; everything else waits in the subscriptions' bounded queues, where
//! the overflow strategy applies. A publish that would overflow a Block queue is held
//! whole, before any copy is queued; the publisher's later publishes wait behind it in order
//! while its other frames (acks, pings, subscription changes) are still handled, and once a
//! bounded backlog of publishes waits, the connection stops being read until the queue has
//! room. Nothing is lost and per-publisher order is kept.

mod dedup;
mod durable;
mod introspect;
mod queue;
mod report;
mod route;
pub mod stats;
mod subscribe;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use daemoneye_proto::frame::{
    ClientFrame, Hello, Overflow, ProtocolError, QoS, QueueStrategy, Role,
};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use daemoneye_proto::{FrameDecoder, FrameError, PROTOCOL_VERSION};

use crate::Instant;
use crate::acl::{Acl, Principal};
use crate::index::SubscriptionIndex;
use crate::rng::SeededRng;
use crate::topic::{TopicFilter, TopicName};

pub use durable::{DurableDefinition, RestoreError};
use queue::{Entry, SubQueue};
use stats::{Counters, LatencyHistogram, TopicCounters};

/// Broker limits and defaults.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The agent's uid: with root, the only principals allowed by default.
    pub owner_uid: u32,
    /// Largest frame body accepted or sent.
    pub max_frame: u32,
    /// Connections beyond this get an Error and are closed.
    pub max_connections: usize,
    /// Slots reserved, on top of `max_connections`, for the agent's own clients (role
    /// Agent, the owner's uid). Every connection counts against one limit or the other:
    /// agent connections take a reserved slot while one is free, then ordinary ones.
    pub reserved_agent_slots: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// A connection must complete its Hello within this.
    pub handshake_timeout: Duration,
    /// A frame must arrive whole within this of its first byte, or the connection is
    /// closed (a peer dribbling a frame cannot hold a connection and its buffer forever).
    ///
    /// The clock runs from the frame's first byte and is not extended by progress: a peer
    /// sending a byte now and then would otherwise keep a frame open indefinitely. It is
    /// stopped while the broker itself is not reading the connection (backpressure), and
    /// restarts when reading resumes. The default 10 s asks a `max_frame` (1 MiB) frame to
    /// arrive at 100 KiB/s, orders of magnitude below what a Unix socket carries even on a
    /// loaded host.
    pub frame_timeout: Duration,
    /// Keepalive interval advertised in Welcome; 3 silent intervals close a connection.
    pub heartbeat_interval: Duration,
    /// Queue capacity of a subscription that does not ask for one.
    pub default_capacity: u32,
    /// Largest capacity a subscription may ask for.
    pub max_capacity: u32,
    /// Bytes of queued messages across all subscriptions.
    pub memory_budget: u64,
    /// A durable subscription whose owner stays away longer is removed.
    pub durable_expiry: Duration,
    /// Interval of `$sys.broker.stats` publications.
    pub stats_interval: Duration,
    /// Bytes handed to the driver per connection and not yet written.
    pub write_window: usize,
    /// Acknowledged QoS1 queue-group hand-outs remembered to deduplicate publishers'
    /// resends (0 turns group deduplication off).
    pub group_dedup_window: usize,
    /// A deliberately broken broker for the simulation's canary test: QoS1 copies count
    /// as delivered the moment they are queued, so PubAcks go out before delivery. Never
    /// set outside that test.
    #[doc(hidden)]
    pub canary_early_puback: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            owner_uid: 0,
            max_frame: daemoneye_proto::DEFAULT_MAX_FRAME,
            max_connections: 64,
            reserved_agent_slots: 8,
            max_subscriptions_per_connection: 256,
            handshake_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            default_capacity: 1000,
            max_capacity: 1_000_000,
            memory_budget: 100 * 1024 * 1024,
            durable_expiry: Duration::from_secs(600),
            stats_interval: Duration::from_secs(30),
            write_window: 64 * 1024,
            group_dedup_window: 65_536,
            canary_early_puback: false,
        }
    }
}

/// What the OS says about the peer of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCreds {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id, where the platform reports it.
    pub pid: Option<u32>,
}

/// A connection, as numbered by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Why the broker closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said Goodbye.
    Goodbye,
    /// A framing, decoding or protocol error.
    Protocol(String),
    /// Refused at connect or handshake (limits, version, ACL).
    Refused(String),
    /// Handshake or keepalive timeout.
    Timeout,
    /// The broker is shutting down.
    Shutdown,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection, then report them with `handle_written`.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// Whole frames, coalesced.
        data: Bytes,
    },
    /// Stop reading the connection (a Block queue it feeds is full).
    PauseRead {
        /// The connection.
        conn: ConnId,
    },
    /// Read the connection again.
    ResumeRead {
        /// The connection.
        conn: ConnId,
    },
    /// Flush what was transmitted, then close. The broker has forgotten the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Broker health, worst reason first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// All queues and budgets well within limits.
    Healthy,
    /// Pressure: a queue at 80% or more, the memory budget at 80%, connections at the limit.
    Degraded,
    /// The memory budget at 95% or more.
    Unhealthy,
}

impl Health {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A published message, shared by every queued copy.
#[derive(Debug)]
pub(crate) struct Message {
    pub id: u64,
    pub topic: TopicName,
    pub payload: Bytes,
    pub publisher_id: Arc<str>,
    /// The publishing connection's OS credentials (pid 0 where unknown), for receivers that
    /// must know who really sent a message (the agent's collector registry).
    pub publisher_pid: u32,
    pub publisher_uid: u32,
    pub sequence: u64,
    pub correlation: Option<Box<pb::Correlation>>,
    pub reply_to: Option<String>,
    pub priority: u8,
    pub qos: QoS,
    /// The publisher sent it again after a reconnect: delivered as a redelivery.
    pub resent: bool,
    pub published_at: Instant,
    /// Bytes charged to the memory budget while any queue holds it.
    pub size: u64,
}

/// Outstanding PubAck of one QoS1 publish.
#[derive(Debug)]
struct PubAckState {
    conn: ConnId,
    sequence: u64,
    remaining: u32,
    delivered: u32,
    dropped: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshaking { deadline: Instant },
    Open,
}

/// Which limit a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// One of `max_connections`.
    Ordinary,
    /// One of the slots reserved for the agent's own clients.
    Reserved,
}

/// Publishes a stalled connection may have waiting before the broker stops reading it.
const MAX_DEFERRED_PUBLISHES: usize = 256;
/// Payload bytes a stalled connection may have waiting before the broker stops reading it.
const MAX_DEFERRED_BYTES: usize = 1 << 20;

#[derive(Debug)]
struct Connection {
    peer: PeerCreds,
    phase: Phase,
    decoder: FrameDecoder,
    session_id: u64,
    principal: Principal,
    client_name: String,
    publisher_id: Arc<str>,
    collector_id: Option<String>,
    /// Client subscription id to subscription key.
    subs: BTreeMap<u64, u64>,
    /// QoS1 delivery id to subscription key.
    unacked: FxHashMap<u64, u64>,
    next_delivery: u64,
    /// Encoded frames not yet handed to the driver.
    out: BytesMut,
    /// Bytes handed to the driver and not yet reported written.
    in_flight: usize,
    /// Publishes waiting, in order, behind one that found a full Block queue (the front).
    /// Other frames (acks, pings, subscription changes) are still handled meanwhile, so a
    /// client blocked on its own subscription can still ack its way out.
    deferred: VecDeque<daemoneye_proto::frame::Publish>,
    deferred_bytes: usize,
    blocked_notified: bool,
    /// The client said Goodbye: its frames are no longer read, and once what it has
    /// waiting is routed the broker answers Goodbye and closes.
    goodbye: bool,
    /// When the frame the decoder holds in part started to arrive (while the broker reads
    /// the connection); `None` on a frame boundary.
    frame_started: Option<Instant>,
    /// The limit it counts against (`None` for a connection refused at connect).
    slot: Option<Slot>,
    /// The topic of this connection's last publish: publishers repeat topics, and a hit
    /// skips parsing and allocating it again.
    last_topic: Option<TopicName>,
    read_paused: bool,
    last_recv: Instant,
    last_ping: Instant,
    slow_down_sent: Option<Instant>,
    counters: Counters,
    /// Round-robin position among this connection's subscriptions when delivering.
    cursor: u64,
}

#[derive(Debug)]
struct Subscription {
    key: u64,
    owner: Option<ConnId>,
    client_sub_id: u64,
    filter: TopicFilter,
    group: Option<Arc<str>>,
    qos: QoS,
    capacity: u32,
    overflow: Overflow,
    durable: Option<(u32, String)>,
    queue: SubQueue,
    /// Delivered QoS1 copies waiting for Ack, by delivery id.
    unacked: BTreeMap<u64, Entry>,
    /// Publishers stalled on this queue.
    blocked: Vec<ConnId>,
    /// Unsubscribed: it matches nothing new and goes once its queue is handed out.
    unsubscribed: bool,
    dropped_total: u64,
    dropped_unreported: u64,
    detached_at: Option<Instant>,
    counters: Counters,
}

impl Subscription {
    fn occupancy(&self) -> usize {
        self.queue.len() + self.unacked.len()
    }
    fn is_full(&self) -> bool {
        self.occupancy() >= self.capacity as usize
    }
    fn under_pressure(&self) -> bool {
        self.occupancy() * 5 >= self.capacity as usize * 4
    }
}

#[derive(Debug, Default)]
struct GroupState {
    strategy: QueueStrategy,
    /// Key of the member that got the last message (round robin continues after it).
    last: u64,
    members: BTreeSet<u64>,
}

/// A snapshot of one subscription, for tests, simulations and the stats report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Broker-wide key.
    pub key: u64,
    /// Owning connection, `None` while a durable subscription waits for its owner.
    pub owner: Option<ConnId>,
    /// The client's id for it.
    pub client_sub_id: u64,
    /// Filter text.
    pub filter: String,
    /// Queue group.
    pub group: Option<String>,
    /// Queued, not yet handed out.
    pub queued: usize,
    /// Handed out, waiting for Ack.
    pub unacked: usize,
    /// Capacity.
    pub capacity: u32,
    /// Overflow strategy.
    pub overflow: Overflow,
    /// Copies dropped so far.
    pub dropped: u64,
}

/// Why the [`Broker`] wants [`handle_timeout`](Broker::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The periodic `$sys` stats publish.
    Stats,
    /// A connection has not said Hello in time.
    Handshake(ConnId),
    /// A connection has been quiet: ping it, or drop it after three heartbeat intervals.
    Keepalive(ConnId),
    /// A connection started a frame and has not finished it within the frame timeout.
    Frame(ConnId),
    /// A detached durable subscription (by subscription key) has stayed away too long.
    DurableExpiry(u64),
}

/// The broker.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    acl: Acl,
    rng: SeededRng,
    conns: BTreeMap<ConnId, Connection>,
    sessions: FxHashMap<u64, ConnId>,
    collectors: BTreeMap<String, ConnId>,
    subs: BTreeMap<u64, Subscription>,
    index: SubscriptionIndex,
    groups: BTreeMap<Arc<str>, GroupState>,
    durables: BTreeMap<(u32, String), u64>,
    /// Bumped whenever a durable subscription is created or removed.
    durables_generation: u64,
    pubacks: FxHashMap<u64, PubAckState>,
    /// QoS1 group hand-outs, so that a publisher's resend reaches each group once.
    dedup: dedup::GroupDedup,
    /// Connections stalled on the memory budget.
    budget_blocked: BTreeSet<ConnId>,
    /// Connections counted against `max_connections`.
    ordinary_conns: usize,
    /// Connections in a reserved agent slot.
    reserved_conns: usize,
    queued_bytes: u64,
    outputs: VecDeque<Output>,
    /// Connections that may have deliveries to hand out.
    ready: BTreeSet<ConnId>,
    /// Connections with encoded bytes in `out`.
    dirty: BTreeSet<ConnId>,
    next_conn: u64,
    next_session: u64,
    next_sub: u64,
    next_msg: u64,
    started: Option<Instant>,
    next_stats: Option<Instant>,
    totals: Counters,
    topic_counters: TopicCounters,
    latency: LatencyHistogram,
    last_rate: (Instant, u64, u64),
    rates: (f64, f64),
    shutting_down: bool,
    /// `pump` is running: a nested call leaves the ready connections to it.
    pumping: bool,
    /// Connections whose frames are being handled further up the stack: a stalled
    /// publisher woken while handling its own frames goes on in that loop, so that frames
    /// that arrived in the same read are not handled in another order than if they had
    /// arrived later.
    in_frames: Vec<ConnId>,
    scratch: Vec<u64>,
    targets: Vec<u64>,
}

impl Broker {
    /// A broker with `config`, deciding access with `acl`, drawing queue-group randomness
    /// from `seed`.
    pub fn new(config: BrokerConfig, acl: Acl, seed: u64) -> Self {
        let dedup_window = config.group_dedup_window;
        Self {
            config,
            acl,
            rng: SeededRng::new(seed),
            conns: BTreeMap::new(),
            sessions: FxHashMap::default(),
            collectors: BTreeMap::new(),
            subs: BTreeMap::new(),
            index: SubscriptionIndex::new(),
            groups: BTreeMap::new(),
            durables: BTreeMap::new(),
            durables_generation: 0,
            pubacks: FxHashMap::default(),
            dedup: dedup::GroupDedup::new(dedup_window),
            budget_blocked: BTreeSet::new(),
            ordinary_conns: 0,
            reserved_conns: 0,
            queued_bytes: 0,
            outputs: VecDeque::new(),
            ready: BTreeSet::new(),
            dirty: BTreeSet::new(),
            next_conn: 0,
            // Session ids name a session across broker restarts too: each broker instance
            // numbers from its own random base, so a client that reconnects to a restarted
            // broker never sees the id it had (and knows to register again).
            next_session: (SeededRng::new(seed ^ 0x5e55_1015).next_u64() >> 16) << 16,
            next_sub: 0,
            next_msg: 0,
            started: None,
            next_stats: None,
            totals: Counters::default(),
            topic_counters: TopicCounters::default(),
            latency: LatencyHistogram::default(),
            last_rate: (Instant::ZERO, 0, 0),
            rates: (0.0, 0.0),
            shutting_down: false,
            pumping: false,
            in_frames: Vec::new(),
            scratch: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn start_clock(&mut self, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
            self.next_stats = Some(now + self.config.stats_interval);
            self.last_rate = (now, 0, 0);
        }
    }

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
        if let Some((code, message)) = refusal {
            self.refuse(now, id, code, message);
        }
        self.flush();
        id
    }

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
        c.last_recv = now;
        // A framing error is reported by next_frame after the frames before it.
        let _ = c.decoder.push(data);
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
    fn check_truncation(&mut self, conn: ConnId) -> Option<FrameError> {
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

    /// Time has reached a deadline from [`poll_timeout`](Self::poll_timeout) (calling it
    /// early or late is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start_clock(now);
        let hb = self.config.heartbeat_interval;
        let mut expired = Vec::new();
        let mut pings = Vec::new();
        let mut slow_frames = Vec::new();
        for (&id, c) in &self.conns {
            if let Some(started) = c.frame_started
                && started + self.config.frame_timeout <= now
            {
                slow_frames.push(id);
                continue;
            }
            match c.phase {
                Phase::Handshaking { deadline } if deadline <= now => expired.push((id, true)),
                Phase::Handshaking { .. } => {}
                Phase::Open => {
                    if c.last_recv + hb * 3 <= now {
                        expired.push((id, false));
                    } else if c.last_recv + hb <= now && c.last_ping + hb <= now {
                        pings.push(id);
                    }
                }
            }
        }
        for id in slow_frames {
            self.totals.frame_timeouts += 1;
            let msg = format!(
                "frame not completed within the frame timeout of {} ms",
                self.config.frame_timeout.as_millis()
            );
            self.protocol_error(now, id, pb::ErrorCode::Protocol, msg);
        }
        for (id, handshake) in expired {
            let (code, msg) = if handshake {
                (
                    pb::ErrorCode::HandshakeTimeout,
                    "no Hello within the handshake timeout".to_string(),
                )
            } else {
                (
                    pb::ErrorCode::IdleTimeout,
                    "no traffic for 3 heartbeat intervals".to_string(),
                )
            };
            self.send_error(id, code, msg, 0, pb::AnswerKind::Connection);
            self.close(now, id, CloseReason::Timeout);
        }
        for id in pings {
            if let Some(c) = self.conns.get_mut(&id) {
                c.last_ping = now;
                let nonce = now.as_nanos();
                self.send_frame(id, Body::Ping(pb::Ping { nonce }));
            }
        }
        // Durable subscriptions whose owner stayed away too long.
        let expiry = self.config.durable_expiry;
        let gone: Vec<u64> = self
            .subs
            .values()
            .filter(|s| s.detached_at.is_some_and(|t| t + expiry <= now))
            .map(|s| s.key)
            .collect();
        for key in gone {
            self.remove_subscription(now, key, false);
        }
        if let Some(at) = self.next_stats
            && at <= now
        {
            self.next_stats = Some(now + self.config.stats_interval);
            self.publish_stats(now);
        }
        self.pump(now);
        self.flush();
    }

    /// Stops accepting connections, says Goodbye to every client and closes them.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.send_frame(
                id,
                Body::Goodbye(pb::Goodbye {
                    reason: "broker shutting down".into(),
                }),
            );
            self.close(now, id, CloseReason::Shutdown);
        }
        self.flush();
    }

    /// The next thing the driver must do, if any. Drain until `None` after every `handle_*`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline and what it is for: a handshake, frame or keepalive timeout, a
    /// durable expiry or the stats interval.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        use crate::time::earlier;
        let hb = self.config.heartbeat_interval;
        let mut next = self.next_stats.map(|at| (at, Timer::Stats));
        for (&id, c) in &self.conns {
            if let Some(started) = c.frame_started {
                next = earlier(
                    next,
                    Some((started + self.config.frame_timeout, Timer::Frame(id))),
                );
            }
            let t = match c.phase {
                Phase::Handshaking { deadline } => (deadline, Timer::Handshake(id)),
                Phase::Open => {
                    let idle = c.last_recv + hb * 3;
                    let ping = (c.last_recv + hb).max(c.last_ping + hb);
                    (idle.min(ping), Timer::Keepalive(id))
                }
            };
            next = earlier(next, Some(t));
        }
        for s in self.subs.values() {
            if let Some(t) = s.detached_at {
                next = earlier(
                    next,
                    Some((t + self.config.durable_expiry, Timer::DurableExpiry(s.key))),
                );
            }
        }
        next
    }

    // ----- frames in -----

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

    fn protocol_error(&mut self, now: Instant, conn: ConnId, code: pb::ErrorCode, message: String) {
        self.send_error(conn, code, message.clone(), 0, pb::AnswerKind::Connection);
        self.close(now, conn, CloseReason::Protocol(message));
    }

    fn refuse(&mut self, now: Instant, conn: ConnId, code: pb::ErrorCode, message: String) {
        self.send_error(conn, code, message.clone(), 0, pb::AnswerKind::Connection);
        self.close(now, conn, CloseReason::Refused(message));
    }

    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: pb::Frame) {
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

    /// A client's Goodbye: a clean close. What the broker still holds for the connection
    /// (publishes stalled behind a full Block queue) is routed first; no further frame is
    /// read; then the broker answers Goodbye and closes.
    fn handle_goodbye(&mut self, now: Instant, conn: ConnId) {
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
    fn end_subscriptions(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let keys: Vec<u64> = std::mem::take(&mut c.subs).into_values().collect();
        c.unacked.clear();
        for key in &keys {
            self.requeue_unacked(*key);
        }
        for key in keys {
            match self.subs.get_mut(&key) {
                Some(s) if s.durable.is_some() => {
                    s.owner = None;
                    s.detached_at = Some(now);
                    s.blocked.retain(|b| *b != conn);
                }
                Some(_) => self.remove_subscription(now, key, true),
                None => {}
            }
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

    fn handle_hello(&mut self, now: Instant, conn: ConnId, hello: Hello) {
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
    }

    // ----- frames out -----

    fn send_frame(&mut self, conn: ConnId, body: Body) {
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

    fn send_error(
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
    fn flush(&mut self) {
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
    fn close(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.dirty.insert(conn);
        self.flush();
        self.remove_conn(now, conn);
        self.outputs.push_back(Output::Close { conn, reason });
    }

    fn remove_conn(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
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
            let durable = self.subs.get(&key).is_some_and(|s| s.durable.is_some());
            if durable {
                if let Some(s) = self.subs.get_mut(&key) {
                    s.owner = None;
                    s.detached_at = Some(now);
                    s.blocked.retain(|b| *b != conn);
                }
            } else {
                self.remove_subscription(now, key, true);
            }
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
