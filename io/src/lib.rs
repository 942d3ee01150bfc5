//! DaemonEye runtime: drives the core's state machines with real sockets and time.
//!
//! - [`paths`]: where the broker socket lives, its directory and file permissions, and
//!   claiming a stale socket without ever taking over a live broker;
//! - [`transport`]: the listener and stream behind a small trait (Unix domain sockets here;
//!   a simulated transport plugs in for deterministic tests);
//! - [`server`]: the broker server: one reader and one writer task per connection, all on
//!   one thread with the core, feeding it bytes and writing what it returns;
//! - [`client`]: the async client library used by the CLI and collectors;
//! - [`config`]: the agent's TOML configuration, validated key by key;
//! - [`durables`]: durable subscription definitions kept on disk across broker crashes;
//! - [`agent`]: the agent's side of its collectors: its own bus client (lifecycle RPC,
//!   registrations, health report), the process manager that carries out the core fleet's
//!   actions, and the `exec-collector` shim that real collectors run under.
//!
//! No decision lives here: routing, limits, timeouts and access control are the core's.

pub mod agent;
pub mod client;
pub mod clock;
pub mod collector;
pub mod config;
pub mod durables;
mod handoff;
pub mod paths;

/// Logs to stderr with `tracing` at `level` (a filter such as `info` or `daemoneye_io=debug`),
/// with colours only on a terminal.
pub fn init_logging(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
pub mod server;
mod sync;
pub mod transport;
pub mod wal;
