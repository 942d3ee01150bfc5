//! `detection status` and `detection reload`: the agent's rule files and its engine's
//! counters (`control.detection.status`), and loading the rules again
//! (`control.detection.reload`, what SIGHUP to the agent does too).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::topic::topics;
use daemoneye_io::client::ClientError;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::control::{
    DetectionReload, DetectionReloadResponse, DetectionStatus, DetectionStatusRequest, HealthState,
    RuleState, RuleStatus,
};
use prost::Message;
use serde_json::{Value, json};

use crate::connection::{connect, seconds};
use crate::error::CliError;
use crate::events::time_text;

/// `detection ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DetectionCommand {
    /// Every rule file the agent loaded: active, inactive (nothing collects its
    /// logsource) or refused, with the reason and its matches; then the totals.
    Status(StatusArgs),
    /// Load the rules again (the shipped set and the configured directories) and swap them
    /// in without dropping events; prints the new status's totals and each refused file.
    Reload(ReloadArgs),
}

/// `detection status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The status as one JSON object.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the agent's answer.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// `detection reload`.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The new status as one JSON object.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the agent's answer (loading many rules takes a while).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// Runs a `detection` command.
pub async fn run(socket: Option<&Path>, command: DetectionCommand) -> Result<(), CliError> {
    match command {
        DetectionCommand::Status(args) => {
            let payload = DetectionStatusRequest {}.encode_to_vec();
            let reply = ask(
                socket,
                topics::DETECTION_STATUS,
                payload,
                seconds(args.timeout)?,
            )
            .await?;
            let status =
                DetectionStatus::decode(reply).map_err(|source| CliError::MalformedReply {
                    what: "detection status",
                    source,
                })?;
            show(&status, args.json, true)
        }
        DetectionCommand::Reload(args) => {
            let payload = DetectionReload {}.encode_to_vec();
            let reply = ask(
                socket,
                topics::DETECTION_RELOAD,
                payload,
                seconds(args.timeout)?,
            )
            .await?;
            let answer = DetectionReloadResponse::decode(reply).map_err(|source| {
                CliError::MalformedReply {
                    what: "detection reload",
                    source,
                }
            })?;
            if !answer.error.is_empty() {
                return Err(CliError::Refused(answer.error));
            }
            let status = answer.status.unwrap_or_default();
            if !args.json {
                eprintln!("rules reloaded");
            }
            show(&status, args.json, false)
        }
    }
}

async fn ask(
    socket: Option<&Path>,
    topic: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, CliError> {
    let client = connect(socket, "daemoneye-cli").await?;
    let request = Publish::new(topic, Bytes::from(payload), QoS::AtLeastOnce);
    let reply = match client.request(request, timeout).await {
        Ok(r) => r,
        Err(e @ ClientError::NoResponders { .. }) => {
            return Err(CliError::NoResponders {
                source: e,
                hint: Some("is this agent's version without detection?".into()),
            });
        }
        Err(e) => return Err(e.into()),
    };
    client.close().await;
    Ok(reply.payload)
}

fn state_name(state: i32) -> &'static str {
    match RuleState::try_from(state) {
        Ok(RuleState::Active) => "active",
        Ok(RuleState::Inactive) => "inactive",
        Ok(RuleState::Refused) => "refused",
        Ok(RuleState::Unspecified) | Err(_) => "unknown",
    }
}

pub(crate) fn health_name(state: i32) -> &'static str {
    match HealthState::try_from(state) {
        Ok(HealthState::Healthy) => "healthy",
        Ok(HealthState::Degraded) => "degraded",
        Ok(HealthState::Unhealthy) => "unhealthy",
        Ok(HealthState::Unspecified) | Err(_) => "unknown",
    }
}

fn count(rules: &[RuleStatus], state: RuleState) -> usize {
    rules.iter().filter(|r| r.state == state as i32).count()
}

/// The totals line.
fn totals(s: &DetectionStatus) -> String {
    if !s.enabled {
        return "detection is disabled in the agent's config".into();
    }
    format!(
        "{} rules: {} active, {} inactive, {} refused; {} events evaluated, {} alerts raised, \
         {} matches folded; {}, loaded {}, engine {}",
        s.rules.len(),
        count(&s.rules, RuleState::Active),
        count(&s.rules, RuleState::Inactive),
        count(&s.rules, RuleState::Refused),
        s.events_evaluated,
        s.alerts_raised,
        s.matches_folded,
        health_name(s.health),
        time_text(s.loaded_ms),
        s.engine
    )
}

fn show(s: &DetectionStatus, as_json: bool, table: bool) -> Result<(), CliError> {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if as_json {
        serde_json::to_writer(&mut out, &status_json(s))?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let rows: Vec<&RuleStatus> = s
        .rules
        .iter()
        .filter(|r| table || r.state == RuleState::Refused as i32)
        .collect();
    if !rows.is_empty() {
        let width = rows.iter().map(|r| r.file.len()).max().unwrap_or(4).max(4);
        writeln!(
            out,
            "{:<width$}  {:<8}  {:>7}  REASON",
            "FILE", "STATE", "MATCHES"
        )?;
        for r in rows {
            let reason = if r.reason.is_empty() { "-" } else { &r.reason };
            writeln!(
                out,
                "{:<width$}  {:<8}  {:>7}  {reason}",
                r.file,
                state_name(r.state),
                r.matches
            )?;
        }
    }
    writeln!(out, "{}", totals(s))?;
    out.flush()?;
    Ok(())
}

fn status_json(s: &DetectionStatus) -> Value {
    let rules: Vec<Value> = s
        .rules
        .iter()
        .map(|r| {
            json!({
                "file": r.file, "rule_id": r.rule_id, "title": r.title, "level": r.level,
                "state": state_name(r.state), "reason": r.reason, "matches": r.matches,
                "logsource": r.logsource,
            })
        })
        .collect();
    json!({
        "enabled": s.enabled,
        "rules": rules,
        "active": count(&s.rules, RuleState::Active),
        "inactive": count(&s.rules, RuleState::Inactive),
        "refused": count(&s.rules, RuleState::Refused),
        "events_evaluated": s.events_evaluated,
        "alerts_raised": s.alerts_raised,
        "matches_folded": s.matches_folded,
        "loaded_ms": s.loaded_ms,
        "directories": s.directories,
        "health": health_name(s.health),
        "engine": s.engine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_count_each_state_and_say_when_detection_is_off() {
        let rule = |state: RuleState| RuleStatus {
            file: "x.yml".into(),
            state: state as i32,
            ..Default::default()
        };
        let s = DetectionStatus {
            enabled: true,
            rules: vec![
                rule(RuleState::Active),
                rule(RuleState::Active),
                rule(RuleState::Refused),
            ],
            events_evaluated: 9,
            alerts_raised: 2,
            matches_folded: 5,
            health: HealthState::Degraded as i32,
            engine: "e".into(),
            ..Default::default()
        };
        assert!(
            totals(&s).starts_with(
                "3 rules: 2 active, 0 inactive, 1 refused; 9 events evaluated, 2 alerts raised, \
                 5 matches folded; degraded"
            ),
            "{}",
            totals(&s)
        );
        let off = DetectionStatus::default();
        assert_eq!(totals(&off), "detection is disabled in the agent's config");
        assert_eq!(status_json(&s)["refused"], 1);
    }
}
