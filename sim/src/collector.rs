//! The collector runtime's policies in virtual time: the core [`Batcher`] and [`Pacing`]
//! driven the way the io crate's runtime drives them, by a seeded workload of event
//! arrivals (bursts at each collection round, stragglers in between, as a realtime source
//! gives them), broker Backpressure signals (SlowDown, Blocked, None, or none at all so a
//! pressure must lapse), operators' UpdateConfig and AdjustInterval, and shutdowns.
//!
//! The driver wakes exactly at the machines' deadlines, as the runtime's timer does. After
//! every step it checks:
//! - no batch is over the bound in force (and a full one is exactly that long);
//! - no event is held past its flush deadline (`first arrival + max_delay`), nor after its
//!   sources went quiet (`last arrival + max_idle`), and a batch opened after a quiet spell
//!   of `max_idle` is not held past the instant it opened;
//! - every event goes out exactly once, in arrival order;
//! - the interval in force is within `[configured, configured x cap]`;
//! - after a clear (None, or a lapse), the interval is the configured one.
//!
//! Run with `daemoneye-sim --layer 3 --seed N`.

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::collector::{
    BatchConfig, Batcher, FlushReason, Pacing, PacingConfig, Pressure,
};
use daemoneye_core::rng::SeededRng;

use crate::report::{EventLog, Violation};

/// One run of the collector simulation.
#[derive(Debug, Clone)]
pub struct CollectorSimConfig {
    /// The seed.
    pub seed: u64,
    /// Steps to take.
    pub steps: u64,
    /// Print every event.
    pub verbose: bool,
}

/// What a passing run reports.
#[derive(Debug, Clone)]
pub struct CollectorOutcome {
    /// Steps taken.
    pub steps: u64,
    /// Hash of the event trace: equal for equal seeds.
    pub trace: u64,
    /// Events produced (all went out).
    pub events: u64,
    /// Batches sent.
    pub batches: u64,
    /// Pressure signals.
    pub signals: u64,
    /// Largest interval in force, in ms.
    pub max_interval_ms: u64,
}

struct World {
    rng: SeededRng,
    now: Instant,
    batcher: Batcher<u64>,
    pacing: Pacing,
    /// Arrival time of each held event, by id (ids are consecutive from `next_out`).
    arrivals: std::collections::VecDeque<Instant>,
    /// Arrival time of the last event that went out.
    last_out_at: Option<Instant>,
    /// The held batch opened after a quiet spell of `max_idle`: it is due at once.
    quiet_open: bool,
    next_id: u64,
    next_out: u64,
    next_round: Instant,
    next_signal: Instant,
    next_straggler: Instant,
    log: EventLog,
    step: u64,
    out: CollectorOutcome,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl World {
    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.log.violation(invariant, detail, self.step)
    }

    fn record(&mut self, event: String) {
        let stamp = format!("{:?}", self.now);
        self.log.record(self.step, &stamp, event);
    }

    fn arrive(&mut self, n: u64) {
        for _ in 0..n {
            if self.arrivals.is_empty() {
                let idle = self.batcher.config().max_idle;
                self.quiet_open = self.last_out_at.is_none_or(|p| p + idle <= self.now);
            }
            self.batcher.handle_event(self.now, self.next_id);
            self.arrivals.push_back(self.now);
            self.next_id += 1;
        }
    }

    /// Drains both machines and checks every invariant.
    fn drain_and_check(&mut self) -> Result<(), Violation> {
        let bound = self.batcher.config().max_events;
        while let Some(batch) = self.batcher.poll_output() {
            self.out.batches += 1;
            let n = batch.items.len();
            self.record(format!("batch {n} ({:?})", batch.reason));
            if n == 0 || n > bound || (batch.reason == FlushReason::Full && n != bound) {
                return Err(self.violation("batch-bound", format!("a batch of {n}, bound {bound}")));
            }
            for id in batch.items {
                if id != self.next_out {
                    return Err(self.violation(
                        "batch-order",
                        format!("event {id} went out, {} expected", self.next_out),
                    ));
                }
                self.next_out += 1;
                self.last_out_at = self.arrivals.pop_front();
                // What stays held was cut from what went out at the same instant.
                self.quiet_open = false;
            }
        }
        let delay = self.batcher.config().max_delay;
        if let Some(first) = self.arrivals.front()
            && *first + delay < self.now
        {
            return Err(self.violation(
                "flush-deadline",
                format!("an event from {first:?} is still held at {:?}", self.now),
            ));
        }
        // The driver wakes at the batcher's deadline: for a batch opened after a quiet
        // spell it must be the instant the batch opened.
        if self.quiet_open
            && let Some(&first) = self.arrivals.front()
            && (first < self.now
                || self
                    .batcher
                    .poll_timeout()
                    .is_none_or(|(due, _)| due > first))
        {
            return Err(self.violation(
                "quiet-flush",
                format!(
                    "a batch opened at {first:?} after a quiet spell is held at {:?}, due {:?}",
                    self.now,
                    self.batcher.poll_timeout().map(|(due, _)| due)
                ),
            ));
        }
        let idle = self.batcher.config().max_idle;
        if let Some(last) = self.arrivals.back()
            && *last + idle < self.now
        {
            return Err(self.violation(
                "idle-flush",
                format!(
                    "events held at {:?}, the last arrived at {last:?}, quiet since",
                    self.now
                ),
            ));
        }
        while let Some(d) = self.pacing.poll_output() {
            self.record(format!("interval {d:?}"));
            self.out.max_interval_ms = self.out.max_interval_ms.max(d.as_millis() as u64);
        }
        let (got, lo, hi) = (
            self.pacing.interval(),
            self.pacing.configured(),
            self.pacing.cap(),
        );
        if got < lo || got > hi {
            return Err(self.violation(
                "interval-bounds",
                format!("{got:?} outside [{lo:?}, {hi:?}]"),
            ));
        }
        if self.pacing.pressure() == Pressure::None && got != lo {
            return Err(self.violation(
                "interval-restored",
                format!("no pressure, yet {got:?} instead of {lo:?}"),
            ));
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), Violation> {
        // The next thing to happen: a deadline of a machine, a round, a signal, a straggler.
        let batch_due = self.batcher.poll_timeout().map(|(at, _)| at);
        let lapse_due = self.pacing.poll_timeout().map(|(at, _)| at);
        let mut next = self
            .next_round
            .min(self.next_signal)
            .min(self.next_straggler);
        for due in [batch_due, lapse_due].into_iter().flatten() {
            next = next.min(due);
        }
        self.now = self.now.max(next);
        self.batcher.handle_timeout(self.now);
        self.pacing.handle_timeout(self.now);
        if lapse_due.is_some_and(|d| d <= self.now) && self.pacing.pressure() == Pressure::None {
            self.record("pressure lapsed".into());
        }
        if self.now >= self.next_round {
            let n = match self.rng.below(10) {
                0 => 0,
                1..=6 => 1 + self.rng.below(60),
                _ => 50 + self.rng.below(400),
            };
            self.record(format!("round: {n} events"));
            self.arrive(n);
            self.next_round = self.now + self.pacing.interval();
        }
        if self.now >= self.next_straggler {
            self.arrive(1);
            self.next_straggler = self.now + ms(1 + self.rng.below(300));
        }
        if self.now >= self.next_signal {
            // What the arrivals cut goes out under the bound in force when it was cut, as
            // the runtime sends it before it reads the next control message.
            self.drain_and_check()?;
            self.signal();
            self.next_signal = self.now + ms(50 + self.rng.below(20_000));
        }
        self.drain_and_check()
    }

    fn signal(&mut self) {
        let now = self.now;
        match self.rng.below(20) {
            0..=6 => {
                self.out.signals += 1;
                self.record("SlowDown".into());
                self.pacing.handle_pressure(now, Pressure::SlowDown);
            }
            7..=8 => {
                self.out.signals += 1;
                self.record("Blocked".into());
                self.pacing.handle_pressure(now, Pressure::Blocked);
            }
            9..=11 => {
                self.record("None".into());
                self.pacing.handle_pressure(now, Pressure::None);
            }
            12 => {
                let secs = 5 + self.rng.below(120);
                self.record(format!("UpdateConfig interval {secs}s"));
                let _ = self.pacing.set_interval(now, Duration::from_secs(secs));
            }
            13 => {
                let factor = 500 + u32::try_from(self.rng.below(1500)).unwrap_or(0);
                let got = self.pacing.adjust(now, factor);
                self.record(format!("AdjustInterval x{factor}/1000: {got:?}"));
            }
            14 => {
                let max_events = 1 + usize::try_from(self.rng.below(200)).unwrap_or(0);
                let max_delay = ms(1 + self.rng.below(300));
                let max_idle = ms(1 + self.rng.below(400));
                self.record(format!(
                    "batch config {max_events} / {max_delay:?} / idle {max_idle:?}"
                ));
                self.batcher.set_config(
                    now,
                    BatchConfig {
                        max_events,
                        max_delay,
                        max_idle,
                    },
                );
            }
            15 => {
                self.record("flush (shutdown)".into());
                self.batcher.flush(now);
            }
            // Quiet: a pressure in force must lapse by itself.
            _ => {}
        }
    }
}

/// Runs one seed; `Err` names the invariant that failed and how to replay it.
pub fn run_collector(cfg: &CollectorSimConfig) -> Result<CollectorOutcome, Violation> {
    let mut rng = SeededRng::new(cfg.seed);
    let batch = BatchConfig {
        max_events: 1 + usize::try_from(rng.below(150)).unwrap_or(0),
        max_delay: ms(1 + rng.below(200)),
        max_idle: ms(1 + rng.below(300)),
    };
    let pacing = PacingConfig {
        interval: Duration::from_secs(5 + rng.below(60)),
        max_stretch: 1 + u32::try_from(rng.below(10)).unwrap_or(0),
        ..PacingConfig::default()
    };
    let mut w = World {
        rng,
        now: Instant::ZERO,
        batcher: Batcher::new(batch),
        pacing: Pacing::new(pacing),
        arrivals: Default::default(),
        last_out_at: None,
        quiet_open: false,
        next_id: 0,
        next_out: 0,
        next_round: Instant::ZERO,
        next_signal: Instant::ZERO + ms(100),
        next_straggler: Instant::ZERO + ms(3),
        log: EventLog::new(cfg.verbose, cfg.seed, " --layer 3"),
        step: 0,
        out: CollectorOutcome {
            steps: 0,
            trace: 0,
            events: 0,
            batches: 0,
            signals: 0,
            max_interval_ms: 0,
        },
    };
    w.record(format!("start: {batch:?}, {pacing:?}"));
    for step in 0..cfg.steps {
        w.step = step;
        w.step()?;
    }
    // Shutdown: what is held goes out, and all of it did.
    w.batcher.flush(w.now);
    w.drain_and_check()?;
    if w.next_out != w.next_id {
        return Err(w.violation(
            "every-event-out",
            format!("{} events produced, {} went out", w.next_id, w.next_out),
        ));
    }
    w.out.steps = cfg.steps;
    w.out.events = w.next_id;
    w.out.trace = w.log.hash;
    Ok(w.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_seeds_keep_every_invariant_and_replay_identically() {
        for seed in 0..100 {
            let cfg = CollectorSimConfig {
                seed,
                steps: 2000,
                verbose: false,
            };
            let a = run_collector(&cfg).unwrap_or_else(|v| panic!("{v}"));
            let b = run_collector(&cfg).unwrap_or_else(|v| panic!("{v}"));
            assert_eq!(a.trace, b.trace, "seed {seed} does not replay");
            assert!(a.events > 0 && a.batches > 0);
        }
    }
}
