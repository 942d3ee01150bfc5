//! What a run reports: the event trace (its hash, the last events, every event when
//! verbose) and the [`Violation`] a failed invariant becomes. Both layers log through it.

use std::collections::VecDeque;
use std::fmt;

/// An invariant that failed.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed that replays it.
    pub seed: u64,
    /// Which invariant.
    pub invariant: &'static str,
    /// What exactly.
    pub detail: String,
    /// At which step.
    pub step: u64,
    /// The events just before.
    pub last_events: Vec<String>,
    /// The command that replays the run.
    pub replay: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant violated: {} at step {}: {}",
            self.invariant, self.step, self.detail
        )?;
        writeln!(f, "last events:")?;
        for e in &self.last_events {
            writeln!(f, "  {e}")?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

/// The event trace of a run: its hash (equal for equal seeds, in any process), the last
/// events (printed with a failure) and, when verbose, every event as it happens.
#[derive(Debug)]
pub(crate) struct EventLog {
    pub(crate) hash: u64,
    recent: VecDeque<String>,
    verbose: bool,
    seed: u64,
    /// The command line options that select the layer (empty for layer 1).
    layer_args: &'static str,
}

impl EventLog {
    pub(crate) fn new(verbose: bool, seed: u64, layer_args: &'static str) -> Self {
        Self {
            hash: FNV_OFFSET,
            recent: VecDeque::new(),
            verbose,
            seed,
            layer_args,
        }
    }

    pub(crate) fn record(&mut self, step: u64, stamp: &str, event: String) {
        self.hash = fnv(self.hash, event.as_bytes());
        if self.verbose {
            println!("[{stamp}] {event}");
        }
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("step {step}: {event}"));
    }

    /// A failed invariant, with the last events and the command that replays the run.
    pub(crate) fn violation(
        &self,
        invariant: &'static str,
        detail: String,
        step: u64,
    ) -> Violation {
        Violation {
            seed: self.seed,
            invariant,
            detail,
            step,
            last_events: self.recent.iter().cloned().collect(),
            replay: format!(
                "cargo run -p daemoneye-sim --release --{} --seed {} --verbose",
                self.layer_args, self.seed
            ),
        }
    }
}

/// The FNV-1a offset basis: the hash of nothing.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `h`: stable across processes and platforms.
pub(crate) fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_hash_depends_on_every_event_and_their_order() {
        let mut a = EventLog::new(false, 1, "");
        let mut b = EventLog::new(false, 1, "");
        a.record(1, "", "x".into());
        a.record(2, "", "y".into());
        b.record(1, "", "y".into());
        b.record(2, "", "x".into());
        assert_ne!(a.hash, b.hash);
        assert_ne!(a.hash, FNV_OFFSET);
    }

    #[test]
    fn violation_keeps_the_last_forty_events_and_the_replay_command() {
        let mut log = EventLog::new(false, 7, " --layer 2");
        for n in 0..50 {
            log.record(n, "", format!("e{n}"));
        }
        let v = log.violation("liveness", "stuck".into(), 50);
        assert_eq!(v.last_events.len(), 40);
        assert_eq!(v.last_events[0], "step 10: e10");
        assert_eq!(
            v.replay,
            "cargo run -p daemoneye-sim --release -- --layer 2 --seed 7 --verbose"
        );
        assert!(
            v.to_string()
                .starts_with("invariant violated: liveness at step 50: stuck")
        );
    }
}
