//! What the fleet asks of its driver: outputs to carry out (spawn, signal, moved tasks)
//! and events to log.

use crate::registry::Refusal;
use crate::supervisor::Signal;

/// What a collector's process claimed when it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A registration.
    Registration,
    /// A heartbeat.
    Heartbeat,
    /// A deregistration.
    Deregistration,
    /// A task's result.
    TaskResult,
}

impl Claim {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::Registration => "registration",
            Claim::Heartbeat => "heartbeat",
            Claim::Deregistration => "deregistration",
            Claim::TaskResult => "task result",
        }
    }
}

/// Something worth a log line; nothing to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A collector registered (or registered again).
    Registered {
        /// The collector.
        collector: String,
        /// Its type.
        kind: String,
        /// The pid it claims.
        pid: u32,
    },
    /// A collector that stops cleanly deregistered.
    Deregistered {
        /// The collector.
        collector: String,
    },
    /// A registration, heartbeat or deregistration not from the collector's own process.
    Refused {
        /// The id it claimed.
        collector: String,
        /// What it sent.
        claim: Claim,
        /// Who sent it.
        pid: Option<u32>,
        /// Its uid.
        uid: u32,
        /// Refusals under this id so far.
        count: u64,
        /// Why.
        why: Refusal,
    },
    /// A heartbeat whose topic names another collector than its payload: it counts for
    /// nobody (subscribers of one collector's heartbeats would see another's).
    MisaddressedHeartbeat {
        /// The topic it came on.
        topic: String,
        /// The collector its payload names.
        collector: String,
    },
    /// A registered collector missed its heartbeats.
    Unhealthy {
        /// The collector.
        collector: String,
        /// How many it missed.
        missed: u32,
    },
    /// An unhealthy supervised collector is being restarted.
    RestartingUnhealthy {
        /// The collector.
        collector: String,
    },
    /// An unhealthy collector heartbeats again.
    Recovered {
        /// The collector.
        collector: String,
    },
    /// A supervised collector's process exited.
    Exited {
        /// The collector.
        collector: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        how: String,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Start the collector's process; report [`Fleet::handle_spawned`](super::Fleet::handle_spawned) or
    /// [`Fleet::handle_spawn_failed`](super::Fleet::handle_spawn_failed).
    Spawn {
        /// The collector.
        collector: String,
    },
    /// Send a signal to the collector's process group.
    Signal {
        /// The collector.
        collector: String,
        /// Its process (the group's leader).
        pid: u32,
        /// The signal.
        signal: Signal,
    },
    /// The task coordinator's: send an attempt, a task waits, a task ended.
    Task(crate::coordinator::Output),
    /// Tell a supervised collector whose registration was accepted to begin monitoring
    /// (`BeginMonitoring` on `control.collector.config.<id>`): a collector configured to
    /// wait starts its sources only then, once the agent knows it and routes its tasks.
    BeginMonitoring {
        /// The collector.
        collector: String,
    },
    /// Worth a log line.
    Event(Event),
}
