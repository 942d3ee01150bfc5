//! Collector registration (collector side) and the agent's registry.

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::registration::{RegAction, RegState, Registration, RegistrationConfig};
use daemoneye_core::registry::{CollectorHealth, Completion, Registry, RegistryEvent, SourceCaps};
use proptest::prelude::*;

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

fn acts(r: &mut Registration) -> Vec<RegAction> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn events(r: &mut Registry) -> Vec<RegistryEvent> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

#[test]
fn registers_on_answer_then_heartbeats_every_interval() {
    let mut r = Registration::new(RegistrationConfig::default(), 1);
    r.start(ms(0));
    assert_eq!(acts(&mut r), [RegAction::Register]);
    r.handle_answer(ms(10), true, Some(Duration::from_secs(2)));
    assert_eq!(r.state(), RegState::Registered);
    assert_eq!(
        r.poll_timeout().map(|(at, _)| at),
        Some(ms(2010)),
        "the agent's interval wins"
    );
    for k in 1..=3 {
        r.handle_timeout(ms(10 + 2000 * k));
        assert_eq!(acts(&mut r), [RegAction::Heartbeat { sequence: k }]);
    }
}

#[test]
fn unanswered_registration_retries_with_backoff_then_fails() {
    let config = RegistrationConfig {
        max_attempts: 4,
        request_timeout: Duration::from_millis(100),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_millis(500),
        ..RegistrationConfig::default()
    };
    let mut r = Registration::new(config, 7);
    r.start(ms(0));
    // The first Register is counted by the loop below.
    let mut sends = 0;
    let mut now = ms(0);
    while let Some(at) = r.poll_timeout().map(|(at, _)| at) {
        now = at;
        r.handle_timeout(now);
        sends += acts(&mut r)
            .iter()
            .filter(|a| **a == RegAction::Register)
            .count();
    }
    assert_eq!(r.state(), RegState::Failed);
    assert_eq!(sends, 4, "four attempts in all (the first included)");
    assert!(now > ms(4 * 100 + 3 * 100), "retries waited their backoff");
}

#[test]
fn refused_registration_is_retried() {
    let mut r = Registration::new(RegistrationConfig::default(), 3);
    r.start(ms(0));
    acts(&mut r);
    r.handle_answer(ms(5), false, None);
    assert_eq!(r.state(), RegState::Registering { attempt: 2 });
    let at = r.poll_timeout().map(|(at, _)| at).expect("retry scheduled");
    r.handle_timeout(at);
    assert_eq!(acts(&mut r), [RegAction::Register]);
}

#[test]
fn registers_again_after_the_broker_comes_back() {
    let mut r = Registration::new(RegistrationConfig::default(), 3);
    r.start(ms(0));
    acts(&mut r);
    r.handle_answer(ms(1), true, None);
    r.handle_disconnect(ms(2));
    assert_eq!(r.state(), RegState::Unregistered);
    assert_eq!(
        r.poll_timeout().map(|(at, _)| at),
        None,
        "nothing to send while disconnected"
    );
    r.start(ms(5000));
    assert_eq!(acts(&mut r), [RegAction::Register]);
}

#[test]
fn deregistration_ends_unregistered_even_without_an_answer() {
    let mut r = Registration::new(RegistrationConfig::default(), 3);
    r.start(ms(0));
    acts(&mut r);
    r.handle_answer(ms(1), true, None);
    r.deregister(ms(2));
    assert_eq!(
        (r.state(), acts(&mut r)),
        (RegState::Deregistering, vec![RegAction::Deregister])
    );
    r.handle_timeout(ms(10_000));
    assert_eq!(r.state(), RegState::Unregistered);
}

proptest! {
    #[test]
    fn retry_delays_stay_within_the_jittered_exponential_bounds(seed in any::<u64>()) {
        let config = RegistrationConfig {
            max_attempts: 12,
            request_timeout: Duration::from_millis(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(3000),
            ..RegistrationConfig::default()
        };
        let mut r = Registration::new(config, seed);
        r.start(ms(0));
        acts(&mut r);
        let mut attempt = 1u32;
        let mut now = ms(0);
        loop {
            // The answer deadline passes: a retry is scheduled.
            now = now + Duration::from_millis(10);
            r.handle_timeout(now);
            if r.state() == RegState::Failed {
                break;
            }
            let at = r.poll_timeout().map(|(at, _)| at).expect("retry");
            let delay = at.saturating_since(now).as_millis() as u64;
            let cap = (100u64 << (attempt - 1).min(20)).min(3000);
            prop_assert!(delay >= cap / 2 && delay <= cap, "attempt {attempt}: delay {delay} outside [{}, {cap}]", cap / 2);
            now = at;
            r.handle_timeout(now);
            prop_assert_eq!(acts(&mut r), vec![RegAction::Register]);
            attempt += 1;
        }
        prop_assert_eq!(attempt, 12);
    }
}

fn registry() -> Registry {
    Registry::new(Duration::from_secs(10), 3)
}

#[test]
fn a_collector_missing_three_heartbeats_is_unhealthy_and_its_tasks_move() {
    let mut r = registry();
    r.register(ms(0), "procmond-a", "process", SourceCaps::PROCESS, 10);
    r.register(ms(0), "procmond-b", "process", SourceCaps::PROCESS, 11);
    let owner = r
        .assign("t1", SourceCaps::PROCESS, ms(600_000))
        .expect("assigned");
    assert_eq!(owner, "procmond-a", "fewest tasks, then name");
    // b keeps heartbeating, a falls silent.
    for k in 1..=2 {
        r.heartbeat(ms(k * 10_000), "procmond-b");
        r.handle_timeout(ms(k * 10_000));
    }
    assert!(
        events(&mut r).is_empty(),
        "two missed heartbeats are not yet unhealthy"
    );
    r.heartbeat(ms(30_000), "procmond-b");
    r.handle_timeout(ms(30_000));
    assert_eq!(
        events(&mut r),
        [
            RegistryEvent::Unhealthy {
                id: "procmond-a".into()
            },
            RegistryEvent::Reassigned {
                task: "t1".into(),
                from: "procmond-a".into(),
                to: "procmond-b".into()
            },
        ]
    );
    assert_eq!(r.owner("t1"), Some("procmond-b"));
    assert_eq!(
        r.get("procmond-a").map(|c| c.health),
        Some(CollectorHealth::Unhealthy)
    );
}

#[test]
fn a_late_duplicate_result_is_recognised_and_dropped() {
    let mut r = registry();
    r.register(ms(0), "a", "process", SourceCaps::PROCESS, 1);
    r.assign("t", SourceCaps::PROCESS, ms(1_000_000));
    r.register(ms(25_000), "b", "process", SourceCaps::PROCESS, 2);
    r.handle_timeout(ms(30_000));
    assert_eq!(r.owner("t"), Some("b"));
    assert_eq!(
        r.complete("t", "a"),
        Completion::LateDuplicate,
        "the old owner's late result"
    );
    assert_eq!(r.complete("t", "b"), Completion::Accepted);
    assert_eq!(
        r.complete("t", "b"),
        Completion::LateDuplicate,
        "a second result for a done task"
    );
    assert_eq!(r.complete("other", "b"), Completion::Unknown);
}

#[test]
fn a_paused_collector_is_exempt_from_heartbeat_checks_until_resumed() {
    let mut r = registry();
    r.register(ms(0), "a", "process", SourceCaps::PROCESS, 1);
    r.set_paused(ms(1), "a", true);
    r.handle_timeout(ms(600_000));
    assert!(events(&mut r).is_empty());
    r.set_paused(ms(600_000), "a", false);
    r.handle_timeout(ms(629_000));
    assert!(events(&mut r).is_empty(), "the clock restarts on resume");
    r.handle_timeout(ms(630_000));
    assert_eq!(
        events(&mut r),
        [RegistryEvent::Unhealthy { id: "a".into() }]
    );
}

#[test]
fn a_task_with_no_capable_collector_waits_and_is_placed_later() {
    let mut r = registry();
    r.register(ms(0), "net", "network", SourceCaps::NETWORK, 1);
    assert_eq!(r.assign("scan", SourceCaps::PROCESS, ms(100_000)), None);
    r.register(
        ms(5),
        "proc",
        "process",
        SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE,
        2,
    );
    assert_eq!(r.owner("scan"), Some("proc"));
    r.handle_timeout(ms(100_000));
    assert!(events(&mut r).contains(&RegistryEvent::Expired {
        task: "scan".into()
    }));
    assert_eq!(r.owner("scan"), None);
}

#[derive(Debug, Clone)]
enum Op {
    Register(u8, u8),
    Heartbeat(u8),
    Pause(u8, bool),
    Assign(u8, u8),
    Complete(u8, u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..3).prop_map(|(c, caps)| Op::Register(c, caps)),
        (0u8..4).prop_map(Op::Heartbeat),
        (0u8..4, any::<bool>()).prop_map(|(c, p)| Op::Pause(c, p)),
        (0u8..8, 0u8..2).prop_map(|(t, cap)| Op::Assign(t, cap)),
        (0u8..8, 0u8..4).prop_map(|(t, c)| Op::Complete(t, c)),
        (0u16..20_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn tasks_are_only_ever_owned_by_capable_registered_collectors_and_complete_once(ops in proptest::collection::vec(op(), 1..120)) {
        let caps = [SourceCaps::PROCESS, SourceCaps::NETWORK, SourceCaps::PROCESS | SourceCaps::NETWORK];
        let mut r = registry();
        let mut now = ms(0);
        let mut done = std::collections::BTreeSet::new();
        let mut assigned = std::collections::BTreeMap::new();
        for op in ops {
            match op {
                Op::Register(c, k) => r.register(now, &format!("c{c}"), "x", caps[k as usize], 1),
                Op::Heartbeat(c) => { r.heartbeat(now, &format!("c{c}")); }
                Op::Pause(c, p) => r.set_paused(now, &format!("c{c}"), p),
                Op::Assign(t, k) => {
                    let task = format!("t{t}");
                    if !assigned.contains_key(&task) && !done.contains(&task) {
                        r.assign(&task, caps[k as usize], now + Duration::from_secs(120));
                        assigned.insert(task, caps[k as usize]);
                    }
                }
                Op::Complete(t, c) => {
                    let task = format!("t{t}");
                    if r.complete(&task, &format!("c{c}")) == Completion::Accepted {
                        prop_assert!(done.insert(task.clone()), "{task} completed twice");
                    }
                }
                Op::Advance(d) => {
                    now = now + Duration::from_millis(u64::from(d));
                    r.handle_timeout(now);
                }
            }
            while r.poll_output().is_some() {}
            for (task, cap) in &assigned {
                if let Some(owner) = r.owner(task) {
                    let info = r.get(owner).expect("owner is registered");
                    prop_assert!(info.capabilities.contains(*cap), "{task} owned by {owner} without the capability");
                }
            }
        }
    }
}

#[test]
fn only_the_spawned_process_or_its_descendants_speak_for_a_managed_collector() {
    use daemoneye_core::registry::{Expected, Peer, Refusal, admit};
    let managed = Expected::Managed { pid: Some(100) };
    let peer = |pid: Option<u32>, ancestors: &[u32]| Peer {
        pid,
        uid: 1000,
        ancestors: ancestors.to_vec(),
    };
    assert_eq!(admit(&managed, &peer(Some(100), &[50, 1])), Ok(()));
    assert_eq!(
        admit(&managed, &peer(Some(200), &[100, 50, 1])),
        Ok(()),
        "a child"
    );
    assert_eq!(
        admit(&managed, &peer(Some(300), &[50, 1])),
        Err(Refusal::NotSpawned {
            pid: 300,
            spawned: 100
        })
    );
    assert_eq!(admit(&managed, &peer(None, &[])), Err(Refusal::NoPeerPid));
    assert_eq!(
        admit(&Expected::Managed { pid: None }, &peer(Some(100), &[])),
        Err(Refusal::NotRunning)
    );
    let external = Expected::External { uid: 1000 };
    assert_eq!(admit(&external, &peer(Some(7), &[])), Ok(()));
    assert_eq!(
        admit(&Expected::External { uid: 1001 }, &peer(Some(7), &[])),
        Err(Refusal::WrongUid {
            uid: 1000,
            expected: 1001
        })
    );
    assert_eq!(
        admit(&Expected::Unknown, &peer(Some(100), &[])),
        Err(Refusal::UnknownCollector)
    );
}
