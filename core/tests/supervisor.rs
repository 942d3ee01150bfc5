//! The supervisor and its restart policy.

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::supervisor::{
    Action, LifecycleError, RestartPolicy, Signal, State, Supervisor, Timer,
};
use proptest::prelude::*;

fn t(secs: f64) -> Instant {
    Instant::from_nanos((secs * 1e9) as u64)
}

fn actions(s: &mut Supervisor) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn running(policy: RestartPolicy) -> Supervisor {
    let mut s = Supervisor::new("procmond", policy);
    s.start(t(0.0)).expect("start");
    assert_eq!(actions(&mut s), [Action::Spawn]);
    s.handle_spawned(t(0.0), 100);
    assert_eq!(s.state(), State::Running);
    s
}

#[test]
fn crash_is_restarted_after_the_backoff_with_a_new_pid() {
    let mut s = running(RestartPolicy::default());
    s.handle_exited(t(5.0), "killed by signal 9");
    assert_eq!(s.state(), State::Starting);
    assert_eq!(s.pid(), None);
    assert_eq!(
        s.poll_timeout(),
        Some((t(6.0), Timer::Restart)),
        "first backoff is 1 s"
    );
    s.handle_timeout(t(5.5));
    assert!(actions(&mut s).is_empty(), "not before the backoff");
    s.handle_timeout(t(6.0));
    assert_eq!(actions(&mut s), [Action::Spawn]);
    s.handle_spawned(t(6.0), 101);
    assert_eq!(
        (s.state(), s.pid(), s.restarts()),
        (State::Running, Some(101), 1)
    );
    assert_eq!(s.last_exit(), Some("killed by signal 9"));
}

#[test]
fn always_crashing_collector_ends_failed_after_max_restarts_and_stays_there() {
    let mut s = running(RestartPolicy::default());
    let mut now = 0.0;
    for _ in 0..5 {
        now += 0.1;
        s.handle_exited(t(now), "exit 1");
        let at = s
            .poll_timeout()
            .map(|(at, _)| at)
            .expect("restart scheduled");
        s.handle_timeout(at);
        assert_eq!(actions(&mut s), [Action::Spawn]);
        now = at.as_nanos() as f64 / 1e9;
        s.handle_spawned(at, 200);
    }
    s.handle_exited(t(now + 0.1), "exit 1");
    assert_eq!(s.state(), State::Failed);
    assert_eq!(s.poll_timeout().map(|(at, _)| at), None);
    s.handle_timeout(t(1000.0));
    assert!(actions(&mut s).is_empty(), "Failed stays failed");
    // An operator may start it again, with a fresh history.
    s.start(t(1000.0)).expect("start from failed");
    assert_eq!(actions(&mut s), [Action::Spawn]);
}

#[test]
fn graceful_stop_sends_term_then_kill_after_the_timeout() {
    let policy = RestartPolicy {
        stop_timeout: Duration::from_secs(3),
        ..RestartPolicy::default()
    };
    let mut s = running(policy);
    s.stop(t(10.0)).expect("stop");
    assert_eq!(actions(&mut s), [Action::Signal(Signal::Term)]);
    assert_eq!(s.state(), State::Stopping);
    assert_eq!(s.poll_timeout(), Some((t(13.0), Timer::Kill)));
    s.handle_timeout(t(13.0));
    assert_eq!(actions(&mut s), [Action::Signal(Signal::Kill)]);
    s.handle_timeout(t(20.0));
    assert!(actions(&mut s).is_empty(), "SIGKILL once");
    s.handle_exited(t(13.1), "killed by signal 9");
    assert_eq!(s.state(), State::Stopped);
    assert!(
        actions(&mut s).is_empty(),
        "a requested stop is not restarted"
    );
}

#[test]
fn pause_and_resume_send_stop_and_cont() {
    let mut s = running(RestartPolicy::default());
    s.pause(t(1.0)).expect("pause");
    assert_eq!(
        (s.state(), actions(&mut s)),
        (State::Paused, vec![Action::Signal(Signal::Stop)])
    );
    s.resume(t(2.0)).expect("resume");
    assert_eq!(
        (s.state(), actions(&mut s)),
        (State::Running, vec![Action::Signal(Signal::Cont)])
    );
}

#[test]
fn stopping_a_paused_collector_continues_it_first() {
    let mut s = running(RestartPolicy::default());
    s.pause(t(1.0)).expect("pause");
    actions(&mut s);
    s.stop(t(2.0)).expect("stop");
    assert_eq!(
        actions(&mut s),
        [Action::Signal(Signal::Cont), Action::Signal(Signal::Term)]
    );
}

#[test]
fn commands_that_do_not_apply_are_clear_errors() {
    let mut s = running(RestartPolicy::default());
    assert_eq!(
        s.start(t(1.0)),
        Err(LifecycleError::AlreadyRunning("procmond".into()))
    );
    let err = s.resume(t(1.0)).expect_err("resume of running");
    assert_eq!(
        err.to_string(),
        "collector \"procmond\" is running: cannot resume"
    );
    let mut stopped = Supervisor::new("x", RestartPolicy::default());
    assert!(matches!(
        stopped.stop(t(0.0)),
        Err(LifecycleError::InvalidState {
            state: State::Stopped,
            ..
        })
    ));
    assert!(matches!(
        stopped.pause(t(0.0)),
        Err(LifecycleError::InvalidState { .. })
    ));
    use daemoneye_proto::pb::control::LifecycleErrorCode;
    assert_eq!(
        LifecycleError::ProcessNotFound("nope".into()).code(),
        LifecycleErrorCode::ProcessNotFound
    );
    assert_eq!(err.code(), LifecycleErrorCode::InvalidState);
}

#[test]
fn operator_restart_stops_then_starts_again() {
    let mut s = running(RestartPolicy::default());
    s.restart(t(1.0)).expect("restart");
    assert_eq!(actions(&mut s), [Action::Signal(Signal::Term)]);
    s.handle_exited(t(1.5), "exit 0");
    assert_eq!(actions(&mut s), [Action::Spawn]);
    s.handle_spawned(t(1.5), 300);
    assert_eq!((s.state(), s.pid()), (State::Running, Some(300)));
}

#[test]
fn without_auto_restart_an_exit_stops() {
    let mut s = running(RestartPolicy {
        auto_restart: false,
        ..RestartPolicy::default()
    });
    s.handle_exited(t(1.0), "exit 3");
    assert_eq!(s.state(), State::Stopped);
    assert_eq!(s.poll_timeout().map(|(at, _)| at), None);
}

#[test]
fn spawn_failure_counts_as_a_crash() {
    let mut s = Supervisor::new("x", RestartPolicy::default());
    s.start(t(0.0)).expect("start");
    actions(&mut s);
    s.handle_spawn_failed(t(0.0), "No such file or directory");
    assert_eq!(s.state(), State::Starting);
    assert_eq!(
        s.last_exit(),
        Some("spawn failed: No such file or directory")
    );
}

/// Drives a supervisor through runs of the given lengths, each ending in a crash or, when
/// its flag is set, in a hang the agent answers with a health-driven restart (the process
/// exits 200 ms after the SIGTERM). Returns (end time, next spawn time) pairs, the spawn
/// times and the final state.
fn drive(policy: &RestartPolicy, runs: &[(u64, bool)]) -> (Vec<(u64, u64)>, Vec<u64>, State) {
    let mut s = Supervisor::new("x", policy.clone());
    let mut now = 0u64;
    s.start(Instant::from_nanos(now)).expect("start");
    let mut gaps = Vec::new();
    let mut spawns = vec![];
    for &(run, hangs) in runs {
        assert_eq!(actions(&mut s), [Action::Spawn]);
        s.handle_spawned(Instant::from_nanos(now), 1);
        spawns.push(now);
        now += run;
        if hangs {
            s.restart_unhealthy(Instant::from_nanos(now), "missed 3 heartbeats")
                .expect("a running collector can be restarted");
            assert_eq!(
                actions(&mut s),
                [Action::Signal(Signal::Cont), Action::Signal(Signal::Term)]
            );
            now += 200_000_000;
        }
        s.handle_exited(Instant::from_nanos(now), "crash");
        let Some(at) = s.poll_timeout().map(|(at, _)| at) else {
            break;
        };
        gaps.push((now, at.as_nanos()));
        now = at.as_nanos();
        s.handle_timeout(at);
    }
    (gaps, spawns, s.state())
}

#[test]
fn a_collector_that_keeps_hanging_ends_failed() {
    let policy = RestartPolicy {
        max_restarts: 2,
        ..RestartPolicy::default()
    };
    let (_, spawns, state) = drive(&policy, &[(5_000_000_000, true); 4]);
    assert_eq!(state, State::Failed);
    assert_eq!(spawns.len(), 3, "the first run and two restarts");
}

#[test]
fn a_health_driven_restart_waits_out_the_backoff_and_says_why() {
    let mut s = running(RestartPolicy::default());
    s.restart_unhealthy(t(5.0), "missed 3 heartbeats")
        .expect("restart");
    assert_eq!(s.state(), State::Stopping);
    actions(&mut s);
    // A frozen process ignores SIGTERM: SIGKILL after the stop timeout.
    s.handle_timeout(t(15.0));
    assert_eq!(actions(&mut s), [Action::Signal(Signal::Kill)]);
    s.handle_exited(t(15.1), "killed by signal 9");
    assert_eq!(s.state(), State::Starting);
    assert_eq!(
        s.last_exit(),
        Some("missed 3 heartbeats; killed by signal 9")
    );
    let at = s
        .poll_timeout()
        .map(|(at, _)| at)
        .expect("restart scheduled");
    assert_eq!(at, t(16.1), "the first backoff");
    s.handle_timeout(at);
    assert_eq!(actions(&mut s), [Action::Spawn]);
    assert_eq!(s.restarts(), 1);
    // Only a running collector is restarted for its health (a paused one is exempt).
    s.handle_spawned(at, 7);
    s.pause(at).expect("pause");
    assert!(s.restart_unhealthy(at, "missed").is_err());
}

#[test]
fn an_operator_restart_resets_the_count_of_health_driven_restarts() {
    let policy = RestartPolicy {
        max_restarts: 1,
        ..RestartPolicy::default()
    };
    let mut s = running(policy);
    s.restart_unhealthy(t(1.0), "missed").expect("restart");
    actions(&mut s);
    s.handle_exited(t(1.1), "exited with status 0");
    s.handle_timeout(t(2.1));
    assert_eq!(actions(&mut s), [Action::Spawn]);
    s.handle_spawned(t(2.1), 2);
    // The operator restarts it: the budget is whole again, so one more hang is restarted.
    s.restart(t(3.0)).expect("operator restart");
    actions(&mut s);
    s.handle_exited(t(3.1), "exited with status 0");
    assert_eq!(actions(&mut s), [Action::Spawn]);
    s.handle_spawned(t(3.1), 3);
    s.restart_unhealthy(t(4.0), "missed").expect("restart");
    actions(&mut s);
    s.handle_exited(t(4.1), "exited with status 0");
    assert_eq!(s.state(), State::Starting, "restarted, not failed");
    // An operator's stop during a health-driven restart is a plain stop.
    let at = s.poll_timeout().map(|(at, _)| at).expect("scheduled");
    s.handle_timeout(at);
    actions(&mut s);
    s.handle_spawned(at, 4);
    s.restart_unhealthy(at, "missed").expect("restart");
    s.stop(at).expect("stop");
    s.handle_exited(at, "exited with status 0");
    assert_eq!(s.state(), State::Stopped);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn restarts_never_exceed_the_policy_and_respect_the_backoff(
        runs in proptest::collection::vec((prop_oneof![0u64..3_000_000_000, 50_000_000_000u64..90_000_000_000], any::<bool>()), 1..40),
        max_restarts in 1u32..8,
    ) {
        let policy = RestartPolicy {
            max_restarts,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            stable_after: Duration::from_secs(60),
            ..RestartPolicy::default()
        };
        let (gaps, spawns, _state) = drive(&policy, &runs);
        // Restarts (every spawn after the first) within any 60 s window: at most max_restarts.
        let restarts = &spawns[1..];
        for (i, &a) in restarts.iter().enumerate() {
            let within = restarts[i..].iter().take_while(|&&b| b - a < 60_000_000_000).count();
            prop_assert!(within as u32 <= max_restarts, "{within} restarts within 60 s from {a}");
        }
        // The reference backoff: 1 s doubling to 8 s, reset by a run of 60 s or more.
        let mut expected = 1_000_000_000u64;
        for (k, &(crash, spawn)) in gaps.iter().enumerate() {
            // A run is measured from its spawn to its end (for a hang, the exit that
            // follows the health-driven SIGTERM).
            let lasted = runs[k].0 + if runs[k].1 { 200_000_000 } else { 0 };
            if lasted >= 60_000_000_000 {
                expected = 1_000_000_000;
            }
            prop_assert_eq!(spawn - crash, expected, "restart {} after run {:?}", k, runs[k]);
            expected = (expected * 2).min(8_000_000_000);
        }
    }

    #[test]
    fn a_stable_run_resets_the_count(short in 1u32..5) {
        let policy = RestartPolicy { max_restarts: 5, ..RestartPolicy::default() };
        // `short` quick crashes, then one run, then four quick crashes: the crash ending
        // the middle run plus the four make five restarts.
        let pattern = |middle: u64| {
            let mut runs = vec![(100_000_000u64, false); short as usize];
            runs.push((middle, false));
            runs.extend([(100_000_000u64, true); 4]);
            runs
        };
        let (_, _, stable) = drive(&policy, &pattern(120_000_000_000));
        prop_assert_eq!(stable, State::Starting, "a 120 s run resets the count: a fifth restart is scheduled");
        let (_, _, unstable) = drive(&policy, &pattern(100_000_000));
        prop_assert_eq!(unstable, State::Failed, "without the stable run the same crashes exceed the policy");
    }
}
