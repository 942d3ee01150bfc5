//! Validated domain types for frames.
//!
//! The broker only ever sees a [`ClientFrame`] and a client only a [`ServerFrame`]; both are
//! built with `TryFrom<pb::Frame>`, which rejects a frame sent in the wrong direction, an
//! unknown enum value, a reserved id of 0, an empty or oversized name, and a combination the
//! protocol forbids (a durable QoS0 subscription, a collector without an id). Topic names and
//! filters stay strings here: their grammar is owned by `daemoneye_core::topic`.

use bytes::Bytes;

use crate::pb::bus::{self as pb, frame::Body};

/// Longest client name, publisher id, collector id, queue group or durable name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Highest message priority.
pub const MAX_PRIORITY: u32 = 255;

/// Why a decoded frame is not a valid protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame kind is not one this side of the connection may receive.
    #[error("a {kind} frame is not valid from a {sender}")]
    WrongDirection {
        /// The frame kind.
        kind: &'static str,
        /// "client" or "broker".
        sender: &'static str,
    },
    /// An enum field carries a value this version does not know.
    #[error("{field} has unknown value {value}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// A name field is empty, whitespace only, too long or has control characters.
    #[error("{field} {reason}")]
    InvalidName {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An id field holds the reserved value 0.
    #[error("{field} must not be 0")]
    ZeroId {
        /// The field.
        field: &'static str,
    },
    /// A durable subscription must be QoS1.
    #[error("a durable subscription must use QoS 1")]
    DurableNeedsQos1,
    /// A collector's Hello must name its id and type.
    #[error("a collector's Hello must set collector_id and collector_type")]
    CollectorIdentityMissing,
    /// A priority above [`MAX_PRIORITY`].
    #[error("priority {0} is above the maximum of 255")]
    PriorityTooHigh(u32),
}

/// Checks a name: non-empty, not only whitespace, at most [`MAX_NAME_LEN`] bytes, and free of
/// control characters.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), ProtocolError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.trim().is_empty() {
        "must not be only whitespace"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than 256 bytes"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(ProtocolError::InvalidName { field, reason })
}

fn optional_name(field: &'static str, name: String) -> Result<Option<String>, ProtocolError> {
    if name.is_empty() {
        return Ok(None);
    }
    validate_name(field, &name)?;
    Ok(Some(name))
}

fn nonzero(field: &'static str, id: u64) -> Result<u64, ProtocolError> {
    if id == 0 {
        Err(ProtocolError::ZeroId { field })
    } else {
        Ok(id)
    }
}

/// What kind of peer a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A plain client.
    Client,
    /// A collector process.
    Collector,
    /// The agent's own connection.
    Agent,
}

impl Role {
    /// The wire value.
    pub fn to_pb(self) -> pb::Role {
        match self {
            Role::Client => pb::Role::Client,
            Role::Collector => pb::Role::Collector,
            Role::Agent => pb::Role::Agent,
        }
    }
}

/// Delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce,
    /// At least once, with acks and redelivery.
    AtLeastOnce,
}

impl QoS {
    fn from_pb(field: &'static str, value: i32) -> Result<Self, ProtocolError> {
        match pb::Qos::try_from(value) {
            Ok(pb::Qos::AtMostOnce) => Ok(QoS::AtMostOnce),
            Ok(pb::Qos::AtLeastOnce) => Ok(QoS::AtLeastOnce),
            Err(_) => Err(ProtocolError::UnknownEnum { field, value }),
        }
    }
    /// The wire value.
    pub fn to_pb(self) -> pb::Qos {
        match self {
            QoS::AtMostOnce => pb::Qos::AtMostOnce,
            QoS::AtLeastOnce => pb::Qos::AtLeastOnce,
        }
    }
}

/// How a queue group picks the member that gets a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QueueStrategy {
    /// Exact rotation.
    #[default]
    RoundRobin,
    /// Fewest queued plus unacknowledged.
    LeastLoaded,
    /// Uniform, from the broker's seeded RNG.
    Random,
}

impl QueueStrategy {
    /// The wire value.
    pub fn to_pb(self) -> pb::QueueStrategy {
        match self {
            QueueStrategy::RoundRobin => pb::QueueStrategy::RoundRobin,
            QueueStrategy::LeastLoaded => pb::QueueStrategy::LeastLoaded,
            QueueStrategy::Random => pb::QueueStrategy::Random,
        }
    }
}

/// What a full subscription queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Overflow {
    /// Stop reading the publishers that feed it; nothing is lost.
    Block,
    /// Drop the oldest queued message to make room.
    DropOldest,
    /// Drop the new message.
    DropNewest,
    /// Drop the new message and send the publisher an Error naming the subscription.
    Error,
}

impl Overflow {
    /// The wire value.
    pub fn to_pb(self) -> pb::OverflowStrategy {
        match self {
            Overflow::Block => pb::OverflowStrategy::Block,
            Overflow::DropOldest => pb::OverflowStrategy::DropOldest,
            Overflow::DropNewest => pb::OverflowStrategy::DropNewest,
            Overflow::Error => pb::OverflowStrategy::Error,
        }
    }
    fn from_pb(value: i32) -> Result<Option<Self>, ProtocolError> {
        match pb::OverflowStrategy::try_from(value) {
            Ok(pb::OverflowStrategy::Default) => Ok(None),
            Ok(pb::OverflowStrategy::Block) => Ok(Some(Overflow::Block)),
            Ok(pb::OverflowStrategy::DropOldest) => Ok(Some(Overflow::DropOldest)),
            Ok(pb::OverflowStrategy::DropNewest) => Ok(Some(Overflow::DropNewest)),
            Ok(pb::OverflowStrategy::Error) => Ok(Some(Overflow::Error)),
            Err(_) => Err(ProtocolError::UnknownEnum {
                field: "overflow",
                value,
            }),
        }
    }
}

/// A collector's identity, declared in its Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorIdentity {
    /// Unique collector id, e.g. `procmond`.
    pub id: String,
    /// Collector type, e.g. `process`.
    pub kind: String,
    /// SourceCaps bits.
    pub capabilities: u32,
}

/// A validated Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The client's protocol version (checked against ours by the broker).
    pub protocol_version: u32,
    /// Free-form client name for logs and stats.
    pub client_name: String,
    /// The peer's role.
    pub role: Role,
    /// Stable publisher id for QoS1 deduplication (defaults to the client name).
    pub publisher_id: String,
    /// Set for collectors.
    pub collector: Option<CollectorIdentity>,
}

impl TryFrom<pb::Hello> for Hello {
    type Error = ProtocolError;
    fn try_from(h: pb::Hello) -> Result<Self, ProtocolError> {
        let role = match pb::Role::try_from(h.role) {
            Ok(pb::Role::Unspecified) | Ok(pb::Role::Client) => Role::Client,
            Ok(pb::Role::Collector) => Role::Collector,
            Ok(pb::Role::Agent) => Role::Agent,
            Err(_) => {
                return Err(ProtocolError::UnknownEnum {
                    field: "role",
                    value: h.role,
                });
            }
        };
        validate_name("client_name", &h.client_name)?;
        let publisher_id = match optional_name("publisher_id", h.publisher_id)? {
            Some(id) => id,
            None => h.client_name.clone(),
        };
        let collector = match role {
            Role::Collector => {
                if h.collector_id.is_empty() || h.collector_type.is_empty() {
                    return Err(ProtocolError::CollectorIdentityMissing);
                }
                validate_name("collector_id", &h.collector_id)?;
                validate_name("collector_type", &h.collector_type)?;
                Some(CollectorIdentity {
                    id: h.collector_id,
                    kind: h.collector_type,
                    capabilities: h.capabilities,
                })
            }
            _ => None,
        };
        Ok(Hello {
            protocol_version: h.protocol_version,
            client_name: h.client_name,
            role,
            publisher_id,
            collector,
        })
    }
}

impl From<Hello> for pb::Hello {
    fn from(h: Hello) -> Self {
        let (collector_id, collector_type, capabilities) = match h.collector {
            Some(c) => (c.id, c.kind, c.capabilities),
            None => (String::new(), String::new(), 0),
        };
        pb::Hello {
            protocol_version: h.protocol_version,
            client_name: h.client_name,
            role: h.role.to_pb() as i32,
            publisher_id: h.publisher_id,
            collector_id,
            collector_type,
            capabilities,
        }
    }
}

/// Queue-group membership of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name (validated with [`validate_name`]).
    pub name: String,
    /// How the group picks a member.
    pub strategy: QueueStrategy,
}

/// A validated Subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Client-chosen id, never 0.
    pub sub_id: u64,
    /// The topic filter text (parsed by the core).
    pub filter: String,
    /// Queue-group membership.
    pub group: Option<GroupSpec>,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Queue capacity; `None` for the broker default.
    pub capacity: Option<u32>,
    /// Overflow strategy; `None` for the broker default (Block for QoS1).
    pub overflow: Option<Overflow>,
    /// Durable name (QoS1 only).
    pub durable_name: Option<String>,
}

impl Subscribe {
    /// A plain QoS0 subscription to `filter` with the broker's default capacity and
    /// overflow strategy; the client assigns `sub_id`.
    pub fn new(filter: impl Into<String>) -> Self {
        Subscribe {
            sub_id: 0,
            filter: filter.into(),
            group: None,
            qos: QoS::AtMostOnce,
            capacity: None,
            overflow: None,
            durable_name: None,
        }
    }
}

impl TryFrom<pb::Subscribe> for Subscribe {
    type Error = ProtocolError;
    fn try_from(s: pb::Subscribe) -> Result<Self, ProtocolError> {
        let sub_id = nonzero("sub_id", s.sub_id)?;
        let strategy = match pb::QueueStrategy::try_from(s.strategy) {
            Ok(pb::QueueStrategy::RoundRobin) => QueueStrategy::RoundRobin,
            Ok(pb::QueueStrategy::LeastLoaded) => QueueStrategy::LeastLoaded,
            Ok(pb::QueueStrategy::Random) => QueueStrategy::Random,
            Err(_) => {
                return Err(ProtocolError::UnknownEnum {
                    field: "strategy",
                    value: s.strategy,
                });
            }
        };
        let group =
            optional_name("queue_group", s.queue_group)?.map(|name| GroupSpec { name, strategy });
        let qos = QoS::from_pb("qos", s.qos)?;
        let overflow = Overflow::from_pb(s.overflow)?;
        let durable_name = optional_name("durable_name", s.durable_name)?;
        if durable_name.is_some() && qos != QoS::AtLeastOnce {
            return Err(ProtocolError::DurableNeedsQos1);
        }
        Ok(Subscribe {
            sub_id,
            filter: s.filter,
            group,
            qos,
            capacity: (s.capacity != 0).then_some(s.capacity),
            overflow,
            durable_name,
        })
    }
}

impl From<Subscribe> for pb::Subscribe {
    fn from(s: Subscribe) -> Self {
        let (queue_group, strategy) = match s.group {
            Some(g) => (g.name, g.strategy),
            None => (String::new(), QueueStrategy::RoundRobin),
        };
        pb::Subscribe {
            sub_id: s.sub_id,
            filter: s.filter,
            queue_group,
            strategy: strategy.to_pb() as i32,
            qos: s.qos.to_pb() as i32,
            capacity: s.capacity.unwrap_or(0),
            overflow: s
                .overflow
                .map_or(pb::OverflowStrategy::Default, Overflow::to_pb)
                as i32,
            durable_name: s.durable_name.unwrap_or_default(),
        }
    }
}

/// Who a direct publish is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A broker session id.
    Session(u64),
    /// A collector id from a collector's Hello.
    Collector(String),
}

/// A validated Publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The topic name text (parsed by the core).
    pub topic: String,
    /// Opaque payload.
    pub payload: Bytes,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Publisher sequence (echoed in PubAck).
    pub sequence: u64,
    /// Correlation metadata, passed through unchanged.
    pub correlation: Option<Box<pb::Correlation>>,
    /// Reply topic for request/reply.
    pub reply_to: Option<String>,
    /// 0..=255, higher first.
    pub priority: u8,
    /// Direct delivery target.
    pub target: Option<Target>,
    /// Sent again after a reconnect.
    pub resent: bool,
}

impl Publish {
    /// A publish of `payload` to `topic` at `qos`, with no metadata; the client assigns
    /// `sequence`.
    pub fn new(topic: impl Into<String>, payload: Bytes, qos: QoS) -> Self {
        Publish {
            topic: topic.into(),
            payload,
            qos,
            sequence: 0,
            correlation: None,
            reply_to: None,
            priority: 0,
            target: None,
            resent: false,
        }
    }
}

impl TryFrom<pb::Publish> for Publish {
    type Error = ProtocolError;
    fn try_from(p: pb::Publish) -> Result<Self, ProtocolError> {
        let qos = QoS::from_pb("qos", p.qos)?;
        let priority =
            u8::try_from(p.priority).map_err(|_| ProtocolError::PriorityTooHigh(p.priority))?;
        let target = match p.target {
            None => None,
            Some(pb::publish::Target::TargetSession(id)) => {
                Some(Target::Session(nonzero("target_session", id)?))
            }
            Some(pb::publish::Target::TargetCollector(id)) => {
                validate_name("target_collector", &id)?;
                Some(Target::Collector(id))
            }
        };
        Ok(Publish {
            topic: p.topic,
            payload: p.payload,
            qos,
            sequence: p.sequence,
            correlation: p.correlation,
            reply_to: (!p.reply_to.is_empty()).then_some(p.reply_to),
            priority,
            target,
            resent: p.resent,
        })
    }
}

impl From<Publish> for pb::Publish {
    fn from(p: Publish) -> Self {
        pb::Publish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos.to_pb() as i32,
            sequence: p.sequence,
            correlation: p.correlation,
            reply_to: p.reply_to.unwrap_or_default(),
            priority: u32::from(p.priority),
            target: p.target.map(|t| match t {
                Target::Session(id) => pb::publish::Target::TargetSession(id),
                Target::Collector(id) => pb::publish::Target::TargetCollector(id),
            }),
            resent: p.resent,
        }
    }
}

/// Every frame a client may send, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Handshake.
    Hello(Hello),
    /// Open a subscription.
    Subscribe(Subscribe),
    /// Close a subscription.
    Unsubscribe {
        /// The subscription.
        sub_id: u64,
    },
    /// Publish a message.
    Publish(Publish),
    /// Acknowledge a QoS1 delivery.
    Ack {
        /// The delivery.
        delivery_id: u64,
    },
    /// Keepalive probe.
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
    /// Orderly close.
    Goodbye {
        /// Why.
        reason: String,
    },
}

/// The name of a frame body, for errors and logs.
pub fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Hello(_) => "Hello",
        Body::Welcome(_) => "Welcome",
        Body::Subscribe(_) => "Subscribe",
        Body::SubAck(_) => "SubAck",
        Body::Unsubscribe(_) => "Unsubscribe",
        Body::Publish(_) => "Publish",
        Body::Deliver(_) => "Deliver",
        Body::Ack(_) => "Ack",
        Body::PubAck(_) => "PubAck",
        Body::Error(_) => "Error",
        Body::Ping(_) => "Ping",
        Body::Pong(_) => "Pong",
        Body::Backpressure(_) => "Backpressure",
        Body::Goodbye(_) => "Goodbye",
        Body::Dropped(_) => "Dropped",
    }
}

impl TryFrom<Body> for ClientFrame {
    type Error = ProtocolError;
    fn try_from(body: Body) -> Result<Self, ProtocolError> {
        Ok(match body {
            Body::Hello(h) => ClientFrame::Hello(h.try_into()?),
            Body::Subscribe(s) => ClientFrame::Subscribe(s.try_into()?),
            Body::Unsubscribe(u) => ClientFrame::Unsubscribe {
                sub_id: nonzero("sub_id", u.sub_id)?,
            },
            Body::Publish(p) => ClientFrame::Publish(p.try_into()?),
            Body::Ack(a) => ClientFrame::Ack {
                delivery_id: nonzero("delivery_id", a.delivery_id)?,
            },
            Body::Ping(p) => ClientFrame::Ping { nonce: p.nonce },
            Body::Pong(p) => ClientFrame::Pong { nonce: p.nonce },
            Body::Goodbye(g) => ClientFrame::Goodbye { reason: g.reason },
            other => {
                return Err(ProtocolError::WrongDirection {
                    kind: body_name(&other),
                    sender: "client",
                });
            }
        })
    }
}

impl From<ClientFrame> for pb::Frame {
    fn from(f: ClientFrame) -> Self {
        let body = match f {
            ClientFrame::Hello(h) => Body::Hello(h.into()),
            ClientFrame::Subscribe(s) => Body::Subscribe(s.into()),
            ClientFrame::Unsubscribe { sub_id } => Body::Unsubscribe(pb::Unsubscribe { sub_id }),
            ClientFrame::Publish(p) => Body::Publish(p.into()),
            ClientFrame::Ack { delivery_id } => Body::Ack(pb::Ack { delivery_id }),
            ClientFrame::Ping { nonce } => Body::Ping(pb::Ping { nonce }),
            ClientFrame::Pong { nonce } => Body::Pong(pb::Pong { nonce }),
            ClientFrame::Goodbye { reason } => Body::Goodbye(pb::Goodbye { reason }),
        };
        pb::Frame { body: Some(body) }
    }
}

/// A validated Deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// The subscription it is for.
    pub sub_id: u64,
    /// QoS1: the id to Ack; 0 for QoS0.
    pub delivery_id: u64,
    /// The topic it was published to.
    pub topic: String,
    /// Opaque payload.
    pub payload: Bytes,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Stable publisher id.
    pub publisher_id: String,
    /// The publisher's sequence.
    pub sequence: u64,
    /// Correlation metadata.
    pub correlation: Option<Box<pb::Correlation>>,
    /// Reply topic.
    pub reply_to: Option<String>,
    /// Priority.
    pub priority: u8,
    /// Delivered before to a subscriber that went away.
    pub redelivered: bool,
    /// The publisher's process id as the OS reported it to the broker; `None` for the
    /// broker's own messages or where the platform gives no pid.
    pub publisher_pid: Option<u32>,
    /// The publisher's uid as the OS reported it to the broker.
    pub publisher_uid: u32,
}

impl TryFrom<pb::Deliver> for Deliver {
    type Error = ProtocolError;
    fn try_from(d: pb::Deliver) -> Result<Self, ProtocolError> {
        let qos = QoS::from_pb("qos", d.qos)?;
        if qos == QoS::AtLeastOnce {
            nonzero("delivery_id", d.delivery_id)?;
        }
        let priority =
            u8::try_from(d.priority).map_err(|_| ProtocolError::PriorityTooHigh(d.priority))?;
        Ok(Deliver {
            sub_id: nonzero("sub_id", d.sub_id)?,
            delivery_id: d.delivery_id,
            topic: d.topic,
            payload: d.payload,
            qos,
            publisher_id: d.publisher_id,
            sequence: d.sequence,
            correlation: d.correlation,
            reply_to: (!d.reply_to.is_empty()).then_some(d.reply_to),
            priority,
            redelivered: d.redelivered,
            publisher_pid: (d.publisher_pid != 0).then_some(d.publisher_pid),
            publisher_uid: d.publisher_uid,
        })
    }
}

/// A broker error, as a client sees it. Unknown codes from a newer broker read as
/// `Unspecified` rather than failing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Stable error code.
    pub code: pb::ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// The sequence or subscription id it answers.
    pub answers: u64,
    /// What `answers` refers to.
    pub answers_kind: pb::AnswerKind,
}

/// Every frame a broker may send, validated.
// Frames are consumed as soon as they are decoded, never stored in bulk, so boxing the large
// Deliver variant would only add an allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// Handshake accepted.
    Welcome(pb::Welcome),
    /// Subscription accepted.
    SubAck(pb::SubAck),
    /// A message for one of our subscriptions.
    Deliver(Deliver),
    /// A QoS1 publish is resolved.
    PubAck(pb::PubAck),
    /// Something we did was refused.
    Error(ErrorFrame),
    /// Keepalive probe.
    Ping {
        /// Echo it.
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// Our Ping's nonce.
        nonce: u64,
    },
    /// Slow down (or: reading paused).
    Backpressure {
        /// How urgent.
        level: pb::BackpressureLevel,
        /// What caused it.
        reason: String,
    },
    /// The broker is closing the connection.
    Goodbye {
        /// Why.
        reason: String,
    },
    /// A subscription lost messages to its overflow strategy.
    Dropped(pb::Dropped),
}

impl TryFrom<Body> for ServerFrame {
    type Error = ProtocolError;
    fn try_from(body: Body) -> Result<Self, ProtocolError> {
        Ok(match body {
            Body::Welcome(w) => {
                nonzero("session_id", w.session_id)?;
                ServerFrame::Welcome(w)
            }
            Body::SubAck(s) => {
                nonzero("sub_id", s.sub_id)?;
                ServerFrame::SubAck(s)
            }
            Body::Deliver(d) => ServerFrame::Deliver(d.try_into()?),
            Body::PubAck(p) => ServerFrame::PubAck(p),
            Body::Error(e) => ServerFrame::Error(ErrorFrame {
                code: pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified),
                message: e.message,
                answers: e.answers,
                answers_kind: pb::AnswerKind::try_from(e.answers_kind)
                    .unwrap_or(pb::AnswerKind::Connection),
            }),
            Body::Ping(p) => ServerFrame::Ping { nonce: p.nonce },
            Body::Pong(p) => ServerFrame::Pong { nonce: p.nonce },
            Body::Backpressure(b) => ServerFrame::Backpressure {
                level: pb::BackpressureLevel::try_from(b.level).map_err(|_| {
                    ProtocolError::UnknownEnum {
                        field: "level",
                        value: b.level,
                    }
                })?,
                reason: b.reason,
            },
            Body::Goodbye(g) => ServerFrame::Goodbye { reason: g.reason },
            Body::Dropped(d) => ServerFrame::Dropped(d),
            other => {
                return Err(ProtocolError::WrongDirection {
                    kind: body_name(&other),
                    sender: "broker",
                });
            }
        })
    }
}

impl TryFrom<pb::Frame> for ClientFrame {
    type Error = ProtocolError;
    fn try_from(f: pb::Frame) -> Result<Self, ProtocolError> {
        match f.body {
            Some(body) => body.try_into(),
            // The decoder rejects body-less frames; this only guards hand-built ones.
            None => Err(ProtocolError::WrongDirection {
                kind: "empty",
                sender: "client",
            }),
        }
    }
}

impl TryFrom<pb::Frame> for ServerFrame {
    type Error = ProtocolError;
    fn try_from(f: pb::Frame) -> Result<Self, ProtocolError> {
        match f.body {
            Some(body) => body.try_into(),
            None => Err(ProtocolError::WrongDirection {
                kind: "empty",
                sender: "broker",
            }),
        }
    }
}
