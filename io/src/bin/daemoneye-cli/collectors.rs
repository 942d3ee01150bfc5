//! `collectors list|start|stop|restart|pause|resume`: the agent's process manager, over
//! the lifecycle RPC topic.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
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

impl CollectorsCommand {
    /// The lifecycle request this command sends, and whether it wants JSON.
    fn request(self) -> (pbc::LifecycleOp, String, bool) {
        use pbc::LifecycleOp as Op;
        match self {
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
    pid: u32,
    restarts: u32,
    last_heartbeat_ms: u64,
    capabilities: u32,
    last_exit: &'a str,
}

impl<'a> From<&'a pbc::CollectorStatus> for CollectorJson<'a> {
    fn from(c: &'a pbc::CollectorStatus) -> Self {
        CollectorJson {
            name: &c.name,
            state: &c.state,
            pid: c.pid,
            restarts: c.restarts,
            last_heartbeat_ms: c.last_heartbeat_ms,
            capabilities: c.capabilities,
            last_exit: &c.health,
        }
    }
}

/// The collectors as a table: name, state, pid, restarts, last exit.
pub fn print_table(list: &[pbc::CollectorStatus]) {
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
