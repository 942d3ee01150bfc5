//! `pub`, `sub` and `req`: messages in and out of the bus.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_io::client::{AckMode, Client, ClientError, Notice};
use daemoneye_proto::frame::{
    Deliver, GroupSpec, Overflow, Publish, QoS, QueueStrategy, Subscribe,
};
use serde::Serialize;

use crate::connection::{connect, connect_reconnecting, seconds};
use crate::error::CliError;
use crate::status::broker_stats;

/// `sub`.
#[derive(Debug, clap::Args)]
pub struct SubArgs {
    /// Topic filters (`+` one level, `#` the rest).
    #[arg(required = true)]
    filters: Vec<String>,
    /// Join this queue group: each message goes to one member.
    #[arg(long)]
    group: Option<String>,
    /// How the group picks a member.
    #[arg(long, value_enum, default_value_t = QueueStrategy::RoundRobin)]
    strategy: QueueStrategy,
    /// Subscribe at QoS 1 (messages are acknowledged as printed).
    #[arg(long, value_enum, default_value_t = QoS::AtMostOnce)]
    qos: QoS,
    /// Queue capacity at the broker (messages); default: the broker's.
    #[arg(long)]
    capacity: Option<u32>,
    /// What the broker does when the queue is full.
    #[arg(long, value_enum)]
    overflow: Option<Overflow>,
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
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// Each payload's bytes as they are, followed by a newline (no topic).
    #[arg(long)]
    raw: bool,
    /// Exit when the connection to the agent is lost, instead of reconnecting and
    /// renewing the subscriptions.
    #[arg(long)]
    no_reconnect: bool,
}

/// `req`.
#[derive(Debug, clap::Args)]
pub struct ReqArgs {
    /// Topic the responder listens on.
    topic: String,
    /// Request payload.
    message: String,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

fn topic_name(topic: &str) -> Result<(), CliError> {
    TopicName::parse(topic)
        .map(drop)
        .map_err(|source| CliError::InvalidTopic {
            topic: topic.to_string(),
            source,
        })
}

/// `sub`: prints each message as it arrives (a QoS1 one is acked once its line is written)
/// until `--count` or `--timeout`.
pub async fn subscribe(socket: Option<&Path>, args: SubArgs) -> Result<(), CliError> {
    for f in &args.filters {
        TopicFilter::parse(f).map_err(|source| CliError::InvalidFilter {
            filter: f.clone(),
            source,
        })?;
    }
    if let Some(g) = &args.group {
        daemoneye_proto::frame::validate_name("--group", g)?;
    }
    let client = if args.no_reconnect {
        connect(socket, "daemoneye-cli").await?
    } else {
        connect_reconnecting(socket, "daemoneye-cli").await?
    };
    let mut notices = client.notices();
    let specs: Vec<Subscribe> = args
        .filters
        .iter()
        .map(|f| Subscribe {
            qos: args.qos,
            capacity: args.capacity,
            overflow: args.overflow,
            durable_name: args.durable.clone(),
            group: args.group.clone().map(|name| GroupSpec {
                name,
                strategy: args.strategy,
            }),
            ..Subscribe::new(f)
        })
        .collect();
    // One stream over every filter: nothing is read ahead of what is printed, and a
    // QoS1 message is acked only once its line is written.
    let mut sub = client.subscribe_all(specs, AckMode::Manual).await?;
    let filters: Vec<(u64, String)> = sub.ids().iter().copied().zip(args.filters).collect();
    eprintln!("subscribed");
    let deadline = args
        .timeout
        .map(seconds)
        .transpose()?
        .map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    while args.count.is_none_or(|c| seen < c) {
        let until = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            m = sub.recv() => m,
            Some(n) = notices.recv() => {
                eprintln!("{}", notice_line(&n, &filters, args.no_reconnect));
                continue;
            }
            () = until => break,
        };
        let Some(mut d) = next else {
            // Gone for good: first say why.
            while let Ok(n) = notices.try_recv() {
                eprintln!("{}", notice_line(&n, &filters, args.no_reconnect));
            }
            return Err(CliError::Closed);
        };
        seen += 1;
        let mut out = stdout.lock();
        if args.json {
            serde_json::to_writer(&mut out, &MessageJson::from(&*d))?;
            writeln!(out)?;
        } else if args.raw {
            out.write_all(&d.payload)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{} {}", d.topic, payload_text(&d.payload))?;
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

/// A notice about the connection or a subscription, for stderr.
fn notice_line(notice: &Notice, filters: &[(u64, String)], no_reconnect: bool) -> String {
    match notice {
        Notice::Connected { .. } => "reconnected; renewing the subscriptions".to_string(),
        Notice::Disconnected { reason } if no_reconnect => format!("connection lost: {reason}"),
        Notice::Disconnected { reason } => format!("connection lost: {reason}; reconnecting"),
        Notice::Dropped {
            sub_id,
            count,
            total,
        } => {
            let filter = filters
                .iter()
                .find(|(id, _)| id == sub_id)
                .map_or("?", |(_, f)| f.as_str());
            format!(
                "dropped: {count} message(s) for {filter} lost to the queue's overflow \
                 strategy ({total} in all)"
            )
        }
    }
}

/// Bytes of a binary payload shown in text mode.
const PREVIEW_BYTES: usize = 32;

/// A payload on one line: printable UTF-8 text as it is; anything else (binary, control
/// characters, line breaks) as a short base64 preview and its size.
fn payload_text(payload: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\t') => text.into(),
        _ => {
            let shown = &payload[..payload.len().min(PREVIEW_BYTES)];
            let more = if payload.len() > PREVIEW_BYTES {
                "..."
            } else {
                ""
            };
            format!(
                "base64:{}{more} ({} bytes)",
                base64::engine::general_purpose::STANDARD.encode(shown),
                payload.len()
            )
            .into()
        }
    }
}

/// `req`: prints the first reply's payload.
pub async fn request(socket: Option<&Path>, args: ReqArgs) -> Result<(), CliError> {
    topic_name(&args.topic)?;
    let client = connect(socket, "daemoneye-cli").await?;
    let request = Publish::new(
        &args.topic,
        Bytes::from(args.message.into_bytes()),
        QoS::AtLeastOnce,
    );
    let reply = match client.request(request, seconds(args.timeout)?).await {
        Ok(reply) => reply,
        Err(source @ ClientError::NoResponders { .. }) => {
            let hint = no_responders_hint(&client, &args.topic, args.timeout).await;
            return Err(CliError::NoResponders { source, hint });
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", String::from_utf8_lossy(&reply.payload));
    client.close().await;
    Ok(())
}

/// Why nobody may have answered: the agent started only moments ago (its own responders
/// may not be up yet), or, for a user topic, that nothing runs `reply` on it.
async fn no_responders_hint(client: &Client, topic: &str, waited: f64) -> Option<String> {
    let uptime_ms = broker_stats(client).await.ok()?.uptime_ms;
    let uptime = uptime_ms as f64 / 1000.0;
    if uptime < waited + STARTING_SECS {
        Some(format!(
            "the agent started {uptime:.1} s ago: is it still starting?"
        ))
    } else if topic.starts_with("control.") || topic.starts_with('$') {
        None
    } else {
        Some(format!(
            "is a responder running? e.g. `daemoneye-cli reply {topic} --echo`"
        ))
    }
}

/// An agent younger than this (beyond the request's own wait) may still be starting.
const STARTING_SECS: f64 = 2.0;

/// One line of `sub --json`.
#[derive(Debug, Serialize)]
struct MessageJson<'a> {
    topic: &'a str,
    qos: u8,
    publisher_id: &'a str,
    sequence: u64,
    redelivered: bool,
    /// The payload when it is UTF-8 text...
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    /// ...else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    /// The payload decoded, when its topic names a DaemonEye message.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<serde_json::Value>,
}

impl<'a> From<&'a Deliver> for MessageJson<'a> {
    fn from(d: &'a Deliver) -> Self {
        let text = std::str::from_utf8(&d.payload).ok();
        MessageJson {
            topic: &d.topic,
            qos: d.qos.level(),
            publisher_id: &d.publisher_id,
            sequence: d.sequence,
            redelivered: d.redelivered,
            payload: text,
            payload_b64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(&d.payload)),
            },
            correlation_id: d.correlation.as_ref().map(|c| c.correlation_id.as_str()),
            reply_to: d.reply_to.as_deref(),
            event: daemoneye_io::decode::decode_payload(&d.topic, &d.payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn every_protocol_name_is_accepted_where_a_flag_takes_it() {
        let parses = |args: &[&str]| {
            crate::Cli::try_parse_from([&["daemoneye-cli"], args].concat())
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        for o in Overflow::ALL {
            parses(&["sub", "t", "--overflow", o.as_str()]);
        }
        for q in QueueStrategy::ALL {
            parses(&["sub", "t", "--group", "g", "--strategy", q.as_str()]);
        }
        for q in QoS::ALL {
            parses(&["sub", "t", "--qos", q.as_str()]);
            parses(&["pub", "t", "m", "--qos", q.as_str()]);
        }
        let crate::Command::Sub(sub) = parses(&[
            "sub",
            "t",
            "--strategy",
            "least-loaded",
            "--overflow",
            "drop-newest",
            "--qos",
            "1",
        ])
        .command
        else {
            panic!("not sub");
        };
        assert_eq!(
            (sub.strategy, sub.overflow, sub.qos),
            (
                QueueStrategy::LeastLoaded,
                Some(Overflow::DropNewest),
                QoS::AtLeastOnce
            )
        );
        assert!(crate::Cli::try_parse_from(["daemoneye-cli", "sub", "t", "--qos", "2"]).is_err());
        assert!(
            crate::Cli::try_parse_from(["daemoneye-cli", "sub", "t", "--overflow", "drop"])
                .is_err()
        );
    }

    fn deliver(payload: &'static [u8]) -> Deliver {
        Deliver {
            sub_id: 1,
            delivery_id: 0,
            topic: "a.b".into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            publisher_id: "p".into(),
            sequence: 7,
            correlation: None,
            reply_to: Some("r".into()),
            priority: 0,
            redelivered: false,
            publisher_pid: None,
            publisher_uid: 0,
        }
    }

    #[test]
    fn a_text_line_shows_printable_text_and_previews_anything_else() {
        assert_eq!(payload_text(b"pid=42\tok"), "pid=42\tok");
        assert_eq!(payload_text(&[0xff, 0, 0xfe]), "base64:/wD+ (3 bytes)");
        assert_eq!(payload_text(b"two\nlines"), "base64:dHdvCmxpbmVz (9 bytes)");
        let long = payload_text(&[0u8; 100]);
        assert!(
            long.starts_with("base64:AAAA") && long.ends_with("... (100 bytes)"),
            "{long}"
        );
    }

    #[test]
    fn a_message_line_has_text_or_base64_and_only_the_metadata_present() {
        let text = serde_json::to_value(MessageJson::from(&deliver(b"hi"))).expect("json");
        assert_eq!(
            text,
            serde_json::json!({"topic": "a.b", "qos": 1, "publisher_id": "p", "sequence": 7,
                               "redelivered": false, "payload": "hi", "reply_to": "r"})
        );
        let binary =
            serde_json::to_value(MessageJson::from(&deliver(&[0xff, 0, 0xfe]))).expect("json");
        assert_eq!(binary["payload_b64"], "/wD+");
        assert!(binary.get("payload").is_none() && binary.get("correlation_id").is_none());
    }
}
