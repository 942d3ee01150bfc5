//! An alert storm of 10,000 matches: the fold machine alone, the detection engine
//! (decode, Sigma evaluation, fold, alert encoding), and the whole service path through a
//! real broker (a publisher's 10,000 QoS1 events, each PubAcked only once detection has
//! evaluated it and its alert, if any, is confirmed), beside the same publish to a plain
//! QoS1 subscriber: the bus with and without detection.
//!
//! `cargo bench -p daemoneye-io --bench alert_storm`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig};
use daemoneye_core::detect::fold::{FoldConfig, Folder};
use daemoneye_core::topic::topics;
use daemoneye_io::agent::detection::engine::{Engine, Incoming};
use daemoneye_io::agent::detection::{self, DetectionHealth, DetectionService};
use daemoneye_io::client::{AckMode, Client, ClientOptions};
use daemoneye_io::clock::MonotonicClock;
use daemoneye_io::config::DetectionSettings;
use daemoneye_io::detect::{RuleSet, RuleSources};
use daemoneye_io::transport::{UnixConnector, UnixTransport};
use daemoneye_io::{paths, server};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use prost::Message;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STORM: usize = 10_000;

/// The loop's exec, as procmond reports it.
fn event(i: u64) -> ProcessEvent {
    ProcessEvent {
        kind: ProcessEventKind::New as i32,
        process: Some(ProcessInfo {
            pid: 10_000 + (i % 50_000) as u32,
            ppid: 4_000,
            name: "sh".into(),
            exe: "/usr/bin/dash".into(),
            cmdline: vec![
                "sh".into(),
                "-c".into(),
                "echo aGk= | base64 -d | sh".into(),
            ],
            user: "alice".into(),
            uid: 1000,
            cwd: "/tmp".into(),
            parent_exe: "/usr/bin/bash".into(),
            parent_cmdline: vec!["bash".into()],
            start_ticks: 1_000_000 + i,
            ..Default::default()
        }),
        observed_at_ms: daemoneye_io::clock::unix_ms(),
        collector_id: "procmond".into(),
        source: "netlink".into(),
        ..Default::default()
    }
}

fn settings() -> DetectionSettings {
    DetectionSettings {
        rules: Vec::new(),
        builtin_rules: true,
        fold_window: Duration::from_secs(60),
        enrich_level: None,
        enrich: Vec::new(),
        enrich_timeout: Duration::from_secs(5),
    }
}

fn fold(c: &mut Criterion) {
    let mut g = c.benchmark_group("storm_fold");
    g.throughput(Throughput::Elements(STORM as u64));
    let window = FoldConfig::new(Duration::from_secs(60));
    g.bench_function("one_key", |b| {
        b.iter_batched(
            || Folder::<u32, u64>::new(window),
            |mut f| {
                for i in 0..STORM as u64 {
                    f.handle_match(Instant::from_nanos(i * 100_000), 0, i, i);
                    while f.poll_output().is_some() {}
                }
                f
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("1000_keys_100_open", |b| {
        b.iter_batched(
            || {
                Folder::<u32, u64>::new(FoldConfig {
                    max_open: 100,
                    ..window
                })
            },
            |mut f| {
                for i in 0..STORM as u64 {
                    f.handle_match(Instant::from_nanos(i * 100_000), (i % 1000) as u32, i, i);
                    while f.poll_output().is_some() {}
                }
                f
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn engine(c: &mut Criterion) {
    let sources = RuleSources {
        builtin: true,
        directories: Vec::new(),
    };
    let rules = Arc::new(RuleSet::load(&sources));
    let mut engine = Engine::new(
        rules,
        sources,
        0,
        FoldConfig::new(Duration::from_secs(3600)),
        "bench".into(),
        DetectionHealth::default(),
    );
    let batches: Vec<Vec<Incoming>> = (0..STORM as u64)
        .map(|i| Incoming {
            topic: topics::PROCESS_NEW.into(),
            payload: Bytes::from(event(i).encode_to_vec()),
            correlation: None,
            publisher: "procmond.bench".into(),
            sequence: i + 1,
        })
        .collect::<Vec<_>>()
        .chunks(detection::MAX_BATCH)
        .map(<[Incoming]>::to_vec)
        .collect();
    let mut g = c.benchmark_group("storm_engine");
    g.throughput(Throughput::Elements(STORM as u64));
    g.bench_function("builtin_rules_one_command", |b| {
        let origin = StdInstant::now();
        b.iter(|| {
            let mut raised = 0;
            for batch in &batches {
                let now = Instant::from_nanos(origin.elapsed().as_nanos() as u64);
                raised += engine
                    .evaluate(batch, now, daemoneye_io::clock::unix_ms())
                    .len();
            }
            raised
        });
    });
    g.finish();
}

/// A broker (and, with `detection`, the detection service) on a thread of their own, as
/// in the agent; dropped, it stops.
struct Rig {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(detection: bool) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("broker.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let uid = paths::current_uid();
                let listener = paths::bind_socket(&path).await.expect("bind");
                let config = BrokerConfig {
                    owner_uid: uid,
                    ..BrokerConfig::default()
                };
                let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::task::spawn_local(server::serve(
                    UnixTransport(listener),
                    Broker::new(config, Acl::owner_only(uid), 1),
                    MonotonicClock::default(),
                    async move {
                        let _ = server_stopped.await;
                    },
                ));
                let (sub_ready, subscribed) = tokio::sync::oneshot::channel();
                let (_reload, reloads) = tokio::sync::mpsc::channel(1);
                let (stop_consumer, consumer_stopped) = tokio::sync::oneshot::channel::<()>();
                let consumer = if detection {
                    let service = DetectionService {
                        settings: Some(settings()),
                        health: DetectionHealth::default(),
                    };
                    tokio::task::spawn_local(async move {
                        let _ = detection::serve_detection(
                            UnixConnector(path),
                            detection::client_options(),
                            service,
                            sub_ready,
                            reloads,
                            async move {
                                let _ = consumer_stopped.await;
                            },
                        )
                        .await;
                    })
                } else {
                    tokio::task::spawn_local(async move {
                        let client = Client::connect(&path, ClientOptions::new("plain"))
                            .await
                            .expect("connect");
                        let spec = Subscribe {
                            qos: QoS::AtLeastOnce,
                            capacity: Some(20_000),
                            ..Subscribe::new(topics::PROCESS_NEW)
                        };
                        let mut sub = client
                            .subscribe_with(spec, AckMode::OnHandOver)
                            .await
                            .expect("subscribe");
                        let _ = sub_ready.send(());
                        tokio::select! {
                            _ = consumer_stopped => {}
                            () = async { while sub.recv().await.is_some() {} } => {}
                        }
                    })
                };
                let _ = subscribed.await;
                let _ = ready_tx.send(());
                let _ = stopped.await;
                let _ = stop_consumer.send(());
                let _ = consumer.await;
                let _ = stop_server.send(());
                let _ = server.await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("rig ready");
        Rig {
            socket,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn through_the_bus(c: &mut Criterion) {
    let payloads: Vec<Bytes> = (0..STORM as u64)
        .map(|i| Bytes::from(event(i).encode_to_vec()))
        .collect();
    let mut g = c.benchmark_group("storm_through_the_bus");
    g.throughput(Throughput::Elements(STORM as u64));
    g.sample_size(10);
    for (name, detection) in [("plain_qos1_subscriber", false), ("detection", true)] {
        let rig = Rig::start(detection);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt
            .block_on(Client::connect(
                &rig.socket,
                ClientOptions::new("procmond-bench"),
            ))
            .expect("connect");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = StdInstant::now();
                    rt.block_on(async {
                        let mut acks = Vec::with_capacity(STORM);
                        for p in &payloads {
                            let publish =
                                Publish::new(topics::PROCESS_NEW, p.clone(), QoS::AtLeastOnce);
                            acks.push(client.send(publish).await.expect("send"));
                        }
                        for a in acks {
                            let ack = a.wait().await.expect("puback").expect("qos1");
                            assert_eq!(ack.dropped, 0);
                        }
                    });
                    total += start.elapsed();
                }
                total
            });
        });
        rt.block_on(client.close());
        drop(rig);
    }
    g.finish();
}

criterion_group!(benches, fold, engine, through_the_bus);
criterion_main!(benches);
