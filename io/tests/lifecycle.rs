//! Collector supervision with real processes: the agent's process manager, driven through
//! `daemoneye-cli collectors ...`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, Bins, wait_exit};

const T: Duration = Duration::from_secs(10);

/// What procmond declares, by name, as `collectors list --json` shows it.
fn procmond_caps() -> serde_json::Value {
    serde_json::json!(["process", "realtime", "kernel_level", "system_wide"])
}

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn collector(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[collectors]]\nname = \"{name}\"\nbinary = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n{extra}\n"
    )
}

fn list(agent: &Agent) -> serde_json::Value {
    let (status, out, err) = agent.run_cli(&["collectors", "list", "--json"]);
    assert!(status.success(), "{err}");
    serde_json::from_str(&out).expect("json list")
}

fn field(agent: &Agent, name: &str, key: &str) -> serde_json::Value {
    list(agent)
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no collector {name}"))[key]
        .clone()
}

/// Polls `cond` until it holds or the deadline `T` passes.
fn eventually(what: &str, cond: impl FnMut() -> bool) {
    daemoneye_tests::eventually(what, T, cond);
}

fn proc_state(pid: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

fn running_pid(agent: &Agent, name: &str) -> u64 {
    eventually("the collector to run", || {
        field(agent, name, "state") == "running" && field(agent, name, "pid").as_u64() > Some(0)
    });
    field(agent, name, "pid").as_u64().expect("pid")
}

#[test]
fn kill_9_of_a_collector_is_detected_and_it_restarts_with_a_new_pid() {
    let agent = Agent::start(
        &bins(),
        Some(&collector(
            "sleeper",
            "exec sleep 1000",
            "backoff_initial_ms = 100",
        )),
    );
    let pid = running_pid(&agent, "sleeper");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    eventually("a restart with a new pid", || {
        let new = field(&agent, "sleeper", "pid").as_u64().unwrap_or(0);
        new != 0 && new != pid && field(&agent, "sleeper", "state") == "running"
    });
    assert_eq!(field(&agent, "sleeper", "restarts"), 1);
    assert_eq!(field(&agent, "sleeper", "last_exit"), "killed by signal 9");
}

#[test]
fn a_crashed_collector_leaves_no_children_behind() {
    let agent = Agent::start(
        &bins(),
        Some(&collector(
            "parent",
            "sleep 1000 & sleep 1000",
            "backoff_initial_ms = 5000",
        )),
    );
    let pid = running_pid(&agent, "parent");
    eventually("its children", || group_members(pid).len() >= 3);
    let members = group_members(pid);
    // Only the leader is killed; the rest of its group must not outlive it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    for m in members {
        eventually(&format!("child {m} to be gone"), || !alive(m));
    }
}

#[test]
fn always_crashing_collector_ends_failed_after_max_restarts_and_stays() {
    let config = collector(
        "crasher",
        "exit 3",
        "max_restarts = 2\nbackoff_initial_ms = 20\nbackoff_max_ms = 40",
    );
    let agent = Agent::start(&bins(), Some(&config));
    eventually("Failed", || field(&agent, "crasher", "state") == "failed");
    assert_eq!(field(&agent, "crasher", "restarts"), 2);
    assert_eq!(
        field(&agent, "crasher", "last_exit"),
        "exited with status 3"
    );
    // It stays failed: a health report says so, and its exit status (4: unhealthy).
    let (status, out, _) = agent.run_cli(&["health", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&out).expect("health json");
    assert_eq!(h["overall"], "unhealthy", "{out}");
    assert_eq!(status.code(), Some(4), "{out}");
    assert_eq!(field(&agent, "crasher", "state"), "failed");
}

#[test]
fn pause_stops_the_process_and_resume_continues_it() {
    let agent = Agent::start(&bins(), Some(&collector("sleeper", "exec sleep 1000", "")));
    let pid = running_pid(&agent, "sleeper");
    let (status, _, err) = agent.run_cli(&["collectors", "pause", "sleeper"]);
    assert!(status.success(), "{err}");
    eventually("state T", || proc_state(pid) == Some('T'));
    assert_eq!(field(&agent, "sleeper", "state"), "paused");
    let (status, _, err) = agent.run_cli(&["collectors", "resume", "sleeper"]);
    assert!(status.success(), "{err}");
    eventually("state S", || proc_state(pid) == Some('S'));
    assert_eq!(
        field(&agent, "sleeper", "pid").as_u64(),
        Some(pid),
        "same process"
    );
}

#[test]
fn collector_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let config = collector(
        "stubborn",
        "trap '' TERM; while :; do sleep 0.05; done",
        "stop_timeout_ms = 300",
    );
    let agent = Agent::start(&bins(), Some(&config));
    let pid = running_pid(&agent, "stubborn");
    // Running is not yet stubborn: the shell must have set its trap first.
    eventually("the collector ignores SIGTERM", || ignores_sigterm(pid));
    let started = Instant::now();
    let (status, _, err) = agent.run_cli(&["collectors", "stop", "stubborn"]);
    assert!(status.success(), "{err}");
    eventually("stopped", || {
        field(&agent, "stubborn", "state") == "stopped"
    });
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the stop timeout"
    );
    assert_eq!(field(&agent, "stubborn", "last_exit"), "killed by signal 9");
}

/// Whether process `pid` ignores SIGTERM (bit 15 of the `SigIgn` mask in its status).
fn ignores_sigterm(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?.trim();
            u64::from_str_radix(mask, 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

fn alive(pid: u64) -> bool {
    // A zombie still has a /proc entry, so this also catches unreaped children.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn group_members(pgid: u64) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, r)| r.split_whitespace().nth(2).map(str::to_string))
                })
                .flatten()
                .is_some_and(|g| g == pgid.to_string())
        })
        .collect()
}

#[test]
fn agent_shutdown_stops_every_collector_and_leaves_no_orphan_or_zombie() {
    let config = [
        collector("a", "sleep 1000 & sleep 1000", ""),
        collector("b", "trap '' TERM; sleep 1000", "stop_timeout_ms = 200"),
    ]
    .concat();
    let mut agent = Agent::start(&bins(), Some(&config));
    let a = running_pid(&agent, "a");
    let b = running_pid(&agent, "b");
    eventually("a's children", || group_members(a).len() >= 2);
    let members: Vec<u64> = group_members(a)
        .into_iter()
        .chain(group_members(b))
        .collect();
    let (status, _) = agent.terminate();
    assert!(status.success());
    for pid in members {
        eventually(&format!("process {pid} to be gone"), || !alive(pid));
    }
}

#[test]
fn a_killed_agent_leaves_no_collector_behind() {
    let mut agent = Agent::start(&bins(), Some(&collector("sleeper", "exec sleep 1000", "")));
    let pid = running_pid(&agent, "sleeper");
    agent.child.kill().expect("kill -9 the agent");
    let _ = agent.child.wait();
    eventually("the collector to die with its agent", || {
        !alive(pid) || proc_state(pid) == Some('Z')
    });
}

#[test]
fn a_killed_agent_leaves_nothing_of_a_forking_or_a_paused_collector_behind() {
    let config = [
        collector("forks", "sleep 1000 & sleep 1000 & wait", ""),
        collector("paused", "sleep 1000 & wait", ""),
    ]
    .concat();
    let mut agent = Agent::start(&bins(), Some(&config));
    let forks = running_pid(&agent, "forks");
    let paused = running_pid(&agent, "paused");
    eventually("the children", || {
        group_members(forks).len() >= 3 && group_members(paused).len() >= 2
    });
    let (status, _, err) = agent.run_cli(&["collectors", "pause", "paused"]);
    assert!(status.success(), "{err}");
    eventually("the paused group to stop", || {
        group_members(paused)
            .iter()
            .all(|&p| proc_state(p) == Some('T'))
    });
    let members: Vec<u64> = group_members(forks)
        .into_iter()
        .chain(group_members(paused))
        .collect();
    agent.child.kill().expect("kill -9 the agent");
    let _ = agent.child.wait();
    for pid in members {
        // Orphans are reaped by init (or the nearest subreaper) once they die.
        eventually(&format!("process {pid} to be gone"), || {
            !alive(pid) || proc_state(pid) == Some('Z')
        });
    }
}

#[test]
fn lifecycle_commands_that_do_not_apply_are_clear_errors() {
    let agent = Agent::start(&bins(), Some(&collector("sleeper", "exec sleep 1000", "")));
    running_pid(&agent, "sleeper");
    for (args, needle) in [
        (
            vec!["collectors", "stop", "nope"],
            "no collector named \"nope\"",
        ),
        (vec!["collectors", "start", "sleeper"], "already running"),
        (
            vec!["collectors", "resume", "sleeper"],
            "is running: cannot resume",
        ),
    ] {
        let (status, _, err) = agent.run_cli(&args);
        assert!(!status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn bad_collector_config_is_a_clear_error_at_start() {
    for (config, needle) in [
        (
            "[[collectors]]\nname = \"x\"\nbinary = \"/no/such/collector\"\n",
            "collectors[0].binary",
        ),
        (
            "[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\nstop_timeout_ms = -5\n",
            "stop_timeout_ms",
        ),
        (
            "[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\nstop_timeout_ms = 99999999999\n",
            "collectors[0].stop_timeout_ms",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).expect("write");
        let mut child = std::process::Command::new(&bins().agent)
            .arg("--config")
            .arg(&path)
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent");
        let status = wait_exit(&mut child, T).expect("agent exits");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("read");
        assert!(!status.success());
        assert!(err.contains(needle), "{config}: {err}");
    }
}

/// procmond under the agent, with its WAL in `state`.
fn procmond_config(state: &tempfile::TempDir) -> String {
    let wal = state.path().join("procmond.wal");
    format!(
        "[broker]\nheartbeat_interval_ms = 200\n[[collectors]]\nname = \"procmond\"\nbinary = {:?}\nargs = [\"--interval\", \"5\", \"--wal\", {:?}]\nstop_timeout_ms = 300\nbackoff_initial_ms = 50\n",
        env!("CARGO_BIN_EXE_procmond"),
        wal.display().to_string()
    )
}

#[test]
fn procmond_registers_heartbeats_and_publishes_process_events() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&procmond_config(&state)));
    running_pid(&agent, "procmond");
    eventually("registration and heartbeats", || {
        field(&agent, "procmond", "capabilities") == procmond_caps()
            && field(&agent, "procmond", "last_heartbeat_ms").as_u64() > Some(0)
    });
    // The list shows what the README promises: state, pid, uptime, restarts, the last
    // heartbeat's age and capability names, in JSON and in the table.
    let pid = running_pid(&agent, "procmond");
    let age = field(&agent, "procmond", "last_heartbeat_age_ms").as_u64();
    assert!(age.is_some_and(|a| a < 10_000), "{age:?}");
    assert!(field(&agent, "procmond", "uptime_ms").as_u64() > Some(0));
    assert_eq!(field(&agent, "procmond", "restarts"), 0);
    let (status, table, err) = agent.run_cli(&["collectors", "list"]);
    assert!(status.success(), "{err}");
    let header = table.lines().next().unwrap_or_default().to_string();
    for column in [
        "state",
        "pid",
        "uptime",
        "restarts",
        "heartbeat",
        "capabilities",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("procmond "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("running")
            && row.contains(&pid.to_string())
            && row.contains(" ago")
            && row.contains("process,realtime,kernel_level,system_wide"),
        "{row}"
    );
    // A restarted procmond reports what runs as one snapshot, not a flood of new.
    let mut sub = agent.subscriber(&["events.process.snapshot", "--json"]);
    let mut news = agent.subscriber(&["events.process.new", "--json"]);
    let restarted_at = daemoneye_io::clock::unix_ms();
    let (status, _, err) = agent.run_cli(&["collectors", "restart", "procmond"]);
    assert!(status.success(), "{err}");
    // The new run's snapshot (one the log would re-send is older).
    let deadline = Instant::now() + T;
    let v = loop {
        let lines = sub.stdout.drain(Duration::from_millis(100)).to_vec();
        let snapshot = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"]["observed_at_ms"].as_u64() >= Some(restarted_at));
        if let Some(v) = snapshot {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot from the new run: {lines:?}"
        );
    };
    let line = v.to_string();
    assert_eq!(v["event"]["kind"], "snapshot", "{line}");
    let me = u64::from(std::process::id());
    let listed = v["event"]["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed.iter().any(|p| p["pid"].as_u64() == Some(me)),
        "{line}"
    );
    // Nothing that ran before the restart comes as new: a process started after the
    // snapshot is the first new one from this run (one publisher, in order).
    let mut marker = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawn");
    let marker_pid = u64::from(marker.id());
    let deadline = Instant::now() + T;
    let mut seen: Vec<u64> = Vec::new();
    while !seen.contains(&marker_pid) {
        assert!(
            Instant::now() < deadline,
            "no new event for {marker_pid}: {:?}",
            news.stdout.seen,
        );
        seen = news
            .stdout
            .drain(Duration::from_millis(100))
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["event"]["pid"].as_u64())
            .collect();
    }
    let _ = marker.kill();
    let _ = marker.wait();
    assert!(
        !seen.contains(&me) && !seen.contains(&1),
        "processes older than the restart came as new: {seen:?}"
    );
}

#[test]
fn a_collector_that_stops_heartbeating_is_restarted() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&procmond_config(&state)));
    let pid = running_pid(&agent, "procmond");
    eventually("heartbeats", || {
        field(&agent, "procmond", "last_heartbeat_ms").as_u64() > Some(0)
    });
    // Frozen behind the agent's back: alive, but silent.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("stop");
    eventually("a restart with a new pid", || {
        let new = field(&agent, "procmond", "pid").as_u64().unwrap_or(0);
        new != 0 && new != pid && field(&agent, "procmond", "state") == "running"
    });
    eventually("the replacement heartbeats", || {
        field(&agent, "procmond", "state") == "running"
            && field(&agent, "procmond", "capabilities") == procmond_caps()
    });
}

#[test]
fn a_collector_that_keeps_hanging_ends_failed() {
    let state = tempfile::tempdir().expect("tempdir");
    let config = procmond_config(&state).replace(
        "backoff_initial_ms = 50\n",
        "backoff_initial_ms = 50\nmax_restarts = 1\n",
    );
    let agent = Agent::start(&bins(), Some(&config));
    // Each run registers, then freezes behind the agent's back; the second hang exceeds
    // max_restarts = 1.
    let mut frozen = Vec::new();
    let deadline = Instant::now() + 3 * T;
    while field(&agent, "procmond", "state") != "failed" {
        assert!(
            Instant::now() < deadline,
            "still not failed after {frozen:?}"
        );
        let state = field(&agent, "procmond", "state");
        let pid = field(&agent, "procmond", "pid").as_u64().unwrap_or(0);
        if state == "running"
            && pid != 0
            && !frozen.contains(&pid)
            && field(&agent, "procmond", "capabilities") == procmond_caps()
        {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .expect("stop");
            frozen.push(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(frozen.len(), 2, "one restart, then failed: {frozen:?}");
    assert_eq!(field(&agent, "procmond", "restarts"), 1);
    assert!(
        field(&agent, "procmond", "last_exit")
            .as_str()
            .is_some_and(|s| s.contains("missed 3 heartbeats")),
        "{}",
        field(&agent, "procmond", "last_exit")
    );
    for pid in frozen {
        eventually(&format!("frozen process {pid} to be gone"), || !alive(pid));
    }
}

#[test]
fn a_paused_collector_is_exempt_from_heartbeat_checks() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&procmond_config(&state)));
    let pid = running_pid(&agent, "procmond");
    eventually("heartbeats", || {
        field(&agent, "procmond", "last_heartbeat_ms").as_u64() > Some(0)
    });
    let (status, _, err) = agent.run_cli(&["collectors", "pause", "procmond"]);
    assert!(status.success(), "{err}");
    // Five heartbeat intervals pass in silence: a paused collector is not restarted.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(field(&agent, "procmond", "state"), "paused");
    assert_eq!(field(&agent, "procmond", "pid").as_u64(), Some(pid));
    let (status, _, err) = agent.run_cli(&["collectors", "resume", "procmond"]);
    assert!(status.success(), "{err}");
    assert_eq!(field(&agent, "procmond", "pid").as_u64(), Some(pid));
}

#[test]
fn procmond_without_a_broker_says_what_is_missing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procmond"))
        .env_remove("DAEMONEYE_BROKER_SOCKET")
        .output()
        .expect("procmond");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database PATH for standalone mode"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args(["--interval", "1", "--broker", "/nonexistent"])
        .output()
        .expect("procmond");
    assert!(!out.status.success(), "interval below 5 s is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("5..=3600"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args(["--max-processes", "-1", "--broker", "/nonexistent"])
        .output()
        .expect("procmond");
    assert!(!out.status.success(), "a negative limit is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error:") && err.contains("--max-processes"),
        "{err}"
    );
}

/// Every `procmond.wal` below `dir`.
fn wal_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(wal_files(&p));
        } else if p.file_name().is_some_and(|n| n == "procmond.wal") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// procmond supervised as `name`, with no WAL path of its own: the agent's state directory
/// decides where its WAL lives.
fn procmond_named(name: &str, state_root: &std::path::Path) -> String {
    format!(
        "[agent]\nstate_dir = {:?}\n[broker]\nheartbeat_interval_ms = 200\n[[collectors]]\nname = {name:?}\nbinary = {:?}\nargs = [\"--interval\", \"5\"]\nstop_timeout_ms = 300\nbackoff_initial_ms = 50\n",
        state_root.display().to_string(),
        env!("CARGO_BIN_EXE_procmond"),
    )
}

/// procmond started by the test, not by the agent, claiming to be `id`.
fn outside_procmond(agent: &Agent, id: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args([
            "--interval",
            "5",
            "--log-level",
            "warn",
            "--no-wal",
            "--broker",
        ])
        .arg(&agent.socket)
        .env("DAEMONEYE_COLLECTOR_ID", id)
        .env_remove("DAEMONEYE_COLLECTOR_STATE_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("procmond")
}

fn health_reasons(agent: &Agent) -> String {
    let (status, out, err) = agent.run_cli(&["health", "--json"]);
    // 0 healthy, 3 degraded, 4 unhealthy: a report in each case.
    assert!(matches!(status.code(), Some(0 | 3 | 4)), "{status}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["reasons"].to_string()
}

#[test]
fn a_collector_registers_under_its_configured_name_and_keeps_its_wal_in_its_own_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&procmond_named("procmond-1", root.path())));
    running_pid(&agent, "procmond-1");
    eventually("procmond-1 registers", || {
        field(&agent, "procmond-1", "capabilities") == procmond_caps()
    });
    let names: Vec<serde_json::Value> = list(&agent)
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["procmond-1"], "no phantom entry");
    eventually("its WAL", || wal_files(root.path()).len() == 1);
    let wal = &wal_files(root.path())[0];
    assert!(
        wal.ends_with("collectors/procmond-1/procmond.wal"),
        "{}",
        wal.display()
    );
}

#[test]
fn two_agents_on_different_sockets_never_share_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = procmond_named("procmond", root.path());
    let a = Agent::start(&bins(), Some(&config));
    let b = Agent::start(&bins(), Some(&config));
    for agent in [&a, &b] {
        running_pid(agent, "procmond");
        eventually("procmond registers with its own agent", || {
            field(agent, "procmond", "capabilities") == procmond_caps()
                && field(agent, "procmond", "restarts") == 0
        });
    }
    eventually("two WALs", || wal_files(root.path()).len() == 2);
    let wals = wal_files(root.path());
    assert_ne!(
        wals[0].parent().and_then(|p| p.parent()),
        wals[1].parent().and_then(|p| p.parent()),
        "{wals:?}"
    );
}

#[test]
fn a_registration_not_from_the_spawned_process_is_refused_and_counted() {
    let config = collector("imp", "exec sleep 1000", "");
    let agent = Agent::start(&bins(), Some(&config));
    running_pid(&agent, "imp");
    // Claims a managed collector's id, and an id the config does not name.
    let mut impostor = outside_procmond(&agent, "imp");
    let mut ghost = outside_procmond(&agent, "ghost");
    eventually("the refusals to be reported", || {
        let reasons = health_reasons(&agent);
        reasons.contains("collector imp: ") && reasons.contains("ghost (")
    });
    assert_eq!(
        field(&agent, "imp", "capabilities"),
        serde_json::json!([]),
        "not registered"
    );
    assert!(
        !list(&agent)
            .as_array()
            .expect("array")
            .iter()
            .any(|c| c["name"] == "ghost"),
        "no phantom entry"
    );
    for p in [&mut impostor, &mut ghost] {
        let _ = p.kill();
        let _ = p.wait();
    }
}

#[test]
fn an_external_collector_is_accepted_only_under_its_uid_and_deregisters_when_it_stops() {
    let uid = nix::unistd::geteuid().as_raw();
    let config = format!(
        "[[collectors]]\nname = \"ext\"\nexternal = true\nuid = {uid}\n[[collectors]]\nname = \"other\"\nexternal = true\nuid = {}\n",
        uid + 4242
    );
    let agent = Agent::start(&bins(), Some(&config));
    assert_eq!(field(&agent, "ext", "state"), "absent");
    let mut ext = outside_procmond(&agent, "ext");
    let mut other = outside_procmond(&agent, "other");
    eventually("ext registers", || {
        field(&agent, "ext", "state") == "external"
    });
    eventually("other's refusal", || {
        health_reasons(&agent).contains("collector other: ")
    });
    assert_eq!(field(&agent, "other", "state"), "absent");
    // A clean stop deregisters: gone at once, not after three 10 s heartbeats.
    daemoneye_tests::signal(&ext, nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    assert!(wait_exit(&mut ext, T).is_some_and(|s| s.success()));
    eventually("ext to be dropped", || {
        field(&agent, "ext", "state") == "absent"
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = other.kill();
    let _ = other.wait();
}

#[test]
fn a_relative_socket_path_is_under_the_current_directory_and_leaves_its_mode_alone() {
    use std::os::unix::fs::PermissionsExt;
    let cwd = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    std::fs::write(cwd.path().join("agent.toml"), "collectors = []\n").expect("config");
    for (socket, dir) in [
        ("run/a.sock", cwd.path().join("run")),
        ("b.sock", cwd.path().to_path_buf()),
    ] {
        let mut child = std::process::Command::new(&bins().agent)
            .args(["--socket", socket, "--log-level", "warn", "--config"])
            .arg(cwd.path().join("agent.toml"))
            .current_dir(cwd.path())
            .env_remove("DAEMONEYE_BROKER_SOCKET")
            .env("DAEMONEYE_AGENT_STATE_DIR", cwd.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent");
        let mut err = daemoneye_tests::Lines::follow(child.stderr.take().expect("stderr"));
        err.wait_for("listening on", T).expect("agent listens");
        assert!(cwd.path().join(socket).exists(), "{socket}");
        let expected = if dir == cwd.path() { 0o755 } else { 0o700 };
        assert_eq!(mode(&dir), expected, "{}", dir.display());
        daemoneye_tests::signal(&child, nix::sys::signal::Signal::SIGTERM);
        assert!(wait_exit(&mut child, T).is_some());
    }
}
