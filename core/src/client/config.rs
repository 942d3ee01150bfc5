//! What a client session is given and what it gives back: its identity and settings
//! ([`ClientConfig`]), the events the application sees ([`ClientEvent`]), how a
//! subscription acknowledges ([`AckMode`]) and why a call is refused ([`SessionError`]).

use daemoneye_proto::EncodeError;
use daemoneye_proto::frame::{CollectorIdentity, Deliver, ErrorFrame, Role};
use daemoneye_proto::pb::bus as pb;

use super::ReconnectPolicy;

/// Who the client says it is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name for the broker's logs and stats.
    pub client_name: String,
    /// Stable publisher id (defaults to the client name); must survive restarts for
    /// deduplication of re-sent QoS1 messages to work.
    pub publisher_id: Option<String>,
    /// Role.
    pub role: Role,
    /// Collector identity, for collectors.
    pub collector: Option<CollectorIdentity>,
    /// Largest frame accepted.
    pub max_frame: u32,
    /// Sequences remembered per (subscription, publisher) for deduplication.
    pub dedup_window: usize,
    /// How to come back after losing the broker; `None` gives up at the first loss.
    pub reconnect: Option<ReconnectPolicy>,
}

impl ClientConfig {
    /// A plain client named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            client_name: name.into(),
            publisher_id: None,
            role: Role::Client,
            collector: None,
            max_frame: daemoneye_proto::DEFAULT_MAX_FRAME,
            dedup_window: 4096,
            reconnect: Some(ReconnectPolicy::default()),
        }
    }
}

/// Something the application should know.
// Events are drained as they come, so boxing the large Message variant would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Handshake done.
    Connected {
        /// The broker's session id.
        session_id: u64,
    },
    /// The broker accepted a subscription.
    Subscribed {
        /// The subscription.
        sub_id: u64,
        /// Messages waiting for a resumed durable subscription.
        backlog: u64,
    },
    /// A message (QoS1 ones already deduplicated; ack them with
    /// [`ClientSession::ack`](super::ClientSession::ack)).
    Message(Deliver),
    /// A QoS1 publish is resolved.
    PubAck {
        /// Its sequence.
        sequence: u64,
        /// Subscriptions that acked it.
        delivered: u32,
        /// Subscriptions that dropped it.
        dropped: u32,
        /// Nobody subscribed.
        no_interest: bool,
    },
    /// The broker refused something.
    Error(ErrorFrame),
    /// The broker asks to slow down, or stopped / resumed reading us.
    Backpressure {
        /// How urgent.
        level: pb::BackpressureLevel,
        /// Why.
        reason: String,
    },
    /// A subscription lost messages to its overflow strategy.
    Dropped {
        /// The subscription.
        sub_id: u64,
        /// Lost since the last notice.
        count: u64,
        /// Lost in all.
        total: u64,
    },
    /// The connection is over (protocol error, Goodbye, or the driver's disconnect).
    Closed {
        /// Why.
        reason: String,
    },
}

/// Why a session refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A QoS0 publish needs a live connection (QoS1 ones wait for the reconnect).
    #[error("not connected to the broker")]
    NotConnected,
    /// The frame would exceed the broker's maximum.
    #[error("message too large: {0}")]
    TooLarge(EncodeError),
    /// No such subscription.
    #[error("no subscription with id {0}")]
    UnknownSubscription(u64),
    /// A caller-sequenced publish needs a non-zero sequence and QoS1.
    #[error("a sequenced publish needs a non-zero sequence and QoS1")]
    Unsequenced,
}

/// When a subscription's QoS1 deliveries are acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Only when the application calls [`ClientSession::ack`](super::ClientSession::ack)
    /// (the default).
    #[default]
    Manual,
    /// As soon as the driver hands the message to the application
    /// ([`ClientSession::handed_over`](super::ClientSession::handed_over)).
    OnHandOver,
}
