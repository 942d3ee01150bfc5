//! What the fleet shows: each collector's typed state (what `collectors list` prints) and
//! the agent's health as the worst of its parts.

use std::fmt;

use crate::Instant;
use crate::broker::Health;
use crate::registry::SourceCaps;
use crate::supervisor::State;

/// Where a collector is, as an operator sees it: the supervisor's state, refined by what
/// the registry knows of its heartbeats, and the two states of a collector started
/// elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CollectorState {
    /// Not running, not wanted.
    Stopped,
    /// A spawn is requested or scheduled and not yet confirmed.
    Starting,
    /// Running (and heartbeating, if it registered).
    Running,
    /// Running, but it missed its heartbeats.
    Unhealthy,
    /// Paused by an operator.
    Paused,
    /// Asked to stop; waiting for its exit.
    Stopping,
    /// Gave up after too many restarts, until an operator starts it.
    Failed,
    /// Started elsewhere, registered and heartbeating.
    External,
    /// Started elsewhere, not registered.
    Absent,
}

impl CollectorState {
    /// Stable lowercase name (the lifecycle RPC's `state` field).
    pub fn as_str(self) -> &'static str {
        match self {
            CollectorState::Stopped => "stopped",
            CollectorState::Starting => "starting",
            CollectorState::Running => "running",
            CollectorState::Unhealthy => "unhealthy",
            CollectorState::Paused => "paused",
            CollectorState::Stopping => "stopping",
            CollectorState::Failed => "failed",
            CollectorState::External => "external",
            CollectorState::Absent => "absent",
        }
    }

    /// How much this state weighs in the agent's health: running (paused on purpose, or
    /// elsewhere) is healthy, on the way up or down is degraded, and a collector that is
    /// silent, given up on or missing is unhealthy.
    pub fn health(self) -> Health {
        match self {
            CollectorState::Running | CollectorState::Paused | CollectorState::External => {
                Health::Healthy
            }
            CollectorState::Starting | CollectorState::Stopping | CollectorState::Stopped => {
                Health::Degraded
            }
            CollectorState::Unhealthy | CollectorState::Failed | CollectorState::Absent => {
                Health::Unhealthy
            }
        }
    }
}

impl From<State> for CollectorState {
    fn from(state: State) -> Self {
        match state {
            State::Stopped => CollectorState::Stopped,
            State::Starting => CollectorState::Starting,
            State::Running => CollectorState::Running,
            State::Paused => CollectorState::Paused,
            State::Stopping => CollectorState::Stopping,
            State::Failed => CollectorState::Failed,
        }
    }
}

impl fmt::Display for CollectorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One collector as the fleet knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorView {
    /// Its name (its collector id).
    pub name: String,
    /// Where it is.
    pub state: CollectorState,
    /// The process: the one the agent spawned, or the one that registered an external
    /// collector.
    pub pid: Option<u32>,
    /// When its current process started (unknown for an external collector).
    pub running_since: Option<Instant>,
    /// Automatic restarts so far (none for an external collector).
    pub restarts: u32,
    /// How its last run ended.
    pub last_exit: Option<String>,
    /// When it last registered or heartbeated (until it deregisters).
    pub last_heartbeat: Option<Instant>,
    /// What its last heartbeat said of its work (until it deregisters).
    pub report: Option<CollectorReport>,
    /// What it declared when it registered.
    pub capabilities: SourceCaps,
    /// Registrations, heartbeats and deregistrations refused under its id.
    pub refused: u64,
}

/// A collector's own account of its work, from its last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectorReport {
    /// Events it published since it started.
    pub events_published: u64,
    /// Events it could not keep (queue or WAL full) since it started.
    pub events_dropped: u64,
    /// Events waiting to be published.
    pub queue_depth: u64,
    /// The last error its sources reported, empty when none.
    pub last_error: String,
    /// One line on how it collects (for instance, real time or scanning, and why).
    pub detail: String,
    /// Its own health, the worst of its sources' (`HealthState` on the wire).
    pub health: i32,
}

impl CollectorReport {
    /// What `heartbeat` carries.
    pub fn from_heartbeat(heartbeat: &daemoneye_proto::pb::control::Heartbeat) -> Self {
        CollectorReport {
            events_published: heartbeat.events_published,
            events_dropped: heartbeat.events_dropped,
            queue_depth: heartbeat.queue_depth,
            last_error: heartbeat.last_error.clone(),
            detail: heartbeat.detail.clone(),
            health: heartbeat.state,
        }
    }
}

/// The agent's health, rolled up from its parts (DESIGN.md section 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHealth {
    /// The worst of the broker's and every collector's; `None` only when no part is known
    /// (the broker did not say, and no collector is configured).
    pub overall: Option<Health>,
    /// The task coordinator's part.
    pub coordinator: Health,
    /// Why it is not healthy: the broker's reasons, then the fleet's.
    pub reasons: Vec<String>,
}
