//! The process collector's simulation: the real [`ProcessTable`] driven by a seeded virtual
//! process world, in virtual time, with its own deadlines, and the invariants checked after
//! every step (`daemoneye-sim --procmon`).
//!
//! The world ([`world`]) forks, execs (in place, sometimes setuid), changes uids and exits,
//! with pids reused from a small pid space, processes that live a few milliseconds, and
//! zombies. Its execs and exits go through the kernel connector's socket, a bounded FIFO that
//! drops when full (ENOBUFS once per congestion); the source reads it at a seed-chosen pace
//! with stalls, so overruns come in bursts, reads `/proc` at delivery (partial when the
//! process is gone), reports the overrun and, once the socket is read empty, its end. A scan
//! the table asks for lists `/proc` at one tick and reads each pid over the following steps
//! while the world goes on. The seed chooses all of it (swarm style): pid space, socket
//! size, reader pace and stalls, the activity mix, scan length and failures, the interval,
//! the snapshot's part budget, a process limit.
//!
//! A run is a safety phase (`steps`), then liveness: the world stops, the socket drains,
//! and a clean scan must leave the table equal to the world (`procmon-reconciled`).
//!
//! Invariants ([`model`]): `procmon-unique-new` (no identity announced twice),
//! `procmon-one-per-pid`, `procmon-no-exit-before-new`, `procmon-single-exit`,
//! `procmon-no-false-exit` (never an EXIT of a live process), `procmon-pid-reuse` (never a
//! MODIFIED across a reuse), `procmon-exit-code`, `procmon-exit-by-pid` (every delivered
//! exit reported, at least by pid with its code), `procmon-unseen`, `procmon-announced`
//! (everything alive through a scan is announced), `procmon-snapshot` (numbered parts under
//! the budget, before any scan NEW), `procmon-rescan` (an overrun gets a scan),
//! `procmon-interval` (a scan at least every interval), `procmon-bounded` (the process
//! limit) and `procmon-reconciled` (whenever nothing is queued or lost and the last scan was
//! clean, the table and a reader's view equal the world, fields included). Where the
//! table cannot know (after a loss, until a clean scan), `procmon-unique-new`,
//! `procmon-exit-code` and `procmon-exit-by-pid` are relaxed as `model.rs` says.

mod model;
mod world;

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::procmon::table::{Output, ProcessEvent, ProcessTable, ScanResult, TableConfig};
use daemoneye_core::rng::SeededRng;

use crate::link::chance;
use crate::report::{EventLog, Violation};
use model::{Cause, Model};
use world::{KernelMsg, Procs, Recv, Socket, TrueId};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcmonConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Steps of the safety phase.
    pub steps: u64,
    /// Print every event.
    pub verbose: bool,
    /// Run the broken table that takes a reused pid's exec for a re-exec; it must be caught.
    pub canary: bool,
}

impl ProcmonConfig {
    /// Seed `seed`, 5,000 steps, quiet, no canary.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: 5000,
            verbose: false,
            canary: false,
        }
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone, Default)]
pub struct ProcmonOutcome {
    /// Steps taken (both phases).
    pub steps: u64,
    /// Hash of the whole event trace: equal for equal seeds.
    pub trace: u64,
    /// Processes forked, execs, exits in the world.
    pub forks: u64,
    /// Execs in the world.
    pub execs: u64,
    /// Exits in the world.
    pub exits: u64,
    /// User id changes without an exec in the world.
    pub setuids: u64,
    /// Messages the socket dropped.
    pub lost: u64,
    /// Exec reads that found the process gone (partial) or a zombie.
    pub partial_reads: u64,
    /// Execs of a pid that had another holder before (reuse).
    pub reuses: u64,
    /// The table's counters at the end.
    pub stats: daemoneye_core::procmon::table::TableStats,
    /// Times the table was checked equal to the world.
    pub reconciled_checks: u64,
}

/// The seed's choices.
#[derive(Debug, Clone)]
struct Swarm {
    pid_space: u32,
    socket: usize,
    reader_pace: u64,
    stall: f64,
    spawn: u64,
    exec: u64,
    exit: u64,
    setuid: u64,
    fork_only: f64,
    zombie: f64,
    scan_reads: u64,
    scan_failure: f64,
    interval_s: u64,
    part_budget: usize,
    max_processes: usize,
    burst: f64,
}

impl Swarm {
    fn pick(rng: &mut SeededRng) -> Self {
        let pid_space = 4 + rng.below(45) as u32;
        Self {
            pid_space,
            socket: 1 + rng.below(32) as usize,
            reader_pace: 1 + rng.below(4),
            stall: [0.0, 0.01, 0.05][rng.below(3) as usize],
            spawn: 1 + rng.below(6),
            exec: rng.below(4),
            exit: 1 + rng.below(6),
            setuid: rng.below(2),
            fork_only: [0.0, 0.1, 0.3][rng.below(3) as usize],
            zombie: [0.0, 0.3, 0.8][rng.below(3) as usize],
            scan_reads: 1 + rng.below(4),
            scan_failure: [0.0, 0.0, 0.1][rng.below(3) as usize],
            interval_s: 5 + rng.below(26),
            part_budget: 250 + rng.below(3000) as usize,
            max_processes: if rng.below(8) == 0 {
                2 + rng.below(u64::from(pid_space)) as usize
            } else {
                0
            },
            burst: [0.0, 0.02, 0.1][rng.below(3) as usize],
        }
    }
}

/// A scan the table asked for, as it runs.
#[derive(Debug)]
struct ScanRun {
    /// Set at the step after the request.
    listed_at: Option<u64>,
    to_read: Vec<u32>,
    found: Vec<daemoneye_proto::pb::events::ProcessInfo>,
    /// Alive at the listing.
    alive_at_listing: Vec<TrueId>,
}

struct Sim {
    rng: SeededRng,
    swarm: Swarm,
    table: ProcessTable,
    procs: Procs,
    socket: Socket,
    model: Model,
    events: EventLog,
    now: Instant,
    step: u64,
    /// The source is between an overrun and the socket's next empty read.
    draining: bool,
    stalled_until: u64,
    bursting_until: u64,
    scan: Option<ScanRun>,
    /// The listing tick of the last scan completed while the model was not lossy.
    last_clean_listing: Option<u64>,
    last_scan_end: Instant,
    outcome: ProcmonOutcome,
}

fn tick_of(now: Instant) -> u64 {
    now.as_nanos() / 1_000_000
}

fn at_tick(tick: u64) -> Instant {
    Instant::from_nanos(tick * 1_000_000)
}

/// Runs one seed of the process collector's simulation.
pub fn run_procmon(cfg: &ProcmonConfig) -> Result<ProcmonOutcome, Violation> {
    let mut rng = SeededRng::new(cfg.seed ^ 0x7072_6f63_6d6f_6e00);
    let swarm = Swarm::pick(&mut rng);
    let mut events = EventLog::new(cfg.verbose, cfg.seed, " --procmon");
    if cfg.verbose {
        println!("seed={} swarm: {swarm:?}", cfg.seed);
    }
    events.record(0, "0", format!("swarm {swarm:?}"));
    let mut procs = Procs::new(swarm.pid_space);
    // What runs before the collector starts.
    let mut tick = 10;
    for _ in 0..rng.below(u64::from(swarm.pid_space)) {
        tick += 1 + rng.below(5);
        let parent = *procs.live_ids().last().map(|(p, _)| p).unwrap_or(&1);
        if let Some(pid) = procs.fork(parent, tick) {
            procs.exec(pid, rng.below(100), false);
        }
    }
    tick += 1000;
    let config = TableConfig {
        reconcile_interval: Duration::from_secs(swarm.interval_s),
        max_processes: swarm.max_processes,
        snapshot_part_bytes: swarm.part_budget,
        canary_reuse_as_modified: cfg.canary,
        ..TableConfig::default()
    };
    let now = at_tick(tick);
    let mut sim = Sim {
        rng,
        socket: Socket::new(swarm.socket),
        table: ProcessTable::new(config, now),
        swarm,
        procs,
        model: Model::default(),
        events,
        now,
        step: 0,
        draining: false,
        stalled_until: 0,
        bursting_until: 0,
        scan: None,
        last_clean_listing: None,
        last_scan_end: now,
        outcome: ProcmonOutcome::default(),
    };
    sim.drain(Cause::Other)?;
    for _ in 0..cfg.steps {
        sim.step_once(true)?;
    }
    sim.liveness()?;
    sim.outcome.steps = sim.step;
    sim.outcome.trace = sim.events.hash;
    sim.outcome.lost = sim.socket.lost;
    sim.outcome.stats = sim.table.stats().clone();
    Ok(sim.outcome)
}

impl Sim {
    fn log(&mut self, event: String) {
        let stamp = format!("{} t{}", self.step, tick_of(self.now));
        self.events.record(self.step, &stamp, event);
    }

    fn violation(&self, (invariant, detail): model::Failure) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }

    fn tick(&self) -> u64 {
        tick_of(self.now)
    }

    /// One step: time passes (to the table's deadline at most), zombies are reaped, a
    /// requested scan lists `/proc`, the world acts, the source reads the socket, the scan
    /// reads, the timer fires; then the step's invariants.
    fn step_once(&mut self, world_on: bool) -> Result<(), Violation> {
        self.step += 1;
        let tick = self.tick();
        if world_on && chance(&mut self.rng, self.swarm.burst) {
            self.bursting_until = tick + 20 + self.rng.below(300);
        }
        let gap = if tick < self.bursting_until {
            1
        } else {
            1 + self.rng.below(40)
        };
        let mut next = tick + gap;
        if let Some((due, _)) = self.table.poll_timeout() {
            next = next.min(tick_of(due).max(tick + 1));
        }
        self.now = at_tick(next);
        let tick = next;
        self.procs.reap(tick);
        if let Some(scan) = &mut self.scan
            && scan.listed_at.is_none()
        {
            scan.listed_at = Some(tick);
            scan.to_read = self.procs.by_pid.keys().copied().collect();
            scan.alive_at_listing = self.procs.live_ids();
            let n = scan.to_read.len();
            self.log(format!("scan lists {n} pids"));
        }
        if world_on {
            self.world_act(tick);
        }
        self.read_socket(world_on)?;
        self.scan_progress()?;
        if self
            .table
            .poll_timeout()
            .is_some_and(|(due, _)| due <= self.now)
        {
            self.table.handle_timeout(self.now);
            self.drain(Cause::Other)?;
        }
        if world_on && self.rng.below(2000) == 0 {
            let mut config = self.table.config().clone();
            config.reconcile_interval = Duration::from_secs(5 + self.rng.below(26));
            self.log(format!("config interval {:?}", config.reconcile_interval));
            self.table.set_config(self.now, config);
            self.drain(Cause::Other)?;
        }
        self.check_step()
    }

    fn world_act(&mut self, tick: u64) {
        let s = &self.swarm;
        let total = s.spawn + s.exec + s.exit + s.setuid + 2;
        let mut roll = self.rng.below(total);
        let live = self.procs.live_pids();
        let pick = |rng: &mut SeededRng| {
            (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize])
        };
        if roll < s.spawn {
            let parent = pick(&mut self.rng).unwrap_or(1);
            let Some(pid) = self.procs.fork(parent, tick) else {
                return;
            };
            self.outcome.forks += 1;
            if self.procs.exited.keys().any(|(p, _)| *p == pid) {
                self.outcome.reuses += 1;
            }
            if chance(&mut self.rng, self.swarm.fork_only) {
                self.log(format!("fork {pid} (start {tick}) of {parent}, no exec"));
                return;
            }
            let image = self.rng.below(100);
            self.procs.exec(pid, image, false);
            self.log(format!("fork+exec {pid} (start {tick}) of {parent}"));
            self.kernel(KernelMsg::Exec {
                id: (pid, tick),
                at: tick,
            });
            return;
        }
        roll -= s.spawn;
        if roll < s.exec {
            let Some(pid) = pick(&mut self.rng) else {
                return;
            };
            let setuid = self.rng.below(10) == 0;
            let image = self.rng.below(100);
            self.procs.exec(pid, image, setuid);
            let start = self.procs.by_pid[&pid].start;
            self.log(format!("exec {pid} in place (setuid {setuid})"));
            self.kernel(KernelMsg::Exec {
                id: (pid, start),
                at: tick,
            });
            return;
        }
        roll -= s.exec;
        if roll < s.exit {
            let Some(pid) = pick(&mut self.rng) else {
                return;
            };
            let code = self.rng.below(256) as i32;
            let reap = if chance(&mut self.rng, self.swarm.zombie) {
                tick + 1 + self.rng.below(100)
            } else {
                tick
            };
            let Some(id) = self.procs.exit(pid, code, reap) else {
                return;
            };
            self.procs.reap(tick);
            self.log(format!("exit {id:?} code {code} reaped at {reap}"));
            self.kernel(KernelMsg::Exit { id, at: tick, code });
            return;
        }
        roll -= s.exit;
        if roll < s.setuid
            && let Some(pid) = pick(&mut self.rng)
        {
            let uid = self.rng.below(3) as u32 * 500;
            self.procs.setuid(pid, uid, tick);
            let start = self.procs.by_pid[&pid].start;
            self.log(format!("setuid {pid} -> {uid}"));
            self.kernel(KernelMsg::Credentials {
                id: (pid, start),
                at: tick,
            });
        }
    }

    fn kernel(&mut self, msg: KernelMsg) {
        match msg {
            KernelMsg::Exec { .. } => self.outcome.execs += 1,
            KernelMsg::Exit { .. } => self.outcome.exits += 1,
            KernelMsg::Credentials { .. } => self.outcome.setuids += 1,
        }
        if !self.socket.send(msg) {
            self.log(format!("socket drops {msg:?}"));
        }
    }

    /// The source reads up to its pace (none while stalled).
    fn read_socket(&mut self, world_on: bool) -> Result<(), Violation> {
        let tick = self.tick();
        if world_on && tick >= self.stalled_until && chance(&mut self.rng, self.swarm.stall) {
            self.stalled_until = tick + 10 + self.rng.below(400);
            self.log(format!("reader stalls until {}", self.stalled_until));
        }
        if world_on && tick < self.stalled_until {
            return Ok(());
        }
        let pace = if world_on { self.swarm.reader_pace } else { 64 };
        for _ in 0..pace {
            match self.socket.recv() {
                None => {
                    if self.draining {
                        self.overrun_ended()?;
                    }
                    break;
                }
                Some(Recv::Overrun) => {
                    self.log("read: ENOBUFS".into());
                    self.draining = true;
                    self.model.overrun();
                    self.table.handle_overrun(self.now, tick);
                    self.drain(Cause::Other)?;
                }
                Some(Recv::Msg(msg)) => {
                    self.deliver(msg)?;
                    if self.draining && self.socket.is_empty() {
                        self.overrun_ended()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn overrun_ended(&mut self) -> Result<(), Violation> {
        self.draining = false;
        self.log("read: socket empty after the overrun".into());
        self.model.overrun_ended();
        self.table.handle_overrun_ended(self.now, self.tick());
        self.drain(Cause::Other)
    }

    fn deliver(&mut self, msg: KernelMsg) -> Result<(), Violation> {
        match msg {
            KernelMsg::Exec { id, at } => {
                let rss = self.rng.below(1 << 20);
                let (info, how) = self.procs.exec_read(id, rss);
                if how != "full" {
                    self.outcome.partial_reads += 1;
                }
                self.log(format!("deliver exec {id:?}@{at}, read {how}"));
                self.table.handle_exec(self.now, at, info);
                self.drain(Cause::Exec(id))
            }
            KernelMsg::Credentials { id, at } => {
                let rss = self.rng.below(1 << 20);
                let (info, how) = self.procs.exec_read(id, rss);
                self.log(format!("deliver setuid {id:?}@{at}, read {how}"));
                // It tells the table only while the table holds that process; otherwise
                // a scan listed after the change does.
                let held = self.table.get(id.0).is_some_and(|p| p.start_ticks == id.1);
                if how == "full"
                    && held
                    && let Some(p) = self.procs.by_pid.get_mut(&id.0)
                {
                    p.uid_reported = true;
                }
                self.table.handle_credentials(self.now, at, info);
                self.drain(Cause::Credentials(id))
            }
            KernelMsg::Exit { id, at, code } => {
                self.log(format!("deliver exit {id:?}@{at} code {code}"));
                self.table.handle_exit(self.now, at, id.0, Some(code));
                self.drain(Cause::Exit(id, code))?;
                self.model
                    .check_exit_reported(id, code)
                    .map_err(|f| self.violation(f))
            }
        }
    }

    fn scan_progress(&mut self) -> Result<(), Violation> {
        let Some(scan) = &mut self.scan else {
            return Ok(());
        };
        let Some(listed_at) = scan.listed_at else {
            return Ok(());
        };
        for _ in 0..self.swarm.scan_reads {
            let Some(pid) = scan.to_read.first().copied() else {
                break;
            };
            scan.to_read.remove(0);
            let rss = self.rng.below(1 << 20);
            if let Some(info) = self.procs.scan_read(pid, rss) {
                scan.found.push(info);
            }
        }
        if !scan.to_read.is_empty() {
            return Ok(());
        }
        let Some(scan) = self.scan.take() else {
            return Ok(());
        };
        self.last_scan_end = self.now;
        if chance(&mut self.rng, self.swarm.scan_failure) {
            self.log("scan fails".into());
            self.model.scan_completed_failed();
            self.table.handle_scan_failed(self.now);
            return self.drain(Cause::Other);
        }
        let clean = self.model.scan_clean && !self.model.draining;
        self.log(format!(
            "scan result: {} processes listed at {listed_at}",
            scan.found.len()
        ));
        self.procs.mark_scanned(&scan.found);
        self.table.handle_scan(
            self.now,
            ScanResult {
                listed_at,
                finished_at: self.tick(),
                processes: scan.found,
            },
        );
        self.model.scan_completed();
        if clean {
            self.last_clean_listing = Some(listed_at);
        }
        self.drain(Cause::Other)?;
        let throughout: Vec<TrueId> = scan
            .alive_at_listing
            .into_iter()
            .filter(|id| self.procs.is_alive(*id))
            .collect();
        if self.swarm.max_processes == 0 {
            self.model
                .check_announced(&throughout)
                .map_err(|f| self.violation(f))?;
        }
        Ok(())
    }

    /// Drains the table's outputs, checking each.
    fn drain(&mut self, cause: Cause) -> Result<(), Violation> {
        self.model.unseen_now.clear();
        self.model.exits_now.clear();
        while let Some(out) = self.table.poll_output() {
            let ev = match out {
                Output::Scan => {
                    self.log("table asks for a scan".into());
                    if self.scan.is_some() {
                        return Err(self.violation((
                            "procmon-rescan",
                            "a second scan asked for while one runs".into(),
                        )));
                    }
                    self.model.scan_requested();
                    self.scan = Some(ScanRun {
                        listed_at: None,
                        to_read: Vec::new(),
                        found: Vec::new(),
                        alive_at_listing: Vec::new(),
                    });
                    continue;
                }
                Output::Publish(ev) => *ev,
            };
            self.log(describe(&ev));
            self.model
                .check_event(&ev, cause, &self.procs, self.swarm.part_budget)
                .map_err(|f| self.violation(f))?;
        }
        Ok(())
    }

    /// The invariants checked after every step.
    fn check_step(&mut self) -> Result<(), Violation> {
        let fail = |name: &'static str, detail: String| Err((name, detail));
        let result: Result<(), model::Failure> = (|| {
            if self.model.owed_scan && !self.table.scan_in_flight() {
                return fail("procmon-rescan", "an overrun got no scan".into());
            }
            if !self.table.scan_in_flight() {
                let interval = self.table.config().reconcile_interval;
                match self.table.poll_timeout() {
                    None => return fail("procmon-interval", "no scan scheduled".into()),
                    Some((due, _)) if due > self.last_scan_end + interval => {
                        return fail(
                            "procmon-interval",
                            format!("next scan at {due:?}, last ended {:?}", self.last_scan_end),
                        );
                    }
                    Some(_) => {}
                }
            }
            let max = self.swarm.max_processes;
            if max > 0 && self.table.len() > max {
                return fail(
                    "procmon-bounded",
                    format!("{} processes over the limit {max}", self.table.len()),
                );
            }
            Ok(())
        })();
        result.map_err(|f| self.violation(f))?;
        self.check_reconciled(false)
    }

    /// Whenever nothing is queued or lost and the last scan was clean: the table and a
    /// reader's view are the world (`force`: it must be so now).
    fn check_reconciled(&mut self, force: bool) -> Result<(), Violation> {
        let quiet = self.socket.is_quiet()
            && !self.draining
            && self.scan.is_none()
            && !self.model.lossy
            && self.table.snapshot_done();
        let Some(listing) = self.last_clean_listing.filter(|_| quiet) else {
            if force {
                return Err(self.violation((
                    "procmon-liveness",
                    format!(
                        "not settled: socket quiet {} draining {} scan {} lossy {}",
                        self.socket.is_quiet(),
                        self.draining,
                        self.scan.is_some(),
                        self.model.lossy
                    ),
                )));
            }
            return Ok(());
        };
        self.outcome.reconciled_checks += 1;
        // A child that never exec'd is known once a scan has read it (the clean scan read
        // every one alive at its listing).
        let expected: Vec<TrueId> = self
            .procs
            .by_pid
            .iter()
            .filter(|(_, p)| p.zombie_until.is_none() && (p.execd || p.scanned))
            .map(|(pid, p)| (*pid, p.start))
            .collect();
        let table: Vec<(u32, Option<u64>)> = self.table.identities().collect();
        let want: Vec<(u32, Option<u64>)> = expected.iter().map(|(p, s)| (*p, Some(*s))).collect();
        let expected = if self.swarm.max_processes > 0 {
            // At a limit the table holds what it had room for: a part of the world.
            if let Some(extra) = table.iter().find(|id| !want.contains(id)) {
                return Err(self.violation((
                    "procmon-reconciled",
                    format!("table has {extra:?}, not in the world {want:?}"),
                )));
            }
            table
                .iter()
                .filter_map(|(p, s)| s.map(|s| (*p, s)))
                .collect()
        } else {
            expected
        };
        if self.swarm.max_processes == 0 && table != want {
            return Err(self.violation((
                "procmon-reconciled",
                format!("table {table:?}, world {want:?}"),
            )));
        }
        let mirror: Vec<TrueId> = self.model.mirror.values().copied().collect();
        if mirror != expected {
            return Err(self.violation((
                "procmon-reconciled",
                format!("a reader believes {mirror:?}, world {expected:?}"),
            )));
        }
        // A refused exec leaves what a scan read before it until the next scan.
        let fields = self.table.stats().refused == 0;
        for (pid, start) in expected.into_iter().filter(|_| fields) {
            let p = &self.procs.by_pid[&pid];
            let Some(info) = self.table.get(pid) else {
                continue;
            };
            // Known from a scan listed after it, or from its connector message.
            let uid_known = p.uid_changed_at < listing || p.uid_reported;
            if info.exe != p.exe || info.cmdline != p.cmdline || (uid_known && info.uid != p.uid) {
                return Err(self.violation((
                    "procmon-reconciled",
                    format!(
                        "{:?}: table has {} {:?} uid {}, world {} {:?} uid {}",
                        (pid, start),
                        info.exe,
                        info.cmdline,
                        info.uid,
                        p.exe,
                        p.cmdline,
                        p.uid
                    ),
                )));
            }
        }
        Ok(())
    }

    /// The world stops; the socket drains; a clean scan must settle the table within two
    /// intervals.
    fn liveness(&mut self) -> Result<(), Violation> {
        self.stalled_until = 0;
        let start = self.now;
        let limit = start + 2 * self.table.config().reconcile_interval + Duration::from_secs(5);
        let settled_before = self.outcome.reconciled_checks;
        while self.now < limit {
            self.step_once(false)?;
            if self.outcome.reconciled_checks > settled_before {
                return Ok(());
            }
        }
        self.check_reconciled(true)
    }
}

fn describe(ev: &ProcessEvent) -> String {
    match ev {
        ProcessEvent::Snapshot {
            processes,
            part,
            parts,
        } => {
            let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
            format!("SNAPSHOT {part}/{parts} {pids:?}")
        }
        ProcessEvent::New { process, source } => format!(
            "NEW {} s{} {} ({})",
            process.pid,
            process.start_ticks,
            process.exe,
            source.as_str()
        ),
        ProcessEvent::Modified {
            process,
            changed,
            source,
        } => format!(
            "MODIFIED {} s{} {changed:?} ({})",
            process.pid,
            process.start_ticks,
            source.as_str()
        ),
        ProcessEvent::Exit {
            process,
            exit_code,
            source,
            unseen,
        } => format!(
            "EXIT {} s{} code {exit_code:?} ({}{})",
            process.pid,
            process.start_ticks,
            source.as_str(),
            if *unseen { ", unseen" } else { "" }
        ),
    }
}
