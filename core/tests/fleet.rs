//! The fleet: supervisors and registry together, driven without any process (spawns are
//! answered with made-up pids, as a simulation does).

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::broker::Health;
use daemoneye_core::coordinator::{Output as TaskOutput, ResultOutcome, TaskSpec, TaskState};
use daemoneye_core::fleet::{
    Claim, CollectorState, Command, Event, Fleet, FleetConfig, Output, Timer,
};
use daemoneye_core::registry::{self, Peer, Refusal, SourceCaps};
use daemoneye_core::supervisor::{LifecycleError, RestartPolicy, Signal, State};
use daemoneye_proto::pb::control as pbc;
use proptest::prelude::*;

const HB: Duration = Duration::from_secs(10);
const UID: u32 = 1000;

fn t(secs: f64) -> Instant {
    Instant::from_nanos((secs * 1e9) as u64)
}

/// A driver without processes: spawns succeed with increasing pids.
struct Driver {
    fleet: Fleet,
    next_pid: u32,
    /// Everything the fleet asked for, in order.
    log: Vec<Output>,
}

impl Driver {
    fn new(collectors: &[&str], policy: RestartPolicy) -> Self {
        let mut fleet = Fleet::new(FleetConfig {
            heartbeat_interval: HB,
            missed_heartbeats: 3,
            ..FleetConfig::default()
        });
        for name in collectors {
            fleet.supervise(*name, policy.clone());
        }
        Self {
            fleet,
            next_pid: 100,
            log: Vec::new(),
        }
    }

    /// Carries out every output; returns them.
    fn drain(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.fleet.poll_output() {
            if let Output::Spawn { collector } = &o {
                self.next_pid += 1;
                self.fleet.handle_spawned(now, collector, self.next_pid);
            }
            out.push(o);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    fn start(&mut self, now: Instant) {
        self.fleet.start_all(now);
        self.drain(now);
    }

    fn pid(&self, name: &str) -> u32 {
        self.fleet
            .supervisor(name)
            .and_then(|s| s.pid())
            .expect("running")
    }

    fn register(&mut self, now: Instant, name: &str) -> pbc::RegisterResponse {
        let pid = self.pid(name);
        let answer =
            self.fleet
                .handle_registration(now, &register_request(name, pid), &peer(Some(pid)));
        self.drain(now);
        answer
    }

    fn heartbeat(&mut self, now: Instant, name: &str) {
        let pid = self.pid(name);
        self.fleet.handle_heartbeat(
            now,
            &format!("control.health.heartbeat.{name}"),
            &heartbeat(name),
            &peer(Some(pid)),
        );
        self.drain(now);
    }

    /// Submits a task (its outputs are left to the next drain).
    fn submit(&mut self, now: Instant, spec: TaskSpec) -> String {
        self.fleet.submit_task(now, spec).expect("accepted")
    }

    fn timeout(&mut self, now: Instant) -> Vec<Output> {
        self.fleet.handle_timeout(now);
        self.drain(now)
    }

    fn state(&self, name: &str) -> CollectorState {
        self.fleet
            .collectors()
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.state)
            .expect("known collector")
    }
}

fn register_request(id: &str, pid: u32) -> pbc::RegisterRequest {
    pbc::RegisterRequest {
        collector_id: id.into(),
        collector_type: "process".into(),
        capabilities: SourceCaps::PROCESS.bits(),
        pid,
        version: String::new(),
    }
}

fn heartbeat(id: &str) -> pbc::Heartbeat {
    pbc::Heartbeat {
        collector_id: id.into(),
        ..Default::default()
    }
}

fn peer(pid: Option<u32>) -> Peer {
    Peer {
        pid,
        uid: UID,
        ancestors: Vec::new(),
    }
}

fn signals(out: &[Output]) -> Vec<Signal> {
    out.iter()
        .filter_map(|o| match o {
            Output::Signal { signal, .. } => Some(*signal),
            _ => None,
        })
        .collect()
}

fn quick_policy(max_restarts: u32) -> RestartPolicy {
    RestartPolicy {
        max_restarts,
        backoff_initial: Duration::from_secs(1),
        stop_timeout: Duration::from_secs(2),
        ..RestartPolicy::default()
    }
}

#[test]
fn start_all_spawns_every_collector_and_registration_is_answered_with_the_interval() {
    let mut d = Driver::new(&["a", "b"], RestartPolicy::default());
    d.fleet.start_all(t(0.0));
    let out = d.drain(t(0.0));
    assert_eq!(
        out,
        [
            Output::Spawn {
                collector: "a".into()
            },
            Output::Spawn {
                collector: "b".into()
            },
        ]
    );
    assert_eq!(d.state("a"), CollectorState::Running);
    let answer = d.register(t(1.0), "a");
    assert!(answer.accepted, "{}", answer.message);
    assert_eq!(answer.heartbeat_interval_ms, 10_000);
    let a = d.fleet.supervised("a").expect("a");
    assert_eq!(a.capabilities, SourceCaps::PROCESS);
    assert_eq!(a.last_heartbeat, Some(t(1.0)));
}

#[test]
fn an_unhealthy_collector_is_restarted_through_its_supervisor() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    let first = d.pid("a");
    d.register(t(0.0), "a");
    d.heartbeat(t(10.0), "a");
    assert_eq!(
        d.fleet.poll_timeout(),
        Some((t(40.0), Timer::Registry(registry::Timer::HeartbeatMissed)))
    );
    assert!(d.timeout(t(39.9)).is_empty(), "not before three intervals");
    let out = d.timeout(t(40.0));
    assert_eq!(
        out,
        [
            Output::Event(Event::Unhealthy {
                collector: "a".into(),
                missed: 3
            }),
            Output::Event(Event::RestartingUnhealthy {
                collector: "a".into()
            }),
            Output::Signal {
                collector: "a".into(),
                pid: first,
                signal: Signal::Cont
            },
            Output::Signal {
                collector: "a".into(),
                pid: first,
                signal: Signal::Term
            },
        ],
        "SIGCONT first, so that a frozen process can act on SIGTERM"
    );
    assert_eq!(d.state("a"), CollectorState::Stopping);
    d.fleet
        .handle_exited(t(41.0), "a", first, "killed by signal 15");
    assert_eq!(d.state("a"), CollectorState::Starting);
    let out = d.timeout(t(42.0));
    assert!(out.contains(&Output::Spawn {
        collector: "a".into()
    }));
    let a = d.fleet.supervised("a").expect("a");
    assert_eq!((a.state, a.restarts), (CollectorState::Running, 1));
    assert_ne!(a.pid, Some(first));
    assert!(
        a.last_exit
            .as_deref()
            .is_some_and(|e| e.contains("missed 3 heartbeats")),
        "{a:?}"
    );
    assert!(
        d.fleet.registry().get("a").is_none(),
        "the new process registers anew"
    );
}

#[test]
fn a_collector_that_keeps_hanging_ends_failed_when_its_restart_budget_is_spent() {
    let mut d = Driver::new(&["a"], quick_policy(1));
    d.start(t(0.0));
    let mut now = 0.0;
    for round in 0..2 {
        let pid = d.pid("a");
        d.register(t(now), "a");
        now += 30.0;
        let out = d.timeout(t(now));
        assert_eq!(signals(&out), [Signal::Cont, Signal::Term], "round {round}");
        now += 0.5;
        d.fleet
            .handle_exited(t(now), "a", pid, "killed by signal 15");
        now += 1.0;
        d.timeout(t(now));
    }
    let a = d.fleet.supervised("a").expect("a");
    assert_eq!(
        (a.state, a.restarts, a.pid),
        (CollectorState::Failed, 1, None)
    );
    assert_eq!(d.fleet.poll_timeout(), None, "nothing more will happen");
    let health = d.fleet.health(t(0.0), Some(Health::Healthy), Vec::new());
    assert_eq!(health.overall, Some(Health::Unhealthy));
    assert_eq!(health.reasons, ["collector a is failed"]);
}

#[test]
fn a_frozen_process_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    let pid = d.pid("a");
    d.register(t(0.0), "a");
    d.timeout(t(30.0));
    assert_eq!(
        d.fleet.poll_timeout(),
        Some((
            t(32.0),
            Timer::Supervisor(daemoneye_core::supervisor::Timer::Kill)
        ))
    );
    let out = d.timeout(t(32.0));
    assert_eq!(
        out,
        [Output::Signal {
            collector: "a".into(),
            pid,
            signal: Signal::Kill
        }]
    );
}

#[test]
fn pause_stops_heartbeat_checks_and_resume_rearms_them() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    let pid = d.pid("a");
    d.register(t(0.0), "a");
    d.fleet.command(t(5.0), "a", Command::Pause).expect("pause");
    assert_eq!(signals(&d.drain(t(5.0))), [Signal::Stop]);
    assert_eq!(
        d.fleet.poll_timeout(),
        None,
        "no heartbeat check while paused"
    );
    assert!(
        d.timeout(t(600.0)).is_empty(),
        "a paused collector is exempt"
    );
    assert_eq!(d.state("a"), CollectorState::Paused);
    d.fleet
        .command(t(600.0), "a", Command::Resume)
        .expect("resume");
    assert_eq!(signals(&d.drain(t(600.0))), [Signal::Cont]);
    assert!(
        d.timeout(t(629.0)).is_empty(),
        "the heartbeat clock starts over on resume"
    );
    let out = d.timeout(t(630.0));
    assert_eq!(signals(&out), [Signal::Cont, Signal::Term]);
    assert_eq!(d.pid("a"), pid);
}

#[test]
fn a_collector_that_registers_while_paused_stays_exempt() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    d.fleet.command(t(0.0), "a", Command::Pause).expect("pause");
    d.drain(t(0.0));
    // Its registration was on its way when it was stopped.
    d.register(t(0.1), "a");
    assert!(d.timeout(t(1000.0)).is_empty());
    assert_eq!(d.state("a"), CollectorState::Paused);
}

#[test]
fn commands_that_do_not_apply_are_refused_and_change_nothing() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    assert!(matches!(
        d.fleet.command(t(0.0), "nobody", Command::Start),
        Err(LifecycleError::ProcessNotFound(_))
    ));
    assert!(matches!(
        d.fleet.command(t(0.0), "a", Command::Pause),
        Err(LifecycleError::InvalidState {
            state: State::Stopped,
            ..
        })
    ));
    assert_eq!(d.fleet.command(t(0.0), "a", Command::Status), Ok(()));
    d.start(t(0.0));
    assert!(matches!(
        d.fleet.command(t(0.0), "a", Command::Start),
        Err(LifecycleError::AlreadyRunning(_))
    ));
    assert!(matches!(
        d.fleet.command(t(0.0), "a", Command::Resume),
        Err(LifecycleError::InvalidState { .. })
    ));
    assert!(d.drain(t(0.0)).is_empty());
    assert_eq!(
        Command::from(pbc::LifecycleOp::Unspecified),
        Command::Status
    );
}

#[test]
fn tasks_of_a_collector_whose_heartbeats_stop_move_to_another_with_the_capability() {
    let mut d = Driver::new(&["a", "b"], quick_policy(5));
    d.start(t(0.0));
    d.register(t(0.0), "a");
    d.register(t(0.0), "b");
    let id = d.submit(t(0.0), scan(600));
    assert_eq!(sent_to(&d.drain(t(0.0))), ["a"], "fewest tasks, then name");
    for k in 1..=3 {
        d.heartbeat(t(10.0 * k as f64), "b");
    }
    let out = d.timeout(t(30.0));
    assert_eq!(sent_to(&out), ["b"], "{out:?}");
    let (pa, pb) = (d.pid("a"), d.pid("b"));
    assert_eq!(
        d.fleet
            .handle_task_result(t(31.0), &answer(&id, "a"), &peer(Some(pa))),
        ResultOutcome::LateDuplicate
    );
    assert_eq!(
        d.fleet
            .handle_task_result(t(31.0), &answer(&id, "b"), &peer(Some(pb))),
        ResultOutcome::Accepted
    );
    assert_eq!(
        d.fleet.coordinator().task(&id).map(|t| t.state),
        Some(TaskState::Completed)
    );
}

fn scan(timeout_secs: u64) -> TaskSpec {
    TaskSpec {
        capability: "process".into(),
        kind: "scan".into(),
        timeout: Some(Duration::from_secs(timeout_secs)),
        max_attempts: Some(3),
        ..TaskSpec::default()
    }
}

fn answer(task: &str, from: &str) -> pbc::TaskResult {
    pbc::TaskResult {
        task_id: task.into(),
        collector_id: from.into(),
        ok: true,
        ..Default::default()
    }
}

/// The collectors the outputs send attempts to.
fn sent_to(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Task(TaskOutput::Send(a)) => Some(a.collector.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_result_from_another_process_than_the_collector_it_names_is_refused() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    d.register(t(0.0), "a");
    let id = d.submit(t(0.0), scan(600));
    assert_eq!(
        d.fleet
            .handle_task_result(t(1.0), &answer(&id, "a"), &peer(Some(4242))),
        ResultOutcome::Unknown
    );
    assert!(d.drain(t(1.0)).iter().any(|o| matches!(
        o,
        Output::Event(Event::Refused {
            claim: Claim::TaskResult,
            ..
        })
    )));
    assert_eq!(
        d.fleet.coordinator().task(&id).map(|t| t.state),
        Some(TaskState::Assigned)
    );
}

#[test]
fn the_tasks_of_a_collector_that_exits_move_at_once_and_a_paused_one_takes_none() {
    let mut d = Driver::new(&["a", "b"], quick_policy(5));
    d.start(t(0.0));
    d.register(t(0.0), "a");
    d.register(t(0.0), "b");
    d.fleet.command(t(0.0), "b", Command::Pause).expect("pause");
    let id = d.submit(t(0.0), scan(600));
    assert_eq!(sent_to(&d.drain(t(0.0))), ["a"]);
    d.fleet
        .command(t(1.0), "b", Command::Resume)
        .expect("resume");
    let pid = d.pid("a");
    d.fleet
        .handle_exited(t(2.0), "a", pid, "killed by signal 9");
    let out = d.drain(t(2.0));
    assert_eq!(sent_to(&out), ["b"], "{out:?}");
    assert_eq!(d.fleet.coordinator().task(&id).map(|t| t.attempts), Some(2));
}

#[test]
fn a_task_with_nobody_to_take_it_waits_and_expires() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    d.register(t(0.0), "a");
    let id = d.submit(t(0.0), scan(100));
    let out = d.timeout(t(30.0));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Task(TaskOutput::Waiting { task, .. }) if *task == id)),
        "{out:?}"
    );
    // a falls silent (its attempt ends at 30 s), the next two attempts wait out their deadlines.
    for k in 1..=3 {
        d.timeout(t(100.0 * k as f64 + 0.5));
    }
    let task = d.fleet.coordinator().task(&id).expect("remembered");
    assert_eq!(
        (task.state, task.attempts),
        (TaskState::Failed, 3),
        "{task:?}"
    );
    assert!(
        task.message
            .contains("no collector with the process capability"),
        "{}",
        task.message
    );
}

#[test]
fn only_the_spawned_process_or_its_descendants_may_speak_for_a_supervised_collector() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.fleet.accept_external("ext", 2000);
    d.start(t(0.0));
    let pid = d.pid("a");
    let answer = d
        .fleet
        .handle_registration(t(1.0), &register_request("a", 999), &peer(Some(999)));
    assert!(!answer.accepted);
    let out = d.drain(t(1.0));
    assert_eq!(
        out,
        [Output::Event(Event::Refused {
            collector: "a".into(),
            claim: Claim::Registration,
            pid: Some(999),
            uid: UID,
            count: 1,
            why: Refusal::NotSpawned {
                pid: 999,
                spawned: pid
            },
        })]
    );
    let child = Peer {
        pid: Some(5000),
        uid: UID,
        ancestors: vec![pid, 1],
    };
    let answer = d
        .fleet
        .handle_registration(t(2.0), &register_request("a", 5000), &child);
    assert!(answer.accepted, "a descendant of the spawned process");
    assert_eq!(d.fleet.registry().get("a").map(|r| r.pid), Some(5000));
    // External: only its uid; unknown ids never.
    let wrong_uid =
        d.fleet
            .handle_registration(t(3.0), &register_request("ext", 7), &peer(Some(7)));
    assert!(!wrong_uid.accepted);
    let ghost = d
        .fleet
        .handle_registration(t(3.0), &register_request("ghost", 7), &peer(Some(7)));
    assert!(!ghost.accepted);
    assert!(
        d.fleet
            .unknown_refusals()
            .is_some_and(|r| r.ends_with("ghost (1)")),
        "{:?}",
        d.fleet.unknown_refusals()
    );
    let ext_ok = d.fleet.handle_registration(
        t(4.0),
        &register_request("ext", 7),
        &Peer {
            pid: Some(7),
            uid: 2000,
            ancestors: Vec::new(),
        },
    );
    assert!(ext_ok.accepted);
    let views = d.fleet.collectors();
    let names: Vec<_> = views
        .iter()
        .map(|c| (c.name.as_str(), c.state, c.refused))
        .collect();
    assert_eq!(
        names,
        [
            ("a", CollectorState::Running, 1),
            ("ext", CollectorState::External, 1)
        ]
    );
    let bad_name =
        d.fleet
            .handle_registration(t(5.0), &register_request("", pid), &peer(Some(pid)));
    assert!(!bad_name.accepted && bad_name.message.contains("collector_id"));
}

#[test]
fn heartbeats_count_only_from_the_collector_on_its_own_topic() {
    let mut d = Driver::new(&["a", "b"], quick_policy(5));
    d.start(t(0.0));
    d.register(t(0.0), "a");
    let a = d.pid("a");
    d.fleet.handle_heartbeat(
        t(20.0),
        "control.health.heartbeat.b",
        &heartbeat("a"),
        &peer(Some(a)),
    );
    assert_eq!(
        d.drain(t(20.0)),
        [Output::Event(Event::MisaddressedHeartbeat {
            topic: "control.health.heartbeat.b".into(),
            collector: "a".into()
        })]
    );
    d.fleet.handle_heartbeat(
        t(20.0),
        "control.health.heartbeat.a",
        &heartbeat("a"),
        &peer(Some(d.pid("b"))),
    );
    assert!(matches!(
        d.drain(t(20.0)).as_slice(),
        [Output::Event(Event::Refused {
            claim: Claim::Heartbeat,
            ..
        })]
    ));
    assert_eq!(
        d.fleet.supervised("a").and_then(|c| c.last_heartbeat),
        Some(t(0.0))
    );
    // Neither counted: a is unhealthy at 30 s.
    assert_eq!(signals(&d.timeout(t(30.0))), [Signal::Cont, Signal::Term]);
}

#[test]
fn an_exit_of_a_replaced_process_is_ignored() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    let pid = d.pid("a");
    d.fleet
        .handle_exited(t(1.0), "a", pid + 77, "exited with status 0");
    assert!(d.drain(t(1.0)).is_empty());
    assert_eq!(d.state("a"), CollectorState::Running);
}

#[test]
fn deregistration_forgets_the_collector_and_moves_its_tasks() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    d.register(t(0.0), "a");
    let id = d.submit(t(0.0), scan(600));
    d.drain(t(0.0));
    let pid = d.pid("a");
    d.fleet.handle_deregistration(t(1.0), "a", &peer(Some(pid)));
    let out = d.drain(t(1.0));
    assert_eq!(
        out,
        [
            Output::Event(Event::Deregistered {
                collector: "a".into()
            }),
            Output::Task(TaskOutput::Waiting {
                task: id,
                capability: "process".into()
            })
        ]
    );
    let a = d.fleet.supervised("a").expect("a");
    assert_eq!(
        (a.last_heartbeat, a.capabilities),
        (None, SourceCaps::empty())
    );
}

#[test]
fn shutdown_stops_every_collector_and_kills_what_is_left() {
    let mut d = Driver::new(&["a", "b"], quick_policy(5));
    d.start(t(0.0));
    let (a, b) = (d.pid("a"), d.pid("b"));
    d.fleet.stop_all(t(1.0));
    assert_eq!(signals(&d.drain(t(1.0))), [Signal::Term, Signal::Term]);
    d.fleet
        .handle_exited(t(1.1), "a", a, "exited with status 0");
    d.drain(t(1.1));
    assert!(!d.fleet.all_down());
    d.fleet.kill_all();
    assert_eq!(
        d.drain(t(1.2)),
        [Output::Signal {
            collector: "b".into(),
            pid: b,
            signal: Signal::Kill
        }]
    );
    d.fleet.handle_exited(t(1.3), "b", b, "killed by signal 9");
    d.drain(t(1.3));
    assert!(d.fleet.all_down());
}

#[test]
fn health_is_the_worst_of_the_broker_and_each_collector() {
    let mut d = Driver::new(&["a", "b"], quick_policy(5));
    d.fleet.accept_external("ext", UID);
    let unknown = Fleet::new(FleetConfig::default());
    assert_eq!(
        unknown.health(t(0.0), None, Vec::new()).overall,
        None,
        "nothing known"
    );
    // Nothing started yet: stopped is degraded, an absent external collector unhealthy.
    let h = d
        .fleet
        .health(t(0.0), Some(Health::Healthy), vec!["broker ok".into()]);
    assert_eq!(h.overall, Some(Health::Unhealthy));
    assert_eq!(
        h.reasons,
        [
            "broker ok",
            "collector a is stopped",
            "collector b is stopped",
            "collector ext is absent"
        ]
    );
    d.start(t(0.0));
    d.fleet
        .handle_registration(t(0.0), &register_request("ext", 9), &peer(Some(9)));
    d.drain(t(0.0));
    let h = d.fleet.health(t(0.0), Some(Health::Healthy), Vec::new());
    assert_eq!((h.overall, h.reasons.len()), (Some(Health::Healthy), 0));
    assert_eq!(
        d.fleet
            .health(t(0.0), Some(Health::Degraded), Vec::new())
            .overall,
        Some(Health::Degraded),
        "the broker's part counts"
    );
    d.fleet.command(t(1.0), "a", Command::Pause).expect("pause");
    d.drain(t(1.0));
    assert_eq!(
        d.fleet.health(t(0.0), None, Vec::new()).overall,
        Some(Health::Healthy),
        "a paused collector is healthy"
    );
}

#[test]
fn lifecycle_answers_and_the_health_report_carry_the_fleet_state() {
    let mut d = Driver::new(&["a"], quick_policy(5));
    d.start(t(0.0));
    let pid = d.pid("a");
    d.register(t(1.0), "a");
    d.fleet
        .handle_registration(t(1.0), &register_request("ghost", 5), &peer(Some(5)));
    d.drain(t(1.0));
    let list = d.fleet.list_response(t(3.0), 1_000_000);
    assert_eq!(list.error, 0);
    assert!(list.message.ends_with("ghost (1)"), "{}", list.message);
    let a = &list.collectors[0];
    assert_eq!(
        (
            a.name.as_str(),
            a.state.as_str(),
            a.pid,
            a.capabilities,
            a.restarts
        ),
        ("a", "running", pid, SourceCaps::PROCESS.bits(), 0)
    );
    assert_eq!(
        a.last_heartbeat_ms, 998_000,
        "two seconds before the wall clock's now"
    );
    assert_eq!(a.uptime_ms, 3_000, "running since its spawn at 0 s");
    let refused = d.fleet.command(t(3.0), "a", Command::Start);
    let answer = d.fleet.command_response("a", refused, t(3.0), 0);
    assert_eq!(answer.error, pbc::LifecycleErrorCode::AlreadyRunning as i32);
    assert_eq!(answer.collectors.len(), 1);
    let unknown = d.fleet.command(t(3.0), "x", Command::Stop);
    let answer = d.fleet.command_response("x", unknown, t(3.0), 0);
    assert_eq!(
        answer.error,
        pbc::LifecycleErrorCode::ProcessNotFound as i32
    );
    assert!(answer.collectors.is_empty());

    let broker = pbc::HealthReport {
        broker: pbc::HealthState::Degraded as i32,
        reasons: vec!["a queue at 80%".into()],
        ..Default::default()
    };
    let report = d.fleet.health_report(&broker, t(3.0), 0);
    assert_eq!(report.overall, pbc::HealthState::Degraded as i32);
    assert_eq!(report.broker, broker.broker);
    assert_eq!(report.coordinator, pbc::HealthState::Healthy as i32);
    assert_eq!(report.collectors.len(), 1);
    assert_eq!(report.reasons[0], "a queue at 80%");
    assert!(report.reasons[1].ends_with("ghost (1)"));
    let silent =
        Fleet::new(FleetConfig::default()).health_report(&pbc::HealthReport::default(), t(0.0), 0);
    assert_eq!(silent.overall, pbc::HealthState::Unspecified as i32);
}

#[derive(Debug, Clone)]
enum Step {
    Wait(u8),
    Register(usize),
    Heartbeat(usize),
    Crash(usize),
    Command(usize, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u8..40).prop_map(Step::Wait),
        (0usize..3).prop_map(Step::Register),
        (0usize..3).prop_map(Step::Heartbeat),
        (0usize..3).prop_map(Step::Crash),
        ((0usize..3), (0u8..6)).prop_map(|(i, c)| Step::Command(i, c)),
    ]
}

/// The roll-up as a table, written apart from the fleet's.
fn reference_health(state: CollectorState) -> Health {
    match state.as_str() {
        "running" | "paused" | "external" => Health::Healthy,
        "starting" | "stopping" | "stopped" => Health::Degraded,
        _ => Health::Unhealthy,
    }
}

proptest! {
    /// Whatever happens: signals reach only the current process, a paused collector is
    /// never restarted for silence, and the health roll-up is the worst of its parts.
    #[test]
    fn the_fleet_keeps_its_rules_under_any_sequence_of_inputs(
        steps in proptest::collection::vec(step(), 1..80),
        broker in 0u8..4,
    ) {
        const NAMES: [&str; 3] = ["a", "b", "c"];
        let policy = RestartPolicy {
            max_restarts: 2,
            window: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            stop_timeout: Duration::from_secs(2),
            ..RestartPolicy::default()
        };
        let mut d = Driver::new(&NAMES, policy);
        let mut now = 0.0;
        d.start(t(now));
        for s in steps {
            let before: Vec<_> = NAMES
                .iter()
                .map(|n| d.fleet.supervisor(n).map(|s| (s.state(), s.pid())))
                .collect();
            let out = match s {
                Step::Wait(secs) => {
                    now += f64::from(secs);
                    d.timeout(t(now))
                }
                Step::Register(i) => {
                    if let Some(pid) = d.fleet.supervisor(NAMES[i]).and_then(|s| s.pid()) {
                        let answer = d.fleet.handle_registration(
                            t(now), &register_request(NAMES[i], pid), &peer(Some(pid)));
                        prop_assert!(answer.accepted);
                    }
                    d.drain(t(now))
                }
                Step::Heartbeat(i) => {
                    if d.fleet.supervisor(NAMES[i]).and_then(|s| s.pid()).is_some() {
                        d.heartbeat(t(now), NAMES[i]);
                    }
                    Vec::new()
                }
                Step::Crash(i) => {
                    if let Some(pid) = d.fleet.supervisor(NAMES[i]).and_then(|s| s.pid()) {
                        d.fleet.handle_exited(t(now), NAMES[i], pid, "killed by signal 9");
                    }
                    d.drain(t(now))
                }
                Step::Command(i, c) => {
                    let command = [Command::Start, Command::Stop, Command::Restart,
                        Command::Pause, Command::Resume, Command::Status][c as usize];
                    let _ = d.fleet.command(t(now), NAMES[i], command);
                    d.drain(t(now))
                }
            };
            for o in &out {
                match o {
                    Output::Signal { collector, pid, .. } => {
                        let current = d.fleet.supervisor(collector).and_then(|s| s.pid());
                        prop_assert_eq!(current, Some(*pid), "a signal for a gone process");
                    }
                    Output::Event(Event::RestartingUnhealthy { collector }) => {
                        let i = NAMES.iter().position(|n| n == collector).expect("known");
                        prop_assert_eq!(
                            before[i].map(|(s, _)| s), Some(State::Running),
                            "only a running collector is restarted for silence");
                    }
                    _ => {}
                }
            }
        }
        let broker = [None, Some(Health::Healthy), Some(Health::Degraded), Some(Health::Unhealthy)]
            [broker as usize];
        let expected = d
            .fleet
            .collectors()
            .iter()
            .map(|c| Some(reference_health(c.state)))
            .fold(broker, Ord::max);
        prop_assert_eq!(d.fleet.health(t(0.0), broker, Vec::new()).overall, expected);
    }
}

#[test]
fn the_stop_budget_is_the_longest_stop_timeout_capped_plus_a_reap_margin() {
    let mut fleet = Fleet::new(FleetConfig::default());
    assert_eq!(
        fleet.stop_budget(),
        Duration::from_millis(100),
        "no collector: only the reap margin"
    );
    for (name, secs) in [("a", 2), ("b", 7), ("c", 3)] {
        fleet.supervise(
            name,
            RestartPolicy {
                stop_timeout: Duration::from_secs(secs),
                ..RestartPolicy::default()
            },
        );
    }
    assert_eq!(fleet.stop_budget(), Duration::from_millis(7_100));
    fleet.supervise(
        "slow",
        RestartPolicy {
            stop_timeout: Duration::from_secs(600),
            ..RestartPolicy::default()
        },
    );
    assert_eq!(fleet.stop_budget(), Duration::from_millis(30_100), "capped");
}
