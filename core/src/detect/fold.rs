//! Alert folding: repeats of one rule on one key (the io crate's key is the rule id with
//! the process's exe and argv) within a window become one alert with a count, so that a
//! loop cannot flood the bus.
//!
//! - The first match of a key opens a window and raises its alert at once
//!   ([`FoldOutput::Raise`], count 1).
//! - Later matches of the key before the window's deadline only count.
//! - When the window ends (its deadline passes, it is evicted, or the folder is flushed)
//!   and more than one match came, one [`FoldOutput::Update`] carries the final count and
//!   the last match's time. A window with a single match ends silently: its raise said
//!   everything.
//! - A match at or after its key's deadline closes that window first, then opens a new
//!   one: the window is fixed from its first match, never extended.
//! - Memory is bounded: at most [`FoldConfig::max_open`] windows are open. A new key when
//!   the folder is full closes the oldest window early (its update, if any, comes before
//!   the new raise), so no count is ever lost.
//!
//! The folder is pure: matches and `now` in ([`Folder::handle_match`],
//! [`Folder::handle_timeout`], [`Folder::flush`]), outputs out ([`Folder::poll_output`]),
//! and the next deadline ([`Folder::poll_timeout`]). It never reads a clock: match times
//! in Unix milliseconds are the caller's data, carried through to the outputs.
//!
//! Invariants (property tests in `core/tests/alert_fold.rs`, the storm simulation
//! `daemoneye-sim --fold`): the raised alerts' final counts (the update's, else 1) plus
//! the open windows' counts equal the matches; one raise per (key, window); no serial is
//! raised twice or updated twice, and no update precedes its raise.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::Instant;

/// How a [`Folder`] folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldConfig {
    /// A window lasts this long from its first match.
    pub window: Duration,
    /// Most windows open at once (at least 1).
    pub max_open: usize,
}

impl FoldConfig {
    /// Windows of `window`, at most 10,000 open.
    pub fn new(window: Duration) -> Self {
        FoldConfig {
            window,
            max_open: 10_000,
        }
    }
}

/// Why a window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its deadline passed.
    Expired,
    /// The folder was full and it was the oldest.
    Evicted,
    /// The folder was flushed (the agent shutting down).
    Flushed,
}

/// What the folder decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldOutput<K, M> {
    /// A new alert: publish it now (count 1).
    Raise {
        /// The alert's number, unique within this folder.
        serial: u64,
        /// Its key.
        key: K,
        /// The match that raised it.
        first: M,
        /// That match's time (Unix ms).
        time_ms: u64,
    },
    /// An alert raised before folded more matches: publish its final count.
    Update {
        /// The raised alert's serial.
        serial: u64,
        /// Its key.
        key: K,
        /// The match that raised it.
        first: M,
        /// Matches folded into it, the first included (always more than 1).
        count: u64,
        /// The first match's time (Unix ms).
        first_ms: u64,
        /// The last match's time (Unix ms).
        last_ms: u64,
        /// Why its window ended.
        closed: Closed,
    },
}

/// The folder's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Matches handled.
    pub matches: u64,
    /// Alerts raised.
    pub raised: u64,
    /// Matches folded into an open window (not raised).
    pub folded: u64,
    /// Updates emitted.
    pub updates: u64,
    /// Windows closed early because the folder was full.
    pub evicted: u64,
}

#[derive(Debug, Clone)]
struct Window<M> {
    serial: u64,
    first: M,
    first_ms: u64,
    last_ms: u64,
    count: u64,
}

/// The fold machine (see the module docs).
#[derive(Debug, Clone)]
pub struct Folder<K, M> {
    config: FoldConfig,
    open: BTreeMap<K, Window<M>>,
    /// Open windows in opening order, which is deadline order (every window lasts the
    /// same and `now` never goes back): (deadline, serial, key).
    order: VecDeque<(Instant, u64, K)>,
    outputs: VecDeque<FoldOutput<K, M>>,
    next_serial: u64,
    /// The latest `now` seen: an earlier one is taken as this one.
    now: Instant,
    stats: FoldStats,
}

impl<K: Ord + Clone, M: Clone> Folder<K, M> {
    /// An empty folder.
    pub fn new(config: FoldConfig) -> Self {
        Folder {
            config: FoldConfig {
                max_open: config.max_open.max(1),
                ..config
            },
            open: BTreeMap::new(),
            order: VecDeque::new(),
            outputs: VecDeque::new(),
            next_serial: 1,
            now: Instant::ZERO,
            stats: FoldStats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> FoldConfig {
        self.config
    }

    /// One match of `key` at `now` (`time_ms`: its wall-clock time, carried through).
    pub fn handle_match(&mut self, now: Instant, key: K, payload: M, time_ms: u64) {
        let now = self.advance(now);
        self.expire(now);
        self.stats.matches += 1;
        if let Some(w) = self.open.get_mut(&key) {
            w.count += 1;
            w.last_ms = w.last_ms.max(time_ms);
            self.stats.folded += 1;
            return;
        }
        while self.open.len() >= self.config.max_open {
            if !self.close_oldest(Closed::Evicted) {
                break;
            }
            self.stats.evicted += 1;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let deadline = now.saturating_add(self.config.window);
        self.outputs.push_back(FoldOutput::Raise {
            serial,
            key: key.clone(),
            first: payload.clone(),
            time_ms,
        });
        self.stats.raised += 1;
        self.order.push_back((deadline, serial, key.clone()));
        self.open.insert(
            key,
            Window {
                serial,
                first: payload,
                first_ms: time_ms,
                last_ms: time_ms,
                count: 1,
            },
        );
    }

    /// Time passed: closes every window whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        self.expire(now);
    }

    /// Closes every open window now (the agent shutting down: their counts go out).
    pub fn flush(&mut self, now: Instant) {
        self.advance(now);
        while self.close_oldest(Closed::Flushed) {}
    }

    /// The next decision to carry out, in order; `None` when all are drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<FoldOutput<K, M>> {
        self.outputs.pop_front()
    }

    /// When the oldest open window ends, if any is open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.order.front().map(|(deadline, _, _)| *deadline)
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Matches counted in the open windows (not yet in an update).
    pub fn open_count(&self, key: &K) -> Option<u64> {
        self.open.get(key).map(|w| w.count)
    }

    /// The counters.
    pub fn stats(&self) -> FoldStats {
        self.stats
    }

    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(d, _, _)| *d <= now) {
            self.close_oldest(Closed::Expired);
        }
    }

    /// Closes the oldest open window; false when none is open.
    fn close_oldest(&mut self, closed: Closed) -> bool {
        let Some((_, serial, key)) = self.order.pop_front() else {
            return false;
        };
        let Some(w) = self.open.remove(&key) else {
            return true;
        };
        debug_assert_eq!(w.serial, serial);
        if w.count > 1 {
            self.stats.updates += 1;
            self.outputs.push_back(FoldOutput::Update {
                serial: w.serial,
                key,
                first: w.first,
                count: w.count,
                first_ms: w.first_ms,
                last_ms: w.last_ms,
                closed,
            });
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn drain(f: &mut Folder<&'static str, u32>) -> Vec<FoldOutput<&'static str, u32>> {
        std::iter::from_fn(|| f.poll_output()).collect()
    }

    #[test]
    fn first_match_raises_at_once_and_repeats_fold_into_one_update_at_the_deadline() {
        let mut f = Folder::new(FoldConfig::new(Duration::from_millis(100)));
        f.handle_match(ms(0), "a", 1, 1000);
        assert!(matches!(
            drain(&mut f)[..],
            [FoldOutput::Raise {
                serial: 1,
                key: "a",
                first: 1,
                time_ms: 1000
            }]
        ));
        f.handle_match(ms(10), "a", 2, 1010);
        f.handle_match(ms(99), "a", 3, 1099);
        assert!(drain(&mut f).is_empty());
        assert_eq!(f.poll_timeout(), Some(ms(100)));
        f.handle_timeout(ms(99));
        assert!(drain(&mut f).is_empty());
        f.handle_timeout(ms(100));
        assert_eq!(
            drain(&mut f),
            [FoldOutput::Update {
                serial: 1,
                key: "a",
                first: 1,
                count: 3,
                first_ms: 1000,
                last_ms: 1099,
                closed: Closed::Expired
            }]
        );
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn a_single_match_ends_silently_and_a_late_match_opens_a_new_alert() {
        let mut f = Folder::new(FoldConfig::new(Duration::from_millis(100)));
        f.handle_match(ms(0), "a", 1, 0);
        let _ = drain(&mut f);
        // Past the deadline with no timeout handled: the old window closes first.
        f.handle_match(ms(150), "a", 2, 150);
        let out = drain(&mut f);
        assert!(
            matches!(out[..], [FoldOutput::Raise { serial: 2, .. }]),
            "{out:?}"
        );
    }

    #[test]
    fn a_full_folder_evicts_the_oldest_window_with_its_count_before_the_new_raise() {
        let mut f = Folder::new(FoldConfig {
            window: Duration::from_secs(60),
            max_open: 2,
        });
        f.handle_match(ms(0), "a", 1, 0);
        f.handle_match(ms(1), "a", 2, 1);
        f.handle_match(ms(2), "b", 3, 2);
        let _ = drain(&mut f);
        f.handle_match(ms(3), "c", 4, 3);
        let out = drain(&mut f);
        assert!(
            matches!(
                out[..],
                [
                    FoldOutput::Update {
                        key: "a",
                        count: 2,
                        closed: Closed::Evicted,
                        ..
                    },
                    FoldOutput::Raise { key: "c", .. }
                ]
            ),
            "{out:?}"
        );
        assert_eq!(f.open_windows(), 2);
        assert_eq!(f.stats().evicted, 1);
        f.handle_match(ms(4), "b", 5, 4);
        f.flush(ms(5));
        let out = drain(&mut f);
        assert!(
            matches!(
                out[..],
                [FoldOutput::Update {
                    key: "b",
                    count: 2,
                    closed: Closed::Flushed,
                    ..
                }]
            ),
            "{out:?}"
        );
        assert_eq!(f.open_windows(), 0);
    }
}
