//! The NATS bridge's numbers, against a local nats-server (with JetStream) started here:
//!
//! 1. the raw async-nats plain publish rate of 256-byte messages (the ceiling: one
//!    client, its own batching), counted by a NATS subscriber;
//! 2. QoS0 256-byte exports through the agent: a local publisher, the bridge, the same
//!    NATS subscriber;
//! 3. QoS1 exports through JetStream (disk queue, acknowledged publishes), until the
//!    stream holds them all;
//! 4. local pub -> sub latency (QoS1, 1,000 msg/s) on an agent whose bridge cannot reach
//!    NATS, against an agent without a bridge.
//!
//! `cargo bench -p daemoneye-io --bench bridge_export`; `DAEMONEYE_BENCH_MESSAGES` sets the
//! QoS0 count (default 1,000,000), `DAEMONEYE_BENCH_QOS1` the QoS1 count (default 50,000).

use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::client::{Client, ClientOptions, PendingAck};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_tests::{Agent, Bins, NatsServer};
use futures_util::StreamExt;

const PAYLOAD: usize = 256;

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn agent(nats: Option<&str>, export: &str) -> Agent {
    let bridge = nats
        .map(|url| {
            format!(
                "[bridge.nats]\nservers = [\"{url}\"]\nhost_id = \"b1\"\nexport = [\"{export}\"]\nmax_queued = 1000000\n"
            )
        })
        .unwrap_or_default();
    let config = format!("[detection]\nenabled = false\n[store]\nenabled = false\n{bridge}");
    Agent::start(&bins(), Some(&config))
}

fn wait_bridge(agent: &Agent, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, out, _) = agent.run_cli(&["bridge", "status", "--json"]);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if cond(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Counts messages on `subject` until `n` arrived; returns when the first and the last
/// arrived.
async fn count(sub: &mut async_nats::Subscriber, n: u64) -> (Instant, Instant, u64) {
    let mut got = 0;
    let mut first = None;
    let mut last = Instant::now();
    while got < n {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => {
                got += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            _ => break,
        }
    }
    (first.unwrap_or(last), last, got)
}

/// A NATS subscriber on a thread of its own counting `n` messages on `subject`; returns
/// once it is subscribed, and the handle gives (last arrival, count).
fn counter(url: String, subject: &'static str, n: u64) -> std::thread::JoinHandle<(Instant, u64)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        runtime().block_on(async move {
            let client = central(&url).await;
            let mut sub = client.subscribe(subject).await.expect("sub");
            client.flush().await.expect("flush");
            let _ = ready_tx.send(());
            let (_, last, got) = count(&mut sub, n).await;
            (last, got)
        })
    });
    ready_rx.recv().expect("the counter subscribes");
    handle
}

async fn central(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(url)
        .await
        .expect("connect to nats")
}

fn raw_publish_rate(nats: &NatsServer, n: u64) -> (f64, u64) {
    let counter = counter(nats.url(), "raw.>", n);
    let start = runtime().block_on(async {
        let pub_client = central(&nats.url()).await;
        let payload = Bytes::from(vec![7u8; PAYLOAD]);
        let start = Instant::now();
        for _ in 0..n {
            pub_client
                .publish("raw.bench", payload.clone())
                .await
                .expect("publish");
        }
        pub_client.flush().await.expect("flush");
        start
    });
    let (last, got) = counter.join().expect("counter");
    (got as f64 / (last - start).as_secs_f64(), got)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn qos0_through_the_agent(nats: &NatsServer, n: u64) -> (f64, u64) {
    let agent = agent(Some(&nats.url()), "bench.#");
    wait_bridge(&agent, "the bridge connects", |s| s["state"] == "healthy");
    let counter = counter(nats.url(), "daemoneye.b1.bench.>", n);
    let start = runtime().block_on(async {
        let client = Client::connect(&agent.socket, ClientOptions::new("bench-pub"))
            .await
            .expect("connect");
        let payload = Bytes::from(vec![7u8; PAYLOAD]);
        let start = Instant::now();
        for _ in 0..n {
            client
                .send(Publish::new("bench.qos0", payload.clone(), QoS::AtMostOnce))
                .await
                .expect("publish");
        }
        // Everything handed to the broker before the client goes.
        let _ = client.close().await;
        start
    });
    let (last, got) = counter.join().expect("counter");
    (got as f64 / (last - start).as_secs_f64(), got)
}

fn qos1_through_jetstream(nats: &NatsServer, n: u64) -> f64 {
    let agent = agent(Some(&nats.url()), "alerts.#");
    wait_bridge(&agent, "the bridge connects", |s| s["state"] == "healthy");
    let rt = runtime();
    let start = Instant::now();
    rt.block_on(async {
        let client = Client::connect(&agent.socket, ClientOptions::new("bench-qos1"))
            .await
            .expect("connect");
        let payload = Bytes::from(vec![7u8; PAYLOAD]);
        let mut window: Vec<PendingAck> = Vec::new();
        for _ in 0..n {
            window.push(
                client
                    .send(Publish::new(
                        "alerts.bench",
                        payload.clone(),
                        QoS::AtLeastOnce,
                    ))
                    .await
                    .expect("publish"),
            );
            if window.len() == 1000 {
                for p in window.drain(..) {
                    p.wait().await.expect("puback");
                }
            }
        }
        for p in window.drain(..) {
            p.wait().await.expect("puback");
        }
    });
    wait_bridge(&agent, "the queue drains", |s| {
        s["queued"] == 0 && s["exported"].as_u64() == Some(n)
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// Local pub -> sub latency (QoS1) at 1,000 msg/s: (p50, p99) in microseconds.
fn local_latency(agent: &Agent, n: usize) -> (u64, u64) {
    let rt = runtime();
    rt.block_on(async {
        let sub_client = Client::connect(&agent.socket, ClientOptions::new("lat-sub"))
            .await
            .expect("connect");
        let mut sub = sub_client
            .subscribe(Subscribe {
                qos: QoS::AtLeastOnce,
                ..Subscribe::new("alerts.#")
            })
            .await
            .expect("sub");
        let client = Client::connect(&agent.socket, ClientOptions::new("lat-pub"))
            .await
            .expect("connect");
        let origin = Instant::now();
        let reader = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            while lat.len() < n {
                let Some(mut d) = sub.recv().await else { break };
                let sent = u64::from_be_bytes(d.payload[..8].try_into().unwrap_or([0; 8]));
                lat.push(origin.elapsed().as_micros() as u64 - sent);
                d.ack();
            }
            lat
        });
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..n {
            tick.tick().await;
            let mut payload = vec![0u8; PAYLOAD];
            payload[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_be_bytes());
            let _ = client
                .send(Publish::new(
                    "alerts.high",
                    Bytes::from(payload),
                    QoS::AtLeastOnce,
                ))
                .await
                .expect("publish");
        }
        let mut lat = reader.await.expect("reader");
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        (at(0.5), at(0.99))
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_count("DAEMONEYE_BENCH_MESSAGES", 1_000_000);
    let q1 = env_count("DAEMONEYE_BENCH_QOS1", 50_000);
    let nats = NatsServer::start();
    let (raw, raw_got) = raw_publish_rate(&nats, n);
    println!(
        "raw async-nats plain publish, {PAYLOAD} B: {raw:.0} msg/s ({raw_got} of {n} received)"
    );
    let (through, got) = qos0_through_the_agent(&nats, n);
    println!(
        "QoS0 export through the agent, {PAYLOAD} B: {through:.0} msg/s ({got} of {n} received)"
    );
    let qos1 = qos1_through_jetstream(&nats, q1);
    println!("QoS1 export through JetStream, {PAYLOAD} B: {qos1:.0} msg/s ({q1} stored)");
    let no_bridge = agent(None, "alerts.#");
    let (p50, p99) = local_latency(&no_bridge, 3000);
    println!("local latency, no bridge: p50 {p50} us, p99 {p99} us");
    drop(no_bridge);
    let down = agent(Some("nats://127.0.0.1:1"), "alerts.#");
    wait_bridge(&down, "the bridge reports the outage", |s| {
        s["state"] == "degraded"
    });
    let (p50, p99) = local_latency(&down, 3000);
    println!("local latency, bridge with NATS down (exports to disk): p50 {p50} us, p99 {p99} us");
}
