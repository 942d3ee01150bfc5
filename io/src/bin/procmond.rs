//! procmond: DaemonEye's process collector.
//!
//! It sees every process as it starts and ends: on Linux, as root (or with CAP_NET_ADMIN),
//! exec and exit arrive in real time from the kernel's process connector; elsewhere, or
//! when the connector is refused (or `--scan-only`), it scans `/proc` every `--interval`.
//! A reconciliation scan runs at that interval in both modes and after any loss. What it
//! publishes (one start-up snapshot, then new, modified and exit by (pid, start time)) is
//! decided by the core's process table (`daemoneye_core::procmon::table`); the reading is
//! `daemoneye_io::collector::process`.
//!
//! **Actor mode** (a broker socket from `--broker` or `DAEMONEYE_BROKER_SOCKET`, as under
//! the agent): it runs on the collector runtime (`daemoneye_io::collector`), which
//! registers, heartbeats with its numbers and its mode, logs every event in a write-ahead
//! log before it counts as accepted, batches, publishes at QoS1, and applies UpdateConfig,
//! backpressure (the interval grows x1.5 per signal) and GracefulShutdown.
//!
//! **Standalone mode** (`--database PATH` and no broker): the same events go straight into
//! an event store at PATH, which `daemoneye-cli events query --database PATH` reads.
//!
//! Once the connector is open it drops every capability but CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH (reading other users' `/proc` entries and executables).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory, Parser};
use daemoneye_io::collector::process::ReadOptions;
use daemoneye_io::collector::process::monitor::{
    self, MonitorControl, MonitorOptions, MonitorSink,
};
use daemoneye_io::collector::process::tasks::ProcessTasks;
use daemoneye_io::collector::{
    BoxFuture, Collector, CollectorBuilder, CollectorSettings, EventSender, EventSource,
    SourceCaps, SourceContext, SourceError, SourceHealth, SourceStatus, TaskOutcome,
};
use daemoneye_io::store::{EventStore, NewEvent, StoreConfig};
use daemoneye_proto::pb::control::Task;

/// procmond: DaemonEye's process collector.
///
/// Under daemoneye-agent it needs no flags. Settings also come from a TOML file
/// (DAEMONEYE_PROCMOND_CONFIG) and DAEMONEYE_PROCMOND_<KEY> variables (INTERVAL_SECS,
/// COMPUTE_HASHES, WAL, LOG_LEVEL, ...; MAX_PROCESSES, ENHANCED_METADATA, SCAN_ONLY);
/// flags win over both.
#[derive(Debug, Parser)]
#[command(name = "procmond", version)]
struct Args {
    /// Broker socket (actor mode). Default: DAEMONEYE_BROKER_SOCKET.
    #[arg(long, value_name = "PATH")]
    broker: Option<PathBuf>,
    /// The id to register under (the agent passes the collector's `[[collectors]]` name).
    #[arg(long, env = "DAEMONEYE_COLLECTOR_ID", default_value = "procmond")]
    collector_id: String,
    /// This collector's state directory (the agent passes one inside its own).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds between reconciliation scans (5 to 3600; default 30).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(5..=3600))]
    interval: Option<u64>,
    /// Most processes tracked and read per scan; 0 is unlimited (the default).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    max_processes: Option<usize>,
    /// Log filter (a level, or tracing directives).
    #[arg(long)]
    log_level: Option<String>,
    /// Standalone mode: write events to the event store at PATH instead of a broker.
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
    /// Write-ahead log of events not yet acknowledged by the broker. Default: procmond.wal
    /// in the state directory.
    #[arg(long, value_name = "PATH", conflicts_with = "no_wal")]
    wal: Option<PathBuf>,
    /// Publish without a WAL: events not acknowledged when procmond dies are lost.
    #[arg(long)]
    no_wal: bool,
    /// Most events held in the WAL waiting for a PubAck (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_events_in_flight: Option<u64>,
    /// Add each executable's SHA-256 (`exe_sha256`), cached by device, inode, size, mtime.
    #[arg(long)]
    compute_hashes: bool,
    /// Add environment variable names, the open file count and the capability sets.
    #[arg(long)]
    enhanced_metadata: bool,
    /// Do not use the kernel's process connector: scan every --interval only.
    #[arg(long)]
    scan_only: bool,
}

fn env_flag(key: &str) -> Option<String> {
    std::env::var(format!("DAEMONEYE_PROCMOND_{key}")).ok()
}

/// One of procmond's own numbers: the flag, else `DAEMONEYE_PROCMOND_<KEY>`, else the
/// settings file's key, else 0.
fn own_number(flag: Option<usize>, key: &str, file: &toml::Table) -> Result<usize, String> {
    if let Some(n) = flag {
        return Ok(n);
    }
    if let Some(v) = env_flag(key) {
        return v
            .parse()
            .map_err(|_| format!("DAEMONEYE_PROCMOND_{key}={v:?}: expected a number, 0 or more"));
    }
    let name = key.to_ascii_lowercase();
    match file.get(&name) {
        None => Ok(0),
        Some(v) => v
            .as_integer()
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| format!("settings file: {name} = {v}: expected a number, 0 or more")),
    }
}

/// One of procmond's own switches: set by its flag, else `DAEMONEYE_PROCMOND_<KEY>`, else
/// the settings file's key.
fn own_switch(flag: bool, key: &str, file: &toml::Table) -> Result<bool, String> {
    if flag {
        return Ok(true);
    }
    if let Some(v) = env_flag(key) {
        return match v.as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            other => Err(format!(
                "DAEMONEYE_PROCMOND_{key}={other:?}: expected true or false"
            )),
        };
    }
    let name = key.to_ascii_lowercase();
    match file.get(&name) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("settings file: {name} = {v}: expected true or false")),
    }
}

fn main() -> ExitCode {
    let args: Args = daemoneye_io::args::parse_or_exit(Args::command());
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("procmond: {e}");
        ExitCode::FAILURE
    };
    let broker = args
        .broker
        .clone()
        .or_else(|| std::env::var_os("DAEMONEYE_BROKER_SOCKET").map(PathBuf::from));
    let database = args.database.clone();
    let (flags, collector_id) = (
        (args.max_processes, args.enhanced_metadata, args.scan_only),
        args.collector_id.clone(),
    );
    let builder = settings(args, broker.clone());
    let file = match builder.own_settings() {
        Ok(table) => table,
        Err(e) => return fail(&e),
    };
    let own = (
        own_number(flags.0, "MAX_PROCESSES", &file),
        own_switch(flags.1, "ENHANCED_METADATA", &file),
        own_switch(flags.2, "SCAN_ONLY", &file),
    );
    let (max_processes, enhanced_metadata, scan_only) = match own {
        (Ok(m), Ok(e), Ok(s)) => (m, e, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(&e),
    };
    let source = ProcessSource {
        collector_id,
        max_processes,
        enhanced_metadata,
        scan_only,
        fallback: Arc::new(Mutex::new(None)),
        tasks: ProcessTasks::new(true),
    };
    if broker.is_none() {
        let Some(database) = database else {
            return fail(
                &"no broker: run it under daemoneye-agent, pass --broker PATH, or --database PATH for standalone mode",
            );
        };
        return match builder.settings() {
            Ok(settings) => standalone(&settings, source, database),
            Err(e) => fail(&e),
        };
    }
    builder.source(source).main()
}

/// The runtime's settings: defaults, the file, the environment, then these flags.
fn settings(args: Args, broker: Option<PathBuf>) -> CollectorBuilder {
    Collector::builder("procmond")
        .collector_type("process")
        .on_thread_start(drop_privileges)
        .allow_env(&["MAX_PROCESSES", "ENHANCED_METADATA", "SCAN_ONLY"])
        .configure(move |s| {
            s.collector_id = Some(args.collector_id);
            s.broker_socket = broker;
            if let Some(dir) = args.state_dir {
                s.state_dir = Some(dir);
            }
            if let Some(interval) = args.interval {
                s.interval_secs = interval;
            }
            if let Some(level) = args.log_level {
                s.log_level = level;
            }
            if let Some(wal) = args.wal {
                s.wal = Some(wal);
            }
            if args.no_wal {
                s.no_wal = true;
            }
            if let Some(n) = args.max_events_in_flight {
                s.max_events_in_flight = n;
            }
            if args.compute_hashes {
                s.compute_hashes = true;
            }
        })
}

/// Standalone: the monitor on this thread, its events in the store at `database`, until
/// SIGTERM or SIGINT.
fn standalone(settings: &CollectorSettings, source: ProcessSource, database: PathBuf) -> ExitCode {
    if let Err(e) = daemoneye_io::init_logging(&settings.log_level) {
        eprintln!("procmond: {e}");
        return ExitCode::FAILURE;
    }
    let store = match EventStore::open(&database, StoreConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procmond: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = stop_on_signals(stop.clone()) {
        eprintln!("procmond: cannot handle SIGTERM and SIGINT: {e}");
        return ExitCode::FAILURE;
    }
    let options = source.options(
        Duration::from_secs(settings.interval_secs),
        settings.compute_hashes,
    );
    tracing::info!(database = %database.display(), "standalone: storing process events");
    let (_controls, controls_rx) = std::sync::mpsc::channel();
    let mut sink = StoreSink {
        store,
        pending: Vec::new(),
        failed: false,
    };
    monitor::run(options, controls_rx, stop, &mut sink);
    sink.flush();
    if sink.failed {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Sets `flag` when SIGTERM or SIGINT arrives: both are blocked in this thread (and so in
/// every thread started after) and one thread waits for them; no handler code.
fn stop_on_signals(flag: Arc<AtomicBool>) -> Result<(), nix::Error> {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::SIGTERM);
    set.add(nix::sys::signal::SIGINT);
    set.thread_block()?;
    std::thread::Builder::new()
        .name("procmond-signals".into())
        .spawn(move || {
            drop_privileges();
            if set.wait().is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}

/// Events into the store, one transaction per round.
struct StoreSink {
    store: EventStore,
    pending: Vec<NewEvent>,
    failed: bool,
}

impl MonitorSink for StoreSink {
    fn emit(&mut self, topic: &'static str, payload: Bytes) {
        self.pending.push(NewEvent {
            topic: topic.to_string(),
            publisher: String::new(),
            sequence: 0,
            payload,
        });
    }

    fn detail(&mut self, line: String) {
        tracing::info!("{line}");
    }

    fn error(&mut self, message: String) {
        tracing::warn!(error = %message, "process source");
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let now = daemoneye_io::clock::unix_ms();
        match self.store.append_batch(now, &self.pending) {
            Ok(_) => tracing::debug!(events = self.pending.len(), "stored"),
            Err(e) => {
                tracing::error!(error = %e, dropped = self.pending.len(), "could not store events");
                self.failed = true;
            }
        }
        self.pending.clear();
    }
}

/// The process source on the collector runtime.
struct ProcessSource {
    collector_id: String,
    max_processes: usize,
    enhanced_metadata: bool,
    scan_only: bool,
    /// Why it scans instead of watching in real time, when it does.
    fallback: Arc<Mutex<Option<String>>>,
    /// Serves `process` tasks (hash, ancestry, open files).
    tasks: ProcessTasks,
}

impl ProcessSource {
    fn options(&self, interval: Duration, compute_hashes: bool) -> MonitorOptions {
        MonitorOptions {
            collector_id: self.collector_id.clone(),
            interval,
            max_processes: self.max_processes,
            read: ReadOptions {
                enhanced_metadata: self.enhanced_metadata,
                compute_hashes,
            },
            force_scan: self.scan_only,
            drop_privileges: true,
        }
    }
}

/// Events to the runtime's queue; the mode to the heartbeats.
struct BusSink {
    events: EventSender,
    status: SourceStatus,
    fallback: Arc<Mutex<Option<String>>>,
    opened: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MonitorSink for BusSink {
    fn emit(&mut self, topic: &'static str, payload: Bytes) {
        // A full queue past the send timeout drops the event and counts it.
        let _ = self.events.blocking_send(topic, payload);
    }

    fn detail(&mut self, line: String) {
        tracing::info!("{line}");
        let scanning = line.starts_with("scanning");
        if let Ok(mut f) = self.fallback.lock() {
            *f = scanning.then(|| line.clone());
        }
        self.status.set_detail(line);
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(());
        }
    }

    fn error(&mut self, message: String) {
        self.status.report_error(message);
    }
}

impl EventSource for ProcessSource {
    fn name(&self) -> &str {
        "process"
    }

    fn capabilities(&self) -> SourceCaps {
        let mut caps = SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE;
        if cfg!(target_os = "linux") && !self.scan_only {
            caps |= SourceCaps::REALTIME | SourceCaps::KERNEL_LEVEL;
        }
        caps
    }

    fn start(&self, mut ctx: SourceContext) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async move {
            let config = *ctx.config.borrow_and_update();
            let options = self.options(config.interval, config.compute_hashes);
            let (controls, controls_rx) = std::sync::mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
            let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
            let mut sink = BusSink {
                events: ctx.events.clone(),
                status: ctx.status.clone(),
                fallback: self.fallback.clone(),
                opened: Some(opened_tx),
            };
            let thread_stop = stop.clone();
            std::thread::Builder::new()
                .name("procmon".into())
                .spawn(move || {
                    monitor::run(options, controls_rx, thread_stop, &mut sink);
                    let _ = done_tx.send(());
                })
                .map_err(SourceError::new)?;
            // The connector is open (or refused) once the monitor says how it collects:
            // this thread's capabilities go now (the monitor's threads drop their own).
            if opened_rx.await.is_ok() {
                drop_privileges();
            }
            loop {
                tokio::select! {
                    _ = ctx.shutdown.wait() => break,
                    _ = &mut done_rx => return Err(SourceError::new("the process monitor stopped")),
                    changed = ctx.config.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let c = *ctx.config.borrow_and_update();
                        let _ = controls.send(MonitorControl::Settings {
                            interval: c.interval,
                            compute_hashes: c.compute_hashes,
                        });
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = done_rx.await;
            Ok(())
        })
    }

    fn task_capabilities(&self) -> SourceCaps {
        SourceCaps::PROCESS
    }

    fn handle_task(&self, task: Task) -> BoxFuture<'_, TaskOutcome> {
        Box::pin(self.tasks.handle(task))
    }

    fn health_check(&self) -> BoxFuture<'_, SourceHealth> {
        Box::pin(async move {
            match self.fallback.lock().ok().and_then(|f| f.clone()) {
                Some(why) => SourceHealth::Degraded(why),
                None => SourceHealth::Healthy,
            }
        })
    }
}

#[cfg(target_os = "linux")]
fn drop_privileges() {
    use daemoneye_io::collector::process::privileges;
    // It logs what it kept; not root to begin with, there is nothing to drop.
    if let Err(e) = privileges::drop_to_minimum() {
        tracing::debug!(error = %e, "capabilities not dropped");
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_privileges() {}
