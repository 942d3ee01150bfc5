//! Deterministic simulation of DaemonEye's bus: the real broker and client state machines
//! from `daemoneye-core`, connected by seeded fake byte-stream links, in virtual time, with
//! faults and crashes injected and DESIGN.md section 9's invariants checked after every step.
//!
//! The seed is everything: it chooses the fault rates (swarm testing), the workload and
//! every fault, so `daemoneye-sim --seed N` replays a run exactly. A run is a safety phase
//! with faults, then a liveness phase without, which must drain everything.
//!
//! Links inject: partial reads (any chunking), stalls (a reader stops for a while), bounded
//! send buffers counted in bytes (the broker's writes are reported only once they fit),
//! resets (both ends see the connection die), and corruption (a flipped byte, which the
//! receiving decoder must refuse without panicking). Crashes drop a component's whole
//! state: the broker (every link resets, a fresh broker starts) or a client (it comes back
//! as a new process with the same role and subscriptions, but no memory, once its
//! supervisor says Spawn). About a third of the clients are WAL-backed collectors: their
//! log file survives a crash with its synced prefix and a random torn piece of the rest
//! (sometimes followed by garbage), and a restarted collector replays it.

pub mod fuzz;
pub mod net;
pub mod world;

pub use net::{NetConfig, NetOutcome, run_net};
pub use world::{Canary, Faults, Outcome, SimConfig, Violation, run};
