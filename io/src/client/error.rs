//! Why a client call failed: the broker's refusals and the session's own, with their kinds
//! kept ([`ClientError`]), and why a connection is gone for good ([`ClosedReason`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use daemoneye_core::client::{Disconnect, SessionError};
use daemoneye_proto::EncodeError;
use daemoneye_proto::frame::ErrorFrame;
use daemoneye_proto::pb::bus::ErrorCode;

/// Why a client call failed. Each message is one line an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket path.
    #[error("no broker at {path}: {source}")]
    NoBroker {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The broker refused an operation or the connection for lack of permission.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A topic or filter breaks a rule.
    #[error("{0}")]
    InvalidTopic(String),
    /// Any other refusal from the broker.
    #[error("broker error ({code:?}): {message}")]
    Broker {
        /// Stable code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The message does not fit in one frame of the size the broker accepts; nothing was
    /// sent.
    #[error("message too large: {0}")]
    TooLarge(EncodeError),
    /// A QoS0 publish needs a live connection (QoS1 ones wait for the reconnect).
    #[error("not connected to the broker")]
    NotConnected,
    /// No such subscription.
    #[error("no subscription with id {0}")]
    UnknownSubscription(u64),
    /// A caller-sequenced publish needs a non-zero sequence and QoS1.
    #[error("a sequenced publish needs a non-zero sequence and QoS1")]
    Unsequenced,
    /// The operation did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A QoS1 request found nobody subscribed to its topic until the deadline.
    #[error("no responders on {topic} within {waited:?}")]
    NoResponders {
        /// The request topic.
        topic: String,
        /// How long it kept trying.
        waited: Duration,
    },
    /// The connection closed and will not come back.
    #[error("connection closed: {0}")]
    Closed(ClosedReason),
}

impl From<ErrorFrame> for ClientError {
    fn from(e: ErrorFrame) -> Self {
        match e.code {
            ErrorCode::PermissionDenied => ClientError::PermissionDenied(e.message),
            ErrorCode::InvalidTopic | ErrorCode::InvalidFilter => {
                ClientError::InvalidTopic(e.message)
            }
            code => ClientError::Broker {
                code,
                message: e.message,
            },
        }
    }
}

impl From<SessionError> for ClientError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotConnected => ClientError::NotConnected,
            SessionError::TooLarge(e) => ClientError::TooLarge(e),
            SessionError::UnknownSubscription(id) => ClientError::UnknownSubscription(id),
            SessionError::Unsequenced => ClientError::Unsequenced,
        }
    }
}

impl From<ClosedReason> for ClientError {
    fn from(reason: ClosedReason) -> Self {
        ClientError::Closed(reason)
    }
}

/// Why a client's connection is gone for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClosedReason {
    /// The application closed (or dropped) the client.
    #[error("client closed")]
    ClientClosed,
    /// A close has begun: no new operations.
    #[error("client closing")]
    Closing,
    /// The connection task went away without answering.
    #[error("client stopped")]
    Stopped,
    /// The first connection ended before the broker welcomed the client.
    #[error("connection ended during the handshake")]
    HandshakeEnded,
    /// A request's reply could not come: the connection is gone.
    #[error("connection closed while waiting for the reply")]
    ReplyLost,
    /// The broker refused the client in a way another connection would not change.
    #[error("{}", ClientError::from(.0.clone()))]
    Refused(ErrorFrame),
    /// The connection ended and the client does not reconnect.
    #[error(transparent)]
    Lost(Disconnect),
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_proto::pb::bus::AnswerKind;

    #[test]
    fn a_session_refusal_keeps_its_kind() {
        let too_large = EncodeError::TooLarge { len: 10, max: 5 };
        assert!(matches!(
            ClientError::from(SessionError::TooLarge(too_large.clone())),
            ClientError::TooLarge(e) if e == too_large
        ));
        assert!(matches!(
            ClientError::from(SessionError::NotConnected),
            ClientError::NotConnected
        ));
    }

    #[test]
    fn a_final_refusal_reads_like_the_refusal_itself() {
        let frame = ErrorFrame {
            code: ErrorCode::PermissionDenied,
            message: "uid 5 may not connect".into(),
            answers: 0,
            answers_kind: AnswerKind::Connection,
        };
        assert_eq!(
            ClientError::Closed(ClosedReason::Refused(frame)).to_string(),
            "connection closed: permission denied: uid 5 may not connect"
        );
        assert_eq!(
            ClientError::Closed(ClosedReason::Lost(Disconnect::BrokerClosed)).to_string(),
            "connection closed: broker closed the connection"
        );
    }
}
