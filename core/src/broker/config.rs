//! The broker's limits and defaults: everything an operator can tune, in one struct.

use std::time::Duration;

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
    /// as delivered the moment they are queued, so PubAcks go out before delivery. Only
    /// with the `canary` feature, which only the simulator enables.
    #[cfg(feature = "canary")]
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
            #[cfg(feature = "canary")]
            canary_early_puback: false,
        }
    }
}

impl BrokerConfig {
    /// Whether the early-PubAck canary is on (never without the `canary` feature).
    pub(super) fn early_puback_canary(&self) -> bool {
        #[cfg(feature = "canary")]
        return self.canary_early_puback;
        #[cfg(not(feature = "canary"))]
        false
    }
}
