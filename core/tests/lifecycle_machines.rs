//! Collector registration (collector side) and the agent's registry.

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::registration::{RegAction, RegState, Registration, RegistrationConfig};
use daemoneye_core::registry::{CollectorHealth, Registry, RegistryEvent, SourceCaps};
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
fn a_collector_missing_three_heartbeats_is_unhealthy_until_it_heartbeats_again() {
    let mut r = registry();
    r.register(ms(0), "procmond-a", "process", SourceCaps::PROCESS, 10);
    r.register(ms(0), "procmond-b", "process", SourceCaps::PROCESS, 11);
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
        [RegistryEvent::Unhealthy {
            id: "procmond-a".into()
        }]
    );
    assert_eq!(
        r.get("procmond-a").map(|c| c.health),
        Some(CollectorHealth::Unhealthy)
    );
    assert_eq!(
        r.available("procmond-a"),
        None,
        "an unhealthy one takes no tasks"
    );
    assert_eq!(r.available("procmond-b"), Some(SourceCaps::PROCESS));
    r.heartbeat(ms(31_000), "procmond-a");
    assert_eq!(
        events(&mut r),
        [RegistryEvent::Recovered {
            id: "procmond-a".into()
        }]
    );
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
