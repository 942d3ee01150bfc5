//! The task coordinator: placement, priorities, targets, retries, reassignment, late
//! duplicates, cancel, history and health; and DESIGN.md section 9's invariant 10 under
//! random joins, leaves, results, duplicates, cancels and time (a property test against a
//! naive model of who owns what).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::broker::Health;
use daemoneye_core::coordinator::{
    CancelError, Coordinator, CoordinatorConfig, Output, ResultOutcome, SubmitError, TaskAnswer,
    TaskSpec, TaskState,
};
use daemoneye_core::registry::SourceCaps;
use proptest::prelude::*;

fn t(secs: f64) -> Instant {
    Instant::from_nanos((secs * 1e9) as u64)
}

fn coordinator() -> Coordinator {
    Coordinator::new(CoordinatorConfig {
        timeout: Duration::from_secs(10),
        max_attempts: 3,
        history: 4,
        ..CoordinatorConfig::default()
    })
}

fn spec(capability: &str, priority: u8) -> TaskSpec {
    TaskSpec {
        capability: capability.into(),
        kind: "k".into(),
        payload: Bytes::from_static(b"p"),
        priority,
        ..TaskSpec::default()
    }
}

fn ok(from: &str) -> TaskAnswer {
    TaskAnswer {
        collector: from.into(),
        ok: true,
        message: "done".into(),
        payload: Bytes::from_static(b"r"),
    }
}

fn drain(c: &mut Coordinator) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

/// (task, collector) of every attempt sent.
fn sends(out: &[Output]) -> Vec<(String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(a) => Some((a.task.clone(), a.collector.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_goes_to_the_capable_member_with_the_fewest_tasks() {
    let mut c = coordinator();
    c.set_member(t(0.0), "net", Some(SourceCaps::NETWORK));
    c.set_member(t(0.0), "b", Some(SourceCaps::PROCESS));
    c.set_member(t(0.0), "a", Some(SourceCaps::PROCESS | SourceCaps::NETWORK));
    let t1 = c.submit(t(0.0), spec("process", 0)).unwrap();
    let t2 = c.submit(t(0.0), spec("process", 0)).unwrap();
    let out = drain(&mut c);
    assert_eq!(
        sends(&out),
        [(t1, "a".to_string()), (t2, "b".to_string())],
        "fewest tasks, then by id; never one without the capability"
    );
}

#[test]
fn waiting_tasks_are_placed_highest_priority_first_fifo_within_one() {
    let mut c = coordinator();
    let low = c.submit(t(0.0), spec("process", 1)).unwrap();
    let high_1 = c.submit(t(0.0), spec("process", 9)).unwrap();
    let high_2 = c.submit(t(0.0), spec("process", 9)).unwrap();
    drain(&mut c);
    c.set_member(t(1.0), "a", Some(SourceCaps::PROCESS));
    let order: Vec<String> = sends(&drain(&mut c)).into_iter().map(|s| s.0).collect();
    assert_eq!(order, [high_1, high_2, low]);
}

#[test]
fn a_direct_target_is_the_only_collector_that_gets_the_task() {
    let mut c = coordinator();
    c.set_member(t(0.0), "a", Some(SourceCaps::PROCESS));
    let id = c
        .submit(
            t(0.0),
            TaskSpec {
                target: Some("b".into()),
                ..spec("process", 0)
            },
        )
        .unwrap();
    assert!(sends(&drain(&mut c)).is_empty(), "a may not take it");
    assert_eq!(c.task(&id).unwrap().state, TaskState::Waiting);
    c.set_member(t(1.0), "b", Some(SourceCaps::PROCESS));
    assert_eq!(sends(&drain(&mut c)), [(id.clone(), "b".to_string())]);
    assert_eq!(
        c.handle_result(t(2.0), &id, ok("a")),
        ResultOutcome::LateDuplicate
    );
    assert_eq!(
        c.handle_result(t(2.0), &id, ok("b")),
        ResultOutcome::Accepted
    );
}

#[test]
fn an_expired_attempt_is_retried_on_another_member_then_fails_after_max_attempts() {
    let mut c = coordinator();
    c.set_member(t(0.0), "a", Some(SourceCaps::PROCESS));
    c.set_member(t(0.0), "b", Some(SourceCaps::PROCESS));
    let id = c.submit(t(0.0), spec("process", 0)).unwrap();
    assert_eq!(c.poll_timeout(), Some(t(10.0)));
    let mut owners = Vec::new();
    for k in 0..3 {
        owners.extend(sends(&drain(&mut c)).into_iter().map(|s| s.1));
        c.handle_timeout(t(10.0 * f64::from(k + 1)));
    }
    assert_eq!(owners, ["a", "b", "a"], "each retry on another member");
    let out = drain(&mut c);
    let Some(Output::Ended(task)) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!((task.state, task.attempts), (TaskState::Failed, 3));
    assert!(
        task.message
            .contains("failed after 3 attempt(s): no result from a"),
        "{}",
        task.message
    );
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(
        c.handle_result(t(31.0), &id, ok("a")),
        ResultOutcome::LateDuplicate,
        "the last owner, too late"
    );
    assert_eq!(c.counters().duplicates, 1);
}

#[test]
fn an_owner_that_leaves_has_its_task_moved_and_its_late_result_dropped() {
    let mut c = coordinator();
    c.set_member(t(0.0), "a", Some(SourceCaps::PROCESS));
    let id = c.submit(t(0.0), spec("process", 0)).unwrap();
    drain(&mut c);
    c.set_member(t(1.0), "b", Some(SourceCaps::PROCESS));
    c.set_member(t(2.0), "a", None);
    assert_eq!(sends(&drain(&mut c)), [(id.clone(), "b".to_string())]);
    assert_eq!(c.task(&id).unwrap().attempts, 2);
    assert_eq!(
        c.handle_result(t(3.0), &id, ok("a")),
        ResultOutcome::LateDuplicate
    );
    assert_eq!(
        c.handle_result(t(3.0), &id, ok("b")),
        ResultOutcome::Accepted
    );
    assert_eq!(
        c.handle_result(t(3.0), &id, ok("b")),
        ResultOutcome::LateDuplicate,
        "a second result for a completed task"
    );
    assert_eq!(
        c.handle_result(t(3.0), "nope", ok("b")),
        ResultOutcome::Unknown
    );
    // A member that loses the capability gives its task up too.
    let id2 = c.submit(t(4.0), spec("process", 0)).unwrap();
    drain(&mut c);
    c.set_member(t(5.0), "b", Some(SourceCaps::NETWORK));
    assert_eq!(c.task(&id2).unwrap().state, TaskState::Waiting);
}

#[test]
fn a_failure_result_from_the_owner_ends_the_task_failed_with_its_message() {
    let mut c = coordinator();
    c.set_member(t(0.0), "a", Some(SourceCaps::PROCESS));
    let id = c.submit(t(0.0), spec("process", 0)).unwrap();
    let answer = TaskAnswer {
        ok: false,
        message: "no such pid".into(),
        ..ok("a")
    };
    assert_eq!(
        c.handle_result(t(1.0), &id, answer),
        ResultOutcome::Accepted
    );
    let task = c.task(&id).unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.message, "a reported failure: no such pid");
}

#[test]
fn cancel_ends_an_active_task_and_refuses_an_ended_or_unknown_one() {
    let mut c = coordinator();
    let id = c.submit(t(0.0), spec("process", 0)).unwrap();
    assert_eq!(c.cancel(t(1.0), &id), Ok(()));
    assert_eq!(c.task(&id).unwrap().state, TaskState::Cancelled);
    assert_eq!(
        c.cancel(t(1.0), &id),
        Err(CancelError::AlreadyEnded {
            id: id.clone(),
            state: TaskState::Cancelled
        })
    );
    assert_eq!(
        c.cancel(t(1.0), "x-9"),
        Err(CancelError::Unknown("x-9".into()))
    );
}

#[test]
fn a_submission_with_an_unknown_capability_or_bad_target_is_refused() {
    let mut c = coordinator();
    let e = c.submit(t(0.0), spec("telepathy", 0)).unwrap_err();
    assert!(matches!(e, SubmitError::UnknownCapability(_)));
    assert!(e.to_string().contains("known: process, network"), "{e}");
    let bad = TaskSpec {
        target: Some("a b\n".into()),
        ..spec("process", 0)
    };
    assert!(matches!(
        c.submit(t(0.0), bad),
        Err(SubmitError::BadTarget(_))
    ));
    let wire = daemoneye_proto::pb::control::TaskSubmit {
        capability: "process".into(),
        priority: 256,
        ..Default::default()
    };
    assert_eq!(
        daemoneye_core::coordinator::spec_from_wire(&wire),
        Err(SubmitError::BadPriority(256))
    );
}

#[test]
fn the_history_is_bounded_and_health_says_what_waits_and_what_failed() {
    let mut c = coordinator();
    assert_eq!(c.health(t(0.0)).0, Health::Healthy);
    let waiting = c.submit(t(0.0), spec("network", 0)).unwrap();
    let (h, why) = c.health(t(0.0));
    assert_eq!(h, Health::Degraded);
    assert!(why[0].contains("1 task(s) wait with no collector able to take them (network)"));
    c.cancel(t(0.0), &waiting).unwrap();
    for _ in 0..6 {
        let id = c
            .submit(
                t(0.0),
                TaskSpec {
                    max_attempts: Some(1),
                    ..spec("process", 0)
                },
            )
            .unwrap();
        let _ = id;
    }
    c.handle_timeout(t(10.0));
    assert_eq!(c.history().count(), 4, "bounded");
    let (h, why) = c.health(t(10.0));
    assert_eq!(h, Health::Degraded);
    assert!(
        why.iter().any(|w| w.contains("failed in the last")),
        "{why:?}"
    );
    assert_eq!(c.health(t(100.0)).0, Health::Healthy, "failures age out");
}

// ---- invariant 10 ------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Join(u8, u8),
    Leave(u8),
    Submit {
        cap: u8,
        priority: u8,
        target: Option<u8>,
        attempts: u8,
    },
    /// A result for the n-th task, from collector c (ok or not).
    Result(u8, u8, bool),
    /// The last owner of the n-th task answers (its true result, perhaps late).
    OwnerAnswers(u8),
    Cancel(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..4, 0u8..3).prop_map(|(c, k)| Op::Join(c, k)),
        1 => (0u8..4).prop_map(Op::Leave),
        3 => (0u8..2, any::<u8>(), proptest::option::weighted(0.2, 0u8..4), 0u8..4)
            .prop_map(|(cap, priority, target, attempts)| Op::Submit { cap, priority, target, attempts }),
        1 => (0u8..12, 0u8..4, any::<bool>()).prop_map(|(n, c, ok)| Op::Result(n, c, ok)),
        3 => (0u8..12).prop_map(Op::OwnerAnswers),
        1 => (0u8..12).prop_map(Op::Cancel),
        3 => (0u16..15_000).prop_map(Op::Advance),
    ]
}

const CAPS: [SourceCaps; 3] = [
    SourceCaps::PROCESS,
    SourceCaps::NETWORK,
    SourceCaps::from_bits_retain(SourceCaps::PROCESS.bits() | SourceCaps::NETWORK.bits()),
];
const NAMES: [&str; 2] = ["process", "network"];

/// What the model knows from the outputs alone.
#[derive(Default)]
struct Model {
    members: BTreeMap<String, SourceCaps>,
    tasks: Vec<String>,
    /// Who each task was last sent to, and the attempt.
    owner: BTreeMap<String, (String, u32)>,
    ended: BTreeMap<String, TaskState>,
    targets: BTreeMap<String, Option<String>>,
    caps: BTreeMap<String, SourceCaps>,
}

impl Model {
    fn check(&mut self, c: &mut Coordinator) -> Result<(), TestCaseError> {
        for out in drain(c) {
            match out {
                Output::Send(a) => {
                    prop_assert!(
                        !self.ended.contains_key(&a.task),
                        "{} sent after it ended",
                        a.task
                    );
                    let caps = self.members.get(&a.collector);
                    prop_assert!(
                        caps.is_some_and(|m| m.contains(self.caps[&a.task])),
                        "{} sent to {} which may not take it",
                        a.task,
                        a.collector
                    );
                    if let Some(target) = &self.targets[&a.task] {
                        prop_assert_eq!(target, &a.collector);
                    }
                    let prev = self.owner.insert(a.task.clone(), (a.collector, a.attempt));
                    prop_assert!(
                        prev.is_none_or(|(_, n)| n < a.attempt),
                        "attempt numbers grow"
                    );
                }
                Output::Ended(task) => {
                    let again = self.ended.insert(task.id.clone(), task.state);
                    prop_assert!(
                        again.is_none(),
                        "{} ended twice ({:?} then {:?})",
                        task.id,
                        again,
                        task.state
                    );
                    if task.state == TaskState::Failed && task.answer.is_none() {
                        prop_assert_eq!(
                            task.attempts,
                            task.max_attempts,
                            "failed before its retries: {:?}",
                            task
                        );
                    }
                    if task.state == TaskState::Completed {
                        let from = &task
                            .answer
                            .as_ref()
                            .expect("a completed task has an answer")
                            .collector;
                        prop_assert_eq!(
                            Some(from),
                            self.owner.get(&task.id).map(|o| &o.0),
                            "completed by a non-owner"
                        );
                    }
                }
                Output::Waiting { .. } => {}
            }
        }
        // Never lost: every task is active or ended, never both.
        for id in &self.tasks {
            let task = c.task(id);
            let active = c.active().iter().any(|t| &t.id == id);
            prop_assert!(
                active != self.ended.contains_key(id),
                "{id}: active {active}, ended {:?}, now {:?}",
                self.ended.get(id),
                task.map(|t| t.state)
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_task_ends_once_completed_failed_after_its_retries_or_cancelled(ops in proptest::collection::vec(op(), 1..150)) {
        let mut c = Coordinator::new(CoordinatorConfig {
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            history: 1000,
            ..CoordinatorConfig::default()
        });
        let mut m = Model::default();
        let mut now = t(0.0);
        for op in ops {
            match op {
                Op::Join(k, caps) => {
                    let id = format!("c{k}");
                    m.members.insert(id.clone(), CAPS[caps as usize]);
                    c.set_member(now, &id, Some(CAPS[caps as usize]));
                }
                Op::Leave(k) => {
                    let id = format!("c{k}");
                    m.members.remove(&id);
                    c.set_member(now, &id, None);
                }
                Op::Submit { cap, priority, target, attempts } => {
                    let spec = TaskSpec {
                        target: target.map(|k| format!("c{k}")),
                        max_attempts: (attempts > 0).then_some(u32::from(attempts)),
                        ..spec(NAMES[cap as usize], priority)
                    };
                    let target = spec.target.clone();
                    let id = c.submit(now, spec).unwrap();
                    m.targets.insert(id.clone(), target);
                    m.caps.insert(id.clone(), CAPS[cap as usize]);
                    m.tasks.push(id);
                }
                Op::Result(n, k, good) => {
                    if let Some(id) = m.tasks.get(n as usize).cloned() {
                        let from = format!("c{k}");
                        let owner = c.task(&id).filter(|t| t.state == TaskState::Assigned).and_then(|t| t.owner.clone());
                        let answer = TaskAnswer { ok: good, ..ok(&from) };
                        let outcome = c.handle_result(now, &id, answer);
                        prop_assert_eq!(outcome == ResultOutcome::Accepted, owner.as_deref() == Some(from.as_str()), "only the owner's result counts");
                    }
                }
                Op::OwnerAnswers(n) => {
                    if let Some(id) = m.tasks.get(n as usize).cloned()
                        && let Some((owner, _)) = m.owner.get(&id).cloned()
                    {
                        c.handle_result(now, &id, ok(&owner));
                    }
                }
                Op::Cancel(n) => {
                    if let Some(id) = m.tasks.get(n as usize).cloned() {
                        let ended = m.ended.contains_key(&id);
                        prop_assert_eq!(c.cancel(now, &id).is_ok(), !ended);
                    }
                }
                Op::Advance(ms) => {
                    now = now + Duration::from_millis(u64::from(ms));
                    c.handle_timeout(now);
                    prop_assert!(c.poll_timeout().is_none_or(|at| at > now), "a deadline still due");
                }
            }
            m.check(&mut c)?;
        }
        // Liveness: with time passing, every task ends.
        for _ in 0..20 {
            now = now + Duration::from_secs(6);
            c.handle_timeout(now);
            m.check(&mut c)?;
        }
        prop_assert!(c.active().is_empty(), "tasks never ended: {:?}", c.active());
        prop_assert_eq!(m.ended.len(), m.tasks.len());
        let counters = c.counters();
        prop_assert_eq!(counters.completed + counters.failed + counters.cancelled, m.tasks.len() as u64);
    }
}
