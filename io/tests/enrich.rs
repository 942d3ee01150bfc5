//! The agent's enrichment service end to end: an alert published on `alerts.<level>` (as
//! the detection service does) comes back enriched on `alerts.enriched.<level>`, through
//! the agent's task coordinator and procmond, with what arrived and what did not.

use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::client::{AckMode, Client, ClientOptions, Subscription};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_proto::pb::events::{Alert, ProcessEvent, ProcessEventKind, ProcessInfo};
use daemoneye_tests::{Agent, Bins, eventually};
use prost::Message;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(15);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const DETECTION: &str = "[detection]\nenrich_level = \"high\"\nenrich_timeout = \"1s\"\n";

/// An agent supervising procmond, enriching alerts at high and above within 1 s.
fn agent_with_procmond(state: &tempfile::TempDir) -> Agent {
    let config = format!(
        "{DETECTION}[broker]\nheartbeat_interval_ms = 200\n[[collectors]]\nname = \"procmond\"\nbinary = {:?}\nargs = [\"--interval\", \"5\", \"--wal\", {:?}]\ncapabilities = [\"process\"]\nstop_timeout_ms = 300\n",
        env!("CARGO_BIN_EXE_procmond"),
        state.path().join("procmond.wal"),
    );
    Agent::start(&bins(), Some(&config))
}

/// Field 22 of `/proc/<pid>/stat`.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(") ").expect("comm") + 2..];
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("ticks")
}

/// An alert on process `pid` running `exe`, as the detection service publishes it.
fn alert(id: &str, level: &str, pid: u32, exe: &str, update: bool) -> Alert {
    let meta = std::fs::metadata(exe).ok();
    Alert {
        alert_id: id.into(),
        rule_id: "test-rule".into(),
        title: "test alert".into(),
        level: level.into(),
        update,
        count: 1,
        event: Some(ProcessEvent {
            kind: ProcessEventKind::New as i32,
            process: Some(ProcessInfo {
                pid,
                start_ticks: start_ticks(pid),
                exe: exe.into(),
                exe_dev: meta.as_ref().map_or(0, |m| m.dev()),
                exe_inode: meta.as_ref().map_or(0, |m| m.ino()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        event_topic: "events.process.new".into(),
        ..Default::default()
    }
}

async fn publish(client: &Client, a: &Alert) {
    let p = Publish::new(
        format!("alerts.{}", a.level),
        Bytes::from(a.encode_to_vec()),
        QoS::AtLeastOnce,
    );
    client.publish(p).await.expect("alert published");
}

async fn enriched_subscription(client: &Client) -> Subscription {
    let spec = Subscribe {
        qos: QoS::AtLeastOnce,
        ..Subscribe::new("alerts.enriched.#")
    };
    client
        .subscribe_all(vec![spec], AckMode::OnHandOver)
        .await
        .expect("subscribe")
}

/// The next enriched alert, with its topic.
async fn next_enriched(sub: &mut Subscription) -> (String, Alert) {
    let d = tokio::time::timeout(T, sub.recv())
        .await
        .expect("an enriched alert within the deadline")
        .expect("subscription open");
    (
        d.topic.clone(),
        Alert::decode(d.payload.clone()).expect("an Alert"),
    )
}

fn end(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn without_answers_the_alert_is_enriched_at_its_deadline_and_low_alerts_and_updates_are_not() {
    let agent = Agent::start(&bins(), Some(DETECTION));
    let child = Command::new("/bin/sleep").arg("60").spawn().expect("sleep");
    let pid = child.id();
    tokio().block_on(async {
        let client = Client::connect(&agent.socket, ClientOptions::new("enrich-test"))
            .await
            .expect("connect");
        let mut sub = enriched_subscription(&client).await;
        // Not enriched: below the level, and an update. They go first: were they
        // enriched, they would come out first.
        publish(
            &client,
            &alert("low-1", "low", pid, "/usr/bin/sleep", false),
        )
        .await;
        publish(
            &client,
            &alert("upd-1", "high", pid, "/usr/bin/sleep", true),
        )
        .await;
        let sent = Instant::now();
        publish(
            &client,
            &alert("high-1", "high", pid, "/usr/bin/sleep", false),
        )
        .await;
        let (topic, a) = next_enriched(&mut sub).await;
        let took = sent.elapsed();
        assert_eq!(topic, "alerts.enriched.high");
        assert_eq!(a.alert_id, "high-1");
        assert!(a.enriched && a.update);
        assert_eq!(a.event.and_then(|e| e.process).map(|p| p.pid), Some(pid));
        let kinds: Vec<_> = a.enrichment.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["hash", "ancestry", "open_files"]);
        for e in &a.enrichment {
            assert!(!e.arrived, "{e:?}");
            assert!(!e.message.is_empty(), "a kind not arrived says why: {e:?}");
        }
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "published at the 1 s deadline, after {took:?}"
        );
        client.close().await;
    });
    end(child);
}

#[test]
fn an_alert_on_a_running_process_is_enriched_with_hash_ancestry_and_open_files() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut agent = agent_with_procmond(&state);
    eventually("procmond runs", T, || {
        let (_, out, _) = agent.run_cli(&["collectors", "list", "--json"]);
        out.contains("\"running\"")
    });
    let child = Command::new("/usr/bin/sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let pid = child.id();
    let expected: String = Sha256::digest(std::fs::read("/usr/bin/sleep").expect("read"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let rt = tokio();
    let client = rt.block_on(async {
        let client = Client::connect(&agent.socket, ClientOptions::new("enrich-test"))
            .await
            .expect("connect");
        let mut sub = enriched_subscription(&client).await;
        publish(&client, &alert("a-1", "high", pid, "/usr/bin/sleep", false)).await;
        let (topic, a) = next_enriched(&mut sub).await;
        assert_eq!(topic, "alerts.enriched.high");
        assert_eq!(a.alert_id, "a-1");
        let by_kind = |k: &str| {
            a.enrichment
                .iter()
                .find(|e| e.kind == k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} missing: {:?}", a.enrichment))
        };
        for k in ["hash", "ancestry", "open_files"] {
            let e = by_kind(k);
            assert!(e.arrived && e.ok, "{e:?}");
            assert_eq!(e.collector_id, "procmond");
            assert!(!e.task_id.is_empty());
        }
        let hash = by_kind("hash").result.expect("result");
        assert_eq!(hash.exe_sha256, expected);
        let chain = by_kind("ancestry").result.expect("result").ancestry;
        let pids: Vec<u32> = chain.iter().map(|p| p.pid).collect();
        assert_eq!(&pids[..2], &[pid, std::process::id()], "{pids:?}");
        assert_eq!(pids.last(), Some(&1), "{pids:?}");
        let files = by_kind("open_files").result.expect("result");
        assert!(!files.gone && !files.open_files.is_empty(), "{files:?}");
        (client, sub)
    });
    // procmond stopped: the alert is still enriched, at its deadline, nothing arrived.
    let (status, _, err) = agent.run_cli(&["collectors", "stop", "procmond"]);
    assert!(status.success(), "{err}");
    rt.block_on(async {
        let (client, mut sub) = client;
        let sent = Instant::now();
        publish(
            &client,
            &alert("a-2", "critical", pid, "/usr/bin/sleep", false),
        )
        .await;
        let (topic, a) = next_enriched(&mut sub).await;
        assert_eq!(topic, "alerts.enriched.critical");
        assert_eq!(a.alert_id, "a-2");
        assert_eq!(a.enrichment.len(), 3);
        assert!(
            a.enrichment
                .iter()
                .all(|e| !e.arrived && !e.message.is_empty()),
            "{:?}",
            a.enrichment
        );
        assert!(
            sent.elapsed() >= Duration::from_millis(900),
            "{:?}",
            sent.elapsed()
        );
        client.close().await;
    });
    end(child);
    let _ = agent.terminate();
}
