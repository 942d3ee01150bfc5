//! Enrichment of alerts (DESIGN.md sections 11 and 12): for each alert at or above the
//! configured level, ask a `process` collector for each configured kind (hash, ancestry,
//! open files), gather the results, and publish the enriched alert exactly once, when
//! every result is in or the deadline passes, whichever comes first.
//!
//! The machine owns the decisions; the driver owns the bus:
//!
//! - [`Enricher::handle_alert`]: an alert arrived. One below the level, an update, or an
//!   enriched alert is ignored; a repeat of an alert already taken is counted and ignored
//!   (a QoS1 redelivery must not enrich twice). Otherwise the machine asks
//!   ([`Output::Submit`], one per kind, with the [`task_request`] built from the alert's
//!   event) and starts the alert's deadline. At the pending bound, the alert is published
//!   at once with every kind marked not asked: it is never held, and never lost.
//! - [`Enricher::handle_submitted`]: the coordinator accepted a kind's task (its id).
//! - [`Enricher::handle_answer`]: a kind's answer: the collector's result ([`Answer::Result`],
//!   arrived) or the coordinator's word that none will come ([`Answer::NotArrived`]: the
//!   task failed, was cancelled, or could not be submitted). The first answer per kind
//!   counts; a repeat is counted as a duplicate, one for an alert already published as
//!   late, one for an alert never taken (or long forgotten) as unknown; all are dropped.
//! - [`Enricher::handle_timeout`]: due deadlines; every kind still waiting is marked not
//!   arrived ("no result within ..."). Every input first applies the deadlines due at its
//!   `now`, so an answer at or after its alert's deadline is late, never arrived.
//! - [`Enricher::poll_output`] and [`Enricher::poll_timeout`]: what to do, and when the
//!   next deadline is.
//!
//! The enriched alert ([`Output::Enriched`]) is the alert itself with `enriched` and
//! `update` set, the same `alert_id`, and one `Enrichment` per kind asked, in the order
//! asked: readers replace what they hold for the alert with it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use daemoneye_proto::pb::control as pbc;
use daemoneye_proto::pb::events::{Alert, Enrichment, ProcessTaskRequest, ProcessTaskResult};
use prost::Message;

use crate::Instant;

/// How the machine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichConfig {
    /// The alert levels enriched (`alert.level` must be one of them).
    pub levels: BTreeSet<String>,
    /// The kinds asked for each alert, in order (duplicates are asked once).
    pub kinds: Vec<String>,
    /// How long an alert waits for its results.
    pub timeout: Duration,
    /// Most alerts waiting at once; past it an alert is published unenriched at once.
    pub max_pending: usize,
    /// Published alerts remembered (to tell a late answer from an unknown one).
    pub remember: usize,
}

impl EnrichConfig {
    /// Levels `levels`, kinds `kinds`, deadline `timeout`, 10,000 pending, 10,000 remembered.
    pub fn new(levels: &[&str], kinds: &[&str], timeout: Duration) -> Self {
        EnrichConfig {
            levels: levels.iter().map(|l| l.to_string()).collect(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            timeout,
            max_pending: 10_000,
            remember: 10_000,
        }
    }
}

/// What a kind's task came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The collector's result arrived.
    Result {
        /// The task.
        task_id: String,
        /// Who answered.
        collector_id: String,
        /// The collector did what was asked.
        ok: bool,
        /// The collector's message.
        message: String,
        /// The result, when it decoded.
        result: Option<ProcessTaskResult>,
    },
    /// No result will come (failed, cancelled, refused, the coordinator unreachable).
    NotArrived {
        /// The task, when one was made.
        task_id: String,
        /// Why.
        message: String,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Ask for one kind about the alert's process.
    Submit {
        /// The alert (the task's correlation id).
        alert_id: String,
        /// The task kind.
        kind: String,
        /// The task's payload.
        request: ProcessTaskRequest,
    },
    /// Publish the enriched alert (on `alerts.enriched.<level>`).
    Enriched(Box<Alert>),
}

/// The machine's one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// An alert's deadline.
    Deadline,
}

/// What [`Enricher::handle_alert`] did with an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Its tasks are asked; it waits for them.
    Waiting,
    /// Too many alerts wait: it is published at once, unenriched.
    Full,
    /// Not enriched: below the level, an update, itself an enriched alert, or no kinds
    /// configured.
    Ignored,
    /// Already taken (a redelivery): nothing more is done.
    Repeat,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnrichStats {
    /// Alerts taken for enrichment.
    pub taken: u64,
    /// Enriched alerts published.
    pub published: u64,
    /// Published with every kind arrived.
    pub complete: u64,
    /// Published at their deadline with some kind missing.
    pub timed_out: u64,
    /// Published at once because too many waited.
    pub full: u64,
    /// Alerts taken a second time, ignored.
    pub repeats: u64,
    /// Answers for an alert already published.
    pub late: u64,
    /// Second answers for one kind.
    pub duplicates: u64,
    /// Answers for an alert never taken (or forgotten), or a kind not asked.
    pub unknown: u64,
}

#[derive(Debug)]
struct Pending {
    alert: Alert,
    deadline: Instant,
    /// Per kind asked, in order: its task id and, once in, its entry.
    slots: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    kind: String,
    task_id: String,
    entry: Option<Enrichment>,
}

/// The enrichment machine (see the module documentation).
#[derive(Debug)]
pub struct Enricher {
    config: EnrichConfig,
    kinds: Vec<String>,
    pending: BTreeMap<String, Pending>,
    /// (deadline, alert id) of every pending alert.
    deadlines: BTreeSet<(Instant, String)>,
    /// Published alert ids, oldest first, at most `remember`.
    published: VecDeque<String>,
    published_set: BTreeSet<String>,
    outputs: VecDeque<Output>,
    stats: EnrichStats,
}

/// The task payload for an alert's process: its pid, identity and executable, from the
/// alert's event.
pub fn task_request(alert: &Alert) -> ProcessTaskRequest {
    let p = alert
        .event
        .as_ref()
        .and_then(|e| e.process.as_ref())
        .cloned()
        .unwrap_or_default();
    ProcessTaskRequest {
        pid: p.pid,
        start_ticks: p.start_ticks,
        exe: p.exe,
        exe_dev: p.exe_dev,
        exe_inode: p.exe_inode,
    }
}

/// What the coordinator's answer to a waited `TaskSubmit` means for the kind: the
/// collector's result when there is one (arrived, even as a failure it reported), else not
/// arrived with the coordinator's reason (refused, failed after its attempts, cancelled).
pub fn answer_of(response: &pbc::TaskSubmitResponse) -> Answer {
    let task = response.task.clone().unwrap_or_default();
    if !response.error.is_empty() {
        return Answer::NotArrived {
            task_id: task.task_id,
            message: format!("task refused: {}", response.error),
        };
    }
    match &response.result {
        Some(r) if !r.collector_id.is_empty() || r.ok || !r.payload.is_empty() => Answer::Result {
            task_id: or(r.task_id.clone(), &task.task_id),
            collector_id: r.collector_id.clone(),
            ok: r.ok,
            message: r.message.clone(),
            result: ProcessTaskResult::decode(r.payload.clone()).ok(),
        },
        _ => {
            let state = pbc::TaskState::try_from(task.state).unwrap_or_default();
            let message = match (state, task.message.is_empty()) {
                (_, false) => task.message.clone(),
                (pbc::TaskState::Cancelled, true) => "task cancelled".into(),
                (pbc::TaskState::Failed, true) => {
                    format!("task failed after {} attempts", task.attempts)
                }
                (_, true) => format!("task ended {} without a result", state.as_str_name()),
            };
            Answer::NotArrived {
                task_id: task.task_id,
                message,
            }
        }
    }
}

impl Enricher {
    /// A machine with `config` (at least one pending alert and one remembered).
    pub fn new(mut config: EnrichConfig) -> Self {
        config.max_pending = config.max_pending.max(1);
        config.remember = config.remember.max(1);
        let mut kinds: Vec<String> = Vec::new();
        for k in &config.kinds {
            if !kinds.contains(k) {
                kinds.push(k.clone());
            }
        }
        Enricher {
            config,
            kinds,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            published: VecDeque::new(),
            published_set: BTreeSet::new(),
            outputs: VecDeque::new(),
            stats: EnrichStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EnrichConfig {
        &self.config
    }

    /// Whether `alert` is one this machine enriches (level, not an update, not enriched).
    pub fn wants(&self, alert: &Alert) -> bool {
        !alert.update
            && !alert.enriched
            && !alert.alert_id.is_empty()
            && self.config.levels.contains(&alert.level)
    }

    /// An alert arrived (see the module documentation).
    pub fn handle_alert(&mut self, now: Instant, alert: Alert) -> Admission {
        self.expire(now);
        if !self.wants(&alert) || self.kinds.is_empty() {
            return Admission::Ignored;
        }
        let id = alert.alert_id.clone();
        if self.pending.contains_key(&id) || self.published_set.contains(&id) {
            self.stats.repeats += 1;
            return Admission::Repeat;
        }
        self.stats.taken += 1;
        let slots: Vec<Slot> = self
            .kinds
            .iter()
            .map(|kind| Slot {
                kind: kind.clone(),
                task_id: String::new(),
                entry: None,
            })
            .collect();
        if self.pending.len() >= self.config.max_pending {
            let why = format!(
                "not asked: {} alerts were already awaiting enrichment",
                self.pending.len()
            );
            self.stats.full += 1;
            let deadline = now;
            self.publish(
                Pending {
                    alert,
                    deadline,
                    slots,
                },
                &why,
            );
            return Admission::Full;
        }
        let request = task_request(&alert);
        for kind in &self.kinds {
            self.outputs.push_back(Output::Submit {
                alert_id: id.clone(),
                kind: kind.clone(),
                request: request.clone(),
            });
        }
        let deadline = now + self.config.timeout;
        self.deadlines.insert((deadline, id.clone()));
        self.pending.insert(
            id,
            Pending {
                alert,
                deadline,
                slots,
            },
        );
        Admission::Waiting
    }

    /// The coordinator accepted the task of `kind` for `alert_id` as `task_id`.
    pub fn handle_submitted(&mut self, now: Instant, alert_id: &str, kind: &str, task_id: &str) {
        self.expire(now);
        if let Some(slot) = self
            .pending
            .get_mut(alert_id)
            .and_then(|p| p.slots.iter_mut().find(|s| s.kind == kind))
            && slot.task_id.is_empty()
        {
            slot.task_id = task_id.to_string();
        }
    }

    /// A kind's answer (see the module documentation).
    pub fn handle_answer(&mut self, now: Instant, alert_id: &str, kind: &str, answer: Answer) {
        self.expire(now);
        let Some(pending) = self.pending.get_mut(alert_id) else {
            if self.published_set.contains(alert_id) {
                self.stats.late += 1;
            } else {
                self.stats.unknown += 1;
            }
            return;
        };
        let Some(slot) = pending.slots.iter_mut().find(|s| s.kind == kind) else {
            self.stats.unknown += 1;
            return;
        };
        if slot.entry.is_some() {
            self.stats.duplicates += 1;
            return;
        }
        let entry = match answer {
            Answer::Result {
                task_id,
                collector_id,
                ok,
                message,
                result,
            } => Enrichment {
                kind: kind.to_string(),
                arrived: true,
                ok,
                message,
                collector_id,
                task_id: or(task_id, &slot.task_id),
                result,
            },
            Answer::NotArrived { task_id, message } => Enrichment {
                kind: kind.to_string(),
                arrived: false,
                message,
                task_id: or(task_id, &slot.task_id),
                ..Default::default()
            },
        };
        slot.entry = Some(entry);
        if pending.slots.iter().all(|s| s.entry.is_some())
            && let Some(done) = self.pending.remove(alert_id)
        {
            self.deadlines
                .remove(&(done.deadline, alert_id.to_string()));
            self.publish(done, "");
        }
    }

    /// Applies the deadlines due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline, if an alert waits.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        self.deadlines.first().map(|(at, _)| (*at, Timer::Deadline))
    }

    /// Whether `alert_id` waits for results.
    pub fn is_pending(&self, alert_id: &str) -> bool {
        self.pending.contains_key(alert_id)
    }

    /// Alerts waiting for results.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The counters.
    pub fn stats(&self) -> EnrichStats {
        self.stats
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, id.clone()));
            if let Some(done) = self.pending.remove(&id) {
                let why = format!("no result within {}", humane(self.config.timeout));
                self.stats.timed_out += 1;
                self.publish(done, &why);
            }
        }
    }

    /// Publishes `done`: each kind without an entry gets one, not arrived, saying `why`.
    fn publish(&mut self, done: Pending, why: &str) {
        let Pending {
            mut alert, slots, ..
        } = done;
        let complete = slots
            .iter()
            .all(|s| s.entry.as_ref().is_some_and(|e| e.arrived));
        alert.enrichment = slots
            .into_iter()
            .map(|s| {
                s.entry.unwrap_or_else(|| Enrichment {
                    kind: s.kind,
                    arrived: false,
                    message: why.to_string(),
                    task_id: s.task_id,
                    ..Default::default()
                })
            })
            .collect();
        alert.enriched = true;
        alert.update = true;
        self.stats.published += 1;
        if complete && !alert.enrichment.is_empty() {
            self.stats.complete += 1;
        }
        let id = alert.alert_id.clone();
        self.published.push_back(id.clone());
        self.published_set.insert(id);
        while self.published.len() > self.config.remember {
            if let Some(old) = self.published.pop_front() {
                self.published_set.remove(&old);
            }
        }
        self.outputs.push_back(Output::Enriched(Box::new(alert)));
    }
}

fn or(a: String, b: &str) -> String {
    if a.is_empty() { b.to_string() } else { a }
}

/// "5s", "1.5s", "250ms".
fn humane(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
