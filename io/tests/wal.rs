//! The WAL file on a real filesystem, and procmond's WAL across a SIGKILL.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_core::wal::{self, DEFAULT_MAX_RECORD, TailError, WalConfig};
use daemoneye_io::wal::{PREALLOCATE, WalFile, WalFileError};
use daemoneye_tests::{Agent, Bins, signal, wait_exit};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn config() -> WalConfig {
    let mut c = WalConfig::new("test");
    c.compact_after = 256;
    c.idle_compact_delay = Duration::ZERO;
    c
}

/// The length of the log in the file at `path` (the zeros kept ahead of it left out).
fn log_len(path: &std::path::Path) -> u64 {
    wal::replay(&std::fs::read(path).expect("read"), DEFAULT_MAX_RECORD)
        .1
        .valid_len
}

#[test]
fn accepted_records_come_back_after_reopening_and_acked_ones_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state").join("t.wal");
    {
        let (mut w, replayed) = WalFile::open(&path, config()).expect("open");
        assert_eq!((replayed.records, replayed.tail), (0, None));
        for i in 0..5u64 {
            w.append(i, "events.t", Bytes::from(format!("event {i}")))
                .expect("append");
        }
        assert!(
            w.take_publishes().is_empty(),
            "nothing accepted before the sync"
        );
        w.commit().expect("commit");
        let sent: Vec<u64> = w
            .take_publishes()
            .iter()
            .map(|p| p.record.sequence)
            .collect();
        assert_eq!(sent, [1, 2, 3, 4, 5]);
        w.handle_puback(2).expect("ack");
        w.handle_puback(4).expect("ack");
        // Appended but never committed: not accepted, may be lost.
        w.append(9, "events.t", Bytes::from_static(b"unsynced"))
            .expect("append");
    }
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().expect("parent"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let (mut w, _) = WalFile::open(&path, config()).expect("reopen");
    let back: Vec<(u64, bool)> = w
        .take_publishes()
        .iter()
        .map(|p| (p.record.sequence, p.replayed))
        .collect();
    // Acknowledged records may linger until a compaction; accepted ones must all be back.
    for s in [1, 3, 5] {
        assert!(back.contains(&(s, true)), "{back:?}");
    }
    assert!(w.last_sequence() >= 5);
}

#[test]
fn a_torn_tail_is_truncated_and_the_log_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.wal");
    {
        let (mut w, _) = WalFile::open(&path, config()).expect("open");
        w.append(1, "events.t", Bytes::from_static(b"kept"))
            .expect("append");
        w.commit().expect("commit");
    }
    // The log, then the zeros kept ahead of it: a crash mid-append leaves a torn record
    // where the next one goes.
    let good = log_len(&path);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), PREALLOCATE);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| {
            std::os::unix::fs::FileExt::write_all_at(&f, &[40, 0, 0, 0, 1, 2, 3, 4, 5], good)
        })
        .expect("tear");
    let (mut w, replayed) = WalFile::open(&path, config()).expect("reopen");
    // Its body reads on into the zeros, so it fails its checksum.
    assert!(
        matches!(replayed.tail, Some(TailError::Checksum)),
        "{replayed}"
    );
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), good);
    assert_eq!(w.take_publishes().len(), 1);
    assert_eq!(
        w.append(2, "events.t", Bytes::from_static(b"next"))
            .expect("append"),
        2
    );
    w.commit().expect("commit");
    drop(w);
    let (records, end) = wal::replay(&std::fs::read(&path).expect("read"), DEFAULT_MAX_RECORD);
    assert_eq!(records.len(), 2);
    // The padding after the log reads as its end; reopening takes it as such.
    assert_eq!(end.tail, Some(TailError::Empty));
    let (_, reopened) = WalFile::open(&path, config()).expect("reopen");
    assert_eq!(reopened.tail, None, "{reopened}");
}

#[test]
fn compaction_shrinks_the_file_and_keeps_the_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.wal");
    let (mut w, _) = WalFile::open(&path, config()).expect("open");
    for i in 0..50u64 {
        w.append(i, "events.t", Bytes::from(vec![7u8; 100]))
            .expect("append");
    }
    w.commit().expect("commit");
    let full = log_len(&path);
    for p in w.take_publishes() {
        w.handle_puback(p.record.sequence).expect("ack");
    }
    // Acknowledged: the rest goes once the log has been idle for its delay (none here).
    assert!(w.poll_timeout().is_some());
    w.handle_timeout().expect("idle compaction");
    assert!(w.poll_timeout().is_none());
    let after = log_len(&path);
    assert!(after < full / 10, "{after} of {full} bytes left");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), PREALLOCATE);
    assert!(!dir.path().join("t.wal.compact").exists());
    drop(w);
    let (mut w, replayed) = WalFile::open(&path, config()).expect("reopen");
    assert!(w.take_publishes().is_empty());
    assert_eq!(replayed.last_sequence, 50);
    assert_eq!(w.append(0, "events.t", Bytes::new()).expect("append"), 51);
}

/// Commits `w` (syncing in the background): the commit is not durable until its sync is
/// handed back, and is once it is.
async fn commit_in_background(
    w: &mut WalFile,
    done_rx: &mut tokio::sync::mpsc::UnboundedReceiver<daemoneye_io::wal::SyncDone>,
) {
    let ticket = w.commit().expect("commit");
    assert!(w.commits_done() < ticket, "the sync runs in the background");
    let done = tokio::time::timeout(T, done_rx.recv())
        .await
        .expect("sync")
        .expect("done");
    w.handle_sync_done(done).expect("synced");
    assert!(w.commits_done() >= ticket);
}

/// On the log's thread the work keeps its order: a compaction, the appends after it, and
/// a stop's settled checkpoint all land in the file, the next start re-sends nothing, and
/// closing the log waits for its thread (the lock is free at once).
#[tokio::test]
async fn the_logs_thread_compacts_settles_and_releases_the_lock_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.wal");
    let (mut w, _) = WalFile::open(&path, config()).expect("open");
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    w.sync_in_background(done_tx).expect("thread");
    let ack_all = |w: &mut WalFile| {
        for p in w.take_publishes() {
            w.handle_puback(p.record.sequence).expect("ack");
        }
    };
    for i in 0..50u64 {
        w.append(i, "events.t", Bytes::from(vec![7u8; 100]))
            .expect("append");
    }
    commit_in_background(&mut w, &mut done_rx).await;
    let full = log_len(&path);
    // Every PubAck in: the log is rewritten (on the thread), and three more events follow.
    ack_all(&mut w);
    for i in 0..3u64 {
        w.append(i, "events.t", Bytes::from_static(b"after"))
            .expect("append");
    }
    commit_in_background(&mut w, &mut done_rx).await;
    ack_all(&mut w);
    w.handle_stop().expect("stop");
    assert_eq!(w.syncs_outstanding(), 1, "the settled checkpoint's sync");
    let done = tokio::time::timeout(T, done_rx.recv())
        .await
        .expect("sync")
        .expect("done");
    w.handle_sync_done(done).expect("settled");
    assert_eq!(w.syncs_outstanding(), 0);
    w.close();
    let after = log_len(&path);
    assert!(after < full / 10, "{after} of {full} bytes left");
    assert!(!dir.path().join("t.wal.compact").exists());
    let (mut w, replayed) = WalFile::open(&path, config()).expect("reopen at once");
    assert!(w.take_publishes().is_empty(), "{replayed}");
    assert_eq!(replayed.last_sequence, 53);
    assert_eq!(w.append(0, "events.t", Bytes::new()).expect("append"), 54);
}

/// Under reserved sequences with background syncs: an event is handed out for publishing
/// as soon as it is appended, accepted only when its sync is reported, and a log that lost
/// everything after its last sync (a power cut) never gives a published sequence to
/// another event.
#[tokio::test]
async fn events_go_out_before_their_sync_and_a_lost_tail_never_reuses_their_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.wal");
    let mut cfg = config();
    cfg.reserve_block = 16;
    let (mut w, _) = WalFile::open(&path, cfg.clone()).expect("open");
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    w.sync_in_background(done_tx).expect("thread");
    let sequences = |w: &mut WalFile| -> Vec<u64> {
        w.take_publishes()
            .iter()
            .map(|p| p.record.sequence)
            .collect()
    };
    // The first event waits for its reservation's sync.
    assert_eq!(
        w.append(0, "events.t", Bytes::from_static(b"a"))
            .expect("append"),
        1
    );
    assert!(sequences(&mut w).is_empty());
    commit_in_background(&mut w, &mut done_rx).await;
    assert_eq!(sequences(&mut w), [1]);
    assert_eq!(w.pending(), 1);
    let synced_len = log_len(&path);
    // Under the synced reservation the next events go out at once, before any sync.
    for i in 0..3u64 {
        w.append(i, "events.t", Bytes::from(format!("early {i}")))
            .expect("append");
    }
    let early = sequences(&mut w);
    assert_eq!(early, [2, 3, 4]);
    assert_eq!(
        (w.pending(), w.unsettled()),
        (1, 4),
        "not accepted before the sync"
    );
    commit_in_background(&mut w, &mut done_rx).await;
    assert!(sequences(&mut w).is_empty(), "already sent");
    assert_eq!(w.pending(), 4);
    w.close();
    // A power cut before that second sync: the device kept only the log up to the first
    // one (the zeros kept ahead of the log stay).
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; 4096], synced_len).expect("cut");
    drop(file);
    let (mut w, replayed) = WalFile::open(&path, cfg).expect("reopen");
    assert_eq!(replayed.reserved_through, 16, "{replayed}");
    assert_eq!(sequences(&mut w), [1], "the accepted event is re-sent");
    let next = w
        .append(0, "events.t", Bytes::from_static(b"after"))
        .expect("append");
    assert!(
        next > 16 && early.iter().all(|s| *s < next),
        "{next} after {early:?} went out"
    );
}

#[test]
fn one_process_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.wal");
    let (_held, _) = WalFile::open(&path, config()).expect("open");
    match WalFile::open(&path, config()) {
        Err(WalFileError::Locked(p)) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
}

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn procmond(agent: &Agent, wal: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_procmond"))
        .args(["--interval", "5", "--log-level", "warn", "--broker"])
        .arg(&agent.socket)
        .arg("--wal")
        .arg(wal)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("procmond")
}

fn wal_records(path: &std::path::Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap_or_default();
    wal::replay(&data, DEFAULT_MAX_RECORD)
        .0
        .iter()
        .map(|r| r.sequence)
        .collect()
}

#[test]
fn procmond_killed_with_unacknowledged_events_resends_them_after_restart() {
    let agent = Agent::start(&bins(), None);
    let wal = agent.dir.path().join("state").join("procmond.wal");
    // A QoS1 subscriber that receives but never acknowledges: PubAcks wait (procmond's
    // start-up snapshot is published whatever else runs).
    let mut silent = agent.subscriber(&["events.process.snapshot", "--qos", "1"]);
    signal(&silent.child, Signal::SIGSTOP);
    let mut first = procmond(&agent, &wal);
    let deadline = Instant::now() + T;
    let mut held = Vec::new();
    while held.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        held = wal_records(&wal);
    }
    assert!(!held.is_empty(), "procmond's events wait in its WAL");
    signal(&first, Signal::SIGKILL);
    let _ = first.wait();
    let held = wal_records(&wal);
    // A new consumer; the silent one goes away.
    let mut fresh = agent.subscriber(&["events.process.#", "--qos", "1", "--json"]);
    signal(&silent.child, Signal::SIGKILL);
    let _ = silent.child.wait();
    let mut second = procmond(&agent, &wal);
    let deadline = Instant::now() + T;
    let mut resent: Vec<u64> = Vec::new();
    while !held.iter().all(|s| resent.contains(s)) && Instant::now() < deadline {
        let lines = fresh.stdout.drain(Duration::from_millis(200)).to_vec();
        resent = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .filter(|v| v["redelivered"] == true && v["publisher_id"] == "procmond")
            .filter_map(|v| v["sequence"].as_u64())
            .collect();
    }
    for s in &held {
        assert!(
            resent.contains(s),
            "event #{s} from the killed procmond was not re-sent: {resent:?}"
        );
    }
    // Acknowledged now: stopped gracefully, the second procmond leaves a log that re-sends
    // nothing (a checkpoint of its last sequence).
    signal(&second, Signal::SIGTERM);
    let status = wait_exit(&mut second, T).expect("procmond exits on SIGTERM");
    assert!(status.success());
    assert_eq!(
        wal_records(&wal),
        Vec::<u64>::new(),
        "nothing left to re-send"
    );
}

#[test]
fn a_second_procmond_on_the_same_wal_is_refused() {
    let agent = Agent::start(&bins(), None);
    let wal = agent.dir.path().join("procmond.wal");
    let mut first = procmond(&agent, &wal);
    let deadline = Instant::now() + T;
    while !wal.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_procmond"))
        .arg("--broker")
        .arg(&agent.socket)
        .arg("--wal")
        .arg(&wal)
        .output()
        .expect("procmond");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("held by another process"), "{err}");
    signal(&first, Signal::SIGTERM);
    assert!(wait_exit(&mut first, T).is_some());
}

#[test]
fn logged_events_and_control_traffic_never_share_a_publisher_id() {
    let agent = Agent::start(&bins(), None);
    let wal = agent.dir.path().join("procmond.wal");
    let mut all = agent.subscriber(&["#", "--json"]);
    let mut p = procmond(&agent, &wal);
    // The registration request and the first scan's events travel on different
    // connections, in no fixed order: wait for each of them.
    all.stdout
        .wait_for(r#""topic":"control.collector.registration""#, T)
        .expect("procmond registers");
    all.stdout
        .wait_for(r#""topic":"events.process."#, T)
        .expect("procmond publishes its first scan");
    signal(&p, Signal::SIGTERM);
    assert!(wait_exit(&mut p, T).is_some());
    let lines = all.stdout.seen.clone();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let registration = parsed
        .iter()
        .find(|v| v["topic"] == "control.collector.registration")
        .expect("procmond registers");
    assert_ne!(
        registration["publisher_id"], "procmond",
        "control traffic must not take sequences of the WAL's publisher id"
    );
    let events: Vec<_> = parsed
        .iter()
        .filter(|v| {
            v["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("events."))
        })
        .collect();
    assert!(!events.is_empty(), "{lines:?}");
    assert!(events.iter().all(|v| v["publisher_id"] == "procmond"));
}
