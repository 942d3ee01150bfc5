//! The collector runtime's policies, pure: when a batch of events goes out ([`batcher`]), and
//! how the collection interval stretches under the broker's backpressure and comes back
//! ([`pacing`]).
//!
//! The io crate's collector runtime (`daemoneye_io::collector`) drives both with the real
//! clock; the simulation (`daemoneye_sim::collector`) drives them with virtual time, random
//! arrivals and random backpressure, and checks their invariants after every step.
//!
//! Reconnecting to the broker and retrying a registration are not here: the client
//! library's session already follows [`crate::client::ReconnectPolicy`] (exponential backoff
//! with a cap and jitter), and [`crate::registration`] retries registrations the same way.
//! The runtime reuses both.

pub mod batcher;
pub mod pacing;

pub use batcher::{Batch, BatchConfig, Batcher, FlushReason};
pub use pacing::{Pacing, PacingConfig, Pressure};
