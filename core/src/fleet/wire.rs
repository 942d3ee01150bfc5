//! The fleet on the wire: the lifecycle RPC's answers and the agent's health report,
//! built from the machine's state.

use daemoneye_proto::pb::control as pbc;

use super::{AgentHealth, CollectorView, Fleet};
use crate::Instant;
use crate::broker::Health;
use crate::supervisor::LifecycleError;

impl Fleet {
    /// The answer to "list every collector".
    pub fn list_response(&self, now: Instant, unix_ms_at_now: u64) -> pbc::LifecycleResponse {
        pbc::LifecycleResponse {
            error: 0,
            message: self.unknown_refusals().unwrap_or_default(),
            collectors: self.wire_collectors(now, unix_ms_at_now),
        }
    }

    /// The answer to a command for collector `name` that ended with `result` (ask once the
    /// command's outputs are carried out, so that it shows their effect).
    pub fn command_response(
        &self,
        name: &str,
        result: Result<(), LifecycleError>,
        now: Instant,
        unix_ms_at_now: u64,
    ) -> pbc::LifecycleResponse {
        let (error, message) = match result {
            Ok(()) => (0, String::new()),
            Err(e) => (e.code() as i32, e.to_string()),
        };
        pbc::LifecycleResponse {
            error,
            message,
            collectors: self
                .supervised(name)
                .map(|c| c.to_wire(now, unix_ms_at_now))
                .into_iter()
                .collect(),
        }
    }

    /// The agent's health report: the broker's `report` rolled up with the fleet's.
    pub fn health_report(
        &self,
        broker: &pbc::HealthReport,
        now: Instant,
        unix_ms_at_now: u64,
    ) -> pbc::HealthReport {
        let health = self.health(now, broker_health(broker), broker.reasons.clone());
        pbc::HealthReport {
            overall: health.overall_state() as i32,
            broker: broker.broker,
            coordinator: wire_state(health.coordinator) as i32,
            detection: broker.detection,
            bridge: broker.bridge,
            collectors: self.wire_collectors(now, unix_ms_at_now),
            reasons: health.reasons,
        }
    }

    fn wire_collectors(&self, now: Instant, unix_ms_at_now: u64) -> Vec<pbc::CollectorStatus> {
        self.collectors()
            .iter()
            .map(|c| c.to_wire(now, unix_ms_at_now))
            .collect()
    }
}

impl CollectorView {
    /// As the lifecycle RPC and the health report carry it. The last heartbeat is shown in
    /// Unix milliseconds: `unix_ms_at_now` is the wall clock at `now`.
    pub fn to_wire(&self, now: Instant, unix_ms_at_now: u64) -> pbc::CollectorStatus {
        let last_heartbeat_ms = self.last_heartbeat.map_or(0, |at| {
            let ago = u64::try_from(now.saturating_since(at).as_millis()).unwrap_or(u64::MAX);
            unix_ms_at_now.saturating_sub(ago)
        });
        let report = self.report.clone().unwrap_or_default();
        pbc::CollectorStatus {
            name: self.name.clone(),
            state: self.state.as_str().to_string(),
            pid: self.pid.unwrap_or(0),
            restarts: self.restarts,
            last_heartbeat_ms,
            capabilities: self.capabilities.bits(),
            health: self.last_exit.clone().unwrap_or_default(),
            refused: self.refused,
            uptime_ms: self.running_since.map_or(0, |since| {
                u64::try_from(now.saturating_since(since).as_millis()).unwrap_or(u64::MAX)
            }),
            events_published: report.events_published,
            events_dropped: report.events_dropped,
            queue_depth: report.queue_depth,
            last_error: report.last_error,
            detail: report.detail,
            reported_health: report.health,
        }
    }
}

impl AgentHealth {
    /// The overall state on the wire (unspecified when no part is known).
    pub fn overall_state(&self) -> pbc::HealthState {
        match self.overall {
            None => pbc::HealthState::Unspecified,
            Some(health) => wire_state(health),
        }
    }
}

/// A health on the wire.
pub fn wire_state(health: Health) -> pbc::HealthState {
    match health {
        Health::Healthy => pbc::HealthState::Healthy,
        Health::Degraded => pbc::HealthState::Degraded,
        Health::Unhealthy => pbc::HealthState::Unhealthy,
    }
}

/// The broker's part of a health report it sent: `None` when it did not say, unhealthy
/// when it said something this agent does not know.
pub fn broker_health(report: &pbc::HealthReport) -> Option<Health> {
    match pbc::HealthState::try_from(report.broker) {
        Ok(pbc::HealthState::Unspecified) => None,
        Ok(pbc::HealthState::Healthy) => Some(Health::Healthy),
        Ok(pbc::HealthState::Degraded) => Some(Health::Degraded),
        Ok(pbc::HealthState::Unhealthy) | Err(_) => Some(Health::Unhealthy),
    }
}
