//! The event store at a million process events: file size, write rate, and the time of a
//! 10-minute query (targets: under 500 MB, under 100 ms).
//!
//! `cargo bench -p daemoneye-io --bench store` (`-- --events N` for another count). The
//! events are realistic `ProcessEvent`s of about 300 bytes, spread over 24 hours (one every
//! 86 ms), written in batches of 1,000 (one commit each, as the agent commits what its
//! subscription has queued). The file is written under `target/` (a real disk, so each
//! commit's fsync counts).

use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::store::{EventStore, NewEvent, StoreConfig};
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use daemoneye_proto::pb::store::EventQuery;
use prost::Message;

const DAY_MS: u64 = 86_400_000;
const BATCH: usize = 1_000;
const START_MS: u64 = 1_780_000_000_000;

/// An exec as procmond reports it, with the fields an investigator reads.
fn payload(i: u64) -> Bytes {
    let programs = [
        ("/usr/bin/python3.11", "python3"),
        ("/usr/bin/curl", "curl"),
        ("/usr/lib/systemd/systemd-journald", "systemd-journal"),
        ("/usr/bin/bash", "bash"),
    ];
    let (exe, name) = programs[(i % 4) as usize];
    let pid = 1_000 + (i % 60_000) as u32;
    let event = ProcessEvent {
        kind: ProcessEventKind::New as i32,
        process: Some(ProcessInfo {
            pid,
            ppid: 900 + (i % 50) as u32,
            name: name.into(),
            exe: exe.into(),
            cmdline: vec![
                name.into(),
                "-m".into(),
                "pip".into(),
                "install".into(),
                format!("--target=/home/alice/build-{i}"),
            ],
            user: "alice".into(),
            uid: 1000,
            gid: 1000,
            group: "alice".into(),
            euid: 1000,
            effective_user: "alice".into(),
            start_time: (START_MS + i * 86) / 1000,
            start_time_ms: START_MS + i * 86,
            start_ticks: 123_456 + i,
            cwd: "/home/alice/project".into(),
            parent_exe: "/usr/bin/bash".into(),
            parent_cmdline: vec!["-bash".into()],
            session_id: 4242,
            tty: "pts/3".into(),
            cgroup: "/user.slice/user-1000.slice/session-3.scope".into(),
            memory_bytes: 12_345_678,
            cpu_time_ms: 12,
            status: "R".into(),
            exe_dev: 2049,
            exe_inode: 1_234_567,
            ..Default::default()
        }),
        observed_at_ms: START_MS + i * 86,
        collector_id: "procmond".into(),
        source: "netlink".into(),
        ..Default::default()
    };
    Bytes::from(event.encode_to_vec())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn timed_query(store: &EventStore, q: &EventQuery) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..7 {
        let start = Instant::now();
        found = store.query(q).expect("query").events.len();
        times.push(start.elapsed());
    }
    (median(times), found)
}

fn main() {
    let mut events: u64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--events" {
            events = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--events N");
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("store-bench")
        .tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
        .expect("tempdir");
    let path = dir.path().join("events.redb");
    let mut store = EventStore::open(&path, StoreConfig::default()).expect("open");
    let spacing = DAY_MS / events;
    let payload_bytes = payload(0).len();

    let start = Instant::now();
    let mut commit_times = Vec::new();
    let mut i = 0u64;
    while i < events {
        let n = (events - i).min(BATCH as u64);
        let batch: Vec<NewEvent> = (i..i + n)
            .map(|s| NewEvent {
                topic: "events.process.new".into(),
                publisher: "procmond.4242.19a2b3c4d5e".into(),
                sequence: s + 1,
                payload: payload(s),
            })
            .collect();
        let commit = Instant::now();
        let done = store
            .append_batch(START_MS + (i + n) * spacing, &batch)
            .expect("append");
        commit_times.push(commit.elapsed());
        assert_eq!(done.stored, n);
        i += n;
    }
    let write = start.elapsed();
    let stats = store.stats().expect("stats");

    // A 10-minute window in the middle of the day.
    let since = START_MS + DAY_MS / 2;
    let window = EventQuery {
        since_ms: since,
        until_ms: since + 600_000,
        limit: 1_000,
        ..Default::default()
    };
    let (default_limit, found_limited) = timed_query(&store, &window);
    let (all_in_window, found_all) = timed_query(
        &store,
        &EventQuery {
            limit: 0,
            ..window.clone()
        },
    );
    let (filtered, found_filtered) = timed_query(
        &store,
        &EventQuery {
            limit: 0,
            exe_glob: "*/curl".into(),
            user: "alice".into(),
            ..window.clone()
        },
    );
    let (whole_pid, found_pid) = timed_query(
        &store,
        &EventQuery {
            pid: Some(1_234),
            limit: 0,
            ..Default::default()
        },
    );

    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "event store: {events} process events of {payload_bytes} bytes over 24 h, batches of {BATCH}"
    );
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| file size | {:.1} MB ({:.0} bytes/event) | < 500 MB |",
        mb(stats.file_bytes),
        stats.file_bytes as f64 / events as f64
    );
    println!(
        "| records (keys, values, dedup) | {:.1} MB | |",
        mb(stats.record_bytes)
    );
    let committing: Duration = commit_times.iter().sum();
    println!(
        "| write rate, commits (fsync) included | {:.0} events/s ({:.1} s in append_batch, {:.1} s in all) | keeps up with the bus |",
        events as f64 / committing.as_secs_f64(),
        committing.as_secs_f64(),
        write.as_secs_f64()
    );
    println!(
        "| commit of {BATCH} events, median / max | {:.1} ms / {:.1} ms | |",
        median(commit_times.clone()).as_secs_f64() * 1e3,
        commit_times
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| 10-minute query, limit 1000 ({found_limited} events) | {:.2} ms | < 100 ms |",
        ms(default_limit)
    );
    println!(
        "| 10-minute query, all ({found_all} events) | {:.2} ms | < 100 ms |",
        ms(all_in_window)
    );
    println!(
        "| 10-minute query, --exe '*/curl' --user alice ({found_filtered} events) | {:.2} ms | |",
        ms(filtered)
    );
    println!(
        "| whole store, --pid 1234 ({found_pid} events, scans all) | {:.0} ms | |",
        ms(whole_pid)
    );
}
