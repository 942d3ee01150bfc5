//! When a client dials its broker again after losing it, and when it stops trying.
//!
//! The rule behind [`ClientSession::reconnect`](super::ClientSession::reconnect): a lost
//! connection is retried after an exponential backoff (with optional jitter from a seeded
//! RNG), unless the owner closed the session, reconnecting is off, or the broker refused the
//! client for good. The driver only sleeps until the instant given here and dials.

use std::time::Duration;

use daemoneye_proto::FrameError;
use daemoneye_proto::frame::ErrorFrame;
use daemoneye_proto::frame::ProtocolError;
use daemoneye_proto::pb::bus::ErrorCode;

use crate::Instant;
use crate::rng::SeededRng;

/// How a session comes back after losing its broker.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// The wait before the first dial after a lost connection.
    pub backoff_initial: Duration,
    /// The longest wait: each failed dial doubles the wait up to this.
    pub backoff_max: Duration,
    /// The fraction of each wait drawn at random, in `0.0..=1.0`: a wait `w` becomes uniform
    /// in `[w * (1 - jitter), w]`, so that the clients of a restarted broker do not all dial
    /// at the same instant. `0.0` waits exactly the doubling backoff.
    pub jitter: f64,
    /// Seeds the jitter: the same seed draws the same waits.
    pub seed: u64,
}

impl Default for ReconnectPolicy {
    /// 100 ms doubling to 5 s, no jitter.
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            jitter: 0.0,
            seed: 0,
        }
    }
}

/// The waits between dials: exponential, capped, jittered, reset by a successful dial.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ReconnectPolicy,
    rng: SeededRng,
    /// Waits since the last successful dial.
    failures: u32,
}

impl Backoff {
    /// The backoff of `policy`, from its first wait.
    pub fn new(policy: ReconnectPolicy) -> Self {
        let rng = SeededRng::new(policy.seed);
        Self {
            policy,
            rng,
            failures: 0,
        }
    }

    /// A dial succeeded: the next wait is the initial one again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The next wait; each call doubles the one after it, up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let cap = self
            .policy
            .backoff_initial
            .saturating_mul(2u32.saturating_pow(self.failures))
            .min(self.policy.backoff_max);
        self.failures = self.failures.saturating_add(1);
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return cap;
        }
        cap.mul_f64(1.0 - jitter * self.rng.unit())
    }
}

/// Why a connection to the broker ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    /// The broker closed the stream.
    #[error("broker closed the connection")]
    BrokerClosed,
    /// Reading from the transport failed (the OS error).
    #[error("read failed: {0}")]
    ReadFailed(String),
    /// Writing to the transport failed (the OS error).
    #[error("write failed: {0}")]
    WriteFailed(String),
    /// The broker sent nothing for three heartbeat intervals.
    #[error("no traffic from the broker for three heartbeat intervals")]
    BrokerSilent,
    /// The broker did not answer our Goodbye within the close timeout.
    #[error("the broker did not answer our Goodbye within the close timeout")]
    GoodbyeUnanswered,
    /// The broker's bytes are not a valid sequence of frames.
    #[error("framing error from broker: {0}")]
    Framing(FrameError),
    /// The broker sent a frame that is not a valid server message.
    #[error("invalid frame from broker: {0}")]
    InvalidFrame(ProtocolError),
    /// The broker said Goodbye, with its reason.
    #[error("broker said goodbye: {0}")]
    Goodbye(String),
    /// The driver's own account (a simulated fault, for one).
    #[error("{0}")]
    Driver(String),
}

impl From<&str> for Disconnect {
    fn from(reason: &str) -> Self {
        Disconnect::Driver(reason.to_string())
    }
}

impl From<String> for Disconnect {
    fn from(reason: String) -> Self {
        Disconnect::Driver(reason)
    }
}

/// Why a session will not dial its broker again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUp {
    /// The owner closed the session.
    Closed,
    /// The session's config turns reconnecting off.
    Disabled,
    /// The broker refused the client in a way another attempt would not change (a version
    /// or permission refusal, or any refusal of the first handshake).
    Refused(ErrorFrame),
}

/// What a session without a transport does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconnect {
    /// Dial the broker at this instant (the session's `poll_timeout` says
    /// [`Timer::Reconnect`](super::Timer::Reconnect)); then `connect` once the transport is
    /// up, or `handle_dial_failed`.
    At(Instant),
    /// Never again.
    GiveUp(GiveUp),
}

/// Whether a broker refusal that answers the connection (not one publish or subscription)
/// still leaves another connection worth trying. The first handshake's refusal is always
/// the answer to the caller; after it, a broker that went away or shed us (idle, slow,
/// memory, too many connections) is worth dialing again.
pub(crate) fn refusal_is_final(code: ErrorCode, welcomed_before: bool) -> bool {
    let transient = matches!(
        code,
        ErrorCode::IdleTimeout
            | ErrorCode::ShuttingDown
            | ErrorCode::SlowConsumer
            | ErrorCode::MemoryLimit
            | ErrorCode::HandshakeTimeout
            | ErrorCode::TooManyConnections
    );
    !welcomed_before || !transient
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_jitter_the_waits_double_from_the_initial_to_the_cap_and_reset() {
        let mut b = Backoff::new(ReconnectPolicy::default());
        let waits: Vec<_> = (0..8).map(|_| b.next_wait()).collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        b.reset();
        assert_eq!(b.next_wait(), ms(100));
    }

    #[test]
    fn a_long_outage_never_overflows_the_wait() {
        let mut b = Backoff::new(ReconnectPolicy::default());
        for _ in 0..200 {
            assert!(b.next_wait() <= ms(5000));
        }
    }

    #[test]
    fn only_transient_refusals_after_a_welcome_are_worth_another_dial() {
        assert!(!refusal_is_final(ErrorCode::ShuttingDown, true));
        assert!(!refusal_is_final(ErrorCode::TooManyConnections, true));
        assert!(refusal_is_final(ErrorCode::TooManyConnections, false));
        assert!(refusal_is_final(ErrorCode::VersionMismatch, true));
        assert!(refusal_is_final(ErrorCode::PermissionDenied, true));
        assert!(refusal_is_final(ErrorCode::Protocol, true));
    }

    #[test]
    fn a_driver_reason_reads_as_given() {
        assert_eq!(Disconnect::from("broker crash").to_string(), "broker crash");
        assert_eq!(
            Disconnect::BrokerClosed.to_string(),
            "broker closed the connection"
        );
    }
}
