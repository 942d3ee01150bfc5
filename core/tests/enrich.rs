//! The enrichment machine against a naive reference: every alert taken is published
//! exactly once, with every kind asked exactly once, in order; a kind is arrived exactly
//! when its first answer was a result that came before the deadline; publication happens
//! as soon as every kind is answered, or at the deadline; the pending count stays bounded;
//! every answer not used is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::detect::enrich::{
    Admission, Answer, EnrichConfig, Enricher, Output, task_request,
};
use daemoneye_proto::pb::events::{Alert, ProcessEvent, ProcessInfo, ProcessTaskResult};
use proptest::prelude::*;

const KINDS: [&str; 3] = ["hash", "ancestry", "open_files"];
const TIMEOUT: Duration = Duration::from_millis(1000);

fn alert(id: u8, level: &str, update: bool) -> Alert {
    Alert {
        alert_id: format!("a{id}"),
        level: level.into(),
        update,
        event: Some(ProcessEvent {
            process: Some(ProcessInfo {
                pid: 1000 + u32::from(id),
                start_ticks: 77,
                exe: "/usr/bin/x".into(),
                exe_dev: 5,
                exe_inode: 6,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn result(task: &str) -> Answer {
    Answer::Result {
        task_id: task.into(),
        collector_id: "procmond".into(),
        ok: true,
        message: "done".into(),
        result: Some(ProcessTaskResult {
            exe_sha256: "ab".into(),
            ..Default::default()
        }),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alert { id: u8, level: u8, update: bool },
    Answer { id: u8, kind: u8, arrived: bool },
    Advance(u64),
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, 0u8..3, proptest::bool::weighted(0.1))
            .prop_map(|(id, level, update)| Op::Alert { id, level, update }),
        6 => (0u8..10, 0u8..4, proptest::bool::weighted(0.8))
            .prop_map(|(id, kind, arrived)| Op::Answer { id, kind, arrived }),
        3 => (0u64..700).prop_map(Op::Advance),
        1 => Just(Op::Timeout),
    ]
}

/// What the reference knows of one alert taken.
#[derive(Debug, Default)]
struct Taken {
    deadline: u64,
    full: bool,
    /// First answer per kind before the deadline: arrived or not.
    first: BTreeMap<String, bool>,
    published_at: Option<u64>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_alert_is_enriched_once_with_every_kind_once_and_nothing_late_arrives(
        ops in proptest::collection::vec(op(), 1..150),
        max_pending in 1usize..5,
    ) {
        let mut config = EnrichConfig::new(&["high", "critical"], &KINDS, TIMEOUT);
        config.max_pending = max_pending;
        let mut m = Enricher::new(config);
        let mut now_ms = 0u64;
        let at = |ms: u64| Instant::from_nanos(ms * 1_000_000);
        let mut taken: BTreeMap<String, Taken> = BTreeMap::new();
        let mut published: BTreeMap<String, Alert> = BTreeMap::new();
        let mut submits: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut answers = 0u64;
        let mut used = 0u64;
        // Applies the deadlines the reference knows are due at `now` (inputs do the same).
        fn due(taken: &mut BTreeMap<String, Taken>, now: u64) {
            for t in taken.values_mut() {
                if t.published_at.is_none() && t.deadline <= now {
                    t.published_at = Some(t.deadline);
                }
            }
        }
        for op in ops {
            let input = !matches!(op, Op::Advance(_));
            match op {
                Op::Advance(ms) => now_ms += ms,
                Op::Timeout => {
                    due(&mut taken, now_ms);
                    m.handle_timeout(at(now_ms));
                }
                Op::Alert { id, level, update } => {
                    due(&mut taken, now_ms);
                    let level = ["low", "high", "critical"][level as usize];
                    let a = alert(id, level, update);
                    let got = m.handle_alert(at(now_ms), a.clone());
                    let wanted = level != "low" && !update;
                    let expect = if !wanted {
                        Admission::Ignored
                    } else if taken.contains_key(&a.alert_id) {
                        Admission::Repeat
                    } else {
                        let waiting = taken.values().filter(|t| t.published_at.is_none()).count();
                        if waiting >= max_pending {
                            taken.insert(a.alert_id.clone(), Taken {
                                deadline: now_ms,
                                full: true,
                                published_at: Some(now_ms),
                                ..Default::default()
                            });
                            Admission::Full
                        } else {
                            taken.insert(a.alert_id.clone(), Taken {
                                deadline: now_ms + TIMEOUT.as_millis() as u64,
                                ..Default::default()
                            });
                            Admission::Waiting
                        }
                    };
                    prop_assert_eq!(got, expect);
                }
                Op::Answer { id, kind, arrived } => {
                    due(&mut taken, now_ms);
                    answers += 1;
                    let alert_id = format!("a{id}");
                    let kind = ["hash", "ancestry", "open_files", "memory"][kind as usize];
                    let answer = if arrived {
                        result(&format!("t-{alert_id}-{kind}"))
                    } else {
                        Answer::NotArrived { task_id: String::new(), message: "task failed".into() }
                    };
                    if let Some(t) = taken.get_mut(&alert_id)
                        && t.published_at.is_none()
                        && KINDS.contains(&kind)
                        && !t.first.contains_key(kind)
                    {
                        used += 1;
                        t.first.insert(kind.to_string(), arrived);
                        if t.first.len() == KINDS.len() {
                            t.published_at = Some(now_ms);
                        }
                    }
                    m.handle_answer(at(now_ms), &alert_id, kind, answer);
                }
            }
            while let Some(out) = m.poll_output() {
                match out {
                    Output::Submit { alert_id, kind, request } => {
                        prop_assert_eq!(request.start_ticks, 77);
                        submits.entry(alert_id).or_default().push(kind);
                    }
                    Output::Enriched(a) => {
                        let t = taken.get(&a.alert_id).expect("published alerts were taken");
                        prop_assert!(
                            matches!(t.published_at, Some(x) if x == now_ms || x == t.deadline),
                            "{} published at {} (reference {:?})", a.alert_id, now_ms, t.published_at
                        );
                        prop_assert!(published.insert(a.alert_id.clone(), *a).is_none(), "published twice");
                    }
                }
            }
            prop_assert!(m.pending() <= max_pending);
            // Nothing is published early: a waiting alert is in the machine.
            let waiting = taken.values().filter(|t| t.published_at.is_none()).count();
            prop_assert_eq!(m.pending(), waiting);
            // After an input, every deadline due has been applied.
            if let Some((deadline, _)) = m.poll_timeout()
                && input
            {
                prop_assert!(deadline > at(now_ms));
            }
        }
        // Liveness: after the last deadline everything is out.
        now_ms += TIMEOUT.as_millis() as u64;
        due(&mut taken, now_ms);
        m.handle_timeout(at(now_ms));
        while let Some(out) = m.poll_output() {
            match out {
                Output::Enriched(a) => {
                    prop_assert!(published.insert(a.alert_id.clone(), *a).is_none(), "published twice");
                }
                Output::Submit { .. } => prop_assert!(false, "a submit after the inputs"),
            }
        }
        prop_assert_eq!(m.pending(), 0);
        prop_assert!(m.poll_timeout().is_none());
        prop_assert_eq!(published.len(), taken.len(), "every alert taken is published");
        for (id, t) in &taken {
            let a = &published[id];
            prop_assert!(a.enriched && a.update);
            let kinds: Vec<&str> = a.enrichment.iter().map(|e| e.kind.as_str()).collect();
            prop_assert_eq!(kinds, KINDS.to_vec(), "every kind once, in order");
            if !t.full {
                prop_assert_eq!(submits.get(id).map(Vec::len), Some(KINDS.len()));
            } else {
                prop_assert!(!submits.contains_key(id), "a full alert asks nothing");
            }
            for e in &a.enrichment {
                let expect = t.first.get(&e.kind).copied().unwrap_or(false);
                prop_assert_eq!(e.arrived, expect, "{} {}", id, e.kind);
                if e.arrived {
                    prop_assert_eq!(&e.task_id, &format!("t-{id}-{}", e.kind));
                    prop_assert!(e.result.is_some());
                } else {
                    prop_assert!(!e.message.is_empty(), "a missing kind says why");
                }
            }
        }
        let s = m.stats();
        prop_assert_eq!(s.published as usize, taken.len());
        prop_assert_eq!(s.late + s.duplicates + s.unknown + used, answers, "every unused answer counted");
    }
}

#[test]
fn an_answer_at_the_deadline_is_late_and_the_kinds_say_why() {
    let mut m = Enricher::new(EnrichConfig::new(&["high"], &KINDS, TIMEOUT));
    let t0 = Instant::from_nanos(0);
    assert_eq!(
        m.handle_alert(t0, alert(1, "high", false)),
        Admission::Waiting
    );
    let subs: Vec<_> = std::iter::from_fn(|| m.poll_output()).collect();
    assert_eq!(subs.len(), 3);
    m.handle_submitted(t0, "a1", "hash", "task-7");
    m.handle_answer(
        t0 + Duration::from_millis(10),
        "a1",
        "ancestry",
        result("task-8"),
    );
    assert!(m.poll_output().is_none());
    m.handle_answer(t0 + TIMEOUT, "a1", "open_files", result("task-9"));
    let Some(Output::Enriched(a)) = m.poll_output() else {
        panic!("published at the deadline")
    };
    let by_kind: BTreeMap<_, _> = a.enrichment.iter().map(|e| (e.kind.as_str(), e)).collect();
    assert!(by_kind["ancestry"].arrived);
    assert!(!by_kind["hash"].arrived && by_kind["hash"].message == "no result within 1s");
    assert_eq!(by_kind["hash"].task_id, "task-7");
    assert!(!by_kind["open_files"].arrived);
    assert_eq!(m.stats().late, 1);
    assert_eq!(m.stats().timed_out, 1);
    // A redelivery of the alert is not enriched again.
    assert_eq!(
        m.handle_alert(t0 + TIMEOUT, alert(1, "high", false)),
        Admission::Repeat
    );
    assert!(m.poll_output().is_none());
}

#[test]
fn the_task_request_names_the_alerts_process_and_its_executable() {
    let r = task_request(&alert(3, "high", false));
    assert_eq!(
        (r.pid, r.start_ticks, r.exe.as_str(), r.exe_dev, r.exe_inode),
        (1003, 77, "/usr/bin/x", 5, 6)
    );
}

#[test]
fn the_coordinators_answer_is_arrived_only_with_a_collectors_result() {
    use daemoneye_core::detect::enrich::answer_of;
    use daemoneye_proto::pb::control::{TaskRecord, TaskResult, TaskState, TaskSubmitResponse};
    use prost::Message;
    let record = |state: TaskState, message: &str| TaskRecord {
        task_id: "t1".into(),
        state: state as i32,
        attempts: 2,
        message: message.into(),
        ..Default::default()
    };
    let payload = ProcessTaskResult {
        exe_sha256: "ab".into(),
        ..Default::default()
    };
    let done = TaskSubmitResponse {
        task: Some(record(TaskState::Completed, "")),
        result: Some(TaskResult {
            task_id: "t1".into(),
            collector_id: "procmond".into(),
            ok: true,
            message: "sha256".into(),
            payload: payload.encode_to_vec().into(),
        }),
        ..Default::default()
    };
    assert_eq!(
        answer_of(&done),
        Answer::Result {
            task_id: "t1".into(),
            collector_id: "procmond".into(),
            ok: true,
            message: "sha256".into(),
            result: Some(payload),
        }
    );
    let failed = TaskSubmitResponse {
        task: Some(record(TaskState::Failed, "")),
        ..Default::default()
    };
    assert_eq!(
        answer_of(&failed),
        Answer::NotArrived {
            task_id: "t1".into(),
            message: "task failed after 2 attempts".into()
        }
    );
    let refused = TaskSubmitResponse {
        error: "unknown capability".into(),
        ..Default::default()
    };
    assert!(
        matches!(answer_of(&refused), Answer::NotArrived { message, .. } if message == "task refused: unknown capability")
    );
}
