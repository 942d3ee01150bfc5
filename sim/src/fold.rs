//! Alert storms in virtual time: the real [`Folder`] (the detection engine's fold machine)
//! driven by seeded match storms, with its invariants checked after every step
//! (`daemoneye-sim --fold`).
//!
//! The seed chooses the key space (a few hot keys, a long tail), the window, the bound on
//! open windows (often small, so that eviction runs), the storm's shape (bursts of
//! thousands of matches at one instant, quiet gaps, steady trickles), how punctual the
//! driver is with the folder's deadline (on time, late, or skipping it until the next
//! match) and agent restarts (a flush). A run is the storm, then liveness: time runs past
//! every deadline and every count must be out.
//!
//! The invariants ([`FoldLedger`], also used by the core's property tests) attribute every
//! match to an alert independently of the folder:
//!
//! - `fold-raise-once`: a serial is raised once, from a match, and a key is raised again
//!   only once its previous window has ended (expired, or evicted while the folder was
//!   full, or flushed);
//! - `fold-window`: a match folds only into its key's open window, before its deadline;
//! - `fold-update`: an update follows its alert's raise, once, with the key and the first
//!   match's time of that raise, and the count of matches attributed to it;
//! - `fold-count-lost`: a window with more than one match never ends without its update
//!   (in time: by the deadline the driver handles);
//! - `fold-conservation`: raised alerts' final counts plus the open windows' counts equal
//!   the matches, after every step, and exactly the matches after liveness;
//! - `fold-bounded`: never more open windows than the bound.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::detect::fold::{Closed, FoldConfig, FoldOutput, Folder};
use daemoneye_core::rng::SeededRng;

use crate::link::chance;
use crate::report::{EventLog, Violation};

/// The fold machine as the simulation and the property tests drive it: key, match number.
pub type SimFolder = Folder<u32, u64>;
/// Its outputs.
pub type SimOutput = FoldOutput<u32, u64>;

/// A failed invariant: its name and what happened.
pub type Failure = (&'static str, String);

#[derive(Debug, Clone)]
struct AlertRecord {
    key: u32,
    opened: Instant,
    first_ms: u64,
    /// Matches the ledger attributed to it.
    counted: u64,
    /// The count its update carried.
    updated: Option<u64>,
}

/// The invariants' bookkeeping: it sees every match and every output and attributes each
/// match to one alert, independently of the folder (see the module docs).
#[derive(Debug, Clone)]
pub struct FoldLedger {
    window: Duration,
    max_open: usize,
    matches: u64,
    alerts: BTreeMap<u64, AlertRecord>,
    /// The alerts whose window the ledger holds open.
    open: BTreeSet<u64>,
    /// The open alerts in opening order, which is deadline order (ended ones are skipped).
    by_deadline: VecDeque<(Instant, u64)>,
    /// The folder's eviction counter when the ledger last looked.
    evictions_seen: u64,
    /// The final counts of the alerts whose window ended.
    closed_total: u64,
    /// Each key's newest alert.
    latest: BTreeMap<u32, u64>,
}

impl FoldLedger {
    /// A ledger for a folder configured with `config`.
    pub fn new(config: FoldConfig) -> Self {
        FoldLedger {
            window: config.window,
            max_open: config.max_open.max(1),
            matches: 0,
            alerts: BTreeMap::new(),
            open: BTreeSet::new(),
            by_deadline: VecDeque::new(),
            evictions_seen: 0,
            closed_total: 0,
            latest: BTreeMap::new(),
        }
    }

    /// Matches seen.
    pub fn matches(&self) -> u64 {
        self.matches
    }

    /// Alerts raised.
    pub fn raised(&self) -> usize {
        self.alerts.len()
    }

    /// The final counts of the alerts whose window ended, plus the counts attributed to the
    /// open ones.
    pub fn total(&self) -> u64 {
        self.closed_total
            + self
                .open
                .iter()
                .filter_map(|s| self.alerts.get(s))
                .map(|a| a.counted)
                .sum::<u64>()
    }

    /// Match `key` at `now` was handled by `folder`, which gave `outputs` (drained after
    /// it, in order).
    pub fn on_match(
        &mut self,
        now: Instant,
        key: u32,
        outputs: &[SimOutput],
        folder: &SimFolder,
    ) -> Result<(), Failure> {
        self.matches += 1;
        // The windows the match found past their deadline end first, then the evicted.
        for out in outputs {
            self.on_update(out)?;
        }
        self.close_expired(now)?;
        let mut raised_here = None;
        for out in outputs {
            let FoldOutput::Raise {
                serial,
                key: k,
                time_ms,
                ..
            } = out
            else {
                continue;
            };
            if *k != key || raised_here.is_some() {
                return Err((
                    "fold-raise-once",
                    format!("a match of key {key} raised serial {serial} of key {k}"),
                ));
            }
            if self.alerts.contains_key(serial) {
                return Err(("fold-raise-once", format!("serial {serial} raised twice")));
            }
            if let Some(prev) = self.latest.get(&key).copied()
                && self.open.contains(&prev)
            {
                // Still in its window: only an eviction may end it early, and silently
                // only with one match.
                let evicted_now = outputs.iter().any(|o| {
                    matches!(o, FoldOutput::Update { serial, closed: Closed::Evicted, .. } if *serial == prev)
                });
                let single = self.alerts.get(&prev).is_some_and(|p| p.counted == 1);
                let evicted_silently = single && folder.open_windows() >= self.max_open;
                if !(evicted_now || evicted_silently) {
                    return Err((
                        "fold-raise-once",
                        format!(
                            "key {key} raised again (serial {serial}) while serial {prev} was open"
                        ),
                    ));
                }
                self.end(prev)?;
            }
            self.alerts.insert(
                *serial,
                AlertRecord {
                    key,
                    opened: now,
                    first_ms: *time_ms,
                    counted: 1,
                    updated: None,
                },
            );
            self.open.insert(*serial);
            self.by_deadline.push_back((now + self.window, *serial));
            self.latest.insert(key, *serial);
            raised_here = Some(*serial);
        }
        if raised_here.is_none() {
            let window = self.window;
            let serial = self.latest.get(&key).copied();
            let open = serial
                .filter(|s| self.open.contains(s))
                .and_then(|s| self.alerts.get_mut(&s))
                .filter(|a| now < a.opened + window);
            match open {
                Some(a) => a.counted += 1,
                None => {
                    return Err((
                        "fold-window",
                        format!(
                            "match of key {key} at {now:?} neither raised nor folded into an open window"
                        ),
                    ));
                }
            }
        }
        self.reconcile_silent(folder)
    }

    /// The folder handled a timeout (or a flush, `flushed`) at `now` and gave `outputs`.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        flushed: bool,
        outputs: &[SimOutput],
        folder: &SimFolder,
    ) -> Result<(), Failure> {
        for out in outputs {
            if let FoldOutput::Raise { serial, .. } = out {
                return Err((
                    "fold-raise-once",
                    format!("serial {serial} raised by a timeout, not a match"),
                ));
            }
            self.on_update(out)?;
        }
        self.close_expired(now)?;
        if flushed {
            for serial in self.open.clone() {
                self.end(serial)?;
            }
        }
        self.reconcile_silent(folder)
    }

    /// The step's standing invariants against the folder's state.
    pub fn check(&self, folder: &SimFolder) -> Result<(), Failure> {
        if folder.open_windows() > self.max_open {
            return Err((
                "fold-bounded",
                format!(
                    "{} windows open, bound {}",
                    folder.open_windows(),
                    self.max_open
                ),
            ));
        }
        let mut open_total = 0;
        for serial in &self.open {
            let Some(a) = self.alerts.get(serial) else {
                continue;
            };
            let theirs = folder.open_count(&a.key);
            if theirs != Some(a.counted) {
                return Err((
                    "fold-conservation",
                    format!(
                        "serial {serial} of key {}: {} matches attributed, the folder counts {theirs:?}",
                        a.key, a.counted
                    ),
                ));
            }
            open_total += a.counted;
        }
        if folder.open_windows() != self.open.len() {
            return Err((
                "fold-conservation",
                format!(
                    "the folder holds {} windows, the ledger {}",
                    folder.open_windows(),
                    self.open.len()
                ),
            ));
        }
        if self.closed_total + open_total != self.matches || folder.stats().matches != self.matches
        {
            return Err((
                "fold-conservation",
                format!(
                    "{} in ended alerts + {open_total} open != {} matches (the folder saw {})",
                    self.closed_total,
                    self.matches,
                    folder.stats().matches
                ),
            ));
        }
        Ok(())
    }

    /// After liveness: every window ended and every count is out, exactly.
    pub fn check_drained(&self, folder: &SimFolder) -> Result<(), Failure> {
        if folder.open_windows() != 0 || !self.open.is_empty() {
            return Err((
                "fold-count-lost",
                format!(
                    "{} windows still open after liveness",
                    folder.open_windows()
                ),
            ));
        }
        if self.closed_total != self.matches {
            return Err((
                "fold-conservation",
                format!(
                    "final counts sum to {}, {} matches",
                    self.closed_total, self.matches
                ),
            ));
        }
        Ok(())
    }

    fn on_update(&mut self, out: &SimOutput) -> Result<(), Failure> {
        let FoldOutput::Update {
            serial,
            key,
            count,
            first_ms,
            ..
        } = out
        else {
            return Ok(());
        };
        let Some(a) = self.alerts.get_mut(serial) else {
            return Err((
                "fold-update",
                format!("update of serial {serial}, never raised"),
            ));
        };
        if a.updated.is_some() || !self.open.contains(serial) {
            return Err((
                "fold-update",
                format!("serial {serial} updated after its window ended"),
            ));
        }
        if a.key != *key || a.first_ms != *first_ms || a.counted != *count || *count < 2 {
            return Err((
                "fold-update",
                format!(
                    "update of serial {serial}: key {key}, first {first_ms}, count {count}; raised as key {}, first {}, {} matches attributed",
                    a.key, a.first_ms, a.counted
                ),
            ));
        }
        a.updated = Some(*count);
        self.end(*serial)
    }

    /// The window of `serial` ended: with its update when it had more than one match.
    fn end(&mut self, serial: u64) -> Result<(), Failure> {
        if !self.open.remove(&serial) {
            return Ok(());
        }
        let Some(a) = self.alerts.get(&serial) else {
            return Ok(());
        };
        if a.counted > 1 && a.updated.is_none() {
            return Err((
                "fold-count-lost",
                format!(
                    "serial {serial} ({} matches) ended without its update",
                    a.counted
                ),
            ));
        }
        self.closed_total += a.updated.unwrap_or(a.counted);
        Ok(())
    }

    /// Windows past their deadline at `now` end: single-match ones silently, one with more
    /// matches must have had its update when the folder was told the time.
    fn close_expired(&mut self, now: Instant) -> Result<(), Failure> {
        while let Some((deadline, serial)) = self.by_deadline.front().copied() {
            if deadline > now {
                break;
            }
            self.by_deadline.pop_front();
            self.end(serial)?;
        }
        Ok(())
    }

    /// Single-match windows the folder closed early without a word (evicted while full).
    fn reconcile_silent(&mut self, folder: &SimFolder) -> Result<(), Failure> {
        let evicted = folder.stats().evicted;
        if evicted == self.evictions_seen {
            return Ok(());
        }
        self.evictions_seen = evicted;
        let gone: Vec<u64> = self
            .open
            .iter()
            .filter(|s| {
                self.alerts
                    .get(s)
                    .is_some_and(|a| folder.open_count(&a.key).is_none())
            })
            .copied()
            .collect();
        for serial in gone {
            self.end(serial)?;
        }
        Ok(())
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FoldSimConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Steps of the storm.
    pub steps: u64,
    /// Print every event.
    pub verbose: bool,
}

impl FoldSimConfig {
    /// Seed `seed`, 2,000 steps, quiet.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: 2000,
            verbose: false,
        }
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone, Default)]
pub struct FoldOutcome {
    /// Steps taken (both phases).
    pub steps: u64,
    /// Hash of the event trace: equal for equal seeds.
    pub trace: u64,
    /// Matches handled.
    pub matches: u64,
    /// Alerts raised.
    pub raised: u64,
    /// Updates emitted.
    pub updates: u64,
    /// Windows closed early because the folder was full.
    pub evicted: u64,
    /// Flushes (agent restarts).
    pub flushes: u64,
    /// The largest burst of matches at one instant.
    pub largest_burst: u64,
}

#[derive(Debug, Clone)]
struct Swarm {
    keys: u32,
    hot: u32,
    hot_share: f64,
    window_ms: u64,
    max_open: usize,
    storm: f64,
    storm_size: u64,
    gap_ms: u64,
    late: f64,
    skip: f64,
    restart: f64,
}

impl Swarm {
    fn pick(rng: &mut SeededRng) -> Self {
        let keys = 1 + rng.below(400) as u32;
        Swarm {
            keys,
            hot: 1 + rng.below(u64::from(keys.min(5))) as u32,
            hot_share: [0.0, 0.5, 0.9][rng.below(3) as usize],
            window_ms: 1 + rng.below(3000),
            max_open: [1, 2, 8, 64, 10_000][rng.below(5) as usize],
            storm: [0.0, 0.01, 0.05][rng.below(3) as usize],
            storm_size: 100 + rng.below(3000),
            gap_ms: rng.below(200),
            late: [0.0, 0.2, 0.6][rng.below(3) as usize],
            skip: [0.0, 0.3][rng.below(2) as usize],
            restart: [0.0, 0.002][rng.below(2) as usize],
        }
    }
}

struct Sim {
    rng: SeededRng,
    swarm: Swarm,
    folder: SimFolder,
    ledger: FoldLedger,
    events: EventLog,
    now: Instant,
    /// Wall-clock Unix ms at `now` (what a match carries).
    wall_ms: u64,
    step: u64,
    next_match: u64,
    outcome: FoldOutcome,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs one seed of the alert-storm simulation.
pub fn run_fold(cfg: &FoldSimConfig) -> Result<FoldOutcome, Violation> {
    let mut rng = SeededRng::new(cfg.seed ^ 0x666f_6c64_0000_0000);
    let swarm = Swarm::pick(&mut rng);
    let mut events = EventLog::new(cfg.verbose, cfg.seed, " --fold");
    if cfg.verbose {
        println!("seed={} swarm: {swarm:?}", cfg.seed);
    }
    events.record(0, "0", format!("swarm {swarm:?}"));
    let config = FoldConfig {
        window: ms(swarm.window_ms),
        max_open: swarm.max_open,
    };
    let mut sim = Sim {
        rng,
        folder: Folder::new(config),
        ledger: FoldLedger::new(config),
        swarm,
        events,
        now: Instant::from_nanos(1_000_000_000),
        wall_ms: 1_700_000_000_000,
        step: 0,
        next_match: 0,
        outcome: FoldOutcome::default(),
    };
    for _ in 0..cfg.steps {
        sim.step_once()?;
    }
    sim.liveness()?;
    let stats = sim.folder.stats();
    sim.outcome.steps = sim.step;
    sim.outcome.trace = sim.events.hash;
    sim.outcome.matches = stats.matches;
    sim.outcome.raised = stats.raised;
    sim.outcome.updates = stats.updates;
    sim.outcome.evicted = stats.evicted;
    Ok(sim.outcome)
}

impl Sim {
    fn log(&mut self, event: String) {
        let stamp = format!("{} {:?}", self.step, self.now);
        self.events.record(self.step, &stamp, event);
    }

    fn fail(&self, (invariant, detail): Failure) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        self.wall_ms += u64::try_from(by.as_millis()).unwrap_or(0);
    }

    fn drain(&mut self) -> Vec<SimOutput> {
        let out: Vec<SimOutput> = std::iter::from_fn(|| self.folder.poll_output()).collect();
        for o in &out {
            let line = match o {
                FoldOutput::Raise { serial, key, .. } => format!("raise #{serial} key {key}"),
                FoldOutput::Update {
                    serial,
                    count,
                    closed,
                    ..
                } => format!("update #{serial} count {count} ({closed:?})"),
            };
            self.log(line);
        }
        out
    }

    fn pick_key(&mut self, storm: bool) -> u32 {
        // A storm is a loop: almost all of it the same few commands.
        let hot = if storm { 0.95 } else { self.swarm.hot_share };
        if chance(&mut self.rng, hot) {
            self.rng.below(u64::from(self.swarm.hot)) as u32
        } else {
            self.rng.below(u64::from(self.swarm.keys)) as u32
        }
    }

    fn one_match(&mut self, storm: bool) -> Result<(), Violation> {
        let key = self.pick_key(storm);
        let id = self.next_match;
        self.next_match += 1;
        self.folder.handle_match(self.now, key, id, self.wall_ms);
        let out = self.drain();
        self.ledger
            .on_match(self.now, key, &out, &self.folder)
            .map_err(|f| self.fail(f))
    }

    /// Time passes (the driver wakes at the deadline, late, or not at all), then matches
    /// come: one, a few, or a storm at one instant; sometimes the agent restarts.
    fn step_once(&mut self) -> Result<(), Violation> {
        self.step += 1;
        let gap = ms(self.rng.below(self.swarm.gap_ms + 1));
        let deadline = self.folder.poll_timeout();
        match deadline {
            Some(d) if d <= self.now + gap && !chance(&mut self.rng, self.swarm.skip) => {
                let late = if chance(&mut self.rng, self.swarm.late) {
                    ms(self.rng.below(self.swarm.window_ms + 1))
                } else {
                    Duration::ZERO
                };
                let to = d + late;
                self.advance(to.saturating_since(self.now));
                self.folder.handle_timeout(self.now);
                let out = self.drain();
                self.ledger
                    .on_timeout(self.now, false, &out, &self.folder)
                    .map_err(|f| self.fail(f))?;
                if self.folder.poll_timeout().is_some_and(|d| d <= self.now) {
                    return Err(self.fail((
                        "fold-count-lost",
                        "a handled timeout left a window past its deadline".into(),
                    )));
                }
            }
            _ => self.advance(gap),
        }
        let storm = chance(&mut self.rng, self.swarm.storm);
        let burst = if storm {
            self.swarm.storm_size
        } else {
            self.rng.below(4)
        };
        if burst > 0 {
            self.log(format!("{burst} matches"));
        }
        self.outcome.largest_burst = self.outcome.largest_burst.max(burst);
        for _ in 0..burst {
            self.one_match(storm)?;
        }
        if chance(&mut self.rng, self.swarm.restart) {
            self.log("restart: flush".into());
            self.folder.flush(self.now);
            let out = self.drain();
            self.ledger
                .on_timeout(self.now, true, &out, &self.folder)
                .map_err(|f| self.fail(f))?;
            self.outcome.flushes += 1;
        }
        self.ledger.check(&self.folder).map_err(|f| self.fail(f))
    }

    /// No more matches: time runs to each deadline until none is left.
    fn liveness(&mut self) -> Result<(), Violation> {
        self.log("liveness".into());
        while let Some(d) = self.folder.poll_timeout() {
            self.step += 1;
            self.advance(d.saturating_since(self.now));
            self.folder.handle_timeout(self.now);
            let out = self.drain();
            self.ledger
                .on_timeout(self.now, false, &out, &self.folder)
                .map_err(|f| self.fail(f))?;
            self.ledger.check(&self.folder).map_err(|f| self.fail(f))?;
        }
        self.ledger
            .check_drained(&self.folder)
            .map_err(|f| self.fail(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FoldConfig {
        FoldConfig {
            window: ms(100),
            max_open: 4,
        }
    }

    fn at(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn the_ledger_catches_a_lost_count_a_double_raise_and_a_wrong_update() {
        let mut f = SimFolder::new(config());
        let mut l = FoldLedger::new(config());
        for (t, id) in [(0, 0), (1, 1)] {
            f.handle_match(at(t), 7, id, t);
            let out: Vec<_> = std::iter::from_fn(|| f.poll_output()).collect();
            l.on_match(at(t), 7, &out, &f).expect("honest folder");
        }
        l.check(&f).expect("conserved");
        let raise = FoldOutput::Raise {
            serial: 2,
            key: 7,
            first: 2,
            time_ms: 2,
        };
        // Raised again inside the window.
        let e = l
            .clone()
            .on_match(at(2), 7, &[raise], &f)
            .expect_err("twice");
        assert_eq!(e.0, "fold-raise-once");
        // The deadline passes with no update: a match lost.
        let e = l
            .clone()
            .on_timeout(at(100), false, &[], &f)
            .expect_err("lost");
        assert_eq!(e.0, "fold-count-lost");
        // An update with the wrong count.
        let wrong = FoldOutput::Update {
            serial: 1,
            key: 7,
            first: 0,
            count: 3,
            first_ms: 0,
            last_ms: 1,
            closed: Closed::Expired,
        };
        let e = l
            .on_timeout(at(100), false, &[wrong], &f)
            .expect_err("count");
        assert_eq!(e.0, "fold-update");
    }
}
