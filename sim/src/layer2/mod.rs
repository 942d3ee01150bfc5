//! Layer 2: the real `daemoneye-io` agent (broker server, process manager, lifecycle and
//! registration RPC) and client library over turmoil's simulated network, in virtual time.
//!
//! The agent host runs `server::serve` behind a turmoil listener, a `ProcessManager` whose
//! `Spawner` starts a turmoil host where production forks a process, and the agent's own
//! control client. Supervised collector hosts register and heartbeat with the real
//! collector code; publisher and subscriber hosts run the client library (reconnect, QoS1
//! resend, dedup) through a turmoil connector; a probe host asks the agent for its
//! collectors' status over the lifecycle RPC.
//!
//! The seed drives turmoil (`rng_seed`, a fixed epoch) and the fault schedule: the agent,
//! publishers and subscribers crashed and bounced; collectors killed (their supervisor
//! decides the restart); links held and released, partitioned and repaired. Every
//! `select!` in the io crate is `biased`, and every clock is tokio's (virtual here), so a
//! seed replays exactly.
//!
//! Checked while it runs: a PubAck never claims more deliveries than subscribers have seen
//! (DESIGN.md section 9, invariant 1), per-publisher order on each subscriber connection
//! (2), nothing delivered that the filter does not match (4), restarts after a crash wait
//! at least the initial backoff and stay within the policy's count per window (6). Then
//! faults stop: every publish of every live publisher must be acknowledged, and every
//! collector must be running and registered (or Failed by its policy), within a bounded
//! virtual time (7).
//!
//! This file holds the run's configuration and outcome; `scheduler` drives turmoil and
//! the faults ([`crate::fault`]), `agent` runs the agent host and the simulated processes it
//! supervises, `workload` the publishers, subscribers and the operator's probe, `model`
//! what the hosts report and the invariants over it, `transport` turmoil behind the io
//! crate's transport traits.

use std::time::Duration;

mod agent;
mod model;
mod scheduler;
mod transport;
mod workload;

pub(crate) use agent::COLLECTORS;
pub(crate) use scheduler::Driver;
pub use scheduler::run_net;

const UID: u32 = 1000;
const PORT: u16 = 7100;
const PUBLISHERS: usize = 2;
const SUBSCRIBERS: usize = 2;
/// Publishes per publisher incarnation.
const MESSAGES: u32 = 40;
const FILTER: &str = "events.#";
/// Hosts the driver crashes and bounces itself: the agent, publishers and subscribers.
pub(crate) const DRIVER_HOSTS: usize = 1 + PUBLISHERS + SUBSCRIBERS;

/// What to run.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Virtual time of the fault phase.
    pub fault_time: Duration,
    /// Print every event.
    pub verbose: bool,
    /// Run the broker that sends PubAck before delivering, which must be caught.
    pub canary: bool,
}

impl NetConfig {
    /// Defaults for `seed`: 20 s of faults.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            fault_time: Duration::from_secs(20),
            verbose: false,
            canary: false,
        }
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone)]
pub struct NetOutcome {
    /// The seed.
    pub seed: u64,
    /// Turmoil steps (1 ms of virtual time each).
    pub steps: u64,
    /// Hash of the event trace: equal for equal seeds.
    pub trace: u64,
    /// Publishes sent.
    pub published: u64,
    /// PubAcks received.
    pub acked: u64,
    /// Messages subscribers saw.
    pub delivered: u64,
    /// Faults injected.
    pub faults: u64,
    /// Collector processes the agent started.
    pub spawned: u64,
}
