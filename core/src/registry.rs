//! The agent's registry of collectors (DESIGN.md sections 7 and 11), as a pure machine.
//!
//! It knows each registered collector's id, type, capabilities and pid, and when it last
//! heartbeated. A collector that misses `missed_limit` heartbeats (default 3) becomes
//! Unhealthy: the registry tells the agent (whose supervisor restarts it, and whose task
//! coordinator, [`crate::coordinator`], moves the collector's outstanding tasks). A Paused
//! collector is exempt from heartbeat checks until resumed.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::Instant;

bitflags::bitflags! {
    /// Capabilities a collector declares (`SourceCaps` on the wire, a u32 of bits). Bits
    /// this build does not name are kept (`from_bits_retain`), so a newer collector's
    /// capabilities survive an older agent.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
    pub struct SourceCaps: u32 {
        /// Process enumeration and events.
        const PROCESS = 1;
        /// Network events.
        const NETWORK = 1 << 1;
        /// Filesystem events.
        const FILESYSTEM = 1 << 2;
        /// Performance metrics.
        const PERFORMANCE = 1 << 3;
        /// Real-time delivery.
        const REALTIME = 1 << 4;
        /// Kernel-level visibility.
        const KERNEL_LEVEL = 1 << 5;
        /// System-wide scope.
        const SYSTEM_WIDE = 1 << 6;
    }
}

impl SourceCaps {
    /// Every capability and its name (as in a task topic), in bit order.
    pub const NAMED: [(&'static str, SourceCaps); 7] = [
        ("process", Self::PROCESS),
        ("network", Self::NETWORK),
        ("filesystem", Self::FILESYSTEM),
        ("performance", Self::PERFORMANCE),
        ("realtime", Self::REALTIME),
        ("kernel_level", Self::KERNEL_LEVEL),
        ("system_wide", Self::SYSTEM_WIDE),
    ];

    /// The capability named in a task topic (`control.collector.task.<name>`).
    pub fn from_capability(name: &str) -> Option<SourceCaps> {
        Self::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, caps)| *caps)
    }

    /// The names of the capabilities set here, in bit order (unknown bits as `bitN`).
    pub fn names(self) -> Vec<String> {
        (0..32)
            .filter(|bit| self.bits() & (1 << bit) != 0)
            .map(|bit| {
                Self::NAMED
                    .iter()
                    .find(|(_, caps)| caps.bits() == 1 << bit)
                    .map_or_else(|| format!("bit{bit}"), |(n, _)| n.to_string())
            })
            .collect()
    }
}

/// Health of a registered collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorHealth {
    /// Heartbeating on time (or paused).
    Healthy,
    /// Missed its heartbeats.
    Unhealthy,
}

/// A registered collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorInfo {
    /// Collector type (e.g. `process`).
    pub kind: String,
    /// Declared capabilities.
    pub capabilities: SourceCaps,
    /// Its pid, as it reported.
    pub pid: u32,
    /// Last heartbeat (or registration).
    pub last_heartbeat: Instant,
    /// Health.
    pub health: CollectorHealth,
    /// Paused by an operator: exempt from heartbeat checks.
    pub paused: bool,
}

/// What the agent must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// Missed its heartbeats: restart it.
    Unhealthy {
        /// The collector.
        id: String,
    },
    /// Heartbeats again.
    Recovered {
        /// The collector.
        id: String,
    },
}

/// Why a [`Registry`] wants [`handle_timeout`](Registry::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A healthy collector's heartbeats stop counting as on time.
    HeartbeatMissed,
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    heartbeat_interval: Duration,
    missed_limit: u32,
    collectors: BTreeMap<String, CollectorInfo>,
    events: VecDeque<RegistryEvent>,
}

impl Registry {
    /// A registry expecting heartbeats every `heartbeat_interval`, Unhealthy after
    /// `missed_limit` missed ones.
    pub fn new(heartbeat_interval: Duration, missed_limit: u32) -> Self {
        Self {
            heartbeat_interval,
            missed_limit: missed_limit.max(1),
            collectors: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A collector registered (again: a re-registration replaces the old entry).
    pub fn register(
        &mut self,
        now: Instant,
        id: &str,
        kind: &str,
        capabilities: SourceCaps,
        pid: u32,
    ) {
        let paused = self.collectors.get(id).is_some_and(|c| c.paused);
        self.collectors.insert(
            id.to_string(),
            CollectorInfo {
                kind: kind.to_string(),
                capabilities,
                pid,
                last_heartbeat: now,
                health: CollectorHealth::Healthy,
                paused,
            },
        );
    }

    /// A collector deregistered.
    pub fn deregister(&mut self, id: &str) {
        self.collectors.remove(id);
    }

    /// A heartbeat arrived.
    pub fn heartbeat(&mut self, now: Instant, id: &str) -> bool {
        let Some(c) = self.collectors.get_mut(id) else {
            return false;
        };
        c.last_heartbeat = now;
        if c.health == CollectorHealth::Unhealthy {
            c.health = CollectorHealth::Healthy;
            self.events
                .push_back(RegistryEvent::Recovered { id: id.to_string() });
        }
        true
    }

    /// Paused collectors are exempt from heartbeat checks; resuming restarts the clock.
    pub fn set_paused(&mut self, now: Instant, id: &str, paused: bool) {
        if let Some(c) = self.collectors.get_mut(id) {
            c.paused = paused;
            if !paused {
                c.last_heartbeat = now;
            }
        }
    }

    /// A registered collector.
    pub fn get(&self, id: &str) -> Option<&CollectorInfo> {
        self.collectors.get(id)
    }

    /// Every registered collector, by id.
    pub fn collectors(&self) -> impl Iterator<Item = (&String, &CollectorInfo)> {
        self.collectors.iter()
    }

    /// Time passed: heartbeat checks.
    pub fn handle_timeout(&mut self, now: Instant) {
        let limit = self.heartbeat_interval * self.missed_limit;
        let late: Vec<String> = self
            .collectors
            .iter()
            .filter(|(_, c)| {
                !c.paused && c.health == CollectorHealth::Healthy && c.last_heartbeat + limit <= now
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some(c) = self.collectors.get_mut(&id) {
                c.health = CollectorHealth::Unhealthy;
            }
            self.events.push_back(RegistryEvent::Unhealthy { id });
        }
    }

    /// The next event for the agent.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<RegistryEvent> {
        self.events.pop_front()
    }

    /// The next heartbeat check, and what it is for.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let limit = self.heartbeat_interval * self.missed_limit;
        self.collectors
            .values()
            .filter(|c| !c.paused && c.health == CollectorHealth::Healthy)
            .map(|c| (c.last_heartbeat + limit, Timer::HeartbeatMissed))
            .min_by_key(|(at, _)| *at)
    }

    /// Whether collector `id` may take tasks: registered, healthy and not paused. Its
    /// capabilities if so.
    pub fn available(&self, id: &str) -> Option<SourceCaps> {
        self.collectors
            .get(id)
            .filter(|c| c.health == CollectorHealth::Healthy && !c.paused)
            .map(|c| c.capabilities)
    }
}

/// Who may speak for a collector id: the facts the agent has about it (DESIGN.md sections 6
/// and 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// A collector the agent supervises: the pid of the process it spawned for it, if one
    /// runs.
    Managed {
        /// The spawned process (the collector, not a shim).
        pid: Option<u32>,
    },
    /// A collector the config names as started elsewhere, running as `uid`.
    External {
        /// The uid it must connect as.
        uid: u32,
    },
    /// The config does not name it.
    Unknown,
}

/// The OS's word on who published a registration or heartbeat: the broker's peer
/// credentials of its connection, and the ancestry of its pid as io read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    /// The publisher's pid, when the OS says.
    pub pid: Option<u32>,
    /// The publisher's uid.
    pub uid: u32,
    /// The pid's ancestors, parent first (as far as they could be read).
    pub ancestors: Vec<u32>,
}

/// Why a registration, heartbeat or deregistration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `[[collectors]]` entry has this id.
    #[error(
        "no collector with this id is configured (an external one needs an entry with external = true)"
    )]
    UnknownCollector,
    /// A managed collector that the agent has not started (or that is not running).
    #[error("the agent runs no process for this collector")]
    NotRunning,
    /// The broker knows no pid for the publisher.
    #[error("the publisher's pid is unknown")]
    NoPeerPid,
    /// From a process the agent did not spawn for it (nor one of its descendants).
    #[error(
        "from pid {pid}, which is neither the process the agent spawned ({spawned}) nor one of its descendants"
    )]
    NotSpawned {
        /// The publisher.
        pid: u32,
        /// The process the agent spawned.
        spawned: u32,
    },
    /// An external collector connected under another uid.
    #[error("from uid {uid}; the config names uid {expected}")]
    WrongUid {
        /// The publisher's uid.
        uid: u32,
        /// The configured one.
        expected: u32,
    },
}

/// Whether `peer` may speak for a collector with the `expected` facts: a managed collector
/// only from the process the agent spawned or a descendant of it, an external one only
/// under its configured uid, any other id never.
pub fn admit(expected: &Expected, peer: &Peer) -> Result<(), Refusal> {
    match *expected {
        Expected::Unknown => Err(Refusal::UnknownCollector),
        Expected::External { uid } if uid == peer.uid => Ok(()),
        Expected::External { uid } => Err(Refusal::WrongUid {
            uid: peer.uid,
            expected: uid,
        }),
        Expected::Managed { pid: None } => Err(Refusal::NotRunning),
        Expected::Managed { pid: Some(spawned) } => {
            let Some(pid) = peer.pid else {
                return Err(Refusal::NoPeerPid);
            };
            if pid == spawned || peer.ancestors.contains(&spawned) {
                Ok(())
            } else {
                Err(Refusal::NotSpawned { pid, spawned })
            }
        }
    }
}

#[cfg(test)]
mod caps_tests {
    use super::SourceCaps;

    #[test]
    fn capabilities_have_names_both_ways() {
        assert_eq!(
            (SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE | SourceCaps::from_bits_retain(1 << 9))
                .names(),
            ["process", "system_wide", "bit9"]
        );
        assert!(SourceCaps::empty().names().is_empty());
        for (name, caps) in SourceCaps::NAMED {
            assert_eq!(SourceCaps::from_capability(name), Some(caps));
        }
        assert_eq!(SourceCaps::from_capability("telepathy"), None);
    }
}
