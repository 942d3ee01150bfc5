//! DaemonEye core: every decision of the bus and the collector runtime, as pure state
//! machines.
//!
//! Nothing here performs IO, reads a clock, sleeps, spawns or draws ambient randomness. Maps
//! whose iteration order can steer a decision are ordered (`BTreeMap`) or use a fixed hasher;
//! a seeded [`rng::SeededRng`] is passed in where a decision is random. The same machines run
//! under the production daemon (the io crate) and under the simulations (the sim crate).
//!
//! # The contract every machine keeps
//!
//! A driver (the io crate's tasks, a simulation's scheduler, a test) owns the clock and the
//! IO; a machine owns the decisions. They talk through four groups of methods, with the same
//! names in every machine:
//!
//! ## Inputs: `handle_*(now, ...)`
//!
//! Something happened: bytes arrived ([`broker::Broker::handle_bytes`]), a write finished,
//! a peer went away, a process exited, a sync completed, or time reached a deadline
//! (`handle_timeout`). Every `handle_*` takes the current [`Instant`] first, even where
//! today's rules do not read it, so that a rule that starts to depend on time needs no
//! change at its call sites. Commands from the owner (`start`, `stop`, `subscribe`,
//! `publish`, ...) are plain methods and take `now` where they schedule anything.
//!
//! ## Outputs: `poll_transmit` and `poll_output`
//!
//! A machine never calls out; it queues. After every input the driver drains:
//!
//! - `poll_transmit()`: bytes to write to the one peer of a machine that speaks the wire
//!   protocol itself ([`client::ClientSession`]);
//! - `poll_output()`: everything else, as the machine's own output type (the broker's
//!   [`broker::Output`] carries its bytes per connection; a supervisor's
//!   [`supervisor::Action`] asks for a spawn or a signal; the WAL's [`wal::WalAction`] for
//!   an append or a sync).
//!
//! Both return `None` when nothing is left and are `#[must_use]`: an output dropped on the
//! floor is a decision not carried out. Outputs are in the order the driver must execute
//! them.
//!
//! ## Time: `poll_timeout` and `handle_timeout`
//!
//! `poll_timeout()` returns the next deadline and why (`Option<(Instant, Timer)>`, each
//! machine with its own `Timer` enum); `None` means nothing will happen until an input. The
//! driver calls `handle_timeout(now)` at or after that instant; calling it early or late
//! is harmless (the machine acts on whatever is due). Because any input can move the next
//! deadline earlier, the driver asks `poll_timeout` again after every drain and re-arms its
//! timer when the answer changed. Machines with many timers (the broker) keep them in a
//! deadline structure, so that asking is cheap after every input; the broker's
//! `poll_timeout` takes `&mut self` because it re-files, when asked, the entries that
//! traffic made stale (a keepalive that moved later costs nothing until it surfaces).
//!
//! ## Queries
//!
//! Everything else is `&self` and free of side effects: state, counters, introspection.
//!
//! # The machines
//!
//! - [`broker`]: the message broker (topics, queue groups, flow control, QoS1, ACL);
//! - [`client`]: one client's session with the broker (handshake, resend, deduplication);
//! - [`fleet`]: the agent's collectors as one machine: their supervisors, the registry
//!   and the task coordinator together (unhealthy means restart, pause and resume, the agent's health roll-up);
//! - [`supervisor`]: one collector process's lifecycle and restart policy;
//! - [`registry`]: registered collectors and their heartbeats;
//! - [`coordinator`]: tasks from submission to their end (placement by capability and
//!   priority, retries, reassignment, late duplicates);
//! - [`registration`]: a collector's side of registering and heartbeating;
//! - [`wal`]: the write-ahead log of a collector's accepted events.
//! - [`bridge`]: the NATS bridge (what crosses, the QoS1 export queue, loop prevention).
#![forbid(unsafe_code)]

pub mod acl;
pub mod bridge;
pub mod broker;
pub mod client;
pub mod collector;
pub mod coordinator;
pub mod detect;
pub mod fleet;
pub mod index;
pub mod procmon;
pub mod registration;
pub mod registry;
pub mod rng;
pub mod supervisor;
pub mod time;
pub mod topic;
pub mod wal;

pub use time::Instant;
