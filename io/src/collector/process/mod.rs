//! The process collector's sources: everything that observes processes.
//!
//! - [`reader`]: one process from `/proc/<pid>` into a `ProcessInfo`, in two steps (what
//!   vanishes first, then the rest), every failure counted per field and reason;
//! - [`scan`]: every process (the fallback, the reconciliation, the start-up snapshot);
//! - [`hash`]: the executable's SHA-256, cached by file identity;
//! - [`watch`] (Linux): the real-time pipeline over the kernel's process connector
//!   ([`connector`]), exec and exit as they happen;
//! - [`privileges`] (Linux): dropping every capability but the two reading needs;
//! - [`event`]: the `events.process.*` payload;
//! - [`tasks`]: the `process` capability's tasks (hash, ancestry, open files).
//!
//! Start-up order on Linux: [`connector::ProcConnector::open`] (falls back to scanning on
//! [`connector::ConnectorError`]), [`privileges::drop_to_minimum`], then
//! [`watch::Watch::start`], so the watch's threads start with the reduced capabilities.
//! The decisions (new, modified, exit, snapshot, by (pid, start time)) are the core's
//! (`daemoneye_core::procmon`); this module only observes.

#[cfg(target_os = "linux")]
pub mod connector;
pub mod event;
pub mod hash;
pub mod monitor;
mod names;
#[cfg(target_os = "linux")]
pub mod privileges;
pub mod procfs;
pub mod reader;
pub mod scan;
pub mod tasks;
#[cfg(target_os = "linux")]
pub mod watch;

pub use event::process_event;
pub use hash::HashCache;
pub use names::NameCache;
pub use reader::{ProcessReader, ReadOptions, ReadOutcome, ReadStats};
pub use scan::{RunStamps, scan, scan_known};
#[cfg(target_os = "linux")]
pub use watch::{Observation, Watch, WatchOptions, WatchStats};

/// Reads one process with a fresh reader (no shared caches): for one-off reads; a collector
/// keeps one [`ProcessReader`] and calls [`ProcessReader::read`].
pub fn read_process(pid: u32, options: ReadOptions) -> ReadOutcome {
    ProcessReader::new(options).read(pid)
}
