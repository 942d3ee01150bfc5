//! `alerts list` and `alerts follow`: the alerts the agent's detection raised.
//!
//! An alert may be published more than once under its `alert_id`: the raise (count 1), a
//! fold update with the final count when the window closes, and an enriched version on
//! `alerts.enriched.<level>`. `list` merges them into one record per alert (the highest
//! count, the latest time, the enrichment once it arrived); `follow` shows each message as
//! it comes, marked as an update or enriched. `--level L` means L or above.
//!
//! `list` reads the event store like `events query` does (through the agent, or the file
//! with `--database` or when no agent runs), with the topic filter `alerts.#`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use daemoneye_io::client::{AckMode, Notice};
use daemoneye_io::config::LEVELS;
use daemoneye_io::decode;
use daemoneye_io::detect::mapping::shell_join;
use daemoneye_proto::frame::{Overflow, Subscribe};
use daemoneye_proto::pb::events::Alert;
use daemoneye_proto::pb::store::{EventQuery, StoredEvent};
use prost::Message;
use serde_json::{Value, json};

use crate::connection::{connect, seconds};
use crate::error::CliError;
use crate::events::{fetch, parse_when, time_text};

/// The filter of every alert topic, enriched ones included.
const ALERTS: &str = "alerts.#";
/// What `follow` buffers at the broker before the oldest is dropped (and said): a slow
/// terminal must not hold back detection.
const FOLLOW_CAPACITY: u32 = 10_000;

/// `alerts ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AlertsCommand {
    /// Alerts kept by the agent, oldest first, one record per alert (a fold's final count
    /// and the enrichment merged in): time, level, rule title, pid, exe, command line,
    /// count; or one JSON object each with --json.
    List(ListArgs),
    /// Alerts as the agent raises them, with their fold updates and enrichment as they
    /// come, until interrupted (or --count, --timeout).
    Follow(FollowArgs),
}

/// `alerts list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Alerts raised since WHEN: a duration ago (`10m`, `1h`, `7d`) or a time
    /// (`2026-12-01T05:00:00Z`); default: the oldest kept.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only alerts at this level or above.
    #[arg(long, value_name = "LEVEL", value_parser = clap::builder::PossibleValuesParser::new(LEVELS))]
    level: Option<String>,
    /// Only alerts of this rule id.
    #[arg(long, value_name = "ID")]
    rule: Option<String>,
    /// Most alerts printed (the latest); 0 for all.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per alert.
    #[arg(long)]
    json: bool,
    /// Read this store file directly instead of asking the agent.
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    /// Seconds to wait for each of the agent's answers.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// `alerts follow`.
#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// Only alerts at this level or above.
    #[arg(long, value_name = "LEVEL", value_parser = clap::builder::PossibleValuesParser::new(LEVELS))]
    level: Option<String>,
    /// One JSON object per message (`update` or `enriched` true for a later version).
    #[arg(long)]
    json: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds (a normal exit).
    #[arg(long)]
    timeout: Option<f64>,
}

/// Runs an `alerts` command.
pub async fn run(socket: Option<&Path>, command: AlertsCommand) -> Result<(), CliError> {
    match command {
        AlertsCommand::List(args) => list(socket, args).await,
        AlertsCommand::Follow(args) => follow(socket, args).await,
    }
}

/// Where a level stands (`None`: not a level this version knows, shown anyway).
fn rank(level: &str) -> Option<usize> {
    LEVELS.iter().position(|l| *l == level)
}

/// Whether `alert` passes `--level`.
fn at_or_above(alert: &Alert, level: Option<&str>) -> bool {
    let Some(min) = level.and_then(rank) else {
        return true;
    };
    rank(&alert.level).is_none_or(|r| r >= min)
}

/// Alerts merged by id, in the order they were first seen.
#[derive(Debug, Default)]
struct Merged {
    alerts: Vec<Alert>,
    by_id: HashMap<String, usize>,
}

impl Merged {
    fn add(&mut self, alert: Alert) {
        match self.by_id.get(&alert.alert_id) {
            Some(&i) => merge(&mut self.alerts[i], alert),
            None => {
                self.by_id.insert(alert.alert_id.clone(), self.alerts.len());
                self.alerts.push(Alert {
                    update: false,
                    ..alert
                });
            }
        }
    }
}

/// Folds a later version of an alert into what is held: the higher count, the later last
/// match, the enrichment.
fn merge(held: &mut Alert, later: Alert) {
    held.count = held.count.max(later.count);
    held.last_ms = held.last_ms.max(later.last_ms);
    if later.enriched {
        held.enriched = true;
        held.enrichment = later.enrichment;
    }
}

async fn list(socket: Option<&Path>, args: ListArgs) -> Result<(), CliError> {
    let since = args
        .since
        .as_deref()
        .map(|w| parse_when("--since", w, SystemTime::now()))
        .transpose()?;
    let query = EventQuery {
        since_ms: since.unwrap_or(0),
        topic_filter: ALERTS.into(),
        limit: 0,
        ..Default::default()
    };
    let mut merged = Merged::default();
    let mut malformed = 0;
    let mut take = |e: &StoredEvent| {
        match Alert::decode(e.payload.clone()) {
            Ok(a) => merged.add(a),
            Err(_) => malformed += 1,
        }
        Ok(())
    };
    let timeout = seconds(args.timeout)?;
    fetch(
        socket,
        args.database.as_deref(),
        &query,
        timeout,
        "alerts",
        &mut take,
    )
    .await?;
    if malformed > 0 {
        eprintln!("{malformed} message(s) on alerts topics are not alerts: left out");
    }
    let mut alerts: Vec<Alert> = merged
        .alerts
        .into_iter()
        .filter(|a| at_or_above(a, args.level.as_deref()))
        .filter(|a| args.rule.as_ref().is_none_or(|r| &a.rule_id == r))
        .collect();
    alerts.sort_by_key(|a| a.time_ms);
    let skip = match args.limit {
        0 => 0,
        n => alerts.len().saturating_sub(n),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for a in &alerts[skip..] {
        print(&mut out, a, args.json)?;
    }
    out.flush()?;
    if skip > 0 {
        eprintln!("{skip} older alert(s) left out: raise --limit (0 for all) or narrow the query");
    }
    Ok(())
}

async fn follow(socket: Option<&Path>, args: FollowArgs) -> Result<(), CliError> {
    let deadline = args
        .timeout
        .map(seconds)
        .transpose()?
        .map(|t| tokio::time::Instant::now() + t);
    let client = connect(socket, "daemoneye-cli").await?;
    let mut notices = client.notices();
    let spec = Subscribe {
        capacity: Some(FOLLOW_CAPACITY),
        overflow: Some(Overflow::DropOldest),
        ..Subscribe::new(ALERTS)
    };
    let mut sub = client.subscribe_with(spec, AckMode::OnHandOver).await?;
    eprintln!("following alerts (subscribed)");
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut shown = 0;
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    while args.count.is_none_or(|n| shown < n) {
        tokio::select! {
            () = &mut until => break,
            n = notices.recv() => {
                if let Some(Notice::Dropped { count, .. }) = n {
                    eprintln!("dropped: {count} alert message(s) lost while this terminal was behind");
                }
            }
            d = sub.recv() => {
                let Some(d) = d else { return Err(CliError::Closed) };
                let Ok(alert) = Alert::decode(d.payload.clone()) else {
                    continue;
                };
                if !at_or_above(&alert, args.level.as_deref()) {
                    continue;
                }
                print(&mut out, &alert, args.json)?;
                out.flush()?;
                shown += 1;
            }
        }
    }
    client.close().await;
    Ok(())
}

fn print(out: &mut impl Write, a: &Alert, json: bool) -> Result<(), CliError> {
    if json {
        let mut obj = decode::alert(a);
        obj.insert("time".into(), json!(time_text(a.time_ms)));
        serde_json::to_writer(&mut *out, &Value::Object(obj))?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", alert_line(a))?;
    }
    Ok(())
}

/// An alert's human line: time, level, rule title, pid, exe, command line, count, and
/// what is known of its enrichment.
fn alert_line(a: &Alert) -> String {
    let process = a.event.as_ref().and_then(|e| e.process.as_ref());
    let (pid, exe, cmd) = process.map_or((0, "-".to_string(), String::new()), |p| {
        let exe = if p.exe.is_empty() { "-" } else { &p.exe };
        (p.pid, exe.to_string(), shell_join(&p.cmdline))
    });
    let mut line = format!(
        "{} {:<8} {}  pid={pid} exe={exe} cmd={cmd} count={}",
        time_text(a.time_ms),
        a.level,
        a.title,
        a.count
    );
    if a.count > 1 {
        line.push_str(&format!(" last={}", time_text(a.last_ms)));
    }
    if a.enriched {
        let kinds = |arrived: bool| {
            a.enrichment
                .iter()
                .filter(|e| e.arrived == arrived)
                .map(|e| e.kind.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let (got, missing) = (kinds(true), kinds(false));
        line.push_str(&format!(
            " enriched={}",
            if got.is_empty() { "-" } else { &got }
        ));
        if !missing.is_empty() {
            line.push_str(&format!(" missing={missing}"));
        }
    }
    if a.update {
        line.push_str(" (update)");
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use daemoneye_proto::pb::events::{Enrichment, ProcessEvent, ProcessInfo};

    fn alert(id: &str, level: &str, count: u64) -> Alert {
        Alert {
            alert_id: id.into(),
            rule_id: "r1".into(),
            title: "Decoded data piped to a shell".into(),
            level: level.into(),
            time_ms: 86_400_000,
            last_ms: 86_400_000,
            count,
            event: Some(ProcessEvent {
                process: Some(ProcessInfo {
                    pid: 42,
                    exe: "/usr/bin/bash".into(),
                    cmdline: vec![
                        "bash".into(),
                        "-c".into(),
                        "echo aGk= | base64 -d | sh".into(),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn versions_of_one_alert_merge_into_one_record_with_its_count_and_enrichment() {
        let mut m = Merged::default();
        m.add(alert("a", "high", 1));
        m.add(alert("b", "low", 1));
        m.add(Alert {
            update: true,
            last_ms: 86_460_000,
            ..alert("a", "high", 50)
        });
        m.add(Alert {
            enriched: true,
            enrichment: vec![
                Enrichment {
                    kind: "hash".into(),
                    arrived: true,
                    ok: true,
                    ..Default::default()
                },
                Enrichment {
                    kind: "open_files".into(),
                    ..Default::default()
                },
            ],
            ..alert("a", "high", 1)
        });
        assert_eq!(m.alerts.len(), 2);
        let a = &m.alerts[0];
        assert_eq!(
            (a.count, a.last_ms, a.enriched, a.update),
            (50, 86_460_000, true, false)
        );
        assert_eq!(
            alert_line(a),
            "1970-01-02T00:00:00.000Z high     Decoded data piped to a shell  pid=42 \
             exe=/usr/bin/bash cmd=bash -c 'echo aGk= | base64 -d | sh' count=50 \
             last=1970-01-02T00:01:00.000Z enriched=hash missing=open_files"
        );
    }

    #[test]
    fn a_level_means_that_level_or_above() {
        assert!(at_or_above(&alert("a", "critical", 1), Some("high")));
        assert!(at_or_above(&alert("a", "high", 1), Some("high")));
        assert!(!at_or_above(&alert("a", "medium", 1), Some("high")));
        assert!(at_or_above(&alert("a", "low", 1), None));
    }
}
