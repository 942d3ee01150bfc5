//! `collectors list|start|stop|restart|pause|resume`: the agent's process manager, over
//! the lifecycle RPC topic; `collectors config NAME`: an UpdateConfig to the collector
//! itself, on `control.collector.config.<NAME>`, answered by its runtime.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::registry::SourceCaps;
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::control as pbc;
use prost::Message as _;
use serde::Serialize;

use crate::connection::connect;
use crate::error::CliError;

/// The `collectors` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CollectorsCommand {
    /// Name, state, pid, uptime, restarts, last heartbeat's age, capabilities, last exit.
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
    /// Change a running collector's settings without a restart (UpdateConfig).
    Config(ConfigArgs),
}

/// `collectors config NAME [--interval S] [--max-events-in-flight N] [--compute-hashes B]`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The collector (its id: the `[[collectors]]` name).
    pub name: String,
    /// Seconds between two rounds of collection (5 to 3600).
    #[arg(long, value_name = "S")]
    pub interval: Option<u64>,
    /// Most events held waiting for the broker (at least 1).
    #[arg(long, value_name = "N")]
    pub max_events_in_flight: Option<u64>,
    /// Hash executables.
    #[arg(long, value_name = "BOOL")]
    pub compute_hashes: Option<bool>,
}

/// The bounds `collectors config` checks before sending.
const INTERVAL_SECS: std::ops::RangeInclusive<u64> = 5..=3600;

impl ConfigArgs {
    /// The UpdateConfig it asks for, or a one-line refusal.
    fn update(&self) -> Result<pbc::UpdateConfig, CliError> {
        let interval_secs = match self.interval {
            None => 0,
            Some(s) if INTERVAL_SECS.contains(&s) => s as u32,
            Some(s) => {
                return Err(CliError::Refused(format!(
                    "--interval {s} is out of range: 5 to 3600 seconds"
                )));
            }
        };
        let max_events_in_flight = match self.max_events_in_flight {
            None => 0,
            Some(n @ 1..=0xFFFF_FFFF) => n as u32,
            Some(n) => {
                return Err(CliError::Refused(format!(
                    "--max-events-in-flight {n} is out of range: 1 to 4294967295"
                )));
            }
        };
        if interval_secs == 0 && max_events_in_flight == 0 && self.compute_hashes.is_none() {
            return Err(CliError::Refused(
                "nothing to change: give --interval, --max-events-in-flight or --compute-hashes"
                    .into(),
            ));
        }
        Ok(pbc::UpdateConfig {
            interval_secs,
            max_events_in_flight,
            compute_hashes: self.compute_hashes,
        })
    }
}

/// Sends an UpdateConfig to the collector and prints its answer.
async fn configure(socket: Option<&Path>, args: ConfigArgs) -> Result<(), CliError> {
    let update = args.update()?;
    daemoneye_proto::frame::validate_name("collector name", &args.name)?;
    let client = connect(socket, "daemoneye-cli").await?;
    let command = pbc::CollectorControl {
        command: Some(pbc::collector_control::Command::UpdateConfig(update)),
    };
    let publish = Publish::new(
        topics::config(&args.name),
        Bytes::from(command.encode_to_vec()),
        QoS::AtLeastOnce,
    );
    let reply = client
        .request(publish, Duration::from_secs(5))
        .await
        .map_err(|e| match e {
            daemoneye_io::client::ClientError::NoResponders { .. } => CliError::Refused(format!(
                "collector {} is not running (or not built on the collector runtime)",
                args.name
            )),
            other => CliError::Client(other),
        })?;
    client.close().await;
    let answer =
        pbc::TaskResult::decode(reply.payload).map_err(|source| CliError::MalformedReply {
            what: "collector config",
            source,
        })?;
    if !answer.ok {
        return Err(CliError::Refused(format!(
            "{}: {}",
            args.name, answer.message
        )));
    }
    println!("{}: {}", args.name, answer.message);
    Ok(())
}

impl CollectorsCommand {
    /// The lifecycle request this command sends, and whether it wants JSON.
    fn request(self) -> (pbc::LifecycleOp, String, bool) {
        use pbc::LifecycleOp as Op;
        match self {
            // Not a lifecycle request: `run` sends it to the collector instead.
            CollectorsCommand::Config(args) => (Op::Unspecified, args.name, false),
            CollectorsCommand::List { json } => (Op::Status, String::new(), json),
            CollectorsCommand::Start { name } => (Op::Start, name, false),
            CollectorsCommand::Stop { name } => (Op::Stop, name, false),
            CollectorsCommand::Restart { name } => (Op::Restart, name, false),
            CollectorsCommand::Pause { name } => (Op::Pause, name, false),
            CollectorsCommand::Resume { name } => (Op::Resume, name, false),
        }
    }
}

/// Sends the command's lifecycle request and prints the answer: the list, or the one
/// collector the operation touched.
pub async fn run(socket: Option<&Path>, command: CollectorsCommand) -> Result<(), CliError> {
    if let CollectorsCommand::Config(args) = command {
        return configure(socket, args).await;
    }
    let (op, name, json) = command.request();
    let client = connect(socket, "daemoneye-cli").await?;
    let request = pbc::LifecycleRequest {
        op: op as i32,
        name,
    };
    let publish = Publish::new(
        topics::LIFECYCLE,
        Bytes::from(request.encode_to_vec()),
        QoS::AtLeastOnce,
    );
    let reply = client
        .request(publish, Duration::from_secs(5))
        .await
        .map_err(CliError::NoLifecycleAnswer)?;
    let r = pbc::LifecycleResponse::decode(reply.payload).map_err(|source| {
        CliError::MalformedReply {
            what: "lifecycle",
            source,
        }
    })?;
    client.close().await;
    if r.error != 0 {
        return Err(CliError::Refused(r.message));
    }
    if json {
        let list: Vec<_> = r.collectors.iter().map(CollectorJson::from).collect();
        println!("{}", serde_json::to_string(&list)?);
    } else if op == pbc::LifecycleOp::Status {
        print_table(&r.collectors);
    } else if let Some(c) = r.collectors.first() {
        println!("{} {} (pid {})", c.name, c.state, c.pid);
    }
    Ok(())
}

/// One collector in `collectors list --json` and `health --json`.
#[derive(Debug, Serialize)]
pub struct CollectorJson<'a> {
    name: &'a str,
    state: &'a str,
    /// `null` when it has no process.
    pid: Option<u32>,
    /// How long its current run has lasted; `null` when it is not running here.
    uptime_ms: Option<u64>,
    restarts: u32,
    /// Unix milliseconds of its last registration or heartbeat; `null` when none.
    last_heartbeat_ms: Option<u64>,
    /// How long ago that was; `null` when none.
    last_heartbeat_age_ms: Option<u64>,
    /// What it declared when it registered, by name.
    capabilities: Vec<String>,
    last_exit: &'a str,
    /// From its last heartbeat: its own health (`healthy`, `degraded`, `unhealthy`;
    /// `unknown` before the first).
    health: &'static str,
    /// From its last heartbeat: how it collects, one line.
    detail: &'a str,
    /// From its last heartbeat: events published and dropped since it started, events
    /// waiting, and its last error (empty when none).
    events_published: u64,
    events_dropped: u64,
    queue_depth: u64,
    last_error: &'a str,
}

fn nonzero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

/// Milliseconds since the Unix epoch by this host's clock.
impl<'a> From<&'a pbc::CollectorStatus> for CollectorJson<'a> {
    fn from(c: &'a pbc::CollectorStatus) -> Self {
        let heartbeat = nonzero(c.last_heartbeat_ms);
        CollectorJson {
            name: &c.name,
            state: &c.state,
            pid: (c.pid != 0).then_some(c.pid),
            uptime_ms: nonzero(c.uptime_ms),
            restarts: c.restarts,
            last_heartbeat_ms: heartbeat,
            last_heartbeat_age_ms: heartbeat
                .map(|at| daemoneye_io::clock::unix_ms().saturating_sub(at)),
            capabilities: SourceCaps::from_bits_retain(c.capabilities).names(),
            last_exit: &c.health,
            health: crate::detection::health_name(c.reported_health),
            detail: &c.detail,
            events_published: c.events_published,
            events_dropped: c.events_dropped,
            queue_depth: c.queue_depth,
            last_error: &c.last_error,
        }
    }
}

/// A duration for a table cell: `850ms`, `12.3s`, `4m05s`, `3h07m`, `2d05h`.
fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The collectors as a table: name, state, pid, uptime, restarts, last heartbeat's age,
/// capabilities, events, drops, last exit, and how it collects.
pub fn print_table(list: &[pbc::CollectorStatus]) {
    println!(
        "{:<20} {:<10} {:>8} {:>8} {:>8} {:>10}  {:<24} {:>10} {:>8}  {:<16} detail",
        "name",
        "state",
        "pid",
        "uptime",
        "restarts",
        "heartbeat",
        "capabilities",
        "events",
        "drops",
        "last exit"
    );
    for c in list {
        let j = CollectorJson::from(c);
        let dash = || "-".to_string();
        let caps = if j.capabilities.is_empty() {
            dash()
        } else {
            j.capabilities.join(",")
        };
        println!(
            "{:<20} {:<10} {:>8} {:>8} {:>8} {:>10}  {:<24} {:>10} {:>8}  {:<16} {}",
            c.name,
            c.state,
            j.pid.map_or_else(dash, |p| p.to_string()),
            j.uptime_ms.map_or_else(dash, short_duration),
            c.restarts,
            j.last_heartbeat_age_ms
                .map_or_else(dash, |age| format!("{} ago", short_duration(age))),
            caps,
            c.events_published,
            c.events_dropped,
            if c.health.is_empty() { "-" } else { &c.health },
            match (j.health, c.detail.is_empty()) {
                ("degraded" | "unhealthy", true) => j.health.to_string(),
                ("degraded" | "unhealthy", false) => format!("{}: {}", j.health, c.detail),
                (_, true) => dash(),
                (_, false) => c.detail.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds_are_one_line_refusals_and_good_values_pass() {
        let args = |interval, n| ConfigArgs {
            name: "x".into(),
            interval,
            max_events_in_flight: n,
            compute_hashes: None,
        };
        for (a, needle) in [
            (
                args(Some(4), None),
                "--interval 4 is out of range: 5 to 3600 seconds",
            ),
            (args(Some(3601), None), "--interval 3601"),
            (args(None, Some(0)), "--max-events-in-flight 0"),
            (args(None, None), "nothing to change"),
        ] {
            let e = a.update().expect_err("refused").to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{e}");
        }
        let u = args(Some(10), Some(7)).update().expect("in bounds");
        assert_eq!((u.interval_secs, u.max_events_in_flight), (10, 7));
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(short_duration(850), "850ms");
        assert_eq!(short_duration(12_345), "12.3s");
        assert_eq!(short_duration(245_000), "4m05s");
        assert_eq!(short_duration(3 * 3_600_000 + 7 * 60_000), "3h07m");
        assert_eq!(short_duration(2 * 86_400_000 + 5 * 3_600_000), "2d05h");
    }

    #[test]
    fn a_collector_shows_capability_names_and_null_for_what_it_lacks() {
        let status = pbc::CollectorStatus {
            name: "procmond".into(),
            state: "running".into(),
            pid: 42,
            capabilities: 65,
            uptime_ms: 1500,
            ..Default::default()
        };
        let v = serde_json::to_value(CollectorJson::from(&status)).expect("json");
        assert_eq!(
            v["capabilities"],
            serde_json::json!(["process", "system_wide"])
        );
        assert_eq!(
            (v["pid"].clone(), v["uptime_ms"].clone()),
            (42.into(), 1500.into())
        );
        assert!(v["last_heartbeat_ms"].is_null() && v["last_heartbeat_age_ms"].is_null());
    }
}
