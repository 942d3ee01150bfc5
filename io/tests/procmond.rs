//! procmond under the agent, with real processes: real-time new, modified and exit events
//! seen by `daemoneye-cli sub --json` in another process and kept in the agent's store,
//! the scanning fallback and what it says, and the capabilities procmond keeps.

use std::process::Command;
use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, Bins, Lines, Subscriber, eventually, signal, wait_exit};

const T: Duration = Duration::from_secs(15);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn config(state: &tempfile::TempDir, extra_args: &str) -> String {
    format!(
        "[broker]\nheartbeat_interval_ms = 200\n[[collectors]]\nname = \"procmond\"\nbinary = {:?}\nargs = [\"--interval\", \"5\", \"--wal\", {:?}{extra_args}]\nstop_timeout_ms = 300\n",
        env!("CARGO_BIN_EXE_procmond"),
        state.path().join("procmond.wal"),
    )
}

fn procmond(agent: &Agent) -> serde_json::Value {
    let (status, out, err) = agent.run_cli(&["collectors", "list", "--json"]);
    assert!(status.success(), "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).expect("json");
    all.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "procmond").cloned())
        .unwrap_or_default()
}

/// Waits until procmond runs and its heartbeat's detail line contains `mode`.
fn wait_mode(agent: &Agent, mode: &str) -> u32 {
    eventually(&format!("procmond reports {mode:?}"), T, || {
        let p = procmond(agent);
        p["state"] == "running" && p["detail"].as_str().is_some_and(|d| d.contains(mode))
    });
    procmond(agent)["pid"].as_u64().expect("pid") as u32
}

/// The decoded events of `pid` a `sub --json` printed so far.
fn events_of(lines: &[String], pid: u32) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["event"].clone())
        .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

/// The `events.process.new` events `sub` prints for a `/bin/sleep 60` started now, once
/// one arrives (or none within `T`).
fn new_sleep_events(sub: &mut Subscriber) -> Vec<serde_json::Value> {
    let mut child = Command::new("/bin/sleep").arg("60").spawn().expect("spawn");
    let pid = child.id();
    let deadline = Instant::now() + T;
    let mut found = Vec::new();
    while Instant::now() < deadline && found.is_empty() {
        let lines = sub.stdout.drain(Duration::from_millis(200)).to_vec();
        found = events_of(&lines, pid);
    }
    let _ = child.kill();
    let _ = child.wait();
    found
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[test]
fn a_process_is_seen_as_new_then_modified_by_its_exec_then_exit_with_its_code() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&config(&state, "")));
    wait_mode(&agent, "realtime");
    let mut sub = agent.subscriber(&["events.process.#", "--json"]);
    let before = unix_ms();
    let marker = format!("MARKER-{}", std::process::id());
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "sleep 0.3; exec /bin/bash -c 'sleep 0.3; exit 7'",
            &marker,
        ])
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    assert_eq!(child.wait().expect("wait").code(), Some(7));
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let lines = sub.stdout.drain(Duration::from_millis(200)).to_vec();
        seen = events_of(&lines, pid);
        if seen.iter().any(|e| e["kind"] == "exit") {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["new", "modified", "exit"], "{seen:#?}");
    let (new, modified, exit) = (&seen[0], &seen[1], &seen[2]);
    assert!(
        new["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("sh") || e.contains("dash")),
        "{new}"
    );
    let argv: Vec<&str> = new["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(argv.last(), Some(&marker.as_str()), "{new}");
    assert_eq!(new["user"], "root", "{new}");
    assert_eq!(new["uid"].as_u64().unwrap_or(0), 0, "{new}");
    let started = new["start_time_ms"].as_u64().expect("start time");
    assert!(
        started + 1000 >= before && started <= unix_ms(),
        "start {started} vs spawn {before}: {new}"
    );
    assert_eq!(new["source"], "netlink", "{new}");
    assert!(
        modified["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("bash")),
        "{modified}"
    );
    let changed = modified["changed"].as_array().expect("changed");
    assert!(changed.iter().any(|c| c == "exe"), "{modified}");
    assert_eq!(exit["exit_code"], 7, "{exit}");

    // The agent kept them: `events query` finds the three by pid.
    let pid_arg = pid.to_string();
    eventually("the store has the process's events", T, || {
        let (status, out, _) = agent.run_cli(&[
            "events", "query", "--since", "10m", "--pid", &pid_arg, "--json",
        ]);
        status.success()
            && out
                .lines()
                .filter(|l| l.contains(&marker) || l.contains("bash"))
                .count()
                >= 3
    });
}

#[test]
fn forced_scanning_says_so_and_still_finds_processes() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&config(&state, ", \"--scan-only\"")));
    wait_mode(&agent, "scanning every 5s");
    // Its health says so at once (not at the next periodic health check, a minute on).
    eventually(
        "procmond reports itself degraded",
        Duration::from_secs(5),
        || procmond(&agent)["health"] == "degraded",
    );
    let caps = procmond(&agent)["capabilities"].clone();
    assert_eq!(caps, serde_json::json!(["process", "system_wide"]));
    let mut sub = agent.subscriber(&["events.process.new", "--json"]);
    let found = new_sleep_events(&mut sub);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["source"], "scan", "{}", found[0]);
    assert_eq!(found[0]["exe"], "/usr/bin/sleep", "{}", found[0]);
}

#[test]
fn procmond_keeps_only_the_capabilities_reading_needs() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&config(&state, "")));
    let pid = wait_mode(&agent, "realtime");
    assert_eq!(procmond(&agent)["health"], "healthy");
    // Every thread: CAP_SYS_PTRACE (19) and CAP_DAC_READ_SEARCH (2), nothing else.
    let expected = format!("{:016x}", (1u64 << 19) | (1 << 2));
    eventually("every procmond thread dropped its capabilities", T, || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .is_some_and(|v| v.trim() == expected)
            })
        })
    });
}

#[test]
fn standalone_procmond_takes_its_settings_file_and_keeps_what_it_saw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir
        .path()
        .join(format!("de-standalone-{}", std::process::id()));
    std::fs::copy("/bin/sleep", &binary).expect("copy");
    let mut child = Command::new(&binary).arg("60").spawn().expect("spawn");
    // Its own keys (scan_only) and the runtime's (interval, log level) from one file.
    let settings = dir.path().join("procmond.toml");
    std::fs::write(
        &settings,
        "scan_only = true\ninterval_secs = 7\nlog_level = \"debug\"\n",
    )
    .expect("write");
    let db = dir.path().join("events.redb");
    let procmond = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_procmond"));
        c.arg("--database")
            .arg(&db)
            .env("DAEMONEYE_PROCMOND_CONFIG", &settings)
            .env_remove("DAEMONEYE_BROKER_SOCKET")
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut running = procmond().spawn().expect("procmond");
    let mut log = Lines::follow(running.stderr.take().expect("stderr"));
    log.wait_for("scanning every 7s", T)
        .expect("scanning, as the file says");
    log.wait_for("stored", T).expect("the snapshot stored");
    signal(&running, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut running, T).expect("procmond stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let _ = child.kill();
    let _ = child.wait();

    let glob = format!("*{}", binary.file_name().expect("name").to_string_lossy());
    let out = Command::new(env!("CARGO_BIN_EXE_daemoneye-cli"))
        .args([
            "events", "query", "--since", "10m", "--json", "--exe", &glob,
        ])
        .arg("--database")
        .arg(&db)
        .output()
        .expect("events query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let path = binary.display().to_string();
    assert!(
        text.lines().any(|l| l.contains(&path)),
        "the store has the process: {text}"
    );

    // A key neither procmond nor the runtime knows: one line naming it.
    std::fs::write(&settings, "scan_only = true\nscan_everything = 1\n").expect("write");
    let out = procmond().output().expect("procmond");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("scan_everything"), "{err}");
    std::fs::write(&settings, "scan_only = \"yes please\"\n").expect("write");
    let out = procmond().output().expect("procmond");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("scan_only"), "{err}");
}

#[test]
fn what_procmond_loses_is_in_its_detail_line() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(
        &bins(),
        Some(&config(&state, ", \"--max-processes\", \"3\"")),
    );
    // More processes run than it may track: the start-up snapshot refuses the rest, and
    // `collectors list` says how many.
    wait_mode(&agent, "realtime");
    wait_mode(&agent, "processes refused at the process limit");
    let detail = procmond(&agent)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refused: u64 = detail
        .split("lost: ")
        .nth(1)
        .and_then(|l| l.split(", ").find(|p| p.contains("refused")))
        .and_then(|p| p.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "{detail}");
}

#[test]
fn collectors_config_changes_procmonds_interval_and_hashing_while_it_runs() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&config(&state, "")));
    let pid = wait_mode(&agent, "reconciling every 5s");
    let (status, _, err) = agent.run_cli(&[
        "collectors",
        "config",
        "procmond",
        "--interval",
        "10",
        "--compute-hashes",
        "true",
    ]);
    assert!(status.success(), "{err}");
    wait_mode(&agent, "reconciling every 10s");
    assert_eq!(
        procmond(&agent)["pid"].as_u64(),
        Some(u64::from(pid)),
        "not restarted"
    );
    // New processes now carry their executable's hash.
    let mut sub = agent.subscriber(&["events.process.new", "--json"]);
    let found = new_sleep_events(&mut sub);
    assert_eq!(found.len(), 1, "{found:#?}\nprocmond: {}", procmond(&agent));
    let expected = Command::new("sha256sum")
        .arg("/usr/bin/sleep")
        .output()
        .expect("sha256sum");
    let expected = String::from_utf8_lossy(&expected.stdout)
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(found[0]["exe_sha256"], expected.as_str(), "{}", found[0]);
}
