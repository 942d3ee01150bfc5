//! The process monitor: the sources ([`Watch`](super::Watch) and [`scan`](super::scan))
//! driving the core's [`ProcessTable`], on a thread of its own.
//!
//! Each observation goes to the table with its time in kernel clock ticks since boot (the
//! unit of a process's start time); the table says what to publish and when to scan, and
//! this loop only reads `/proc`, feeds it, and hands each event to `emit`. Without the
//! kernel's process connector (not root, another OS, or `force_scan`) it scans at the
//! table's reconciliation interval; the detail line says which mode runs and why.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::procmon::table::{Output, ProcessTable, ScanResult, TableConfig, TableStats};
use daemoneye_core::topic::topics;
use daemoneye_proto::pb::events as pbe;
use nix::time::{ClockId, clock_gettime};
use prost::Message;

use super::procfs::BootClock;
use super::{ProcessReader, ReadOptions};

/// How the monitor runs.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// The collector id stamped on every event.
    pub collector_id: String,
    /// Time between reconciliation scans (the only scans when scanning is forced).
    pub interval: Duration,
    /// Most processes tracked and scanned; 0 is unlimited.
    pub max_processes: usize,
    /// What each read includes.
    pub read: ReadOptions,
    /// Scan only: do not open the kernel's process connector.
    pub force_scan: bool,
    /// Drop every capability reading does not need once the connector is open.
    pub drop_privileges: bool,
}

/// A change the monitor applies while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorControl {
    /// New settings: the reconciliation interval and what each read includes.
    Settings {
        /// The interval.
        interval: Duration,
        /// Hash executables.
        compute_hashes: bool,
    },
}

/// The topic of a process event of `kind`.
pub fn topic_of(kind: pbe::ProcessEventKind) -> &'static str {
    match kind {
        pbe::ProcessEventKind::Exit => topics::PROCESS_EXIT,
        pbe::ProcessEventKind::Modified => topics::PROCESS_MODIFIED,
        pbe::ProcessEventKind::Snapshot => topics::PROCESS_SNAPSHOT,
        pbe::ProcessEventKind::New | pbe::ProcessEventKind::Unspecified => topics::PROCESS_NEW,
    }
}

/// What the monitor reports as it goes.
pub trait MonitorSink {
    /// One event to publish (or store).
    fn emit(&mut self, topic: &'static str, payload: Bytes);
    /// The one-line description of how it collects changed.
    fn detail(&mut self, line: String);
    /// Something went wrong that an operator should see.
    fn error(&mut self, message: String);
    /// Called after each round of events (a place to flush a batch).
    fn flush(&mut self) {}
}

/// The kernel's clocks: ticks since boot now, and a connector timestamp in ticks.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    hz: u64,
    /// CLOCK_BOOTTIME minus CLOCK_MONOTONIC, nanoseconds (the time spent suspended).
    suspended_ns: u64,
}

fn clock_ns(id: ClockId) -> u64 {
    clock_gettime(id).map_or(0, |t| {
        (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64
    })
}

impl Ticks {
    fn read(boot: &BootClock) -> Self {
        let boot_ns = clock_ns(ClockId::CLOCK_BOOTTIME);
        let mono_ns = clock_ns(ClockId::CLOCK_MONOTONIC);
        Ticks {
            hz: boot.hz.max(1),
            suspended_ns: boot_ns.saturating_sub(mono_ns),
        }
    }

    fn now(&self) -> u64 {
        self.of_boot_ns(clock_ns(ClockId::CLOCK_BOOTTIME))
    }

    /// A process connector timestamp (CLOCK_MONOTONIC nanoseconds) in ticks since boot.
    fn of_monotonic_ns(&self, ns: u64) -> u64 {
        self.of_boot_ns(ns.saturating_add(self.suspended_ns))
    }

    fn of_boot_ns(&self, ns: u64) -> u64 {
        u64::try_from(u128::from(ns) * u128::from(self.hz) / 1_000_000_000).unwrap_or(u64::MAX)
    }
}

/// How the monitor collects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Before the connector is opened or refused.
    Starting,
    /// Real-time events from the connector (`fifo`: its thread runs under SCHED_FIFO).
    Realtime { fifo: bool },
    /// Scans only, and why.
    Scanning(String),
}

impl Mode {
    /// The detail line's start, with the scan interval in force.
    fn line(&self, interval: Duration) -> String {
        let every = interval.as_secs();
        match self {
            Mode::Starting => "starting".into(),
            Mode::Realtime { fifo } => format!(
                "realtime (netlink{}), reconciling every {every}s",
                if *fifo { ", SCHED_FIFO" } else { "" }
            ),
            Mode::Scanning(why) => format!("scanning every {every}s: {why}"),
        }
    }
}

/// The monitor's state on its thread.
struct Monitor<'a, S: MonitorSink> {
    options: MonitorOptions,
    table: ProcessTable,
    reader: ProcessReader,
    ticks: Ticks,
    origin: std::time::Instant,
    sink: &'a mut S,
    /// Real-time events arrive (the connector is live).
    realtime: bool,
    /// The processes' scheduler counts at the last scan (what lets the next skip reading
    /// again a process that has not run).
    stamps: super::RunStamps,
    /// Every id change of a process the table holds, since it was read, reached the table
    /// through the connector (real time, no overrun since the last scan that read the
    /// ids): a reconciliation scan need not read `status` again.
    ids_told: bool,
    /// How it collects (the detail line's start).
    mode: Mode,
    /// The detail line last given to the sink.
    reported: String,
}

impl<S: MonitorSink> Monitor<'_, S> {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Executes what the table asks for until it asks for nothing.
    fn drain(&mut self) {
        while let Some(output) = self.table.poll_output() {
            match output {
                Output::Publish(event) => {
                    let kind = event.kind();
                    let pb = event.into_pb(&self.options.collector_id, crate::clock::unix_ms());
                    self.sink
                        .emit(topic_of(kind), Bytes::from(pb.encode_to_vec()));
                }
                Output::Scan => {
                    let listed_at = self.ticks.now();
                    let table = &self.table;
                    let ids = !self.ids_told;
                    let processes = super::scan_known(
                        &self.reader,
                        self.options.max_processes,
                        ids,
                        |pid| table.get(pid),
                        &mut self.stamps,
                    );
                    self.ids_told = self.realtime;
                    let finished_at = self.ticks.now();
                    let now = self.now();
                    self.table.handle_scan(
                        now,
                        ScanResult {
                            listed_at,
                            finished_at,
                            processes,
                        },
                    );
                    self.report();
                }
            }
        }
        self.sink.flush();
    }

    fn apply(&mut self, control: MonitorControl) {
        match control {
            MonitorControl::Settings {
                interval,
                compute_hashes,
            } => {
                let mut read = self.options.read;
                read.compute_hashes = compute_hashes;
                self.reader.set_options(read);
                self.options.read = read;
                self.options.interval = interval;
                let mut config = self.table.config().clone();
                config.reconcile_interval = interval;
                let now = self.now();
                self.table.set_config(now, config);
                // The detail line names the interval in force.
                self.report();
            }
        }
    }

    /// How long to wait for an observation: until the table's deadline, at most 100 ms
    /// (the stop flag and the controls are checked between waits).
    fn wait(&self) -> Duration {
        let cap = Duration::from_millis(100);
        match self.table.poll_timeout() {
            Some((at, _)) => at.saturating_since(self.now()).min(cap),
            None => cap,
        }
    }

    fn on_timeout(&mut self) {
        if let Some((at, _)) = self.table.poll_timeout() {
            let now = self.now();
            if at <= now {
                self.table.handle_timeout(now);
            }
        }
    }

    /// How it collects now: the detail line, with what was lost so far.
    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.report();
    }

    /// Gives the sink the detail line when it changed: the mode and, once anything was
    /// lost, what and how much (the heartbeat's detail, `collectors list`).
    fn report(&mut self) {
        // The first line tells the sink the connector is open or refused.
        if self.mode == Mode::Starting {
            return;
        }
        let losses = losses(self.table.stats(), self.reader.stats());
        let mode = self.mode.line(self.options.interval);
        let line = if losses.is_empty() {
            mode
        } else {
            format!("{mode}; {losses}")
        };
        if line != self.reported {
            self.reported.clone_from(&line);
            self.sink.detail(line);
        }
    }
}

/// Runs the monitor on the calling thread until `stop` is set: the start-up snapshot, then
/// real-time events (or scans), reconciliation scans, and `controls` applied as they come.
pub fn run<S: MonitorSink>(
    options: MonitorOptions,
    controls: Receiver<MonitorControl>,
    stop: Arc<AtomicBool>,
    sink: &mut S,
) {
    let boot = BootClock::read();
    let ticks = Ticks::read(&boot);
    let reader = ProcessReader::new(options.read);
    let config = TableConfig {
        reconcile_interval: options.interval,
        max_processes: options.max_processes,
        ..TableConfig::default()
    };
    let origin = std::time::Instant::now();
    let table = ProcessTable::new(config, Instant::from_nanos(0));
    let mut monitor = Monitor {
        options,
        table,
        reader,
        ticks,
        origin,
        sink,
        realtime: false,
        stamps: super::RunStamps::default(),
        ids_told: false,
        mode: Mode::Starting,
        reported: String::new(),
    };
    let watch = open_watch(&mut monitor);
    // Listening before the start-up scan reads anything: every later id change is told.
    monitor.realtime = watch.is_some();
    #[cfg(target_os = "linux")]
    if monitor.options.drop_privileges {
        // Capabilities are per thread: this one drops its own (the watch's threads did).
        if let Err(e) = super::privileges::drop_to_minimum() {
            tracing::debug!(error = %e, "capabilities not dropped");
        }
    }
    monitor.drain();
    match watch {
        #[cfg(target_os = "linux")]
        Some((watch, observations)) => {
            monitor.set_mode(Mode::Realtime {
                fifo: watch.is_realtime(),
            });
            let fell_back = realtime_loop(&mut monitor, &observations, &controls, &stop);
            watch.stop();
            monitor.realtime = false;
            monitor.ids_told = false;
            if let Some(why) = fell_back {
                monitor.set_mode(Mode::Scanning(why));
                scan_loop(&mut monitor, &controls, &stop);
            }
        }
        _ => scan_loop(&mut monitor, &controls, &stop),
    }
}

#[cfg(target_os = "linux")]
type OpenWatch = Option<(super::Watch, Receiver<super::Observation>)>;
#[cfg(not(target_os = "linux"))]
type OpenWatch = Option<std::convert::Infallible>;

/// Opens the connector and starts the watch, or says why scanning runs instead.
#[cfg(target_os = "linux")]
fn open_watch<S: MonitorSink>(monitor: &mut Monitor<'_, S>) -> OpenWatch {
    use super::connector::{ConnectorOptions, ProcConnector};
    if monitor.options.force_scan {
        monitor.set_mode(Mode::Scanning(
            "real-time events turned off (--scan-only)".into(),
        ));
        return None;
    }
    let connector = match ProcConnector::open(&ConnectorOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the kernel's process connector is not available: scanning instead");
            monitor.set_mode(Mode::Scanning(e.to_string()));
            return None;
        }
    };
    let options = super::WatchOptions {
        drop_privileges: monitor.options.drop_privileges,
        ..super::WatchOptions::default()
    };
    match super::Watch::start(connector, monitor.reader.clone(), options) {
        Ok(started) => Some(started),
        Err(e) => {
            monitor.set_mode(Mode::Scanning(format!("could not start the watch: {e}")));
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn open_watch<S: MonitorSink>(monitor: &mut Monitor<'_, S>) -> OpenWatch {
    monitor.set_mode(Mode::Scanning(
        "no real-time process events on this system".into(),
    ));
    None
}

/// Real-time events until `stop`; returns why it fell back to scanning, if it did.
#[cfg(target_os = "linux")]
fn realtime_loop<S: MonitorSink>(
    monitor: &mut Monitor<'_, S>,
    observations: &Receiver<super::Observation>,
    controls: &Receiver<MonitorControl>,
    stop: &AtomicBool,
) -> Option<String> {
    use super::Observation;
    let mut overrun = false;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(control) = controls.try_recv() {
            monitor.apply(control);
        }
        match observations.recv_timeout(monitor.wait()) {
            Ok(observation) => {
                let now = monitor.now();
                let at = match &observation {
                    Observation::Exec { timestamp_ns, .. }
                    | Observation::Credentials { timestamp_ns, .. }
                    | Observation::Exit { timestamp_ns, .. }
                    | Observation::Fork { timestamp_ns, .. } => {
                        monitor.ticks.of_monotonic_ns(*timestamp_ns)
                    }
                    Observation::Overrun | Observation::Error { .. } => monitor.ticks.now(),
                };
                if overrun && !matches!(observation, Observation::Overrun) {
                    overrun = false;
                    monitor.table.handle_overrun_ended(now, at);
                }
                match observation {
                    Observation::Exec { info, .. } => monitor.table.handle_exec(now, at, *info),
                    Observation::Credentials { info, .. } => {
                        monitor.table.handle_credentials(now, at, *info)
                    }
                    Observation::Exit { pid, exit_code, .. } => {
                        monitor.table.handle_exit(now, at, pid, Some(exit_code))
                    }
                    Observation::Fork { .. } => {}
                    Observation::Overrun => {
                        overrun = true;
                        monitor.ids_told = false;
                        tracing::warn!("process events lost (socket overrun): rescanning");
                        monitor.table.handle_overrun(now, at);
                    }
                    Observation::Error { message, fatal } => {
                        monitor.sink.error(message.clone());
                        if fatal {
                            tracing::error!(error = %message, "the process connector failed: scanning instead");
                            return Some(format!("the process connector failed: {message}"));
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => monitor.on_timeout(),
            Err(RecvTimeoutError::Disconnected) => {
                return Some("the process connector's threads stopped".into());
            }
        }
        monitor.drain();
    }
    None
}

/// Scans at the table's interval until `stop`.
fn scan_loop<S: MonitorSink>(
    monitor: &mut Monitor<'_, S>,
    controls: &Receiver<MonitorControl>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match controls.recv_timeout(monitor.wait()) {
            Ok(control) => monitor.apply(control),
            Err(RecvTimeoutError::Timeout) => monitor.on_timeout(),
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(monitor.wait());
                monitor.on_timeout();
            }
        }
        monitor.drain();
    }
}

/// What was lost so far, as the detail line shows it (empty when nothing was): processes
/// gone before anything of them could be read, overruns of the connector's socket, new
/// processes refused at the process limit, and fields left unread by reason.
fn losses(table: &TableStats, reads: &super::ReadStats) -> String {
    let mut parts = Vec::new();
    let mut count = |n: u64, what: &str| {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    };
    count(
        reads.lost_to_race(),
        "processes gone before they could be read",
    );
    count(table.overruns, "connector overruns");
    count(table.refused, "processes refused at the process limit");
    let mut unread = [0u64; 3];
    for (_, reason, n) in reads.snapshot() {
        unread[reason as usize] += n;
    }
    let [gone, denied, other] = unread;
    count(gone + denied + other, "fields unread");
    if parts.is_empty() {
        return String::new();
    }
    let mut line = format!("lost: {}", parts.join(", "));
    if gone + denied + other > 0 {
        line.push_str(&format!(" ({gone} gone, {denied} denied, {other} other)"));
    }
    line
}
