//! Deterministic simulations of DaemonEye, in virtual time, with faults and crashes
//! injected and DESIGN.md section 9's invariants checked as they run.
//!
//! The seed is everything: it chooses the fault rates (swarm testing), the workload and
//! every fault, so `daemoneye-sim --seed N` replays a run exactly. A run is a safety phase
//! with faults, then a liveness phase without, which must drain everything.
//!
//! Two layers. Layer 1 ([`layer1`], [`run`]) drives the real broker and client state
//! machines from `daemoneye-core` over seeded fake byte-stream links: partial reads (any
//! chunking), stalls, bounded send buffers counted in bytes (the broker's writes are
//! reported only once they fit), resets, corruption (a flipped bit the broker's decoder must
//! refuse without panicking), and crashes of the broker (every link resets, a fresh broker
//! starts) or of a client (it comes back as a new process with the same role and
//! subscriptions, but no memory, once its supervisor says Spawn). About a third of the
//! clients are WAL-backed collectors: their log file survives a crash with its synced
//! prefix and a random torn piece of the rest (sometimes followed by garbage), and a
//! restarted collector replays it. Layer 2 ([`layer2`], [`run_net`]) runs the real io crate
//! (broker server, process manager, client library) over turmoil's network. Layer 3
//! ([`collector`], [`run_collector`]) drives the collector runtime's policies (batching,
//! pacing under backpressure) with random arrivals and signals.
//!
//! # Where things are
//!
//! | concern | file |
//! |---|---|
//! | every fault: the [`Fault`] type, sampling per layer, inject and heal per layer | `fault.rs` |
//! | layer 1's link, a seeded sans-IO machine ([`link::Link`]) | `link.rs` |
//! | the trace, its hash, [`Violation`] | `report.rs` |
//! | reference implementations (MQTT matching) | `reference.rs` |
//! | fuzz entry points | `fuzz.rs` |
//! | layer 1: config, the world's state, [`run`] | `layer1/mod.rs` |
//! | layer 1: the step and the liveness phase | `layer1/scheduler.rs` |
//! | layer 1: the clients' behaviour and the seed's choices of it | `layer1/workload.rs` |
//! | layer 1: connecting, resetting, moving bytes over the links | `layer1/wire.rs` |
//! | layer 1: what a crash does (client, broker) | `layer1/crash.rs` |
//! | layer 1: the collectors' WAL files and device | `layer1/disk.rs` |
//! | layer 1: the agent (control client, registry, supervisors) | `layer1/agent.rs` |
//! | layer 1: the reference model and the invariants | `layer1/model.rs` |
//! | layer 1: invariant 8, the byte-split shadow broker | `layer1/shadow.rs` |
//! | layer 2: config, outcome | `layer2/mod.rs` |
//! | layer 2: turmoil, the fault phase, liveness, [`run_net`] | `layer2/scheduler.rs` |
//! | layer 2: the agent host and the processes it supervises | `layer2/agent.rs` |
//! | layer 2: publishers, subscribers, the operator's probe | `layer2/workload.rs` |
//! | layer 2: what hosts report and the invariants over it | `layer2/model.rs` |
//! | layer 2: turmoil behind the io crate's transport traits | `layer2/transport.rs` |
//! | layer 3: the collector runtime's batcher and pacing in virtual time, [`run_collector`] | `collector.rs` |
//! | the process table ([`run_procmon`], `--procmon`): scheduler, world, invariants | `procmon/{mod,world,model}.rs` |
//! | alert enrichment ([`run_enrich`], `--enrich`): alerts, collectors' answers, invariants | `enrich.rs` |
//! | alert storms against the fold machine ([`run_fold`], `--fold`) and its ledger of invariants | `fold.rs` |
//! | the NATS bridge's export queue against a fake server ([`run_bridge`], `--bridge`) | `bridge.rs` |
//!
//! A new fault touches `fault.rs` (and, if it needs new mechanics, the file of the concern
//! it hits); a new invariant the layer's `model.rs`; a new kind of client behaviour the
//! layer's `workload.rs`.

pub mod bridge;
pub mod collector;
pub mod enrich;
pub mod fault;
pub mod fold;
pub mod fuzz;
pub mod layer1;
pub mod layer2;
pub mod link;
pub mod procmon;
pub mod reference;
mod report;

pub use bridge::{BridgeOutcome, BridgeSimConfig, run_bridge};
pub use collector::{CollectorOutcome, CollectorSimConfig, run_collector};
pub use enrich::{EnrichOutcome, EnrichSimConfig, run_enrich};
pub use fault::{Fault, FaultRates, Target};
pub use fold::{FoldOutcome, FoldSimConfig, run_fold};
pub use layer1::{Canary, Outcome, SimConfig, run};
pub use layer2::{NetConfig, NetOutcome, run_net};
pub use procmon::{ProcmonConfig, ProcmonOutcome, run_procmon};
pub use report::Violation;

/// How many seeds a CI test of a simulation runs: the environment variable `var` (a
/// number), else `default`.
pub fn seeds_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seed from the wall clock, for the one random run each CI test adds (and prints, so
/// that a failure can be replayed).
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The reference matcher under its former path (`daemoneye_sim::world::naive_match`).
pub mod world {
    pub use crate::reference::naive_match;
}
