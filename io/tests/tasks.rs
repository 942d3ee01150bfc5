//! Tasks end to end: the real agent's coordinator, real example collectors
//! (`io/examples/example_collector.rs`, which serves `performance` tasks, and `sleep` ones
//! that answer late), and the real CLI (`tasks submit|list|cancel`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use daemoneye_tests::{Agent, Bins, Lines, wait_exit};
use serde_json::Value;
use sha2::Digest;

const T: Duration = Duration::from_secs(20);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn example() -> PathBuf {
    daemoneye_tests::build_example(
        env!("CARGO_MANIFEST_DIR"),
        "daemoneye-io",
        "example_collector",
    )
}

/// An agent running the example collector under each of `names`.
fn agent_with(names: &[&str]) -> Agent {
    let example = example();
    let mut config = String::from("[broker]\nheartbeat_interval_ms = 200\n");
    for name in names {
        config.push_str(&collector(name, &example));
    }
    let agent = Agent::start(&bins(), Some(&config));
    for name in names {
        eventually(&format!("{name} registered with its capabilities"), || {
            collectors(&agent).iter().any(|c| {
                c["name"] == *name
                    && c["state"] == "running"
                    && c["capabilities"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "performance"))
            })
        });
    }
    agent
}

fn collector(name: &str, example: &Path) -> String {
    format!(
        "[[collectors]]\nname = {name:?}\nbinary = {:?}\ncapabilities = [\"performance\"]\n\
         auto_restart = false\nstop_timeout_ms = 2000\n\
         env = {{ DAEMONEYE_EXAMPLE_INTERVAL_SECS = \"30\" }}\n",
        example.display().to_string()
    )
}

fn collectors(agent: &Agent) -> Vec<Value> {
    let (status, out, err) = agent.run_cli(&["collectors", "list", "--json"]);
    assert!(status.success(), "{err}");
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn tasks(agent: &Agent) -> Vec<Value> {
    let (status, out, err) = agent.run_cli(&["tasks", "list", "--all", "--json"]);
    assert!(status.success(), "{err}");
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn task(agent: &Agent, id: &str) -> Value {
    tasks(agent)
        .into_iter()
        .find(|t| t["id"] == id)
        .unwrap_or(Value::Null)
}

fn eventually(what: &str, cond: impl FnMut() -> bool) {
    daemoneye_tests::eventually(what, T, cond);
}

/// `tasks submit ... --json`: (exit success, the answer, stderr).
fn submit(agent: &Agent, args: &[&str]) -> (bool, Value, String) {
    let mut full = vec!["tasks", "submit"];
    full.extend_from_slice(args);
    full.push("--json");
    let (status, out, err) = agent.run_cli(&full);
    let answer = serde_json::from_str(&out).unwrap_or(Value::Null);
    (status.success(), answer, err)
}

/// `tasks submit ARGS --wait --json`, running: the CLI and its stdout.
fn submit_in_background(agent: &Agent, args: &[&str]) -> (std::process::Child, Lines) {
    let mut full = vec!["tasks", "submit"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--wait", "--json"]);
    let mut child = agent
        .cli(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cli");
    let out = Lines::follow(child.stdout.take().expect("stdout"));
    (child, out)
}

#[test]
fn a_task_submitted_with_wait_completes_with_the_collectors_result_and_a_target_is_honoured() {
    let agent = agent_with(&["loadavg"]);
    let (ok, answer, err) = submit(&agent, &["performance", "load", "--wait"]);
    assert!(ok, "{err} {answer}");
    assert_eq!(answer["task"]["state"], "completed", "{answer}");
    assert_eq!(answer["task"]["owner"], "loadavg");
    assert_eq!(answer["task"]["attempts"], 1);
    assert_eq!(answer["result"]["collector"], "loadavg", "{answer}");
    // The example answers with /proc/loadavg's line.
    let load = answer["result"]["payload"].as_str().expect("text payload");
    assert_eq!(load.split_whitespace().count(), 5, "{load}");

    // A direct target: taken by it, and only by it.
    let (ok, answer, err) = submit(
        &agent,
        &["performance", "x", "--target", "loadavg", "--wait"],
    );
    assert!(ok, "{err}");
    assert_eq!(answer["task"]["owner"], "loadavg");
    let (ok, answer, err) = submit(
        &agent,
        &[
            "performance",
            "x",
            "--target",
            "elsewhere",
            "--timeout",
            "200ms",
            "--attempts",
            "1",
            "--wait",
        ],
    );
    assert!(!ok, "{answer}");
    assert_eq!(answer["task"]["state"], "failed", "{answer}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("collector elsewhere did not take it"), "{err}");

    // Clear errors for what the agent (or the CLI) refuses.
    let (status, _, err) = agent.run_cli(&["tasks", "submit", "telepathy", "x"]);
    assert!(!status.success());
    assert!(err.contains("unknown capability \"telepathy\""), "{err}");
    let (status, _, err) =
        agent.run_cli(&["tasks", "submit", "performance", "x", "--priority", "256"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("--priority is out of range: 0 to 255"),
        "{err}"
    );
    let (status, _, err) = agent.run_cli(&["tasks", "cancel", "no-such-task"]);
    assert!(!status.success());
    assert!(err.contains("no task \"no-such-task\""), "{err}");
}

#[test]
fn a_task_nobody_can_take_waits_then_fails_after_its_attempts() {
    let agent = agent_with(&["loadavg"]);
    let (ok, answer, err) = submit(
        &agent,
        &["network", "x", "--timeout", "300ms", "--attempts", "2"],
    );
    assert!(ok, "{err}");
    let id = answer["task"]["id"].as_str().expect("id").to_string();
    assert_eq!(answer["task"]["state"], "waiting", "{answer}");
    assert_eq!(answer["task"]["owner"], Value::Null);
    eventually("the task fails after its two attempts", || {
        task(&agent, &id)["state"] == "failed"
    });
    let t = task(&agent, &id);
    assert_eq!(t["attempts"], 2, "{t}");
    let message = t["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "failed after 2 attempt(s): no collector with the network capability took it"
        ),
        "{message}"
    );
    // The health report says why the coordinator is degraded.
    let (_, out, _) = agent.run_cli(&["health", "--json"]);
    let health: Value = serde_json::from_str(&out).expect("json");
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("task(s) failed in the last"), "{health}");
    assert_eq!(health["coordinator"], "degraded", "{health}");
    assert_eq!(health["detection"], "healthy", "{health}");
    let (_, text, _) = agent.run_cli(&["health"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("coordinator") && l.ends_with("degraded")),
        "{text}"
    );

    // A waiting task can be cancelled; `list` without --all shows only active ones.
    let (_, answer, _) = submit(&agent, &["network", "y", "--timeout", "30s"]);
    let id = answer["task"]["id"].as_str().expect("id").to_string();
    let (status, out, _) = agent.run_cli(&["tasks", "list", "--json"]);
    assert!(status.success());
    let active: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(active.as_array().map(Vec::len), Some(1), "{active}");
    assert_eq!(active[0]["state"], "waiting");
    let (status, out, err) = agent.run_cli(&["tasks", "cancel", &id]);
    assert!(status.success(), "{err}");
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(task(&agent, &id)["state"], "cancelled");
}

#[test]
fn the_owner_killed_mid_task_the_task_completes_once_on_the_other() {
    let agent = agent_with(&["perf-a", "perf-b"]);
    // A slow task: the owner sleeps 1.5 s before answering.
    let (mut child, mut out) = submit_in_background(
        &agent,
        &["performance", "1500", "--kind", "sleep", "--timeout", "20s"],
    );
    let mut owner = String::new();
    let mut id = String::new();
    eventually("the task is assigned", || {
        if let Some(t) = tasks(&agent).into_iter().find(|t| t["state"] == "assigned") {
            owner = t["owner"].as_str().unwrap_or_default().to_string();
            id = t["id"].as_str().unwrap_or_default().to_string();
            return true;
        }
        false
    });
    let pid = collectors(&agent)
        .into_iter()
        .find(|c| c["name"] == owner.as_str())
        .and_then(|c| c["pid"].as_u64())
        .expect("owner's pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the owner");
    let other = if owner == "perf-a" {
        "perf-b"
    } else {
        "perf-a"
    };
    let status = wait_exit(&mut child, T).expect("the submit returns");
    let line = out.wait_count(1, T).first().cloned().unwrap_or_default();
    assert!(status.success(), "{line}");
    let answer: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(answer["task"]["state"], "completed", "{answer}");
    assert_eq!(answer["task"]["owner"], other, "{answer}");
    assert_eq!(answer["task"]["attempts"], 2, "{answer}");
    assert_eq!(answer["result"]["collector"], other);
    // Once: one record, completed by the other collector, and nothing else.
    let all = tasks(&agent);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["id"], id.as_str());
    assert_eq!(all[0]["state"], "completed");
}

/// procmond SIGKILLed while it holds a task: the agent restarts it (its supervisor's
/// backoff), the coordinator gives the task a second attempt, and the task completes once
/// with the real answer.
#[test]
fn procmond_killed_mid_task_the_task_completes_once_after_its_restart() {
    let wal = tempfile::tempdir().expect("tempdir");
    // Heartbeats every second: the stopped procmond below is killed long before the agent
    // would count it missing.
    let config = format!(
        "[broker]\nheartbeat_interval_ms = 1000\n\
         [[collectors]]\nname = \"procmond\"\nbinary = {:?}\n\
         args = [\"--interval\", \"5\", \"--wal\", {:?}]\nstop_timeout_ms = 300\n",
        env!("CARGO_BIN_EXE_procmond"),
        wal.path().join("procmond.wal"),
    );
    let agent = Agent::start(&bins(), Some(&config));
    let procmond = |agent: &Agent| {
        collectors(agent)
            .into_iter()
            .find(|c| {
                c["name"] == "procmond"
                    && c["state"] == "running"
                    && c["capabilities"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "process"))
            })
            .and_then(|c| c["pid"].as_u64())
    };
    let mut first = 0;
    eventually("procmond registered with the process capability", || {
        first = procmond(&agent).unwrap_or(0);
        first != 0
    });
    let target = std::process::Command::new("/usr/bin/sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let expected: String =
        sha2::Sha256::digest(std::fs::read("/usr/bin/sleep").expect("read sleep"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

    // Stopped, procmond takes the task and cannot answer it.
    let stopped = nix::unistd::Pid::from_raw(first as i32);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).expect("stop procmond");
    let payload = format!("{{\"pid\":{}}}", target.id());
    let (mut child, mut out) = submit_in_background(
        &agent,
        &["process", &payload, "--kind", "hash", "--timeout", "20s"],
    );
    let mut id = String::new();
    eventually("the task is assigned to procmond", || {
        if let Some(t) = tasks(&agent)
            .into_iter()
            .find(|t| t["state"] == "assigned" && t["owner"] == "procmond")
        {
            id = t["id"].as_str().unwrap_or_default().to_string();
            return true;
        }
        false
    });
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGKILL).expect("kill procmond");

    let status = wait_exit(&mut child, T).expect("the submit returns");
    let line = out.wait_count(1, T).first().cloned().unwrap_or_default();
    assert!(status.success(), "{line}");
    let answer: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(answer["task"]["id"], id.as_str(), "{answer}");
    assert_eq!(answer["task"]["state"], "completed", "{answer}");
    assert_eq!(answer["task"]["owner"], "procmond", "{answer}");
    assert_eq!(answer["task"]["attempts"], 2, "{answer}");
    assert_eq!(
        answer["result"]["process"]["exe_sha256"],
        expected.as_str(),
        "{answer}"
    );
    let restarted = procmond(&agent).expect("procmond runs again");
    assert_ne!(restarted, first, "a new procmond answered");
    // Once: one record, completed, and nothing else.
    let all = tasks(&agent);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["state"], "completed", "{all:?}");
    let mut target = target;
    let _ = target.kill();
    let _ = target.wait();
}
