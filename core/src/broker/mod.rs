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
//!
//! # Where each concern lives
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the public types, the [`Broker`] struct and its constructor |
//! | `config.rs` | [`BrokerConfig`]: limits and defaults (the canary behind the `canary` feature) |
//! | `connection.rs` | a connection's lifecycle: connect, Hello, limits and reserved slots, Goodbye, close |
//! | `frames.rs` | bytes in: decoding, each frame handled whole and in order, end of stream |
//! | `timers.rs` | [`Timer`], `poll_timeout` and `handle_timeout` (handshake, keepalive, frame, durable expiry, stats) |
//! | `deadlines.rs` | `Deadlines`: the structure behind `poll_timeout`, with lazy re-arming |
//! | `subscribe.rs` | subscriptions: create, resume, unsubscribe, remove, hand-over within a group; `SubscribeRefusal` |
//! | `durable.rs` | durable subscriptions' definitions across restarts |
//! | `publish.rs` | publish admission (`PublishRefusal`), stalls on a full Block queue or the budget, waking stalled publishers, SlowDown |
//! | `route.rs` | fan-out of one publish: targets, the max-frame bound, resends a group has, a copy offered to each queue |
//! | `group.rs` | `QueueGroup` and its `pick`: round robin, least loaded, random (a new strategy goes here) |
//! | `overflow.rs` | `admit`: what a full queue does with a new copy, as an `Admission` (a new overflow strategy goes here) |
//! | `queue.rs` | a subscription's bounded queue: priority lanes, FIFO within a lane |
//! | `budget.rs` | `MemoryBudget` and each message's count of the copies held |
//! | `puback.rs` | `PubAckLedger`: which QoS1 publishes await how many copies, and the PubAck each is owed |
//! | `dedup.rs` | exactly-once hand-out of QoS1 resends to queue groups |
//! | `deliver.rs` | delivery within each connection's write window, acks, releasing copies |
//! | `wire.rs` | the hand-written Deliver encoder and its size bounds |
//! | `report.rs`, `stats.rs`, `introspect.rs` | `$sys` stats and health, counters, read-only queries |

mod budget;
mod config;
mod connection;
mod deadlines;
mod dedup;
mod deliver;
mod durable;
mod frames;
mod group;
mod introspect;
mod overflow;
mod puback;
mod publish;
mod queue;
mod report;
mod route;
pub mod stats;
mod subscribe;
mod timers;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use daemoneye_proto::frame::{Overflow, QoS};
use daemoneye_proto::pb::bus as pb;

use crate::Instant;
use crate::acl::Acl;
use crate::index::SubscriptionIndex;
use crate::rng::SeededRng;
use crate::topic::TopicName;

use budget::{Copies, MemoryBudget};
pub use config::BrokerConfig;
use connection::Connection;
use deadlines::Deadlines;
pub use durable::{DurableDefinition, RestoreError};
use group::QueueGroup;
use puback::PubAckLedger;
use stats::{Counters, LatencyHistogram, TopicCounters};
use subscribe::Subscription;
pub use timers::Timer;
use timers::TimerKey;

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
    /// Copies held by subscriptions (queued or unacknowledged), counted by the budget.
    pub copies: Copies,
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
    groups: BTreeMap<Arc<str>, QueueGroup>,
    durables: BTreeMap<(u32, String), u64>,
    /// Bumped whenever a durable subscription is created or removed.
    durables_generation: u64,
    /// QoS1 publishes waiting for their PubAck.
    pubacks: PubAckLedger,
    /// QoS1 group hand-outs, so that a publisher's resend reaches each group once.
    dedup: dedup::GroupDedup,
    /// Connections stalled on the memory budget.
    budget_blocked: BTreeSet<ConnId>,
    /// Connections counted against `max_connections`.
    ordinary_conns: usize,
    /// Connections in a reserved agent slot.
    reserved_conns: usize,
    budget: MemoryBudget,
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
    /// Every connection's and detached durable subscription's next deadline.
    deadlines: Deadlines<TimerKey>,
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
    /// Reused by routing: the queue groups one publish matched, each once.
    groups_seen: Vec<Arc<str>>,
}

impl Broker {
    /// A broker with `config`, deciding access with `acl`, drawing queue-group randomness
    /// from `seed`.
    pub fn new(config: BrokerConfig, acl: Acl, seed: u64) -> Self {
        Self {
            budget: MemoryBudget::new(config.memory_budget),
            dedup: dedup::GroupDedup::new(config.group_dedup_window),
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
            pubacks: PubAckLedger::default(),
            budget_blocked: BTreeSet::new(),
            ordinary_conns: 0,
            reserved_conns: 0,
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
            deadlines: Deadlines::default(),
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
            groups_seen: Vec::new(),
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

    /// Stops accepting connections, says Goodbye to every client and closes them.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.send_frame(
                id,
                pb::frame::Body::Goodbye(pb::Goodbye {
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
}
