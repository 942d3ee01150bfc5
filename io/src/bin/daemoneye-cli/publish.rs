//! `pub`: sends messages and, at QoS 1, waits for every PubAck — with an idle timeout,
//! progress on a terminal, the subscriptions that hold it up, and the reason for any loss.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_io::client::{Client, PendingAck};
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::stats as pbs;
use tokio::time::Instant;

use crate::connection::{connect, round_trip, seconds};
use crate::error::CliError;
use crate::status::broker_stats;

/// QoS1 publishes in flight at once; their PubAcks are checked in order.
const PUBLISH_WINDOW: usize = 1024;

/// `pub`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when everything was published (at QoS 1: every \
    copy acknowledged, or no subscription matched); 1 on an error; 2 on a usage error; \
    3 at QoS 1 when a copy was dropped or a PubAck did not come within --timeout."
)]
pub struct PubArgs {
    /// Topic name, e.g. events.process.new.
    topic: String,
    /// The payload; read from standard input when absent.
    message: Option<String>,
    /// 0: at most once; 1: wait for the broker's PubAck.
    #[arg(long, value_enum, default_value_t = QoS::AtMostOnce)]
    qos: QoS,
    /// Publish the message this many times (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// With standard input: one message per line.
    #[arg(long)]
    lines: bool,
    /// QoS 1: give up when no PubAck has arrived for this many seconds (a subscriber
    /// that is away or stuck holds them) and say which subscriptions hold them.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
}

fn topic_name(topic: &str) -> Result<TopicName, CliError> {
    TopicName::parse(topic).map_err(|source| CliError::InvalidTopic {
        topic: topic.to_string(),
        source,
    })
}

/// The payloads `pub` sends: MESSAGE, else standard input (whole, or one per line).
fn payloads(message: Option<String>, lines: bool) -> Result<Vec<Vec<u8>>, CliError> {
    Ok(match message {
        Some(m) => vec![m.into_bytes()],
        None if lines => std::io::stdin()
            .lock()
            .lines()
            .map(|l| l.map(String::into_bytes))
            .collect::<std::io::Result<_>>()?,
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            vec![buf]
        }
    })
}

/// What the PubAcks said so far.
#[derive(Debug)]
struct Progress {
    total: u64,
    acked: Cell<u64>,
    delivered: Cell<u64>,
    dropped: Cell<u64>,
    no_interest: Cell<u64>,
    /// When the last PubAck arrived (or publishing started).
    last_ack: Cell<Instant>,
}

impl Progress {
    fn record(&self, ack: Option<daemoneye_io::client::PubAck>) {
        let Some(a) = ack else { return };
        self.acked.set(self.acked.get() + 1);
        self.delivered
            .set(self.delivered.get() + u64::from(a.delivered));
        self.dropped.set(self.dropped.get() + u64::from(a.dropped));
        if a.no_interest {
            self.no_interest.set(self.no_interest.get() + 1);
        }
        self.last_ack.set(Instant::now());
    }
}

/// Sends every payload `count` times and waits for each PubAck, recording them.
async fn send_all(
    client: &Client,
    topic: &str,
    payloads: &[Vec<u8>],
    count: u64,
    qos: QoS,
    progress: &Progress,
) -> Result<(), CliError> {
    let mut in_flight: VecDeque<PendingAck> = VecDeque::new();
    for _ in 0..count {
        for p in payloads {
            let pending = client
                .send(Publish::new(topic, Bytes::from(p.clone()), qos))
                .await?;
            in_flight.push_back(pending);
            if in_flight.len() >= PUBLISH_WINDOW
                && let Some(first) = in_flight.pop_front()
            {
                progress.record(first.wait().await?);
            }
        }
    }
    for pending in in_flight {
        progress.record(pending.wait().await?);
    }
    Ok(())
}

/// `pub`: sends every payload `--count` times; at QoS1 waits for every PubAck (giving up
/// after `--timeout` seconds without one) and fails when a copy was not delivered.
pub async fn publish(socket: Option<&Path>, args: PubArgs) -> Result<(), CliError> {
    let topic = topic_name(&args.topic)?;
    let idle_timeout = seconds(args.timeout)?;
    let client = connect(socket, "daemoneye-cli").await?;
    let payloads = payloads(args.message, args.lines)?;
    let qos1 = args.qos == QoS::AtLeastOnce;
    // What the matching subscriptions had dropped before, to say afterwards why copies
    // were lost.
    let before = if qos1 {
        Some(broker_stats(&client).await?)
    } else {
        None
    };
    let progress = Progress {
        total: args.count * payloads.len() as u64,
        acked: Cell::new(0),
        delivered: Cell::new(0),
        dropped: Cell::new(0),
        no_interest: Cell::new(0),
        last_ack: Cell::new(Instant::now()),
    };
    let mut work = Box::pin(send_all(
        &client,
        &args.topic,
        &payloads,
        args.count,
        args.qos,
        &progress,
    ));
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut shown = false;
    let finished = loop {
        let idle_deadline = progress.last_ack.get() + idle_timeout;
        tokio::select! {
            r = &mut work => { r?; break true; }
            _ = tick.tick(), if qos1 && terminal => {
                let stats = broker_stats(&client).await.ok();
                let held = stats.as_ref().map(|s| holders(s, &topic)).unwrap_or_default();
                show_progress(&progress, &held);
                shown = true;
            }
            _ = tokio::time::sleep_until(idle_deadline), if qos1 => {
                if progress.last_ack.get() + idle_timeout <= Instant::now() {
                    break false;
                }
            }
        }
    };
    drop(work);
    if shown {
        eprintln!();
    }
    let result = if qos1 {
        let after = broker_stats(&client).await?;
        verdict(
            &progress,
            finished,
            args.timeout,
            &topic,
            before.as_ref(),
            &after,
        )
    } else {
        Ok(())
    };
    if finished {
        // A QoS0 publish has no answer: a round trip makes sure an error (bad topic,
        // permission) reaches us before we exit.
        round_trip(&client, Duration::from_secs(5)).await?;
        if let Some(e) = client.take_refusals().into_iter().next() {
            return Err(e.into());
        }
    }
    client.close().await;
    result
}

/// One progress line on the terminal (rewritten in place).
fn show_progress(progress: &Progress, held: &[String]) {
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[Kwaiting for PubAcks: {} of {} acknowledged",
        progress.acked.get(),
        progress.total
    );
    if !held.is_empty() {
        let _ = write!(err, "; held by {}", held.join(", "));
    }
    let _ = err.flush();
}

/// Whether subscription `s` takes messages published on `topic`.
fn matches(s: &pbs::SubscriptionStats, topic: &TopicName) -> bool {
    TopicFilter::parse(&s.filter).is_ok_and(|f| f.matches(topic))
}

/// How a subscription is named to the user.
fn describe(s: &pbs::SubscriptionStats, stats: &pbs::BrokerStats) -> String {
    let mut name = if s.durable_name.is_empty() {
        format!("subscription {:?}", s.filter)
    } else {
        format!("durable {:?} ({})", s.durable_name, s.filter)
    };
    if !s.queue_group.is_empty() {
        name.push_str(&format!(" in group {:?}", s.queue_group));
    }
    if s.session_id == 0 {
        name.push_str(", its subscriber away");
    } else if let Some(c) = stats
        .connections_detail
        .iter()
        .find(|c| c.session_id == s.session_id)
    {
        name.push_str(&format!(" of {} (pid {})", c.client_name, c.pid));
    }
    name
}

/// The subscriptions matching `topic` that hold messages (queued or unacknowledged).
fn holders(stats: &pbs::BrokerStats, topic: &TopicName) -> Vec<String> {
    stats
        .subscriptions_detail
        .iter()
        .filter(|s| matches(s, topic))
        .filter_map(|s| {
            let queued = s.counters.unwrap_or_default().queued;
            (queued + s.unacked > 0).then(|| {
                format!(
                    "{}: {queued} queued, {} unacknowledged",
                    describe(s, stats),
                    s.unacked
                )
            })
        })
        .collect()
}

/// Why copies were dropped: the matching subscriptions whose drop counter rose (their
/// overflow strategy), and those that are gone (expired, or their subscriber left).
fn loss_reasons(
    topic: &TopicName,
    before: Option<&pbs::BrokerStats>,
    after: &pbs::BrokerStats,
) -> Vec<String> {
    let key = |s: &pbs::SubscriptionStats| (s.session_id, s.sub_id, s.durable_name.clone());
    let mut reasons = Vec::new();
    let Some(before) = before else {
        return reasons;
    };
    for b in before
        .subscriptions_detail
        .iter()
        .filter(|s| matches(s, topic))
    {
        let now = after.subscriptions_detail.iter().find(|a| {
            key(a) == key(b) || (!b.durable_name.is_empty() && a.durable_name == b.durable_name)
        });
        match now {
            Some(a) => {
                let rose = a.counters.unwrap_or_default().dropped
                    - b.counters
                        .unwrap_or_default()
                        .dropped
                        .min(a.counters.unwrap_or_default().dropped);
                if rose > 0 {
                    reasons.push(format!(
                        "{} dropped {rose} by overflow ({}, capacity {})",
                        describe(a, after),
                        a.overflow,
                        a.capacity
                    ));
                }
            }
            // A durable outlives its subscriber's connection: it is gone only by expiring.
            None if !b.durable_name.is_empty() => reasons.push(format!(
                "durable {:?} ({}) expired while its subscriber was away",
                b.durable_name, b.filter
            )),
            None => reasons.push(format!(
                "{} ended before acknowledging",
                describe(b, before)
            )),
        }
    }
    reasons
}

/// The outcome of a QoS1 `pub`: what was delivered, and an error when anything was not.
fn verdict(
    progress: &Progress,
    finished: bool,
    timeout: f64,
    topic: &TopicName,
    before: Option<&pbs::BrokerStats>,
    after: &pbs::BrokerStats,
) -> Result<(), CliError> {
    let (total, acked) = (progress.total, progress.acked.get());
    let dropped = progress.dropped.get();
    if progress.no_interest.get() > 0 {
        eprintln!(
            "note: no subscription matched {} of {total} message(s)",
            progress.no_interest.get()
        );
    }
    let mut problems = Vec::new();
    if dropped > 0 {
        let reasons = loss_reasons(topic, before, after);
        let why = if reasons.is_empty() {
            "overflow, expiry or a departed subscriber".to_string()
        } else {
            reasons.join("; ")
        };
        problems.push(format!("{dropped} subscription cop(ies) dropped: {why}"));
    }
    if !finished {
        let held = holders(after, topic);
        let by = if held.is_empty() {
            String::new()
        } else {
            format!("; held by {}", held.join(", "))
        };
        problems.push(format!(
            "{} of {total} message(s) not acknowledged: no PubAck for {timeout} s{by}",
            total - acked
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::NotDelivered(problems.join("; ")))
    }
}
