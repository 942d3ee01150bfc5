//! DaemonEye runtime: drives the core's state machines with real sockets, files and time.
//! No decision lives here: routing, limits, timeouts and access control are the core's.
//!
//! By role:
//! - broker server, [`broker`]: the agent's side of the bus ([`broker::server`]) and
//!   durable subscriptions on disk ([`broker::durables`]);
//! - client library, [`client`]: the async client the CLI, collectors and applications use;
//! - agent, [`agent`]: the agent's own bus client (lifecycle RPC, registrations, health
//!   report), the process manager that carries out the core fleet's actions, and the
//!   `exec-collector` shim that real collectors run under;
//! - collectors, [`collector`]: registration, the write-ahead log and publishing through
//!   it, and the process source;
//! - the event store, [`store`]: what crossed the bus, kept in one redb file with bounded
//!   retention, and its queries; [`decode`] turns payloads into JSON for people;
//! - shared: [`transport`] (listener and connector traits, Unix sockets here, simulated
//!   ones in the simulation), [`clock`], [`paths`] (the broker socket and state
//!   directories), [`config`] (the agent's TOML configuration and its environment
//!   overrides) and [`init_logging`].
//!
//! The binaries (`src/bin/`) only parse their flags and wire these together.

pub mod agent;
pub mod args;
pub mod broker;
pub mod client;
pub mod clock;
pub mod collector;
pub mod config;
pub mod decode;
pub mod detect;
pub mod host;
mod logging;
pub mod paths;
pub mod store;
mod sync;
pub mod transport;

pub use logging::{LevelError, LogFilter, LoggingError, init_logging, parse_filter};

/// The version every binary reports: the package version and the git revision built.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("DAEMONEYE_GIT_REVISION"),
    ")"
);

// The paths these modules had before the crate was grouped by role (the simulation, the
// agent and the tests import them).
pub use broker::{durables, server};
pub use collector::wal;
