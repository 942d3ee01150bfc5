//! collector-core: the framework every collector is built on (procmond first). A collector
//! is a binary that builds a [`Collector`] from its [`EventSource`]s and runs it; the
//! runtime does the rest (DESIGN.md section 8).
//!
//! - [`source`]: what an author implements ([`EventSource`]) and what a source gets
//!   ([`SourceContext`]: [`EventSender`], [`ShutdownSignal`], [`SourceConfig`],
//!   [`SourceStatus`]);
//! - [`runtime`]: [`Collector`] and its builder: registration, heartbeats with real
//!   numbers, batching, the WAL-backed publisher, backpressure, control, tasks, shutdown;
//! - [`config`]: [`CollectorSettings`] from a file and `DAEMONEYE_<COMPONENT>_*`;
//! - [`tasks`]: task subscriptions, dispatch and results; `control`: control messages;
//! - [`registration`] ([`keep_registered`]), [`wal`] ([`WalFile`](wal::WalFile)) and
//!   [`publisher`]: staying registered, the write-ahead log, publishing through it;
//! - [`process`]: the process collector's sources (the kernel's process connector, the
//!   `/proc` reader and scanner, hashes, capability dropping).
//!
//! The policies (batching, pacing under backpressure) are the core's
//! ([`daemoneye_core::collector`]); reconnecting is the client library's.
//!
//! # A collector in a few lines
//!
//! ```no_run
//! use daemoneye_io::collector::{
//!     BoxFuture, Collector, EventSource, SourceCaps, SourceContext, SourceError,
//! };
//!
//! struct Ticker;
//!
//! impl EventSource for Ticker {
//!     fn name(&self) -> &str { "ticker" }
//!     fn capabilities(&self) -> SourceCaps { SourceCaps::PERFORMANCE }
//!     fn start(&self, mut ctx: SourceContext) -> BoxFuture<'_, Result<(), SourceError>> {
//!         Box::pin(async move {
//!             loop {
//!                 let interval = ctx.config.borrow().interval;
//!                 tokio::select! {
//!                     _ = ctx.shutdown.wait() => return Ok(()),
//!                     _ = tokio::time::sleep(interval) => {}
//!                 }
//!                 let _ = ctx.events.send("events.performance.tick", "tick".into()).await;
//!             }
//!         })
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Collector::builder("ticker").source(Ticker).main()
//! }
//! ```

pub mod config;
mod control;
mod metrics;
pub mod process;
pub mod publisher;
pub mod registration;
mod running;
pub mod runtime;
pub mod source;
pub mod tasks;
pub mod wal;

pub use config::{CollectorSettings, MAX_EVENT_SOURCES};
pub use daemoneye_core::collector::Pressure;
pub use metrics::MetricsSnapshot;
pub use registration::{HeartbeatContent, keep_registered, keep_registered_with};
pub use runtime::{Collector, CollectorBuilder, RunReport, RuntimeError};
pub use source::{
    BoxFuture, EventSender, EventSource, SendError, ShutdownSignal, SourceCaps, SourceConfig,
    SourceContext, SourceError, SourceHealth, SourceStatus, TaskOutcome,
};
