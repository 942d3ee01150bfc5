//! Detection end to end, with the real agent and the real procmond: rules written by the
//! test (and the shipped ones) over real commands, alerts seen by `alerts follow` and
//! kept in the store across a restart, refused rule files, reload by request and by
//! SIGHUP, and a loop folded into one alert.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, Bins, Lines, Subscriber, eventually, signal};
use serde_json::Value;
use sha2::Digest;

const T: Duration = Duration::from_secs(15);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

/// A rule that matches command lines containing `marker`.
fn rule(id: &str, marker: &str, level: &str) -> String {
    format!(
        "title: Marker {marker}\nid: {id}\nstatus: test\nlevel: {level}\n\
         tags: [attack.t1059]\ndescription: commands that name {marker}\n\
         logsource:\n  product: linux\n  category: process_creation\n\
         detection:\n  sel:\n    CommandLine|contains: {marker}\n  condition: sel\n"
    )
}

const MARKER_ID: &str = "0b8c6a1e-0000-4000-8000-000000000001";

/// A state root and a rule directory that outlive one agent.
struct Setup {
    base: tempfile::TempDir,
    /// `[detection] enrich_level`.
    enrich: &'static str,
}

impl Setup {
    fn new() -> Setup {
        let base = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(base.path().join("rules")).expect("rules dir");
        Setup {
            base,
            enrich: "none",
        }
    }

    /// A setup whose agent enriches alerts at high and above.
    fn enriching() -> Setup {
        Setup {
            enrich: "high",
            ..Setup::new()
        }
    }

    fn rules(&self) -> PathBuf {
        self.base.path().join("rules")
    }

    fn write_rule(&self, name: &str, text: &str) {
        std::fs::write(self.rules().join(name), text).expect("write rule");
    }

    fn config(&self, fold_window: &str) -> String {
        format!(
            "[agent]\nstate_dir = {:?}\n[broker]\nheartbeat_interval_ms = 200\n\
             [[collectors]]\nname = \"procmond\"\nbinary = {:?}\n\
             args = [\"--interval\", \"5\", \"--wal\", {:?}]\nstop_timeout_ms = 300\n\
             [detection]\nrules = [{:?}]\nfold_window = {fold_window:?}\nenrich_level = {:?}\n",
            self.base.path().join("state"),
            env!("CARGO_BIN_EXE_procmond"),
            self.base.path().join("procmond.wal"),
            self.rules(),
            self.enrich,
        )
    }

    /// Starts an agent on this setup's socket, waiting until procmond watches in real time.
    fn start(&self, fold_window: &str) -> Agent {
        let socket = self.base.path().join("run").join("broker.sock");
        let agent = Agent::start_at(
            &bins(),
            Some(&self.config(fold_window)),
            tempfile::tempdir().expect("tempdir"),
            socket,
        );
        agent.wait_realtime("procmond", T);
        agent
    }
}

/// `alerts follow --json`, subscribed.
fn follow(agent: &Agent) -> Subscriber {
    let mut child = agent
        .cli(&["alerts", "follow", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn follow");
    let stdout = Lines::follow(child.stdout.take().expect("stdout"));
    let mut stderr = Lines::follow(child.stderr.take().expect("stderr"));
    stderr
        .wait_for("subscribed", Duration::from_secs(10))
        .expect("follow subscribed");
    Subscriber {
        child,
        stdout,
        stderr,
    }
}

/// Runs `sh -c SCRIPT`, which lives at least `LIVES` (procmond reads a process's
/// command line when it learns of the exec: one gone by then has none to match); returns
/// its pid.
fn sh(script: &str) -> u32 {
    let mut child = spawn_sh(script);
    let pid = child.id();
    child.wait().expect("wait sh");
    pid
}

/// How long the test's shells live after their exec.
const LIVES: &str = "sleep 0.1";

fn spawn_sh(script: &str) -> std::process::Child {
    Command::new("/bin/sh")
        .args(["-c", &format!("{script} && {LIVES}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

/// The alerts `follow` printed so far.
fn alerts(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Waits until `follow` printed an alert of `rule` that `pred` accepts; returns it.
fn wait_alert(
    sub: &mut Subscriber,
    rule: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = alerts(&sub.stdout.seen)
            .into_iter()
            .find(|a| a["rule_id"] == rule && pred(a))
        {
            return a;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no alert of {rule} within {timeout:?}; saw {:#?}",
            sub.stdout.seen
        );
        sub.stdout.wait_count(sub.stdout.seen.len() + 1, left);
    }
}

fn list_json(agent: &Agent, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["alerts", "list", "--json"];
    args.extend_from_slice(extra);
    let (status, out, err) = agent.run_cli(&args);
    assert!(status.success(), "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn status_json(agent: &Agent) -> Value {
    let (status, out, err) = agent.run_cli(&["detection", "status", "--json"]);
    assert!(status.success(), "{err}");
    serde_json::from_str(&out).expect("status json")
}

fn rule_state(status: &Value, file: &Path) -> Option<(String, String)> {
    status["rules"].as_array()?.iter().find_map(|r| {
        (r["file"] == file.display().to_string()).then(|| {
            (
                r["state"].as_str().unwrap_or_default().to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

#[test]
fn a_targeted_command_raises_one_alert_with_its_pid_and_exe_within_a_second_kept_across_a_restart()
{
    let setup = Setup::new();
    setup.write_rule("marker.yml", &rule(MARKER_ID, "ALERTMARKER1", "high"));
    let mut agent = setup.start("60s");
    let mut sub = follow(&agent);
    // A benign command first: its event precedes the marked one, so once the marked one's
    // alert is out, the benign one was evaluated too.
    sh("true BENIGN-COMMAND");
    let started = Instant::now();
    let pid = sh("true ALERTMARKER1");
    let a = wait_alert(&mut sub, MARKER_ID, T, |_| true);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "alert after {took:?}");
    assert_eq!(a["event"]["pid"].as_u64(), Some(u64::from(pid)), "{a}");
    let exe = a["event"]["exe"].as_str().unwrap_or_default();
    assert!(exe.ends_with("sh") || exe.contains("dash"), "{a}");
    assert_eq!(a["level"], "high");
    assert_eq!(a["count"], 1);
    assert_eq!(a["tags"][0], "attack.t1059");
    assert_eq!(a["title"], "Marker ALERTMARKER1");
    assert!(a["host"].as_str().is_some_and(|h| !h.is_empty()), "{a}");
    assert!(
        a["event_correlation_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("procmond")),
        "{a}"
    );
    let id = a["alert_id"].as_str().expect("alert id").to_string();
    let all = alerts(&sub.stdout.seen);
    assert!(
        all.iter()
            .all(|a| !a.to_string().contains("BENIGN-COMMAND")),
        "{all:#?}"
    );
    assert_eq!(
        all.iter().filter(|a| a["rule_id"] == MARKER_ID).count(),
        1,
        "{all:#?}"
    );

    eventually("alerts list has it", T, || {
        list_json(&agent, &["--rule", MARKER_ID])
            .iter()
            .any(|a| a["alert_id"] == id.as_str())
    });
    assert!(
        list_json(&agent, &["--level", "critical", "--rule", MARKER_ID]).is_empty(),
        "--level critical leaves a high alert out"
    );
    let (status, _) = agent.terminate();
    assert!(status.success());
    drop(sub);
    drop(agent);
    let agent = setup.start("60s");
    let kept = list_json(&agent, &["--since", "1h", "--rule", MARKER_ID]);
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0]["alert_id"], id.as_str());
    assert_eq!(kept[0]["event"]["pid"].as_u64(), Some(u64::from(pid)));
    let (status, out, err) = agent.run_cli(&["alerts", "list", "--rule", MARKER_ID]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!("pid={pid}"))
            && out.contains("high")
            && out.contains("Marker ALERTMARKER1")
            && out.contains("count=1"),
        "{out}"
    );
}

#[test]
fn a_broken_rule_file_is_refused_with_its_reason_while_the_others_raise_alerts() {
    let setup = Setup::new();
    setup.write_rule("marker.yml", &rule(MARKER_ID, "ALERTMARKER2", "medium"));
    setup.write_rule("broken.yml", "title: [unclosed\n  detection: {\n");
    let agent = setup.start("60s");
    let status = status_json(&agent);
    let (state, reason) = rule_state(&status, &setup.rules().join("broken.yml")).expect("listed");
    assert_eq!(state, "refused");
    assert!(!reason.is_empty());
    assert_eq!(
        rule_state(&status, &setup.rules().join("marker.yml")).map(|s| s.0),
        Some("active".to_string())
    );
    assert_eq!(status["health"], "degraded");
    let (code, out, _) = agent.run_cli(&["detection", "status"]);
    assert!(code.success());
    let line = out
        .lines()
        .find(|l| l.contains("broken.yml"))
        .expect("a line for the broken file");
    assert!(line.contains("refused") && line.contains(&reason), "{out}");
    // The agent's health says why.
    let (code, out, _) = agent.run_cli(&["health", "--json"]);
    assert_eq!(code.code(), Some(3), "degraded: {out}");
    assert!(out.contains("broken.yml"), "{out}");

    let mut sub = follow(&agent);
    let pid = sh("true ALERTMARKER2");
    let a = wait_alert(&mut sub, MARKER_ID, T, |_| true);
    assert_eq!(a["event"]["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(a["level"], "medium");
    eventually("the rule's match is counted", T, || {
        rule_state(&status_json(&agent), &setup.rules().join("marker.yml")).is_some()
            && status_json(&agent)["rules"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["rule_id"] == MARKER_ID && r["matches"] == 1)
            })
    });
}

#[test]
fn reload_and_sighup_pick_up_a_new_rule_file() {
    let setup = Setup::new();
    setup.write_rule("marker.yml", &rule(MARKER_ID, "ALERTMARKER3", "low"));
    let agent = setup.start("60s");
    let mut sub = follow(&agent);
    let second = "0b8c6a1e-0000-4000-8000-000000000002";
    setup.write_rule("second.yml", &rule(second, "SECONDMARKER", "high"));
    let (code, out, err) = agent.run_cli(&["detection", "reload"]);
    assert!(code.success(), "{err}");
    assert!(err.contains("rules reloaded"), "{err}");
    assert!(out.contains("0 refused"), "{out}");
    assert_eq!(
        rule_state(&status_json(&agent), &setup.rules().join("second.yml")).map(|s| s.0),
        Some("active".to_string())
    );
    let pid = sh("true SECONDMARKER");
    let a = wait_alert(&mut sub, second, T, |_| true);
    assert_eq!(a["event"]["pid"].as_u64(), Some(u64::from(pid)));

    let third = "0b8c6a1e-0000-4000-8000-000000000003";
    setup.write_rule("third.yml", &rule(third, "THIRDMARKER", "critical"));
    signal(&agent.child, nix::sys::signal::Signal::SIGHUP);
    eventually("SIGHUP loads third.yml", T, || {
        rule_state(&status_json(&agent), &setup.rules().join("third.yml")).is_some()
    });
    let pid = sh("true THIRDMARKER");
    let a = wait_alert(&mut sub, third, T, |_| true);
    assert_eq!(a["event"]["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(a["level"], "critical");
    // The first rule still works after two reloads.
    sh("true ALERTMARKER3");
    wait_alert(&mut sub, MARKER_ID, T, |_| true);
}

#[test]
fn a_loop_of_fifty_matching_commands_folds_into_one_alert_with_count_fifty() {
    let setup = Setup::new();
    setup.write_rule("marker.yml", &rule(MARKER_ID, "LOOPMARKER", "high"));
    let agent = setup.start("3s");
    let mut sub = follow(&agent);
    // Fifty at once, each alive long enough to be read, all within the window.
    let mut loop_ = Vec::new();
    for _ in 0..50 {
        loop_.push(spawn_sh("true LOOPMARKER"));
    }
    let pids: Vec<u64> = loop_.iter().map(|c| u64::from(c.id())).collect();
    for mut c in loop_ {
        c.wait().expect("wait sh");
    }
    let raised = wait_alert(&mut sub, MARKER_ID, T, |a| a["count"] == 1);
    let first = raised["event"]["pid"].as_u64().expect("pid");
    assert!(pids.contains(&first), "{raised}");
    let id = raised["alert_id"].as_str().expect("id").to_string();
    let update = wait_alert(&mut sub, MARKER_ID, T, |a| a["update"] == true);
    assert_eq!(update["alert_id"], id.as_str());
    assert_eq!(update["count"], 50, "{update}");
    assert!(update["last_ms"].as_u64() >= raised["time_ms"].as_u64());
    let all: Vec<Value> = alerts(&sub.stdout.seen)
        .into_iter()
        .filter(|a| a["rule_id"] == MARKER_ID)
        .collect();
    assert_eq!(all.len(), 2, "one raise, one update: {all:#?}");
    eventually("alerts list shows one record with count 50", T, || {
        let listed = list_json(&agent, &["--rule", MARKER_ID]);
        listed.len() == 1 && listed[0]["count"] == 50
    });
    let status = status_json(&agent);
    assert!(status["matches_folded"].as_u64() >= Some(49), "{status}");
}

#[test]
fn a_command_a_shipped_rule_targets_raises_one_alert_within_a_second_and_its_enrichment_arrives() {
    let setup = Setup::enriching();
    let agent = setup.start("60s");
    let mut sub = follow(&agent);
    let decode_piped_to_shell = "02a90f8f-db73-4535-8c7f-7a3057cb1fed";
    // `true`, base64-encoded, decoded and piped into a shell; the shell then lives on long
    // enough for procmond to answer the enrichment tasks about it.
    let started = Instant::now();
    let mut child = Command::new("/bin/sh")
        .args(["-c", "echo dHJ1ZQo= | base64 -d | sh && sleep 30"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe of the shell");
    let a = wait_alert(&mut sub, decode_piped_to_shell, T, |a| a["update"] != true);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "alert after {took:?}");
    assert_eq!(a["event"]["pid"].as_u64(), Some(u64::from(pid)), "{a}");
    assert_eq!(a["event"]["exe"], exe.display().to_string(), "{a}");
    assert_eq!(a["level"], "high");
    assert!(
        a["rule_file"]
            .as_str()
            .is_some_and(|f| f.starts_with("builtin:")),
        "{a}"
    );
    let tags: Vec<&str> = a["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(tags.contains(&"attack.t1059.004"), "{tags:?}");
    let id = a["alert_id"].as_str().expect("alert id").to_string();

    // Its enrichment: procmond's answers about the running shell.
    let enriched = wait_alert(&mut sub, decode_piped_to_shell, T, |e| {
        e["alert_id"] == id.as_str() && e["enriched"] == true
    });
    let by_kind = |k: &str| -> Value {
        enriched["enrichment"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["kind"] == k).cloned())
            .unwrap_or_else(|| panic!("{k} missing: {enriched:#}"))
    };
    for k in ["hash", "ancestry", "open_files"] {
        let e = by_kind(k);
        assert!(e["arrived"] == true && e["ok"] == true, "{e:#}");
        assert_eq!(e["collector_id"], "procmond", "{e:#}");
    }
    let expected: String = sha2::Sha256::digest(std::fs::read(&exe).expect("read the shell"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(by_kind("hash")["result"]["exe_sha256"], expected.as_str());
    let chain: Vec<u64> = by_kind("ancestry")["result"]["ancestry"]
        .as_array()
        .expect("ancestry")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(
        &chain[..2],
        &[u64::from(pid), u64::from(std::process::id())],
        "{chain:?}"
    );
    assert_eq!(chain.last(), Some(&1), "{chain:?}");
    let _ = child.kill();
    let _ = child.wait();

    // One alert of the rule for the one command, and `alerts list` merges the enrichment
    // into its record.
    let firsts = alerts(&sub.stdout.seen)
        .into_iter()
        .filter(|a| a["rule_id"] == decode_piped_to_shell && a["update"] != true)
        .count();
    assert_eq!(firsts, 1, "{:#?}", sub.stdout.seen);
    eventually("alerts list shows the alert enriched", T, || {
        let listed = list_json(&agent, &["--rule", decode_piped_to_shell]);
        listed.len() == 1 && listed[0]["alert_id"] == id.as_str() && listed[0]["enriched"] == true
    });
}
