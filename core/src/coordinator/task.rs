//! What the coordinator knows of one task: what was asked ([`TaskSpec`]), where it is
//! ([`TaskState`]), and its full record ([`Task`]).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use crate::Instant;
use crate::registry::SourceCaps;

/// A task as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskSpec {
    /// The capability a collector must have to take it (`process`, `performance`, ...).
    pub capability: String,
    /// What is wanted (the kind's meaning is the capability's).
    pub kind: String,
    /// The request (the kind's own encoding).
    pub payload: Bytes,
    /// 0..=255, higher first.
    pub priority: u8,
    /// Only this collector may take it.
    pub target: Option<String>,
    /// How long one attempt may take; `None`: the coordinator's default.
    pub timeout: Option<Duration>,
    /// Attempts before it fails; `None`: the coordinator's default.
    pub max_attempts: Option<u32>,
    /// Correlation id to carry; `None`: the task id.
    pub correlation_id: Option<String>,
}

/// Where a task is (`TaskState` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    /// No collector can take it now: it waits for one.
    Waiting,
    /// Sent to its owner; a result is awaited.
    Assigned,
    /// Its owner answered with success.
    Completed,
    /// Its attempts ran out, or its owner reported failure.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl TaskState {
    /// Whether the task has ended (completed, failed or cancelled).
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Assigned => "assigned",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a collector answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskAnswer {
    /// The collector that answered.
    pub collector: String,
    /// Success.
    pub ok: bool,
    /// Its message.
    pub message: String,
    /// The result (the kind's own encoding).
    pub payload: Bytes,
}

/// One task, as the coordinator tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its id.
    pub id: String,
    /// Submission order (FIFO within one priority).
    pub seq: u64,
    /// The capability's name.
    pub capability: String,
    /// The capability as bits.
    pub caps: SourceCaps,
    /// What is wanted.
    pub kind: String,
    /// The request.
    pub payload: Bytes,
    /// 0..=255, higher first.
    pub priority: u8,
    /// Only this collector may take it.
    pub target: Option<String>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts before it fails.
    pub max_attempts: u32,
    /// Carried on every attempt and on the result.
    pub correlation_id: String,
    /// Where it is.
    pub state: TaskState,
    /// The collector it is with now (Assigned), or last was.
    pub owner: Option<String>,
    /// Attempts begun so far (the current one included).
    pub attempts: u32,
    /// The current attempt's deadline (for an ended task, the last one's).
    pub deadline: Instant,
    /// When it was submitted.
    pub submitted: Instant,
    /// When it ended.
    pub finished: Option<Instant>,
    /// Why it failed or was cancelled, or the collector's message.
    pub message: String,
    /// The owner's answer, once it completed (or reported failure).
    pub answer: Option<TaskAnswer>,
    /// Every collector it was sent to: their results after they stopped owning it are
    /// late duplicates.
    pub(crate) tried: BTreeSet<String>,
}

impl Task {
    /// Whether collector `id`, with `caps`, may take it.
    pub fn fits(&self, id: &str, caps: SourceCaps) -> bool {
        caps.contains(self.caps) && self.target.as_deref().is_none_or(|t| t == id)
    }
}
