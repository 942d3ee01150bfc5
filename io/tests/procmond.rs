//! procmond under the agent, with real processes: real-time new, modified and exit events
//! seen by `daemoneye-cli sub --json` in another process and kept in the agent's store,
//! the scanning fallback and what it says, and the capabilities procmond keeps.

use std::process::Command;
use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, Bins, eventually};

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
    let caps = procmond(&agent)["capabilities"].clone();
    assert_eq!(caps, serde_json::json!(["process", "system_wide"]));
    let mut sub = agent.subscriber(&["events.process.new", "--json"]);
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
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["source"], "scan", "{}", found[0]);
    assert_eq!(found[0]["exe"], "/usr/bin/sleep", "{}", found[0]);
}

#[test]
fn procmond_keeps_only_the_capabilities_reading_needs() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&bins(), Some(&config(&state, "")));
    let pid = wait_mode(&agent, "realtime");
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
