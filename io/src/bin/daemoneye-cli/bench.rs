//! `bench`: throughput and latency through the broker, with separate publisher and
//! subscriber connections; the send time travels in the first 8 bytes of each payload.
//! As fast as possible for throughput, or paced (`--rate`) for latency under a known load.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::client::ClientError;
use daemoneye_proto::frame::{GroupSpec, Publish, QoS, QueueStrategy, Subscribe};
use serde::Serialize;

use crate::connection::{connect, round_trip};
use crate::error::CliError;

/// `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pubs: u32,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    subs: u32,
    /// Messages in all (split among publishers; at least 1).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
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
    /// Paced mode for latency: publish this many messages per second in all (split
    /// among publishers) instead of as fast as possible.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,
}

/// `bench --json`.
#[derive(Debug, Serialize)]
struct BenchReport {
    sent: u64,
    delivered: u64,
    lost: u64,
    delivered_per_s: f64,
    mb_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    pubs: u32,
    subs: u32,
    size: usize,
    /// The paced rate asked for (messages per second in all), if any.
    rate: Option<f64>,
}

/// How long a subscriber waits for the next message before it decides the run is over.
const IDLE_END: Duration = Duration::from_secs(2);

/// Runs the benchmark and prints its report.
pub async fn run(socket: Option<&Path>, args: BenchArgs) -> Result<(), CliError> {
    let BenchArgs {
        pubs,
        subs,
        msgs,
        size,
        group,
        topic,
        json,
        rate: paced,
    } = args;
    if paced.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(CliError::InvalidArgument(
            "--rate must be a positive number",
        ));
    }
    if size < 8 {
        return Err(CliError::InvalidArgument(
            "--size must be at least 8 bytes (the send time travels in the payload)",
        ));
    }
    if pubs == 0 {
        return Err(CliError::InvalidArgument("--pubs must be at least 1"));
    }
    let origin = Instant::now();
    let progress = Arc::new(Counts::default());
    let mut sub_tasks = Vec::new();
    let expected_per_sub = if group.is_some() { None } else { Some(msgs) };
    for i in 0..subs {
        let client = connect(socket, &format!("bench-sub-{i}")).await?;
        let spec = Subscribe {
            group: group.clone().map(|name| GroupSpec {
                name,
                strategy: QueueStrategy::RoundRobin,
            }),
            ..Subscribe::new(&topic)
        };
        let mut sub = client.subscribe(spec).await?;
        let counts = progress.clone();
        sub_tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last = None;
            loop {
                let limit = expected_per_sub.is_some_and(|n| latencies.len() as u64 >= n);
                if limit {
                    break;
                }
                match tokio::time::timeout(IDLE_END, sub.recv()).await {
                    Ok(Some(d)) => {
                        let sent = u64::from_le_bytes(d.payload[..8].try_into().unwrap_or([0; 8]));
                        let now = origin.elapsed().as_nanos() as u64;
                        latencies.push(now.saturating_sub(sent));
                        counts.delivered.fetch_add(1, Ordering::Relaxed);
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
        let topic = topic.clone();
        let counts = progress.clone();
        // Each publisher's share of the rate: one message per tick.
        let mut pace = paced.map(|r| {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(f64::from(pubs) / r));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            tick
        });
        pub_tasks.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size];
            for _ in 0..n {
                if let Some(tick) = &mut pace {
                    tick.tick().await;
                }
                payload[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
                client
                    .publish(Publish::new(
                        &topic,
                        Bytes::copy_from_slice(&payload),
                        QoS::AtMostOnce,
                    ))
                    .await?;
                counts.sent.fetch_add(1, Ordering::Relaxed);
            }
            // A round trip flushes everything this publisher sent.
            round_trip(&client, Duration::from_secs(30)).await?;
            Ok::<u64, ClientError>(n)
        }));
    }
    let want_deliveries = if group.is_some() {
        msgs
    } else {
        msgs * u64::from(subs)
    };
    let shown = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(progress.clone(), msgs, want_deliveries)));
    let mut sent = 0;
    for t in pub_tasks {
        sent += t.await??;
    }
    let mut all = Vec::new();
    let mut last_recv = started;
    for t in sub_tasks {
        let (lat, last) = t.await?;
        all.extend(lat);
        if let Some(l) = last {
            last_recv = last_recv.max(l);
        }
    }
    if let Some(task) = shown {
        task.abort();
        eprintln!();
    }
    let delivered = all.len() as u64;
    let want = if group.is_some() {
        sent
    } else {
        sent * u64::from(subs)
    };
    all.sort_unstable();
    let elapsed = (last_recv.saturating_sub(started)).max(1) as f64 / 1e9;
    let rate = delivered as f64 / elapsed;
    let report = BenchReport {
        sent,
        delivered,
        lost: want.saturating_sub(delivered),
        delivered_per_s: rate,
        mb_per_s: rate * size as f64 / 1e6,
        p50_us: percentile_us(&all, 0.50),
        p99_us: percentile_us(&all, 0.99),
        p999_us: percentile_us(&all, 0.999),
        pubs,
        subs,
        size,
        rate: paced,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {}, delivered {}, lost {}",
            report.sent, report.delivered, report.lost
        );
        println!(
            "{:.0} msg/s delivered, {:.1} MB/s",
            report.delivered_per_s, report.mb_per_s
        );
        println!(
            "latency p50 {} us, p99 {} us, p99.9 {} us",
            report.p50_us, report.p99_us, report.p999_us
        );
    }
    Ok(())
}

/// Messages sent and delivered so far, for the progress line.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    delivered: AtomicU64,
}

/// Rewrites one progress line on stderr every second until aborted.
async fn show_progress(counts: Arc<Counts>, msgs: u64, deliveries: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        eprint!(
            "\r\x1b[Ksent {} of {msgs}, delivered {} of {deliveries}",
            counts.sent.load(Ordering::Relaxed),
            counts.delivered.load(Ordering::Relaxed)
        );
    }
}

/// The `q` quantile of sorted latencies in nanoseconds, in microseconds (0 if none).
fn percentile_us(sorted_ns: &[u64], q: f64) -> u64 {
    if sorted_ns.is_empty() {
        return 0;
    }
    let last = sorted_ns.len() - 1;
    sorted_ns[((q * last as f64).round() as usize).min(last)] / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank_in_microseconds() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&ns, 0.5), 51);
        assert_eq!(percentile_us(&ns, 0.99), 99);
        assert_eq!(percentile_us(&ns, 0.999), 100);
        assert_eq!(percentile_us(&[], 0.5), 0);
    }
}
