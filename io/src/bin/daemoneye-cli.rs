//! daemoneye-cli: the operator's tool for the DaemonEye broker.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use daemoneye_core::topic::{TopicFilter, TopicName, topics};
use daemoneye_io::client::{
    AckMode, Client, ClientError, ClientOptions, plain_subscribe, simple_publish,
};
use daemoneye_io::paths;
use daemoneye_proto::frame::{Deliver, GroupSpec, Overflow, QoS, QueueStrategy, Subscribe};
use daemoneye_proto::pb::{control as pbc, stats as pbs};
use prost::Message as _;
use serde_json::json;

/// DaemonEye command-line client: publish, subscribe, request, and inspect the broker.
///
/// The broker socket is --socket (before or after the command), else
/// DAEMONEYE_BROKER_SOCKET, else the agent's default path for this user.
#[derive(Debug, Parser)]
#[command(name = "daemoneye-cli", version)]
struct Cli {
    /// Broker socket path.
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Strategy {
    RoundRobin,
    LeastLoaded,
    Random,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OverflowArg {
    Block,
    DropOldest,
    DropNewest,
    Error,
}

#[derive(Debug, Subcommand)]
enum CollectorsCommand {
    /// Name, state, pid, restarts, last exit.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped or failed collector.
    Start { name: String },
    /// Stop gracefully (SIGTERM, then SIGKILL after its stop timeout).
    Stop { name: String },
    /// Stop, then start.
    Restart { name: String },
    /// Suspend (SIGSTOP).
    Pause { name: String },
    /// Continue a paused collector (SIGCONT).
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a message (from MESSAGE, or standard input when it is absent).
    Pub {
        /// Topic name, e.g. events.process.new.
        topic: String,
        /// The payload; read from standard input when absent.
        message: Option<String>,
        /// 0: at most once; 1: wait for the broker's PubAck.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// Publish the message this many times.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// With standard input: one message per line.
        #[arg(long)]
        lines: bool,
    },
    /// Subscribe and print messages until --count or --timeout (a normal exit).
    Sub {
        /// Topic filters (`+` one level, `#` the rest).
        #[arg(required = true)]
        filters: Vec<String>,
        /// Join this queue group: each message goes to one member.
        #[arg(long)]
        group: Option<String>,
        /// How the group picks a member.
        #[arg(long, value_enum, default_value = "round-robin")]
        strategy: Strategy,
        /// Subscribe at QoS 1 (messages are acknowledged as printed).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        qos: u8,
        /// Queue capacity at the broker (messages); default: the broker's.
        #[arg(long)]
        capacity: Option<u32>,
        /// What the broker does when the queue is full.
        #[arg(long, value_enum)]
        overflow: Option<OverflowArg>,
        /// Keep this subscription's queue at the broker while this client is away, for
        /// the next `sub --durable NAME` of the same user (needs --qos 1).
        #[arg(long, value_name = "NAME")]
        durable: Option<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// One JSON object per message: topic, payload (or payload_b64), and metadata.
        #[arg(long)]
        json: bool,
    },
    /// Send a request and print the first reply.
    Req {
        /// Topic the responder listens on.
        topic: String,
        /// Request payload.
        message: String,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Broker statistics.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Supervised collectors: list them, or start, stop, restart, pause or resume one.
    Collectors {
        #[command(subcommand)]
        command: CollectorsCommand,
    },
    /// Agent health: broker and collectors.
    Health {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency with separate publisher and subscriber connections.
    Bench {
        /// Publisher connections.
        #[arg(long, default_value_t = 1)]
        pubs: u32,
        /// Subscriber connections.
        #[arg(long, default_value_t = 1)]
        subs: u32,
        /// Messages in all (split among publishers).
        #[arg(long, default_value_t = 100_000)]
        msgs: u64,
        /// Payload bytes (at least 8: the send time travels in the payload).
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Subscribers join this queue group.
        #[arg(long)]
        group: Option<String>,
        /// Topic to use.
        #[arg(long, default_value = "bench.data")]
        topic: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("daemoneye-cli: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemoneye-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn connect(socket: &Option<PathBuf>, name: &str) -> std::result::Result<Client, ClientError> {
    let path = paths::resolve_socket_path(socket.as_deref());
    let mut options = ClientOptions::new(name);
    options.session.reconnect = None;
    Client::connect(&path, options).await
}

fn qos(n: u8) -> QoS {
    if n == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    }
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("invalid duration {s} seconds").into())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pub {
            topic,
            message,
            qos: q,
            count,
            lines,
        } => {
            TopicName::parse(&topic).map_err(|e| format!("invalid topic {topic:?}: {e}"))?;
            let client = connect(&cli.socket, "daemoneye-cli").await?;
            let payloads: Vec<Vec<u8>> = match message {
                Some(m) => vec![m.into_bytes()],
                None if lines => std::io::stdin()
                    .lock()
                    .lines()
                    .map(|l| l.map(String::into_bytes))
                    .collect::<std::io::Result<_>>()?,
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    vec![buf]
                }
            };
            // QoS1: up to WINDOW publishes in flight, their PubAcks checked in order.
            const WINDOW: usize = 1024;
            let mut in_flight = std::collections::VecDeque::new();
            let mut dropped = 0u64;
            for _ in 0..count {
                for p in &payloads {
                    let pending = client
                        .send(simple_publish(&topic, Bytes::from(p.clone()), qos(q)))
                        .await?;
                    in_flight.push_back(pending);
                    if in_flight.len() >= WINDOW
                        && let Some(first) = in_flight.pop_front()
                        && let Some(a) = first.wait().await?
                    {
                        dropped += u64::from(a.dropped);
                    }
                }
            }
            for pending in in_flight {
                if let Some(a) = pending.wait().await? {
                    dropped += u64::from(a.dropped);
                }
            }
            if dropped > 0 {
                eprintln!(
                    "warning: {dropped} subscription cop(ies) of the messages were dropped by overflow"
                );
            }
            // A QoS0 publish has no answer: a round trip makes sure an error (bad topic,
            // permission) reaches us before we exit.
            client
                .request(
                    simple_publish("$sys.broker.health", Bytes::new(), QoS::AtMostOnce),
                    Duration::from_secs(5),
                )
                .await?;
            if let Some(e) = client.take_refusals().into_iter().next() {
                return Err(e.into());
            }
            client.close().await;
            Ok(())
        }
        Command::Sub {
            filters,
            group,
            strategy,
            qos: q,
            capacity,
            overflow,
            durable,
            count,
            timeout,
            json,
        } => {
            for f in &filters {
                TopicFilter::parse(f).map_err(|e| format!("invalid filter {f:?}: {e}"))?;
            }
            if let Some(g) = &group {
                daemoneye_proto::frame::validate_name("--group", g).map_err(|e| e.to_string())?;
            }
            let client = connect(&cli.socket, "daemoneye-cli").await?;
            let strategy = match strategy {
                Strategy::RoundRobin => QueueStrategy::RoundRobin,
                Strategy::LeastLoaded => QueueStrategy::LeastLoaded,
                Strategy::Random => QueueStrategy::Random,
            };
            let overflow = overflow.map(|o| match o {
                OverflowArg::Block => Overflow::Block,
                OverflowArg::DropOldest => Overflow::DropOldest,
                OverflowArg::DropNewest => Overflow::DropNewest,
                OverflowArg::Error => Overflow::Error,
            });
            let specs: Vec<Subscribe> = filters
                .iter()
                .map(|f| {
                    let mut spec = Subscribe {
                        qos: qos(q),
                        capacity,
                        overflow,
                        durable_name: durable.clone(),
                        ..plain_subscribe(f)
                    };
                    spec.group = group.clone().map(|name| GroupSpec { name, strategy });
                    spec
                })
                .collect();
            // One stream over every filter: nothing is read ahead of what is printed, and a
            // QoS1 message is acked only once its line is written.
            let mut sub = client.subscribe_all(specs, AckMode::Manual).await?;
            eprintln!("subscribed");
            let deadline = timeout
                .map(secs)
                .transpose()?
                .map(|d| tokio::time::Instant::now() + d);
            let mut seen = 0u64;
            let stdout = std::io::stdout();
            while count.is_none_or(|c| seen < c) {
                let next = match deadline {
                    Some(at) => match tokio::time::timeout_at(at, sub.recv()).await {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                    None => sub.recv().await,
                };
                let Some(mut d) = next else {
                    return Err("connection to the broker closed".into());
                };
                seen += 1;
                let mut out = stdout.lock();
                if json {
                    writeln!(out, "{}", message_json(&d))?;
                } else {
                    writeln!(out, "{} {}", d.topic, String::from_utf8_lossy(&d.payload))?;
                }
                out.flush()?;
                d.ack();
            }
            // Whatever arrived beyond --count is not acked: the broker keeps it (a durable
            // subscription's next resume gets it; a group's other members do).
            drop(sub);
            client.close().await;
            Ok(())
        }
        Command::Req {
            topic,
            message,
            timeout,
        } => {
            TopicName::parse(&topic).map_err(|e| format!("invalid topic {topic:?}: {e}"))?;
            let client = connect(&cli.socket, "daemoneye-cli").await?;
            let reply = client
                .request(
                    simple_publish(&topic, Bytes::from(message.into_bytes()), QoS::AtLeastOnce),
                    secs(timeout)?,
                )
                .await?;
            println!("{}", String::from_utf8_lossy(&reply.payload));
            client.close().await;
            Ok(())
        }
        Command::Stats { json } => {
            let client = connect(&cli.socket, "daemoneye-cli").await?;
            let reply = client
                .request(
                    simple_publish("$sys.broker.stats", Bytes::new(), QoS::AtMostOnce),
                    Duration::from_secs(5),
                )
                .await?;
            let stats = pbs::BrokerStats::decode(reply.payload)
                .map_err(|e| format!("malformed stats reply: {e}"))?;
            if json {
                println!("{}", stats_json(&stats));
            } else {
                print_stats(&stats);
            }
            client.close().await;
            Ok(())
        }
        Command::Collectors { command } => {
            let (op, name, json) = match command {
                CollectorsCommand::List { json } => (pbc::LifecycleOp::Status, String::new(), json),
                CollectorsCommand::Start { name } => (pbc::LifecycleOp::Start, name, false),
                CollectorsCommand::Stop { name } => (pbc::LifecycleOp::Stop, name, false),
                CollectorsCommand::Restart { name } => (pbc::LifecycleOp::Restart, name, false),
                CollectorsCommand::Pause { name } => (pbc::LifecycleOp::Pause, name, false),
                CollectorsCommand::Resume { name } => (pbc::LifecycleOp::Resume, name, false),
            };
            let client = connect(&cli.socket, "daemoneye-cli").await?;
            let request = pbc::LifecycleRequest {
                op: op as i32,
                name,
            };
            let reply = client
                .request(
                    simple_publish(
                        topics::LIFECYCLE,
                        Bytes::from(request.encode_to_vec()),
                        QoS::AtLeastOnce,
                    ),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| format!("no answer from the agent's process manager: {e}"))?;
            let r = pbc::LifecycleResponse::decode(reply.payload)
                .map_err(|e| format!("malformed lifecycle reply: {e}"))?;
            client.close().await;
            if r.error != 0 {
                return Err(r.message.into());
            }
            if json {
                let list: Vec<_> = r.collectors.iter().map(collector_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else if op == pbc::LifecycleOp::Status {
                print_collectors(&r.collectors);
            } else if let Some(c) = r.collectors.first() {
                println!("{} {} (pid {})", c.name, c.state, c.pid);
            }
            Ok(())
        }
        Command::Health { json } => {
            let client = connect(&cli.socket, "daemoneye-cli").await?;
            let reply = client
                .request(
                    simple_publish(topics::HEALTH_STATUS, Bytes::new(), QoS::AtLeastOnce),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| format!("no health report from the agent: {e}"))?;
            let h = pbc::HealthReport::decode(reply.payload)
                .map_err(|e| format!("malformed health reply: {e}"))?;
            let state = |v: i32| {
                pbc::HealthState::try_from(v)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("HEALTH_STATE_")
                            .to_lowercase()
                    })
                    .unwrap_or_else(|_| "unknown".into())
            };
            if json {
                let collectors: Vec<_> = h.collectors.iter().map(collector_json).collect();
                println!(
                    "{}",
                    json!({"overall": state(h.overall), "broker": state(h.broker), "collectors": collectors, "reasons": h.reasons})
                );
            } else {
                println!("overall  {}", state(h.overall));
                println!("broker   {}", state(h.broker));
                if h.collectors.is_empty() {
                    println!("collectors: none");
                } else {
                    print_collectors(&h.collectors);
                }
                for r in &h.reasons {
                    println!("  - {r}");
                }
            }
            client.close().await;
            Ok(())
        }
        Command::Bench {
            pubs,
            subs,
            msgs,
            size,
            group,
            topic,
            json,
        } => bench(&cli.socket, pubs, subs, msgs, size, group, &topic, json).await,
    }
}

fn collector_json(c: &pbc::CollectorStatus) -> serde_json::Value {
    json!({
        "name": c.name, "state": c.state, "pid": c.pid, "restarts": c.restarts,
        "last_heartbeat_ms": c.last_heartbeat_ms, "capabilities": c.capabilities, "last_exit": c.health,
    })
}

fn print_collectors(list: &[pbc::CollectorStatus]) {
    println!(
        "{:<20} {:<10} {:>8} {:>8}  last exit",
        "name", "state", "pid", "restarts"
    );
    for c in list {
        let pid = if c.pid == 0 {
            "-".to_string()
        } else {
            c.pid.to_string()
        };
        println!(
            "{:<20} {:<10} {:>8} {:>8}  {}",
            c.name, c.state, pid, c.restarts, c.health
        );
    }
}

fn message_json(d: &Deliver) -> serde_json::Value {
    let mut v = json!({
        "topic": d.topic,
        "qos": if d.qos == QoS::AtLeastOnce { 1 } else { 0 },
        "publisher_id": d.publisher_id,
        "sequence": d.sequence,
        "redelivered": d.redelivered,
    });
    match std::str::from_utf8(&d.payload) {
        Ok(text) => v["payload"] = json!(text),
        Err(_) => {
            v["payload_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(&d.payload))
        }
    }
    if let Some(c) = &d.correlation {
        v["correlation_id"] = json!(c.correlation_id);
    }
    if let Some(r) = &d.reply_to {
        v["reply_to"] = json!(r);
    }
    v
}

fn counters_json(c: &Option<pbs::Counters>) -> serde_json::Value {
    let c = c.unwrap_or_default();
    json!({"published": c.published, "delivered": c.delivered, "dropped": c.dropped, "acked": c.acked,
           "queued": c.queued, "no_interest": c.no_interest, "denied": c.denied,
           "lost_on_disconnect": c.lost_on_disconnect, "truncated": c.truncated,
           "frame_timeouts": c.frame_timeouts, "too_large": c.too_large})
}

fn stats_json(s: &pbs::BrokerStats) -> serde_json::Value {
    let lat = s.ack_latency.unwrap_or_default();
    json!({
        "uptime_ms": s.uptime_ms,
        "health": s.health,
        "health_reasons": s.health_reasons,
        "connections": s.connections,
        "subscriptions": s.subscriptions,
        "queued_bytes": s.queued_bytes,
        "memory_budget_bytes": s.memory_budget_bytes,
        "publish_rate": s.publish_rate,
        "deliver_rate": s.deliver_rate,
        "totals": counters_json(&s.totals),
        "ack_latency_us": {"count": lat.count, "p50": lat.p50_us, "p90": lat.p90_us, "p99": lat.p99_us, "max": lat.max_us},
        "topics": s.topics.iter().map(|t| json!({"topic": t.topic, "counters": counters_json(&t.counters)})).collect::<Vec<_>>(),
        "subscriptions_detail": s.subscriptions_detail.iter().map(|d| json!({
            "session_id": d.session_id, "sub_id": d.sub_id, "filter": d.filter, "queue_group": d.queue_group,
            "durable_name": d.durable_name, "capacity": d.capacity, "overflow": d.overflow,
            "unacked": d.unacked, "counters": counters_json(&d.counters)})).collect::<Vec<_>>(),
        "connections_detail": s.connections_detail.iter().map(|c| json!({
            "session_id": c.session_id, "client_name": c.client_name, "uid": c.uid, "pid": c.pid,
            "role": c.role, "subscriptions": c.subscriptions, "reading_paused": c.reading_paused,
            "counters": counters_json(&c.counters)})).collect::<Vec<_>>(),
    })
}

fn print_stats(s: &pbs::BrokerStats) {
    let t = s.totals.unwrap_or_default();
    println!("health        {} {}", s.health, s.health_reasons.join("; "));
    println!("uptime        {:.1} s", s.uptime_ms as f64 / 1000.0);
    println!("connections   {}", s.connections);
    println!("subscriptions {}", s.subscriptions);
    println!(
        "queued bytes  {} of {}",
        s.queued_bytes, s.memory_budget_bytes
    );
    println!(
        "published     {}  delivered {}  acked {}  dropped {}  no interest {}  denied {}",
        t.published, t.delivered, t.acked, t.dropped, t.no_interest, t.denied
    );
    if !s.subscriptions_detail.is_empty() {
        println!();
        println!(
            "{:>8} {:>6} {:<32} {:<12} {:>9} {:>8} {:>9} {:>8}",
            "session", "sub", "filter", "group", "capacity", "queued", "delivered", "dropped"
        );
        for d in &s.subscriptions_detail {
            let c = d.counters.unwrap_or_default();
            println!(
                "{:>8} {:>6} {:<32} {:<12} {:>9} {:>8} {:>9} {:>8}",
                d.session_id,
                d.sub_id,
                d.filter,
                d.queue_group,
                d.capacity,
                c.queued,
                c.delivered,
                c.dropped
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn bench(
    socket: &Option<PathBuf>,
    pubs: u32,
    subs: u32,
    msgs: u64,
    size: usize,
    group: Option<String>,
    topic: &str,
    json: bool,
) -> Result<()> {
    if size < 8 {
        return Err(
            "--size must be at least 8 bytes (the send time travels in the payload)".into(),
        );
    }
    if pubs == 0 {
        return Err("--pubs must be at least 1".into());
    }
    let origin = Instant::now();
    let mut sub_tasks = Vec::new();
    let expected_per_sub = if group.is_some() { None } else { Some(msgs) };
    for i in 0..subs {
        let client = connect(socket, &format!("bench-sub-{i}")).await?;
        let mut spec = plain_subscribe(topic);
        spec.group = group.clone().map(|name| GroupSpec {
            name,
            strategy: QueueStrategy::RoundRobin,
        });
        let mut sub = client.subscribe(spec).await?;
        sub_tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last = None;
            loop {
                let limit = expected_per_sub.is_some_and(|n| latencies.len() as u64 >= n);
                if limit {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {
                    Ok(Some(d)) => {
                        let sent = u64::from_le_bytes(d.payload[..8].try_into().unwrap_or([0; 8]));
                        let now = origin.elapsed().as_nanos() as u64;
                        latencies.push(now.saturating_sub(sent));
                        last = Some(now);
                    }
                    _ => break,
                }
            }
            drop(client);
            (latencies, last)
        }));
    }
    let started = origin.elapsed().as_nanos() as u64;
    let mut pub_tasks = Vec::new();
    for i in 0..pubs {
        let client = connect(socket, &format!("bench-pub-{i}")).await?;
        let n = msgs / u64::from(pubs) + u64::from(u64::from(i) < msgs % u64::from(pubs));
        let topic = topic.to_string();
        pub_tasks.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size];
            for _ in 0..n {
                payload[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
                client
                    .publish(simple_publish(
                        &topic,
                        Bytes::copy_from_slice(&payload),
                        QoS::AtMostOnce,
                    ))
                    .await?;
            }
            // A round trip flushes everything this publisher sent.
            client
                .request(
                    simple_publish("$sys.broker.health", Bytes::new(), QoS::AtMostOnce),
                    Duration::from_secs(30),
                )
                .await?;
            Ok::<u64, ClientError>(n)
        }));
    }
    let mut sent = 0;
    for t in pub_tasks {
        sent += t.await.map_err(|e| e.to_string())??;
    }
    let mut all = Vec::new();
    let mut last_recv = started;
    for t in sub_tasks {
        let (lat, last) = t.await.map_err(|e| e.to_string())?;
        all.extend(lat);
        if let Some(l) = last {
            last_recv = last_recv.max(l);
        }
    }
    let delivered = all.len() as u64;
    let want = if group.is_some() {
        sent
    } else {
        sent * u64::from(subs)
    };
    let lost = want.saturating_sub(delivered);
    all.sort_unstable();
    let pct = |q: f64| -> u64 {
        if all.is_empty() {
            0
        } else {
            all[((q * (all.len() - 1) as f64).round() as usize).min(all.len() - 1)] / 1000
        }
    };
    let elapsed = (last_recv.saturating_sub(started)).max(1) as f64 / 1e9;
    let rate = delivered as f64 / elapsed;
    if json {
        println!(
            "{}",
            json!({
                "sent": sent, "delivered": delivered, "lost": lost,
                "delivered_per_s": rate, "mb_per_s": rate * size as f64 / 1e6,
                "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999),
                "pubs": pubs, "subs": subs, "size": size,
            })
        );
    } else {
        println!("sent {sent}, delivered {delivered}, lost {lost}");
        println!(
            "{:.0} msg/s delivered, {:.1} MB/s",
            rate,
            rate * size as f64 / 1e6
        );
        println!(
            "latency p50 {} us, p99 {} us, p99.9 {} us",
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
    }
    Ok(())
}
