//! DaemonEye core: every decision of the bus and the collector runtime, as pure state
//! machines.
//!
//! Nothing here performs IO, reads a clock, sleeps, spawns or draws ambient randomness. Each
//! machine takes its inputs and the current [`Instant`] as arguments and returns outputs and
//! its next deadline (`handle_*`, `poll_output`, `poll_timeout`); a seeded [`rng::SeededRng`]
//! is passed in where a decision is random. Maps whose iteration order can steer a decision
//! are ordered (`BTreeMap`) or use a fixed hasher.
#![forbid(unsafe_code)]

pub mod acl;
pub mod broker;
pub mod client;

pub mod index;
pub mod registration;
pub mod registry;
pub mod rng;
pub mod supervisor;
pub mod time;
pub mod topic;
pub mod wal;

pub use time::Instant;
