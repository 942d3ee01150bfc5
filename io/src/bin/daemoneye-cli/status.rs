//! `stats` and `health`: what the broker and the agent say about themselves.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use daemoneye_core::topic::topics;
use daemoneye_io::client::Client;
use daemoneye_proto::frame::QoS;
use daemoneye_proto::pb::{control as pbc, stats as pbs};
use prost::Message as _;
use serde::Serialize;

use crate::collectors::{CollectorJson, print_table};
use crate::connection::{ask, connect, seconds};
use crate::error::{CliError, EXIT_DEGRADED, EXIT_UNHEALTHY};

/// `stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Machine-readable output (with --watch: one JSON object per refresh).
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds (2 when not given) until interrupted.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
}

/// `health`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 healthy; 3 degraded; 4 unhealthy (or a state this \
    version does not know); 1 when the agent could not be asked; 2 on a usage error. The \
    report is printed in every case."
)]
pub struct HealthArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// The broker's `$sys.broker.stats`.
pub async fn broker_stats(client: &Client) -> Result<pbs::BrokerStats, CliError> {
    let reply = ask(
        client,
        "$sys.broker.stats",
        QoS::AtMostOnce,
        Duration::from_secs(5),
    )
    .await?;
    pbs::BrokerStats::decode(reply.payload).map_err(|source| CliError::MalformedReply {
        what: "stats",
        source,
    })
}

/// `stats`: the broker's `$sys.broker.stats`, as a summary or as JSON.
pub async fn stats(socket: Option<&Path>, args: StatsArgs) -> Result<(), CliError> {
    let every = args.watch.map(seconds).transpose()?;
    if every.is_some_and(|d| d.is_zero()) {
        return Err(CliError::InvalidArgument(
            "--watch needs a positive interval",
        ));
    }
    let client = connect(socket, "daemoneye-cli").await?;
    let clear = every.is_some() && !args.json && std::io::stdout().is_terminal();
    loop {
        let stats = broker_stats(&client).await?;
        if args.json {
            println!("{}", serde_json::to_string(&StatsJson::from(&stats))?);
        } else {
            if clear {
                // Home and clear: each refresh replaces the last.
                print!("\x1b[H\x1b[2J");
            } else if every.is_some() {
                println!();
            }
            print_stats(&stats);
        }
        std::io::stdout().flush()?;
        let Some(every) = every else { break };
        tokio::time::sleep(every).await;
    }
    client.close().await;
    Ok(())
}

/// `health`: the agent's report, the worst of broker and collectors.
pub async fn health(socket: Option<&Path>, args: HealthArgs) -> Result<(), CliError> {
    let client = connect(socket, "daemoneye-cli").await?;
    let reply = ask(
        &client,
        topics::HEALTH_STATUS,
        QoS::AtLeastOnce,
        Duration::from_secs(5),
    )
    .await
    .map_err(CliError::NoHealthReport)?;
    let h =
        pbc::HealthReport::decode(reply.payload).map_err(|source| CliError::MalformedReply {
            what: "health",
            source,
        })?;
    let report = HealthJson::from(&h);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("overall  {}", report.overall);
        println!("broker   {}", report.broker);
        println!("coordinator {}", report.coordinator);
        println!("detection {}", report.detection);
        if h.bridge != pbc::HealthState::Unspecified as i32 {
            println!("bridge   {}", report.bridge);
        }
        if h.collectors.is_empty() {
            println!("collectors: none");
        } else {
            print_table(&h.collectors);
        }
        for r in &h.reasons {
            println!("  - {r}");
        }
    }
    client.close().await;
    match pbc::HealthState::try_from(h.overall) {
        Ok(pbc::HealthState::Healthy) => Ok(()),
        Ok(pbc::HealthState::Degraded) => Err(CliError::NotHealthy {
            state: report.overall,
            code: EXIT_DEGRADED,
        }),
        _ => Err(CliError::NotHealthy {
            state: report.overall,
            code: EXIT_UNHEALTHY,
        }),
    }
}

/// The canonical name of a health state on the wire, or "unknown" for a value this
/// version does not know.
fn health_state(value: i32) -> &'static str {
    pbc::HealthState::try_from(value).map_or("unknown", pbc::HealthState::as_str)
}

/// `health --json`.
#[derive(Debug, Serialize)]
struct HealthJson<'a> {
    overall: &'static str,
    broker: &'static str,
    /// The task coordinator (`unspecified` when the agent could not tell).
    coordinator: &'static str,
    /// The detection engine.
    detection: &'static str,
    /// The NATS bridge (`unspecified` when none is configured).
    bridge: &'static str,
    collectors: Vec<CollectorJson<'a>>,
    reasons: &'a [String],
}

impl<'a> From<&'a pbc::HealthReport> for HealthJson<'a> {
    fn from(h: &'a pbc::HealthReport) -> Self {
        HealthJson {
            overall: health_state(h.overall),
            broker: health_state(h.broker),
            coordinator: health_state(h.coordinator),
            detection: health_state(h.detection),
            bridge: health_state(h.bridge),
            collectors: h.collectors.iter().map(CollectorJson::from).collect(),
            reasons: &h.reasons,
        }
    }
}

/// Counters in `stats --json` (a missing set reads as zeros).
#[derive(Debug, Serialize)]
struct CountersJson {
    published: u64,
    delivered: u64,
    dropped: u64,
    acked: u64,
    queued: u64,
    no_interest: u64,
    denied: u64,
    lost_on_disconnect: u64,
    truncated: u64,
    frame_timeouts: u64,
    too_large: u64,
}

impl From<Option<pbs::Counters>> for CountersJson {
    fn from(c: Option<pbs::Counters>) -> Self {
        let c = c.unwrap_or_default();
        CountersJson {
            published: c.published,
            delivered: c.delivered,
            dropped: c.dropped,
            acked: c.acked,
            queued: c.queued,
            no_interest: c.no_interest,
            denied: c.denied,
            lost_on_disconnect: c.lost_on_disconnect,
            truncated: c.truncated,
            frame_timeouts: c.frame_timeouts,
            too_large: c.too_large,
        }
    }
}

/// `stats --json`.
#[derive(Debug, Serialize)]
struct StatsJson<'a> {
    uptime_ms: u64,
    health: &'a str,
    health_reasons: &'a [String],
    connections: u64,
    subscriptions: u64,
    queued_bytes: u64,
    memory_budget_bytes: u64,
    publish_rate: f64,
    deliver_rate: f64,
    totals: CountersJson,
    ack_latency_us: LatencyJson,
    topics: Vec<TopicJson<'a>>,
    subscriptions_detail: Vec<SubscriptionJson<'a>>,
    connections_detail: Vec<ConnectionJson<'a>>,
}

#[derive(Debug, Serialize)]
struct LatencyJson {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

#[derive(Debug, Serialize)]
struct TopicJson<'a> {
    topic: &'a str,
    counters: CountersJson,
}

#[derive(Debug, Serialize)]
struct SubscriptionJson<'a> {
    session_id: u64,
    sub_id: u64,
    filter: &'a str,
    queue_group: &'a str,
    durable_name: &'a str,
    capacity: u32,
    overflow: &'a str,
    unacked: u64,
    counters: CountersJson,
}

#[derive(Debug, Serialize)]
struct ConnectionJson<'a> {
    session_id: u64,
    client_name: &'a str,
    uid: u32,
    pid: u32,
    role: &'a str,
    subscriptions: u64,
    reading_paused: bool,
    counters: CountersJson,
}

impl<'a> From<&'a pbs::BrokerStats> for StatsJson<'a> {
    fn from(s: &'a pbs::BrokerStats) -> Self {
        let lat = s.ack_latency.unwrap_or_default();
        StatsJson {
            uptime_ms: s.uptime_ms,
            health: &s.health,
            health_reasons: &s.health_reasons,
            connections: s.connections,
            subscriptions: s.subscriptions,
            queued_bytes: s.queued_bytes,
            memory_budget_bytes: s.memory_budget_bytes,
            publish_rate: s.publish_rate,
            deliver_rate: s.deliver_rate,
            totals: s.totals.into(),
            ack_latency_us: LatencyJson {
                count: lat.count,
                p50: lat.p50_us,
                p90: lat.p90_us,
                p99: lat.p99_us,
                max: lat.max_us,
            },
            topics: s
                .topics
                .iter()
                .map(|t| TopicJson {
                    topic: &t.topic,
                    counters: t.counters.into(),
                })
                .collect(),
            subscriptions_detail: s
                .subscriptions_detail
                .iter()
                .map(|d| SubscriptionJson {
                    session_id: d.session_id,
                    sub_id: d.sub_id,
                    filter: &d.filter,
                    queue_group: &d.queue_group,
                    durable_name: &d.durable_name,
                    capacity: d.capacity,
                    overflow: &d.overflow,
                    unacked: d.unacked,
                    counters: d.counters.into(),
                })
                .collect(),
            connections_detail: s
                .connections_detail
                .iter()
                .map(|c| ConnectionJson {
                    session_id: c.session_id,
                    client_name: &c.client_name,
                    uid: c.uid,
                    pid: c.pid,
                    role: &c.role,
                    subscriptions: c.subscriptions,
                    reading_paused: c.reading_paused,
                    counters: c.counters.into(),
                })
                .collect(),
        }
    }
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
