//! The event store with the real agent and CLI (issue 13, items 4 and 5): what crosses the
//! bus is kept, `events query` finds it through the agent or from the file, a foreign or
//! damaged file is a one-line error, and a SIGKILLed agent loses nothing a WAL publisher
//! had accepted, nor keeps anything twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::wal::WalConfig;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_io::collector::publisher::{log_and_publish, publish_accepted};
use daemoneye_io::wal::WalFile;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use daemoneye_tests::{Agent, Bins, eventually, signal, wait_exit};
use nix::sys::signal::Signal;
use prost::Message;

const T: Duration = Duration::from_secs(20);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn process_event(kind: ProcessEventKind, pid: u32, exe: &str, user: &str, uid: u32) -> Bytes {
    let name = exe.rsplit('/').next().unwrap_or_default();
    Bytes::from(
        ProcessEvent {
            kind: kind as i32,
            process: Some(ProcessInfo {
                pid,
                ppid: 1,
                name: name.into(),
                exe: exe.into(),
                cmdline: vec![name.into(), format!("MARKER-{pid}")],
                user: user.into(),
                uid,
                euid: uid,
                effective_user: user.into(),
                ..Default::default()
            }),
            has_exit_code: kind == ProcessEventKind::Exit,
            exit_code: 0,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Publishes `(topic, payload)` at QoS1: each returns once the agent's store committed it.
fn publish(socket: &Path, events: &[(&str, Bytes)]) {
    runtime().block_on(async {
        let client = Client::connect(socket, ClientOptions::new("store-test"))
            .await
            .expect("connect");
        for (topic, payload) in events {
            client
                .publish(Publish::new(*topic, payload.clone(), QoS::AtLeastOnce))
                .await
                .expect("publish");
        }
        client.close().await;
    });
}

/// `events query ARGS --json`: the parsed lines, or the failure's stderr.
fn query(agent: &Agent, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["events", "query", "--json"];
    full.extend_from_slice(args);
    let (status, out, err) = agent.run_cli(&full);
    assert!(status.success(), "{full:?}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn pids(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|v| v["event"]["pid"].as_u64())
        .collect()
}

fn store_config(path: &Path) -> String {
    format!("[store]\npath = {:?}\n", path.display().to_string())
}

#[test]
fn events_query_finds_published_process_events_with_each_filter() {
    let home = tempfile::tempdir().expect("tempdir");
    let db = home.path().join("events.redb");
    let mut agent = Agent::start(&bins(), Some(&store_config(&db)));
    use ProcessEventKind::{Exit, New};
    publish(
        &agent.socket,
        &[
            (
                "events.process.new",
                process_event(New, 101, "/usr/bin/curl", "alice", 1000),
            ),
            (
                "events.process.new",
                process_event(New, 102, "/bin/sh", "root", 0),
            ),
            (
                "events.process.exit",
                process_event(Exit, 101, "/usr/bin/curl", "alice", 1000),
            ),
            ("events.custom", Bytes::from_static(b"plain text")),
            ("alerts.high", Bytes::from_static(b"{\"rule\":\"x\"}")),
        ],
    );
    let all = query(&agent, &["--since", "10m", "--limit", "0"]);
    assert_eq!(pids(&all), [101, 102, 101], "{all:?}");
    assert_eq!(all.len(), 4, "events.# by default, alerts apart: {all:?}");
    assert_eq!(all[0]["event"]["kind"], "new");
    assert_eq!(all[0]["event"]["exe"], "/usr/bin/curl");
    assert_eq!(
        all[0]["event"]["argv"],
        serde_json::json!(["curl", "MARKER-101"])
    );
    assert_eq!(all[2]["event"]["kind"], "exit");
    assert_eq!(all[3]["payload"], "plain text");
    assert!(all[3].get("event").is_none());

    for (args, expected) in [
        (&["--pid", "101"][..], &[101u64, 101][..]),
        (&["--name", "cu*"], &[101, 101]),
        (&["--exe", "/bin/*"], &[102]),
        (&["--user", "alice"], &[101, 101]),
        (&["--user", "0"], &[102]),
        (&["--topic", "events.process.exit"], &[101]),
    ] {
        assert_eq!(pids(&query(&agent, args)), expected, "{args:?}");
    }
    let alerts = query(&agent, &["--topic", "alerts.#"]);
    assert_eq!(alerts.len(), 1);
    assert!(query(&agent, &["--since", "2100-01-01T00:00:00Z"]).is_empty());

    // The limit, said on stderr when more matched; the human line has the fields.
    let (status, out, err) = agent.run_cli(&["events", "query", "--limit", "1"]);
    assert!(status.success(), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("new") && out.contains("101") && out.contains("alice"),
        "{out}"
    );
    assert!(
        out.contains("/usr/bin/curl curl MARKER-101"),
        "time, kind, pid, user, exe, argv: {out}"
    );
    assert!(err.contains("more events matched"), "{err}");
    assert!(
        err.contains("from the agent"),
        "which source is said: {err}"
    );

    // The file, read directly: beside the running agent, then with the agent stopped.
    let beside = query(&agent, &["--database", db.to_str().expect("utf-8")]);
    assert_eq!(beside.len(), 4);
    let (status, _) = agent.terminate();
    assert!(status.success());
    let stopped = query(
        &agent,
        &["--database", db.to_str().expect("utf-8"), "--pid", "102"],
    );
    assert_eq!(pids(&stopped), [102]);
}

#[test]
fn sub_json_decodes_process_events_and_keeps_other_payloads() {
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["events.#", "--json"]);
    publish(
        &agent.socket,
        &[
            (
                "events.process.new",
                process_event(ProcessEventKind::New, 7, "/usr/bin/true", "root", 0),
            ),
            ("events.other", Bytes::from_static(&[0xff, 0x00])),
        ],
    );
    let lines = sub.stdout.wait_count(2, T).to_vec();
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(v[0]["topic"], "events.process.new");
    assert_eq!(v[0]["event"]["kind"], "new");
    assert_eq!(v[0]["event"]["pid"], 7);
    assert_eq!(v[0]["event"]["exe"], "/usr/bin/true");
    assert!(v[0].get("payload_b64").is_some(), "the existing keys stay");
    assert!(v[1].get("event").is_none());
    assert_eq!(v[1]["payload_b64"], "/wA=");
}

/// `events query --database path`: (exit status, stderr).
fn refused(agent: &Agent, path: &Path) -> String {
    let (status, out, err) = agent.run_cli(&[
        "events",
        "query",
        "--database",
        path.to_str().expect("utf-8"),
    ]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("reading")).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains(&path.display().to_string()), "{err}");
    lines[0].to_string()
}

#[test]
fn a_foreign_or_damaged_file_is_a_one_line_error_naming_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let db = home.path().join("events.redb");
    let mut agent = Agent::start(&bins(), Some(&store_config(&db)));
    let many: Vec<(&str, Bytes)> = (0..300u32)
        .map(|i| {
            (
                "events.process.new",
                process_event(ProcessEventKind::New, i, "/bin/x", "root", 0),
            )
        })
        .collect();
    publish(&agent.socket, &many);
    agent.terminate();

    let random = home.path().join("random.bin");
    let noise: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&random, noise).expect("write");
    assert!(refused(&agent, &random).contains("not a DaemonEye event store"));
    let text = home.path().join("notes.txt");
    std::fs::write(&text, "hello\n").expect("write");
    assert!(refused(&agent, &text).contains("holds text"));
    let data = std::fs::read(&db).expect("read");
    for (i, keep) in [data.len() / 2, data.len() / 5, 4096]
        .into_iter()
        .enumerate()
    {
        let cut = home.path().join(format!("cut-{i}.redb"));
        std::fs::write(&cut, &data[..keep]).expect("write");
        let line = refused(&agent, &cut);
        assert!(line.contains("damaged"), "{line}");
    }
    let missing = home.path().join("nothing.redb");
    assert!(refused(&agent, &missing).contains("no event store"));

    // An agent given a foreign file keeps running, says why in its health, and answers
    // queries with the reason.
    // (The store is opened after the agent starts listening: wait for its verdict.)
    let agent = Agent::start(&bins(), Some(&store_config(&text)));
    eventually("the health to say the store is unavailable", T, || {
        agent.run_cli(&["health"]).0.code() == Some(3)
    });
    let (_, out, _) = agent.run_cli(&["health"]);
    assert!(out.contains("not a DaemonEye event store"), "{out}");
    let (status, _, err) = agent.run_cli(&["events", "query"]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("not a DaemonEye event store"), "{err}");
}

const PUBLISHER: &str = "store-test-wal";
const EVENTS: u64 = 2_000;
const BATCH: u64 = 50;

fn wal_publisher_options() -> ClientOptions {
    let mut options = ClientOptions::new(PUBLISHER);
    options.session.publisher_id = Some(PUBLISHER.into());
    options.session.reconnect = None;
    options
}

/// Releases from the WAL every event the broker has acknowledged so far.
fn release(wal: &mut WalFile, acks: &mut tokio::sync::mpsc::UnboundedReceiver<u64>) {
    while let Ok(sequence) = acks.try_recv() {
        wal.handle_puback(sequence).expect("release");
    }
}

#[test]
fn an_agent_killed_mid_stream_keeps_every_accepted_event_exactly_once() {
    let home = tempfile::tempdir().expect("tempdir");
    let socket = home.path().join("run").join("broker.sock");
    let state = home.path().join("state");
    let db = home.path().join("events.redb");
    let wal_path: PathBuf = home.path().join("publisher.wal");
    let config = format!(
        "[agent]\nstate_dir = {:?}\n{}",
        state.display().to_string(),
        store_config(&db)
    );
    let start = |socket: &PathBuf| {
        Agent::start_at(
            &bins(),
            Some(&config),
            tempfile::tempdir().expect("tempdir"),
            socket.clone(),
        )
    };
    let mut first = start(&socket);
    let rt = runtime();
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    rt.block_on(async {
        let (mut wal, _) = WalFile::open(&wal_path, WalConfig::new(PUBLISHER)).expect("wal");
        let client = Client::connect(&first.socket, wal_publisher_options())
            .await
            .expect("connect");
        let mut sequence = 0u64;
        while sequence < EVENTS {
            let batch: Vec<(&str, Bytes)> = (0..BATCH)
                .map(|i| {
                    let pid = (sequence + i + 1) as u32;
                    (
                        "events.process.new",
                        process_event(ProcessEventKind::New, pid, "/bin/sh", "root", 0),
                    )
                })
                .collect();
            sequence += BATCH;
            log_and_publish(&client, &mut wal, &acks_tx, batch, || 0)
                .await
                .expect("WAL accepts");
            release(&mut wal, &mut acks);
            // Mid-stream: events in flight, some acknowledged, more to come.
            if sequence == EVENTS / 2 {
                signal(&first.child, Signal::SIGKILL);
                wait_exit(&mut first.child, T).expect("agent killed");
            }
            tokio::task::yield_now().await;
        }
        release(&mut wal, &mut acks);
        assert!(wal.pending() > 0, "the kill left events unacknowledged");
    });

    // The agent comes back; the publisher restarts from its WAL and re-sends what was
    // not acknowledged.
    let second = start(&socket);
    rt.block_on(async {
        let (mut wal, replayed) = WalFile::open(&wal_path, WalConfig::new(PUBLISHER)).expect("wal");
        assert!(replayed.records > 0, "{replayed}");
        let client = Client::connect(&second.socket, wal_publisher_options())
            .await
            .expect("connect");
        publish_accepted(&client, &mut wal, &acks_tx).await;
        let deadline = tokio::time::Instant::now() + T;
        while wal.pending() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} events never acknowledged",
                wal.pending()
            );
            if let Ok(Some(sequence)) =
                tokio::time::timeout(Duration::from_millis(100), acks.recv()).await
            {
                wal.handle_puback(sequence).expect("release");
            }
        }
        client.close().await;
    });

    // Every accepted event once: through the agent, and in the file.
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    for v in query(&second, &["--limit", "0"]) {
        if v["publisher_id"] == PUBLISHER {
            *counts
                .entry(v["sequence"].as_u64().expect("sequence"))
                .or_default() += 1;
        }
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "kept more than once: {twice:?}");
    let missing: Vec<u64> = (1..=EVENTS).filter(|s| !counts.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    eventually("the file to hold them all", T, || {
        query(
            &second,
            &["--database", db.to_str().expect("utf-8"), "--limit", "0"],
        )
        .len()
            == EVENTS as usize
    });
}

/// The sequence of each event record in a WAL file (replay leaves checkpoints out).
fn wal_events(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap_or_default();
    daemoneye_core::wal::replay(&data, daemoneye_core::wal::DEFAULT_MAX_RECORD)
        .0
        .iter()
        .map(|r| r.sequence)
        .collect()
}

/// procmond's sequences in the store and how often each is kept.
fn procmond_sequences(agent: &Agent, db: &Path) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for v in query(
        agent,
        &[
            "--database",
            db.to_str().expect("utf-8"),
            "--since",
            "1h",
            "--limit",
            "0",
        ],
    ) {
        if v["publisher_id"] == "procmond" {
            *counts
                .entry(v["sequence"].as_u64().expect("sequence"))
                .or_default() += 1;
        }
    }
    counts
}

/// procmond and the agent SIGKILLed together while processes start and end: after both
/// come back, every event procmond had accepted (the store's, and the WAL's unacknowledged
/// ones) is kept exactly once, and procmond's sequences have no hole.
#[test]
fn procmond_and_the_agent_killed_together_keep_every_accepted_event_exactly_once() {
    let home = tempfile::tempdir().expect("tempdir");
    let socket = home.path().join("run").join("broker.sock");
    let db = home.path().join("events.redb");
    let wal = home.path().join("procmond.wal");
    let config = format!(
        "[agent]\nstate_dir = {:?}\n{}[broker]\nheartbeat_interval_ms = 200\n\
         [[collectors]]\nname = \"procmond\"\nbinary = {:?}\n\
         args = [\"--interval\", \"5\", \"--wal\", {:?}]\nstop_timeout_ms = 300\n",
        home.path().join("state").display().to_string(),
        store_config(&db),
        env!("CARGO_BIN_EXE_procmond"),
        wal.display().to_string(),
    );
    let start = || {
        let agent = Agent::start_at(
            &bins(),
            Some(&config),
            tempfile::tempdir().expect("tempdir"),
            socket.clone(),
        );
        let pid = agent.wait_realtime("procmond", T) as i32;
        (agent, pid)
    };
    let (mut first, procmond) = start();

    // A stream of short processes, until the kill.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("/bin/sh")
                    .args(["-c", "exit 0", &format!("KILLBOTH-{i}")])
                    .status();
                i += 1;
            }
            i
        })
    };
    // Mid-stream: some events kept, more in flight.
    eventually("the store keeps procmond's events", T, || {
        procmond_sequences(&first, &db).len() >= 200
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(procmond),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill procmond");
    signal(&first.child, Signal::SIGKILL);
    wait_exit(&mut first.child, T).expect("agent killed");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let spawned = spawner.join().expect("spawner");
    assert!(spawned > 0);
    // procmond's group is gone with the agent's supervisor shim.
    eventually("procmond is gone", T, || {
        !Path::new(&format!("/proc/{procmond}")).exists()
            || std::fs::read_to_string(format!("/proc/{procmond}/stat"))
                .is_ok_and(|s| s.contains(") Z"))
    });

    // What was accepted when both died: kept by the store, or waiting in the WAL.
    let kept = procmond_sequences(&first, &db);
    let waiting = wal_events(&wal);
    let accepted_top = kept
        .keys()
        .chain(waiting.iter())
        .copied()
        .max()
        .expect("some events");
    drop(first);

    let (second, _) = start();
    eventually("every accepted event is kept after the restart", T, || {
        let now = procmond_sequences(&second, &db);
        (1..=accepted_top).all(|s| now.contains_key(&s))
    });
    let now = procmond_sequences(&second, &db);
    let twice: Vec<_> = now.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "kept more than once: {twice:?}");
    for s in waiting {
        assert_eq!(now.get(&s), Some(&1), "WAL event #{s}");
    }
    for s in kept.keys() {
        assert_eq!(now.get(s), Some(&1), "stored event #{s}");
    }
}
