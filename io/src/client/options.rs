//! How a client presents itself and behaves ([`ClientOptions`]), and what its publishes and
//! its close achieved ([`PubAck`], [`PendingAck`], [`CloseReport`]).

use std::time::Duration;

use daemoneye_core::client::{ClientConfig, ReconnectPolicy};
use tokio::sync::oneshot;

use super::{ClientError, ClosedReason};

/// How a client presents itself and behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Protocol-level identity (name, publisher id, role, collector) and the reconnect
    /// policy (`session.reconnect`: `None` ends the client at the first lost connection).
    pub session: ClientConfig,
    /// How long `connect` waits for the broker's Welcome.
    pub connect_timeout: Duration,
    /// How long a clean close waits for the broker's answer to our Goodbye (the broker
    /// first routes what it still holds of ours) before giving the connection up.
    pub close_timeout: Duration,
    /// Messages each subscription buffers between the connection and the application
    /// (at least 1). A full buffer stops the connection reading: backpressure.
    pub delivery_buffer: usize,
}

impl ClientOptions {
    /// A plain client named `name` that reconnects (100 ms doubling to 5 s, each wait
    /// jittered by up to half). Its publisher id is unique to this
    /// process (`name.pid.start-time`), so that subscribers' deduplication never mistakes two
    /// processes' messages for each other; a publisher that resends from a WAL across
    /// restarts sets a stable id in `session.publisher_id` instead. The same pair seeds the
    /// reconnect jitter, so that processes that set one do not draw the same waits.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let mut session = ClientConfig::new(name.clone());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let pid = std::process::id();
        session.publisher_id = Some(format!("{name}.{pid}.{started:x}"));
        // Half of each wait at random: the clients of a restarted agent spread their dials.
        session.reconnect = Some(ReconnectPolicy {
            jitter: 0.5,
            seed: (started as u64) ^ (u64::from(pid) << 32),
            ..ReconnectPolicy::default()
        });
        Self {
            session,
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            delivery_buffer: 256,
        }
    }
}

/// A PubAck as the publisher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// Subscriptions that acknowledged the message.
    pub delivered: u32,
    /// Subscriptions that dropped it.
    pub dropped: u32,
    /// No subscription matched.
    pub no_interest: bool,
}

/// Something that happened to a client's connection or subscriptions that its application
/// may want to tell its user (see [`Client::notices`](super::Client::notices)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The handshake completed (again, after a reconnect: its subscriptions are renewed).
    Connected {
        /// The broker's session id.
        session_id: u64,
    },
    /// The connection is over; the client reconnects if its policy says so.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A subscription of this client lost messages to its overflow strategy.
    Dropped {
        /// The subscription.
        sub_id: u64,
        /// Lost since the last notice.
        count: u64,
        /// Lost in all.
        total: u64,
    },
}

/// What a [`Client::close`](super::Client::close) achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReport {
    /// QoS1 publishes whose PubAck never came: the broker may or may not have them.
    pub unconfirmed: usize,
    /// The broker did not answer the Goodbye (nor close) within the close timeout.
    pub timed_out: bool,
}

/// The outcome of one sent publish: `None` at once for QoS0, the PubAck for QoS1.
#[derive(Debug)]
pub struct PendingAck {
    pub(super) sequence: u64,
    pub(super) rx: Option<oneshot::Receiver<Result<PubAck, ClientError>>>,
}

impl PendingAck {
    /// The publish's sequence under this client's publisher id.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Waits for the PubAck (QoS1) or returns at once (QoS0).
    pub async fn wait(self) -> Result<Option<PubAck>, ClientError> {
        match self.rx {
            None => Ok(None),
            Some(rx) => match rx.await {
                Ok(r) => r.map(Some),
                Err(_) => Err(ClosedReason::Stopped.into()),
            },
        }
    }
}
