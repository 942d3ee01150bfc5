//! `bridge status`: the agent's NATS bridge (`control.bridge.status`): the server it is
//! connected to, the lag, what waits on disk, what was dropped, and the last error.

use std::path::Path;
use std::time::Duration;

use daemoneye_core::topic::topics;
use daemoneye_proto::frame::QoS;
use daemoneye_proto::pb::control::{BridgeStatus, HealthState};
use prost::Message;
use serde_json::json;

use crate::connection::{ask, connect, seconds};
use crate::error::CliError;

/// `bridge ...`.
#[derive(Debug, clap::Subcommand)]
pub enum BridgeCommand {
    /// The NATS bridge: state, connected server, lag, queued (on disk), dropped, last
    /// error.
    Status(StatusArgs),
}

/// `bridge status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The status as one JSON object.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the agent's answer.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

/// Runs a `bridge` command.
pub async fn run(socket: Option<&Path>, command: BridgeCommand) -> Result<(), CliError> {
    let BridgeCommand::Status(args) = command;
    let client = connect(socket, "daemoneye-cli").await?;
    let timeout: Duration = seconds(args.timeout)?;
    let reply = ask(&client, topics::BRIDGE_STATUS, QoS::AtLeastOnce, timeout).await?;
    client.close().await;
    let s = BridgeStatus::decode(reply.payload).map_err(|source| CliError::MalformedReply {
        what: "bridge status",
        source,
    })?;
    let state = if s.enabled {
        HealthState::try_from(s.state).map_or("unknown", HealthState::as_str)
    } else {
        "disabled"
    };
    if args.json {
        let v = json!({
            "enabled": s.enabled,
            "state": state,
            "server": s.server,
            "host_id": s.host_id,
            "prefix": s.prefix,
            "mode": s.mode,
            "lag_ms": s.lag_ms,
            "queued": s.queued,
            "in_flight": s.in_flight,
            "dropped": s.dropped,
            "dropped_qos0": s.dropped_qos0,
            "exported": s.exported,
            "imported": s.imported,
            "loops_prevented": s.loops_prevented,
            "unmappable": s.unmappable,
            "last_error": s.last_error,
        });
        println!("{v}");
        return Ok(());
    }
    if !s.enabled {
        println!("bridge   disabled (no [bridge.nats] in the agent's config)");
        return Ok(());
    }
    let or_none = |t: &str| {
        if t.is_empty() {
            "-".to_string()
        } else {
            t.to_string()
        }
    };
    println!("bridge   {state}");
    println!("server   {}", or_none(&s.server));
    println!("host     {} (prefix {})", s.host_id, s.prefix);
    println!("mode     {}", or_none(&s.mode));
    println!("lag      {} ms", s.lag_ms);
    println!("queued   {} ({} in flight)", s.queued, s.in_flight);
    println!("dropped  {} QoS1, {} QoS0", s.dropped, s.dropped_qos0);
    println!("exported {}  imported {}", s.exported, s.imported);
    println!("error    {}", or_none(&s.last_error));
    Ok(())
}
