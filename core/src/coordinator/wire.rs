//! The coordinator on the wire: a `TaskSubmit` checked into a [`TaskSpec`], tasks as
//! `TaskRecord`s, attempts as `Task`s, answers as `TaskResult`s. Times are shown in Unix
//! milliseconds: `unix_ms_at_now` is the wall clock at `now`.

use std::time::Duration;

use daemoneye_proto::pb::control as pbc;

use super::{Attempt, SubmitError, Task, TaskAnswer, TaskSpec, TaskState};
use crate::Instant;

/// A submitted task, checked (the capability is checked by the coordinator).
pub fn spec_from_wire(submit: &pbc::TaskSubmit) -> Result<TaskSpec, SubmitError> {
    let priority = u8::try_from(submit.priority)
        .map_err(|_| SubmitError::BadPriority(u64::from(submit.priority)))?;
    Ok(TaskSpec {
        capability: submit.capability.clone(),
        kind: submit.kind.clone(),
        payload: submit.payload.clone(),
        priority,
        target: (!submit.target.is_empty()).then(|| submit.target.clone()),
        timeout: (submit.timeout_ms > 0).then(|| Duration::from_millis(submit.timeout_ms)),
        max_attempts: (submit.max_attempts > 0).then_some(submit.max_attempts),
        correlation_id: (!submit.correlation_id.is_empty()).then(|| submit.correlation_id.clone()),
    })
}

/// A task state on the wire.
pub fn state_to_wire(state: TaskState) -> pbc::TaskState {
    match state {
        TaskState::Waiting => pbc::TaskState::Waiting,
        TaskState::Assigned => pbc::TaskState::Assigned,
        TaskState::Completed => pbc::TaskState::Completed,
        TaskState::Failed => pbc::TaskState::Failed,
        TaskState::Cancelled => pbc::TaskState::Cancelled,
    }
}

/// `at` in Unix milliseconds, given the wall clock at `now`.
fn unix_ms(at: Instant, now: Instant, unix_ms_at_now: u64) -> u64 {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if at >= now {
        unix_ms_at_now.saturating_add(ms(at.saturating_since(now)))
    } else {
        unix_ms_at_now.saturating_sub(ms(now.saturating_since(at)))
    }
}

impl Task {
    /// As `tasks list` and the submit and cancel answers carry it.
    pub fn to_wire(&self, now: Instant, unix_ms_at_now: u64) -> pbc::TaskRecord {
        pbc::TaskRecord {
            task_id: self.id.clone(),
            capability: self.capability.clone(),
            kind: self.kind.clone(),
            priority: u32::from(self.priority),
            target: self.target.clone().unwrap_or_default(),
            owner: self.owner.clone().unwrap_or_default(),
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            state: state_to_wire(self.state) as i32,
            submitted_ms: unix_ms(self.submitted, now, unix_ms_at_now),
            deadline_ms: if self.state.is_ended() {
                0
            } else {
                unix_ms(self.deadline, now, unix_ms_at_now)
            },
            finished_ms: self.finished.map_or(0, |f| unix_ms(f, now, unix_ms_at_now)),
            message: self.message.clone(),
            correlation_id: self.correlation_id.clone(),
        }
    }

    /// The owner's answer as a `TaskResult` (with `wait`, the submit's answer carries it).
    pub fn result_to_wire(&self) -> Option<pbc::TaskResult> {
        self.answer.as_ref().map(|a| pbc::TaskResult {
            task_id: self.id.clone(),
            collector_id: a.collector.clone(),
            ok: a.ok,
            message: a.message.clone(),
            payload: a.payload.clone(),
        })
    }
}

impl Attempt {
    /// The `Task` message a collector gets for this attempt.
    pub fn to_wire(&self, now: Instant, unix_ms_at_now: u64) -> pbc::Task {
        pbc::Task {
            task_id: self.task.clone(),
            capability: self.capability.clone(),
            priority: u32::from(self.priority),
            deadline_ms: unix_ms(self.deadline, now, unix_ms_at_now),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
        }
    }
}

impl From<&pbc::TaskResult> for TaskAnswer {
    fn from(r: &pbc::TaskResult) -> Self {
        TaskAnswer {
            collector: r.collector_id.clone(),
            ok: r.ok,
            message: r.message.clone(),
            payload: r.payload.clone(),
        }
    }
}
