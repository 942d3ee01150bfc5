//! What can go wrong in a command, each said in one line on stderr.

use daemoneye_core::topic::TopicError;
use daemoneye_io::client::ClientError;
use daemoneye_proto::frame::ProtocolError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A topic name does not parse.
    #[error("invalid topic {topic:?}: {source}")]
    InvalidTopic {
        /// The text given.
        topic: String,
        /// Why.
        source: TopicError,
    },
    /// A topic filter does not parse.
    #[error("invalid filter {filter:?}: {source}")]
    InvalidFilter {
        /// The text given.
        filter: String,
        /// Why.
        source: TopicError,
    },
    /// A name flag (queue group) is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] ProtocolError),
    /// A flag's value is out of its range.
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// A number of seconds that is not a duration.
    #[error("invalid duration {0} seconds")]
    InvalidDuration(f64),
    /// The broker connection failed or refused something.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent's process manager did not answer a lifecycle request.
    #[error("no answer from the agent's process manager: {0}")]
    NoLifecycleAnswer(#[source] ClientError),
    /// The agent did not answer a health request.
    #[error("no health report from the agent: {0}")]
    NoHealthReport(#[source] ClientError),
    /// A reply does not decode.
    #[error("malformed {what} reply: {source}")]
    MalformedReply {
        /// What the reply was.
        what: &'static str,
        /// Why.
        source: prost::DecodeError,
    },
    /// The agent refused a request; its message says why.
    #[error("{0}")]
    Refused(String),
    /// The broker closed the connection while we waited.
    #[error("connection to the broker closed")]
    Closed,
    /// Reading standard input or writing standard output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON output could not be written.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Nobody answered a request: with the agent's age when it had just started.
    #[error("{source}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NoResponders {
        /// The client's error.
        source: ClientError,
        /// What might explain it.
        hint: Option<String>,
    },
    /// A QoS1 `pub` could not confirm every copy: dropped, or no PubAck in time.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// The agent answered `health` with a state other than healthy.
    #[error("agent is {state}")]
    NotHealthy {
        /// The state's name.
        state: &'static str,
        /// The exit status for it.
        code: u8,
    },
    /// A `--since` or `--until` that is neither a duration nor a time.
    #[error("{flag} {value:?}: not a duration (10m, 2h, 7d) or a time (2026-12-01T05:00:00Z)")]
    InvalidTime {
        /// The flag.
        flag: &'static str,
        /// The text given.
        value: String,
    },
    /// The event store file could not be read.
    #[error(transparent)]
    Store(#[from] daemoneye_io::store::StoreError),
    /// No agent to ask and no store file to read.
    #[error(
        "no agent answers on {} ({why}) and there is no event store at {}: start the agent, or name the file with --database",
        socket.display(),
        database.display()
    )]
    NoStore {
        /// The socket tried.
        socket: std::path::PathBuf,
        /// Why the connection failed.
        why: String,
        /// The default store path looked for.
        database: std::path::PathBuf,
    },
    /// The agent runs but does not answer event queries.
    #[error("the agent does not answer event queries (is its [store] disabled?): {0}")]
    NoEventStore(String),
    /// A benchmark task panicked or was cancelled.
    #[error("benchmark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Exit status on a usage error (the same as the argument parser's).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when a QoS1 `pub` could not confirm every copy.
pub const EXIT_NOT_DELIVERED: u8 = 3;
/// `health`: the agent is degraded.
pub const EXIT_DEGRADED: u8 = 3;
/// `health`: the agent is unhealthy (or said nothing this version knows).
pub const EXIT_UNHEALTHY: u8 = 4;

impl CliError {
    /// The process's exit status for this error: 1 unless a command documents another.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::InvalidArgument(_)
            | CliError::InvalidDuration(_)
            | CliError::InvalidTime { .. } => EXIT_USAGE,
            CliError::NotDelivered(_) => EXIT_NOT_DELIVERED,
            CliError::NotHealthy { code, .. } => *code,
            _ => 1,
        }
    }
}
