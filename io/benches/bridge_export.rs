//! The NATS bridge's numbers, against a local nats-server (with JetStream) started here:
//!
//! 1. the raw async-nats plain publish rate of 256-byte messages (the ceiling: one
//!    client, its own batching), counted by a NATS subscriber;
//! 2. QoS0 256-byte exports through the agent: a local publisher, the bridge, the same
//!    NATS subscriber; once to a server without JetStream (plain publishes, nothing
//!    stored) and once to one with JetStream, where the stream the bridge creates over its
//!    export subjects stores the QoS0 exports as well;
//! 3. QoS1 exports through JetStream (disk queue, acknowledged publishes), until the
//!    stream holds them all;
//! 4. local pub -> sub latency (QoS1, 1,000 msg/s) on an agent whose bridge cannot reach
//!    NATS, against an agent without a bridge.
//!
//! The QoS0 row also gives the agent's CPU time per export and the bridge thread's share
//! (from `/proc`), which a busy machine moves less than the rate.
//!
//! `cargo bench -p daemoneye-io --bench bridge_export`; `DAEMONEYE_BENCH_MESSAGES` sets the
//! QoS0 count (default 1,000,000), `DAEMONEYE_BENCH_QOS1` the QoS1 count (default 50,000);
//! `DAEMONEYE_BENCH_ONLY=qos0` runs the QoS0 export rows alone, `DAEMONEYE_BENCH_ONLY=latency`
//! the latency rows alone.

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

/// CPU time (user + system) of a process's threads whose name starts with `thread`, or
/// of the whole process with `None`, from `/proc` (clock ticks of 10 ms).
fn cpu_time(pid: u32, thread: Option<&str>) -> Duration {
    let ticks = |stat: &str| -> u64 {
        // The fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        at(11) + at(12)
    };
    let total = match thread {
        None => ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()),
        Some(name) => std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end().starts_with(name))
            })
            .map(|t| ticks(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default()))
            .sum(),
    };
    Duration::from_millis(total * 10)
}

/// QoS0 exports through the agent: (rate, received, agent CPU per export, bridge thread
/// CPU per export), the CPU in microseconds.
fn qos0_through_the_agent(nats: &NatsServer, n: u64) -> (f64, u64, f64, f64) {
    let agent = agent(Some(&nats.url()), "bench.#");
    wait_bridge(&agent, "the bridge connects", |s| s["state"] == "healthy");
    let pid = agent.child.id();
    let (agent_before, bridge_before) = (cpu_time(pid, None), cpu_time(pid, Some("nats-bridge")));
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
    let per = |d: Duration| d.as_secs_f64() * 1e6 / got.max(1) as f64;
    (
        got as f64 / (last - start).as_secs_f64(),
        got,
        per(cpu_time(pid, None) - agent_before),
        per(cpu_time(pid, Some("nats-bridge")) - bridge_before),
    )
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
    let only = std::env::var("DAEMONEYE_BENCH_ONLY").unwrap_or_default();
    if only == "latency" {
        latency_rows();
        return;
    }
    let only_qos0 = only == "qos0";
    let plain = NatsServer::start_without_jetstream();
    let nats = NatsServer::start();
    if !only_qos0 {
        let (raw, raw_got) = raw_publish_rate(&plain, n);
        println!(
            "raw async-nats plain publish, {PAYLOAD} B: {raw:.0} msg/s ({raw_got} of {n} received)"
        );
    }
    for (server, what) in [
        (&plain, "a server without JetStream"),
        (
            &nats,
            "a server with JetStream (the bridge's stream stores them too)",
        ),
    ] {
        let (through, got, agent_cpu, bridge_cpu) = qos0_through_the_agent(server, n);
        println!(
            "QoS0 export through the agent to {what}, {PAYLOAD} B: {through:.0} msg/s ({got} of {n} received); \
             CPU per export: agent {agent_cpu:.2} us, of which the bridge thread {bridge_cpu:.2} us"
        );
    }
    if only_qos0 {
        return;
    }
    let qos1 = qos1_through_jetstream(&nats, q1);
    println!("QoS1 export through JetStream, {PAYLOAD} B: {qos1:.0} msg/s ({q1} stored)");
    latency_rows();
}

fn latency_rows() {
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
