//! Events per second through the WAL publisher (the collector runtime's path: append a
//! batch of 100, start its sync on the log's thread, publish it at QoS1 at once under the
//! WAL's reserved sequences, release each record on its PubAck, and hold at most 800 events
//! unsynced) to a QoS1 subscriber, through the real agent (release build). Two rows: the agent with its event
//! store on (it keeps `events.#`, so it acknowledges each batch only once committed: the
//! production path) and off.
//!
//! `cargo bench -p daemoneye-io --bench wal_publisher`; `DAEMONEYE_BENCH_EVENTS` sets the
//! count (default 200,000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_core::wal::WalConfig;
use daemoneye_io::client::{AckMode, Client, ClientOptions};
use daemoneye_io::collector::publisher::publish_batches;
use daemoneye_io::wal::WalFile;
use daemoneye_proto::frame::{QoS, Subscribe};
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use daemoneye_tests::{Agent, Bins};
use prost::Message;

const BATCH: usize = 100;
/// The collector runtime's default `backpressure_threshold`.
const UNSYNCED: usize = 800;
const TOPIC: &str = "events.process.new";

fn event(i: u64) -> Bytes {
    Bytes::from(
        ProcessEvent {
            kind: ProcessEventKind::New as i32,
            process: Some(ProcessInfo {
                pid: 10_000 + (i % 50_000) as u32,
                ppid: 1,
                name: "sh".into(),
                exe: "/usr/bin/dash".into(),
                cmdline: vec!["sh".into(), "-c".into(), format!("exit 0 # {i}")],
                user: "root".into(),
                cwd: "/root".into(),
                start_ticks: 1_000_000 + i,
                ..Default::default()
            }),
            observed_at_ms: daemoneye_io::clock::unix_ms(),
            collector_id: "bench".into(),
            source: "netlink".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

struct Row {
    events: u64,
    seconds: f64,
    commits: u64,
}

fn run(events: u64, store: bool) -> Row {
    let bins = Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    };
    let config = format!("[store]\nenabled = {store}\n[detection]\nenabled = false\n");
    let agent = Agent::start(&bins, Some(&config));
    let wal_dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let socket = agent.socket.clone();
        // The subscriber, in its own connection on a thread of its own (sharing the
        // publisher's thread, it measured itself): counts deliveries until it has them all.
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (count_tx, counted) = tokio::sync::oneshot::channel();
        let sub_socket = socket.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let sub_client = Client::connect(&sub_socket, ClientOptions::new("wal-bench-sub"))
                    .await
                    .expect("connect subscriber");
                let spec = Subscribe {
                    qos: QoS::AtLeastOnce,
                    ..Subscribe::new(TOPIC)
                };
                let mut sub = sub_client
                    .subscribe_all(vec![spec], AckMode::OnHandOver)
                    .await
                    .expect("subscribe");
                let _ = ready_tx.send(());
                let mut n = 0u64;
                while n < events {
                    match tokio::time::timeout(Duration::from_secs(30), sub.recv()).await {
                        Ok(Some(_)) => n += 1,
                        _ => break,
                    }
                }
                sub_client.close().await;
                let _ = count_tx.send(n);
            });
        });
        ready.await.expect("the subscriber is ready");

        let mut options = ClientOptions::new("wal-bench");
        options.session.publisher_id = Some("wal-bench".into());
        let client = Client::connect(&socket, options).await.expect("connect");
        let (mut wal, _) = WalFile::open(
            &wal_dir.path().join("bench.wal"),
            WalConfig::new("wal-bench"),
        )
        .expect("wal");
        let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let (sync_tx, mut syncs) = tokio::sync::mpsc::unbounded_channel();
        wal.sync_in_background(sync_tx).expect("the log's thread");
        let started = Instant::now();
        let mut commits = 0;
        let mut i = 0u64;
        while i < events {
            // The runtime's backpressure: at most UNSYNCED events logged and not yet synced.
            while wal.syncs_outstanding() * BATCH >= UNSYNCED {
                let done = syncs.recv().await.expect("the log's thread reports");
                wal.handle_sync_done(done).expect("sync");
            }
            let n = (events - i).min(BATCH as u64);
            for k in 0..n {
                wal.append(daemoneye_io::clock::unix_ms(), TOPIC, event(i + k))
                    .expect("append");
            }
            i += n;
            // As the runtime does: the sync starts in the background and the batch goes out
            // now, under the WAL's reserved sequences.
            wal.commit().expect("group commit");
            commits += 1;
            while let Ok(done) = syncs.try_recv() {
                wal.handle_sync_done(done).expect("sync");
            }
            publish_batches(&client, &mut wal, &acks_tx, "wal-bench", BATCH).await;
            while let Ok(sequence) = acks.try_recv() {
                wal.handle_puback(sequence).expect("release");
            }
        }
        // What waited for a reservation's sync goes out once it is done.
        while wal.syncs_outstanding() > 0 {
            let done = syncs.recv().await.expect("the log's thread reports");
            wal.handle_sync_done(done).expect("sync");
            publish_batches(&client, &mut wal, &acks_tx, "wal-bench", BATCH).await;
        }
        let received = counted.await.expect("the subscriber counted");
        let seconds = started.elapsed().as_secs_f64();
        wal.close();
        assert_eq!(received, events, "the subscriber got every event");
        client.close().await;
        Row {
            events,
            seconds,
            commits,
        }
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let events: u64 = std::env::var("DAEMONEYE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!(
        "WAL publisher -> agent -> QoS1 subscriber, {events} events of ~150 bytes, batches of {BATCH}:"
    );
    for store in [true, false] {
        let r = run(events, store);
        println!(
            "  store {}: {:.0} events/s ({:.2} s, {} group commits)",
            if store { "on " } else { "off" },
            r.events as f64 / r.seconds,
            r.seconds,
            r.commits
        );
    }
}
