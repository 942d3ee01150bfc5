//! Tasks in layer 1 (DESIGN.md section 11): the agent's coordinator (inside its fleet)
//! gets tasks from the workload, sends each attempt through the broker on
//! `control.collector.task.process` (directly to its owner, QoS1, reply to
//! `control.tasks.result`), and the registering clients, collectors with the `process`
//! capability, answer them: now or later, sometimes with a failure, sometimes twice (a late
//! duplicate), or never (they crash with the task in hand). Invariant 10 is checked after
//! every step and once the liveness phase has drained: every task ends completed, failed
//! after its retries, or cancelled; never lost, never completed (or ended) twice.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::coordinator::{Output as TaskOutput, TaskSpec, TaskState};
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Deliver, GroupSpec, Publish, QoS, QueueStrategy, Subscribe, Target};
use daemoneye_proto::pb::{bus as pbb, control as pbc};
use prost::Message;

use super::World;
use crate::report::Violation;

/// The capability the simulated collectors serve tasks for.
pub(super) const CAPABILITY: &str = "process";

/// A task a client holds: the delivered `Task` and where to answer.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) task: pbc::Task,
    pub(super) reply_to: Option<String>,
    pub(super) correlation: Option<Box<pbb::Correlation>>,
}

/// What the model knows of the tasks: every id submitted, and how each ended.
#[derive(Debug, Default)]
pub(super) struct TaskModel {
    pub(super) submitted: Vec<String>,
    pub(super) ended: BTreeMap<String, TaskState>,
}

/// The task subscription of a registering collector (as the collector runtime makes it).
pub(super) fn task_subscription() -> Subscribe {
    let mut s = Subscribe::new(topics::task(CAPABILITY));
    s.qos = QoS::AtLeastOnce;
    s.group = Some(GroupSpec {
        name: format!("task.{CAPABILITY}"),
        strategy: QueueStrategy::RoundRobin,
    });
    s
}

impl World {
    /// The workload's side: now and then a task is submitted (a few with a direct target,
    /// some with few attempts) or one is cancelled.
    pub(super) fn task_workload(&mut self) {
        if self.chance(0.01) {
            let n = self.clients.len() as u64;
            let target = self.chance(0.15).then(|| format!("c{}", self.rng.below(n)));
            let spec = TaskSpec {
                capability: CAPABILITY.into(),
                kind: "scan".into(),
                payload: Bytes::from(format!("task#{}", self.tasks.submitted.len())),
                priority: self.rng.below(256) as u8,
                target,
                timeout: Some(Duration::from_millis(500 + self.rng.below(2500))),
                max_attempts: Some(1 + self.rng.below(4) as u32),
                correlation_id: None,
            };
            match self.fleet.submit_task(self.now, spec) {
                Ok(id) => {
                    self.log(format!("agent submits {id}"));
                    self.tasks.submitted.push(id);
                }
                Err(e) => self.log(format!("agent's submit refused: {e}")),
            }
        }
        if self.chance(0.002) && !self.tasks.submitted.is_empty() {
            let k = self.rng.below(self.tasks.submitted.len() as u64) as usize;
            let id = self.tasks.submitted[k].clone();
            let outcome = self.fleet.cancel_task(self.now, &id);
            self.log(format!("agent cancels {id}: {outcome:?}"));
        }
    }

    /// The coordinator's output, as the agent carries it out: an attempt is published to
    /// its owner; an ended task is checked against invariant 10.
    pub(super) fn task_output(&mut self, out: TaskOutput) -> Result<(), Violation> {
        match out {
            TaskOutput::Send(a) => {
                let task = a.to_wire(self.now, self.now.as_nanos() / 1_000_000);
                let payload = Bytes::from(task.encode_to_vec());
                let p = Publish {
                    correlation: Some(Box::new(pbb::Correlation {
                        correlation_id: a.correlation_id.clone(),
                        ..Default::default()
                    })),
                    reply_to: Some(topics::TASKS_RESULT.to_string()),
                    priority: a.priority,
                    target: Some(Target::Collector(a.collector.clone())),
                    ..Publish::new(
                        topics::task(&a.capability),
                        payload.clone(),
                        QoS::AtLeastOnce,
                    )
                };
                match self.agent.session.publish(p) {
                    Ok(seq) => {
                        let id = (self.agent.publisher_id.clone(), seq);
                        self.note_publish(id, payload, QoS::AtLeastOnce)?;
                    }
                    // Not connected: the attempt's deadline retries it.
                    Err(e) => self.log(format!("agent cannot send {}: {e}", a.task)),
                }
                self.log(format!(
                    "agent sends {} attempt {} to {}",
                    a.task, a.attempt, a.collector
                ));
            }
            TaskOutput::Waiting { task, .. } => self.log(format!("{task} waits")),
            TaskOutput::Ended(task) => {
                self.log(format!(
                    "{} ended {}: {}",
                    task.id, task.state, task.message
                ));
                if let Some(before) = self.tasks.ended.insert(task.id.clone(), task.state) {
                    return Err(self.violation(
                        "task-ends-once",
                        format!("{} ended twice: {before} then {}", task.id, task.state),
                    ));
                }
                if task.state == TaskState::Failed
                    && task.answer.is_none()
                    && task.attempts != task.max_attempts
                {
                    return Err(self.violation(
                        "task-fails-after-its-retries",
                        format!(
                            "{} failed after {} of {} attempts: {}",
                            task.id, task.attempts, task.max_attempts, task.message
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Invariant 10, after every step: every task submitted is active or has ended (once).
    pub(super) fn check_tasks(&self) -> Result<(), Violation> {
        let coordinator = self.fleet.coordinator();
        for id in &self.tasks.submitted {
            let active = coordinator.task(id).is_some_and(|t| !t.state.is_ended());
            if active == self.tasks.ended.contains_key(id) {
                return Err(self.violation(
                    "task-never-lost",
                    format!(
                        "{id}: active in the coordinator {active}, ended {:?}",
                        self.tasks.ended.get(id)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A collector got a task: it holds it until it answers (or crashes).
    pub(super) fn take_task(&mut self, i: usize, d: &Deliver) {
        if let Ok(task) = pbc::Task::decode(d.payload.clone()) {
            self.log(format!("c{i} takes {}", task.task_id));
            self.clients[i].held.push(Held {
                task,
                reply_to: d.reply_to.clone(),
                correlation: d.correlation.clone(),
            });
        }
    }

    /// A collector answers its oldest task now and then: mostly with success, sometimes
    /// with a failure, and sometimes it sends the answer twice.
    pub(super) fn answer_tasks(&mut self, i: usize) -> Result<(), Violation> {
        if self.clients[i].held.is_empty()
            || !self.clients[i].session.is_connected()
            || !self.chance(0.3)
        {
            return Ok(());
        }
        let held = self.clients[i].held.remove(0);
        let ok = !self.chance(0.1);
        let copies = if self.chance(0.2) { 2 } else { 1 };
        let result = pbc::TaskResult {
            task_id: held.task.task_id.clone(),
            collector_id: format!("c{i}"),
            ok,
            message: if ok {
                "done".into()
            } else {
                "sim failure".into()
            },
            payload: Bytes::new(),
        };
        let payload = Bytes::from(result.encode_to_vec());
        let topic = held
            .reply_to
            .clone()
            .unwrap_or_else(|| topics::TASKS_RESULT.to_string());
        for _ in 0..copies {
            let p = Publish {
                correlation: held.correlation.clone(),
                ..Publish::new(topic.clone(), payload.clone(), QoS::AtLeastOnce)
            };
            if let Ok(seq) = self.clients[i].session.publish(p) {
                let id = (self.clients[i].publisher_id.clone(), seq);
                self.note_publish(id, payload.clone(), QoS::AtLeastOnce)?;
            }
        }
        self.log(format!(
            "c{i} answers {} ok={ok} x{copies}",
            held.task.task_id
        ));
        Ok(())
    }

    /// The agent got a result: the coordinator decides what it is worth.
    pub(super) fn agent_result(&mut self, d: &Deliver) -> Result<(), Violation> {
        if let Ok(r) = pbc::TaskResult::decode(d.payload.clone()) {
            let peer = super::agent::peer_of(d);
            let outcome = self.fleet.handle_task_result(self.now, &r, &peer);
            self.log(format!(
                "agent gets {}'s result for {}: {outcome:?}",
                r.collector_id, r.task_id
            ));
        }
        Ok(())
    }

    /// Once the run has drained, every task has ended.
    pub(super) fn tasks_pending(&self) -> Vec<String> {
        self.fleet
            .coordinator()
            .active()
            .iter()
            .map(|t| {
                format!(
                    "{} {} attempt {}/{}",
                    t.id, t.state, t.attempts, t.max_attempts
                )
            })
            .collect()
    }
}
