//! The agent's task coordinator (DESIGN.md section 11), as a pure machine: it tracks every
//! task from submission to its end and decides which collector takes each attempt.
//!
//! It knows the collectors only as the fleet tells it ([`set_member`](Coordinator::set_member)):
//! a member is a registered, healthy, running and unpaused collector with its
//! capabilities; anything else (deregistered, exited, unhealthy, paused) is not a member.
//!
//! # Semantics
//!
//! - A task goes to the member with its capability (or its direct target, only) that has
//!   the fewest outstanding tasks, then by id. With none, it waits; waiting tasks are placed
//!   highest priority first, FIFO within one priority, as members join or recover.
//! - Each attempt has a deadline (the task's timeout, from the moment it is sent; while it
//!   waits, from the moment the attempt began). An attempt ends when its deadline passes or
//!   when its owner stops being a member (left, exited, missed its heartbeats, paused, lost
//!   the capability); the next one goes to another member when there is one. Once
//!   `max_attempts` have ended without a result the task is Failed, with why.
//! - A result from the owner ends it: Completed, or Failed with the collector's message. A
//!   result from any other collector, or for a task that has ended, is a late duplicate:
//!   dropped and counted. A result for a task it never heard of (or long forgotten) is
//!   counted as unknown.
//! - Cancel ends an active task Cancelled. Ended tasks are kept in a bounded history for
//!   listing and for recognising late duplicates.
//!
//! Invariant (DESIGN.md section 9, item 10): every task ends completed, failed after its
//! retries, or cancelled: never lost, never completed twice.
//!
//! # Driving it
//!
//! After every input drain [`poll_output`](Coordinator::poll_output): on
//! [`Output::Send`] publish the attempt to its collector; on [`Output::Ended`] answer
//! whoever waits for the task. Call [`handle_timeout`](Coordinator::handle_timeout) at
//! [`poll_timeout`](Coordinator::poll_timeout).

mod task;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::Instant;
use crate::broker::Health;
use crate::registry::SourceCaps;

pub use task::{Task, TaskAnswer, TaskSpec, TaskState};
pub use wire::{spec_from_wire, state_to_wire};

/// The coordinator's defaults and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// How long one attempt may take, unless the task says.
    pub timeout: Duration,
    /// Attempts before a task fails, unless the task says.
    pub max_attempts: u32,
    /// Ended tasks kept for listing and for recognising late duplicates.
    pub history: usize,
    /// Failures this recent make the coordinator Degraded.
    pub failure_window: Duration,
    /// Put before every task id (so that ids of one agent run differ from another's).
    pub id_prefix: String,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            timeout: Duration::from_secs(10),
            max_attempts: 3,
            history: 1000,
            failure_window: Duration::from_secs(60),
            id_prefix: "t".into(),
        }
    }
}

/// Why a task was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No capability has this name.
    #[error("unknown capability {0:?} (known: {known})", known = known_capabilities())]
    UnknownCapability(String),
    /// A priority above 255.
    #[error("priority {0} is out of range: 0 to 255")]
    BadPriority(u64),
    /// A target that is not a valid collector id.
    #[error("invalid target {0:?}: not a collector id")]
    BadTarget(String),
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// No task has this id (or it ended so long ago it is forgotten).
    #[error("no task {0:?}")]
    Unknown(String),
    /// It has already ended.
    #[error("task {id:?} has already ended ({state})")]
    AlreadyEnded {
        /// The task.
        id: String,
        /// How it ended.
        state: TaskState,
    },
}

fn known_capabilities() -> String {
    SourceCaps::NAMED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What became of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOutcome {
    /// From the owner: the task has ended.
    Accepted,
    /// From a collector that does not own it, or for a task that has ended: dropped.
    LateDuplicate,
    /// For a task the coordinator does not know: dropped.
    Unknown,
}

/// One attempt to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The task.
    pub task: String,
    /// Its number, from 1.
    pub attempt: u32,
    /// The collector to send it to (the direct target of the publish).
    pub collector: String,
    /// When this attempt's result is no longer wanted.
    pub deadline: Instant,
    /// The capability (its task topic).
    pub capability: String,
    /// What is wanted.
    pub kind: String,
    /// The request.
    pub payload: Bytes,
    /// The publish's priority.
    pub priority: u8,
    /// The publish's correlation id.
    pub correlation_id: String,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send attempt N of task T to collector C.
    Send(Attempt),
    /// No member can take the task now: it waits (worth a log line).
    Waiting {
        /// The task.
        task: String,
        /// Its capability.
        capability: String,
    },
    /// The task ended (its state says how; a completed one carries the answer).
    Ended(Box<Task>),
}

/// Counts, for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Tasks submitted.
    pub submitted: u64,
    /// Attempts sent.
    pub sent: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Late duplicate results dropped.
    pub duplicates: u64,
    /// Results for unknown tasks dropped.
    pub unknown_results: u64,
}

/// The coordinator.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    /// Members (collectors that may take tasks) and their capabilities.
    members: BTreeMap<String, SourceCaps>,
    /// Active tasks (waiting or assigned), by id.
    active: BTreeMap<String, Task>,
    /// Ended tasks, oldest first, at most `history`.
    ended: VecDeque<Task>,
    ended_index: BTreeMap<String, usize>,
    /// `ended_index` holds positions from this offset (popping the front shifts them).
    ended_base: usize,
    next_seq: u64,
    outputs: VecDeque<Output>,
    counters: Counters,
    /// Canary: accept a late duplicate result as a second completion (the simulation must
    /// catch it).
    canary_accept_duplicates: bool,
}

impl Coordinator {
    /// An empty coordinator.
    pub fn new(config: CoordinatorConfig) -> Self {
        Coordinator {
            config,
            members: BTreeMap::new(),
            active: BTreeMap::new(),
            ended: VecDeque::new(),
            ended_index: BTreeMap::new(),
            ended_base: 0,
            next_seq: 1,
            outputs: VecDeque::new(),
            counters: Counters::default(),
            canary_accept_duplicates: false,
        }
    }

    /// A deliberately broken coordinator that completes a task again on a late duplicate
    /// result (the simulation's canary: it must be caught).
    pub fn canary_accept_duplicates(&mut self, on: bool) {
        self.canary_accept_duplicates = on;
    }

    /// The defaults.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    // ---- inputs ---------------------------------------------------------------------

    /// Collector `id` may take tasks of `caps` (`Some`), or may take none (`None`: it left,
    /// exited, missed its heartbeats or was paused). Its tasks it can no longer serve end
    /// their attempt; waiting tasks are placed.
    pub fn set_member(&mut self, now: Instant, id: &str, caps: Option<SourceCaps>) {
        let before = self.members.get(id).copied();
        if before == caps {
            return;
        }
        match caps {
            Some(c) => {
                self.members.insert(id.to_string(), c);
            }
            None => {
                self.members.remove(id);
            }
        }
        let lost: Vec<String> = self
            .active
            .values()
            .filter(|t| t.state == TaskState::Assigned && t.owner.as_deref() == Some(id))
            .filter(|t| caps.is_none_or(|c| !t.fits(id, c)))
            .map(|t| t.id.clone())
            .collect();
        for task in lost {
            let why = match caps {
                None => format!("{id} stopped taking tasks (left, exited, unhealthy or paused)"),
                Some(_) => format!("{id} no longer has the capability"),
            };
            self.end_attempt(now, &task, why);
        }
        if caps.is_some() {
            self.place_waiting(now);
        }
    }

    /// A new task: its id (`Err` if it is refused).
    pub fn submit(&mut self, now: Instant, spec: TaskSpec) -> Result<String, SubmitError> {
        let caps = SourceCaps::from_capability(&spec.capability)
            .ok_or_else(|| SubmitError::UnknownCapability(spec.capability.clone()))?;
        if let Some(t) = &spec.target
            && daemoneye_proto::frame::validate_name("target", t).is_err()
        {
            return Err(SubmitError::BadTarget(t.clone()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = format!("{}-{seq}", self.config.id_prefix);
        let timeout = spec
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(self.config.timeout);
        let task = Task {
            id: id.clone(),
            seq,
            capability: spec.capability,
            caps,
            kind: spec.kind,
            payload: spec.payload,
            priority: spec.priority,
            target: spec.target,
            timeout,
            max_attempts: spec
                .max_attempts
                .filter(|n| *n > 0)
                .unwrap_or(self.config.max_attempts)
                .max(1),
            correlation_id: spec
                .correlation_id
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| id.clone()),
            state: TaskState::Waiting,
            owner: None,
            attempts: 1,
            deadline: now + timeout,
            submitted: now,
            finished: None,
            message: String::new(),
            answer: None,
            tried: Default::default(),
        };
        self.active.insert(id.clone(), task);
        self.counters.submitted += 1;
        self.place(now, &id, None);
        Ok(id)
    }

    /// A result for `task` arrived.
    pub fn handle_result(&mut self, now: Instant, task: &str, answer: TaskAnswer) -> ResultOutcome {
        let Some(t) = self.active.get(task) else {
            if let Some(&at) = self.ended_index.get(task) {
                let i = at - self.ended_base;
                if self.canary_accept_duplicates
                    && let Some(t) = self.ended.get(i).cloned()
                    && t.state == TaskState::Completed
                {
                    // The broken variant: the duplicate "completes" the task again.
                    self.counters.completed += 1;
                    self.outputs.push_back(Output::Ended(Box::new(t)));
                    return ResultOutcome::Accepted;
                }
                self.counters.duplicates += 1;
                return ResultOutcome::LateDuplicate;
            }
            self.counters.unknown_results += 1;
            return ResultOutcome::Unknown;
        };
        if t.state != TaskState::Assigned || t.owner.as_deref() != Some(answer.collector.as_str()) {
            self.counters.duplicates += 1;
            return ResultOutcome::LateDuplicate;
        }
        let (state, message) = if answer.ok {
            (TaskState::Completed, answer.message.clone())
        } else {
            (
                TaskState::Failed,
                format!("{} reported failure: {}", answer.collector, answer.message),
            )
        };
        self.finish(now, task, state, message, Some(answer));
        ResultOutcome::Accepted
    }

    /// An operator cancels `task`.
    pub fn cancel(&mut self, now: Instant, task: &str) -> Result<(), CancelError> {
        if !self.active.contains_key(task) {
            return Err(match self.ended_task(task) {
                Some(t) => CancelError::AlreadyEnded {
                    id: task.to_string(),
                    state: t.state,
                },
                None => CancelError::Unknown(task.to_string()),
            });
        }
        self.finish(
            now,
            task,
            TaskState::Cancelled,
            "cancelled by an operator".into(),
            None,
        );
        Ok(())
    }

    /// Time passed: attempts whose deadline passed end (and are retried, or fail).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due: Vec<(u64, String)> = self
            .active
            .values()
            .filter(|t| t.deadline <= now)
            .map(|t| (t.seq, t.id.clone()))
            .collect();
        due.sort();
        for (_, id) in due {
            let Some(t) = self.active.get(&id) else {
                continue;
            };
            let why = match (&t.state, &t.owner) {
                (TaskState::Assigned, Some(owner)) => {
                    format!("no result from {owner} within {:?}", t.timeout)
                }
                _ => match &t.target {
                    Some(target) => format!(
                        "collector {target} did not take it within {:?} (not registered, or without the {} capability)",
                        t.timeout, t.capability
                    ),
                    None => format!(
                        "no collector with the {} capability took it within {:?}",
                        t.capability, t.timeout
                    ),
                },
            };
            self.end_attempt(now, &id, why);
        }
    }

    // ---- outputs and time -------------------------------------------------------------

    /// The next thing to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest attempt deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.values().map(|t| t.deadline).min()
    }

    // ---- queries ----------------------------------------------------------------------

    /// An active or remembered task.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.active.get(id).or_else(|| self.ended_task(id))
    }

    /// Active tasks, in submission order.
    pub fn active(&self) -> Vec<&Task> {
        let mut v: Vec<&Task> = self.active.values().collect();
        v.sort_by_key(|t| t.seq);
        v
    }

    /// Ended tasks still remembered, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Task> {
        self.ended.iter()
    }

    /// The counts.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The members and their capabilities.
    pub fn members(&self) -> &BTreeMap<String, SourceCaps> {
        &self.members
    }

    /// The coordinator's health: Degraded while tasks wait with no member able to take
    /// them, or when tasks failed within the failure window; with the reasons.
    pub fn health(&self, now: Instant) -> (Health, Vec<String>) {
        let mut reasons = Vec::new();
        let mut stuck: BTreeMap<&str, usize> = BTreeMap::new();
        for t in self.active.values() {
            if t.state == TaskState::Waiting
                && !self.members.iter().any(|(id, caps)| t.fits(id, *caps))
            {
                *stuck.entry(t.capability.as_str()).or_default() += 1;
            }
        }
        for (cap, n) in stuck {
            reasons.push(format!(
                "{n} task(s) wait with no collector able to take them ({cap})"
            ));
        }
        let recent: Vec<&Task> = self
            .ended
            .iter()
            .filter(|t| {
                t.state == TaskState::Failed
                    && t.finished
                        .is_some_and(|f| now.saturating_since(f) < self.config.failure_window)
            })
            .collect();
        if let Some(last) = recent.last() {
            reasons.push(format!(
                "{} task(s) failed in the last {:?} (last: {}: {})",
                recent.len(),
                self.config.failure_window,
                last.id,
                last.message
            ));
        }
        let health = if reasons.is_empty() {
            Health::Healthy
        } else {
            Health::Degraded
        };
        (health, reasons)
    }

    // ---- rules ------------------------------------------------------------------------

    fn ended_task(&self, id: &str) -> Option<&Task> {
        self.ended_index
            .get(id)
            .and_then(|at| self.ended.get(at - self.ended_base))
    }

    fn load(&self, id: &str) -> usize {
        self.active
            .values()
            .filter(|t| t.state == TaskState::Assigned && t.owner.as_deref() == Some(id))
            .count()
    }

    /// The member that takes `task`: able to, not `avoid` unless it is the only one, the
    /// fewest outstanding tasks, then by id.
    fn pick(&self, task: &Task, avoid: Option<&str>) -> Option<String> {
        let able: Vec<&String> = self
            .members
            .iter()
            .filter(|(id, caps)| task.fits(id, **caps))
            .map(|(id, _)| id)
            .collect();
        let preferred: Vec<&String> = able
            .iter()
            .copied()
            .filter(|id| Some(id.as_str()) != avoid)
            .collect();
        let from = if preferred.is_empty() {
            able
        } else {
            preferred
        };
        from.into_iter()
            .min_by_key(|id| (self.load(id), (*id).clone()))
            .cloned()
    }

    /// Sends the current attempt of waiting task `id` to the best member, or leaves it
    /// waiting (told once per attempt).
    fn place(&mut self, now: Instant, id: &str, avoid: Option<&str>) {
        let Some(task) = self.active.get(id) else {
            return;
        };
        let Some(to) = self.pick(task, avoid) else {
            self.outputs.push_back(Output::Waiting {
                task: id.to_string(),
                capability: task.capability.clone(),
            });
            return;
        };
        let Some(task) = self.active.get_mut(id) else {
            return;
        };
        task.state = TaskState::Assigned;
        task.owner = Some(to.clone());
        task.tried.insert(to.clone());
        // The collector gets the whole timeout, however long the task waited.
        task.deadline = now + task.timeout;
        self.counters.sent += 1;
        self.outputs.push_back(Output::Send(Attempt {
            task: task.id.clone(),
            attempt: task.attempts,
            collector: to,
            deadline: task.deadline,
            capability: task.capability.clone(),
            kind: task.kind.clone(),
            payload: task.payload.clone(),
            priority: task.priority,
            correlation_id: task.correlation_id.clone(),
        }));
    }

    /// Places waiting tasks: highest priority first, FIFO within one priority.
    fn place_waiting(&mut self, now: Instant) {
        let mut waiting: Vec<(std::cmp::Reverse<u8>, u64, String)> = self
            .active
            .values()
            .filter(|t| t.state == TaskState::Waiting)
            .map(|t| (std::cmp::Reverse(t.priority), t.seq, t.id.clone()))
            .collect();
        waiting.sort();
        for (_, _, id) in waiting {
            let able = self
                .active
                .get(&id)
                .is_some_and(|t| self.members.iter().any(|(m, caps)| t.fits(m, *caps)));
            if able {
                self.place(now, &id, None);
            }
        }
    }

    /// The current attempt of `id` ended without a result (`why`): the next one begins
    /// (on another member when there is one), or the task fails if it was the last.
    fn end_attempt(&mut self, now: Instant, id: &str, why: String) {
        let Some(task) = self.active.get_mut(id) else {
            return;
        };
        if task.attempts >= task.max_attempts {
            let message = format!("failed after {} attempt(s): {why}", task.attempts);
            self.finish(now, id, TaskState::Failed, message, None);
            return;
        }
        let previous = (task.state == TaskState::Assigned)
            .then(|| task.owner.clone())
            .flatten();
        task.attempts += 1;
        task.state = TaskState::Waiting;
        task.deadline = now + task.timeout;
        task.message = why;
        self.place(now, id, previous.as_deref());
    }

    /// Ends active task `id`.
    fn finish(
        &mut self,
        now: Instant,
        id: &str,
        state: TaskState,
        message: String,
        answer: Option<TaskAnswer>,
    ) {
        let Some(mut task) = self.active.remove(id) else {
            return;
        };
        task.state = state;
        task.finished = Some(now);
        task.message = message;
        task.answer = answer;
        match state {
            TaskState::Completed => self.counters.completed += 1,
            TaskState::Failed => self.counters.failed += 1,
            TaskState::Cancelled => self.counters.cancelled += 1,
            TaskState::Waiting | TaskState::Assigned => {}
        }
        self.outputs
            .push_back(Output::Ended(Box::new(task.clone())));
        self.ended_index
            .insert(task.id.clone(), self.ended_base + self.ended.len());
        self.ended.push_back(task);
        while self.ended.len() > self.config.history.max(1) {
            if let Some(old) = self.ended.pop_front() {
                self.ended_index.remove(&old.id);
                self.ended_base += 1;
            }
        }
    }
}
