//! The event batcher: events a collector's sources produce are held and sent together, at
//! most `max_events` at a time, and none waits longer than `max_delay` after the first event
//! of its batch arrived (DESIGN.md section 8: 100 events or 100 ms, whichever comes first).
//! A batch also goes out once its sources have been quiet for `max_idle` (default 2 ms):
//! a burst still fills batches (its events arrive microseconds apart), while a lone event,
//! a process started on an idle host, is not held for the whole `max_delay`. And a batch
//! whose first event came after the sources had already been quiet for `max_idle` goes out
//! at once ([`FlushReason::Quiet`]): the driver takes every event already queued first, so
//! what arrived together still goes together, but the first exec on a quiet host does not
//! wait for the idle window (as Nagle's algorithm sends at once when nothing is in flight).
//!
//! The batcher holds the items themselves (`T`: the runtime's `(topic, payload)`), so that a
//! batch that goes out is exactly what was counted. It never drops: bounding what arrives is
//! the job of the sources' queue in front of it.
//!
//! Rules:
//! - an event that makes the batch `max_events` long flushes it at once ([`FlushReason::Full`]);
//! - a batch whose first event arrived at least `max_idle` after the last event of the
//!   batch before it (or that is the first batch) is due at once ([`FlushReason::Quiet`]);
//! - otherwise the batch goes out at `first_event_at + max_delay` ([`FlushReason::Deadline`])
//!   or at `last_event_at + max_idle` ([`FlushReason::Idle`]), whichever comes first, given
//!   by [`Batcher::poll_timeout`];
//! - [`Batcher::flush`] sends what is held now (shutdown), and a new configuration whose
//!   bound what is held reaches flushes it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Instant;

/// Why [`Batcher::handle_timeout`] is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The first event of the batch has waited `max_delay`.
    Flush,
}

/// How events are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most events in one batch (at least 1).
    pub max_events: usize,
    /// Longest an event waits for its batch to go out.
    pub max_delay: Duration,
    /// A batch goes out once no event has arrived for this long (at or above `max_delay`,
    /// only `max_delay` counts).
    pub max_idle: Duration,
}

/// The default `max_idle`.
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_millis(2);

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 100,
            max_delay: Duration::from_millis(100),
            max_idle: DEFAULT_MAX_IDLE,
        }
    }
}

/// Why a batch went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// It reached `max_events`.
    Full,
    /// Its first event waited `max_delay`.
    Deadline,
    /// No event arrived for `max_idle`.
    Idle,
    /// Its first event came after the sources had been quiet for `max_idle`: it went out
    /// as soon as the events queued with it were taken.
    Quiet,
    /// The owner asked (shutdown, or a configuration that lowered the bound).
    Requested,
}

/// A batch to send, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// The events.
    pub items: Vec<T>,
    /// Why now.
    pub reason: FlushReason,
}

/// The batching machine.
#[derive(Debug)]
pub struct Batcher<T> {
    config: BatchConfig,
    current: Vec<T>,
    /// When the first event of `current` arrived.
    first_at: Option<Instant>,
    /// When the last event of `current` arrived.
    last_at: Option<Instant>,
    /// When the last event of the batches before `current` arrived.
    previous_at: Option<Instant>,
    /// `current` opened after the sources had been quiet: it is due at once.
    quiet: bool,
    ready: VecDeque<Batch<T>>,
}

impl<T> Batcher<T> {
    /// An empty batcher; `max_events` of 0 is taken as 1.
    pub fn new(config: BatchConfig) -> Self {
        Self {
            config: Self::sane(config),
            current: Vec::new(),
            first_at: None,
            last_at: None,
            previous_at: None,
            quiet: false,
            ready: VecDeque::new(),
        }
    }

    fn sane(mut config: BatchConfig) -> BatchConfig {
        config.max_events = config.max_events.max(1);
        config
    }

    /// The configuration in force.
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Events held, not yet in a batch handed out.
    pub fn pending(&self) -> usize {
        self.current.len() + self.ready.iter().map(|b| b.items.len()).sum::<usize>()
    }

    /// When the oldest held event arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.first_at
    }

    /// An event arrived.
    pub fn handle_event(&mut self, now: Instant, item: T) {
        if self.current.is_empty() {
            self.first_at = Some(now);
            self.quiet = self
                .previous_at
                .is_none_or(|p| p.saturating_add(self.config.max_idle) <= now);
        }
        self.last_at = Some(now);
        self.current.push(item);
        if self.current.len() >= self.config.max_events {
            self.cut(FlushReason::Full);
        }
    }

    /// Time passed: a batch whose first event has waited `max_delay`, or whose sources
    /// have been quiet for `max_idle`, goes out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (Some(first), Some(last)) = (self.first_at, self.last_at) else {
            return;
        };
        if first.saturating_add(self.config.max_delay) <= now {
            self.cut(FlushReason::Deadline);
        } else if self.quiet && first <= now {
            self.cut(FlushReason::Quiet);
        } else if last.saturating_add(self.config.max_idle) <= now {
            self.cut(FlushReason::Idle);
        }
    }

    /// Sends what is held now (shutdown).
    pub fn flush(&mut self, _now: Instant) {
        self.cut(FlushReason::Requested);
    }

    /// A new configuration. When what is held reaches a lower bound, all of it goes out
    /// now, in batches of the new bound (the arrival times of a remainder are not kept, so
    /// it could not be given a deadline of its own); otherwise the batch keeps its deadline.
    pub fn set_config(&mut self, now: Instant, config: BatchConfig) {
        self.config = Self::sane(config);
        if self.current.len() >= self.config.max_events {
            while self.current.len() > self.config.max_events {
                let rest = self.current.split_off(self.config.max_events);
                let full = std::mem::replace(&mut self.current, rest);
                self.ready.push_back(Batch {
                    items: full,
                    reason: FlushReason::Requested,
                });
            }
            self.cut(FlushReason::Requested);
        }
        self.handle_timeout(now);
    }

    fn cut(&mut self, reason: FlushReason) {
        self.first_at = None;
        self.previous_at = self.last_at.take().or(self.previous_at);
        self.quiet = false;
        if self.current.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.current);
        self.ready.push_back(Batch { items, reason });
    }

    /// The next batch to send.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Batch<T>> {
        self.ready.pop_front()
    }

    /// When the batch being filled must go out.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let first = self.first_at?;
        if self.quiet {
            return Some((first, Timer::Flush));
        }
        let deadline = first.saturating_add(self.config.max_delay);
        let idle = self.last_at?.saturating_add(self.config.max_idle);
        Some((deadline.min(idle), Timer::Flush))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn a_full_batch_goes_at_once_and_a_short_one_at_its_deadline() {
        let mut b = Batcher::new(BatchConfig {
            max_events: 3,
            max_delay: Duration::from_millis(100),
            max_idle: Duration::from_millis(100),
        });
        for i in 0..4 {
            b.handle_event(at(10), i);
        }
        let full = b.poll_output().expect("full batch");
        assert_eq!(
            (full.items, full.reason),
            (vec![0, 1, 2], FlushReason::Full)
        );
        assert_eq!(b.poll_timeout(), Some((at(110), Timer::Flush)));
        b.handle_timeout(at(109));
        assert!(b.poll_output().is_none());
        b.handle_timeout(at(110));
        let late = b.poll_output().expect("deadline batch");
        assert_eq!((late.items, late.reason), (vec![3], FlushReason::Deadline));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_burst_fills_batches_and_a_lone_event_goes_once_its_source_is_quiet() {
        let mut b = Batcher::new(BatchConfig {
            max_events: 3,
            max_delay: Duration::from_millis(100),
            max_idle: Duration::from_millis(2),
        });
        // The first event on a quiet source is due at once; what arrived with it goes
        // with it.
        b.handle_event(at(10), 0);
        b.handle_event(at(10), 1);
        assert_eq!(b.poll_timeout(), Some((at(10), Timer::Flush)));
        b.handle_timeout(at(10));
        let first = b.poll_output().expect("quiet batch");
        assert_eq!(
            (first.items, first.reason),
            (vec![0, 1], FlushReason::Quiet)
        );
        // Events 1 ms apart after it keep the next batch open until it is full.
        for i in 0..3 {
            b.handle_event(at(11 + i), i);
            b.handle_timeout(at(11 + i));
        }
        let full = b.poll_output().expect("full batch");
        assert_eq!(
            (full.items, full.reason),
            (vec![0, 1, 2], FlushReason::Full)
        );
        // One more 1 ms later: the source was not quiet, so it waits 2 ms for company, not
        // 100.
        b.handle_event(at(14), 9);
        assert_eq!(b.poll_timeout(), Some((at(16), Timer::Flush)));
        b.handle_timeout(at(15));
        assert!(b.poll_output().is_none());
        b.handle_timeout(at(16));
        let idle = b.poll_output().expect("idle batch");
        assert_eq!((idle.items, idle.reason), (vec![9], FlushReason::Idle));
        // A lone event after a quiet spell goes at once.
        b.handle_event(at(50), 7);
        assert_eq!(b.poll_timeout(), Some((at(50), Timer::Flush)));
        b.handle_timeout(at(50));
        let lone = b.poll_output().expect("quiet batch");
        assert_eq!((lone.items, lone.reason), (vec![7], FlushReason::Quiet));
        // A steady trickle 1 ms apart (so never quiet) still goes by the deadline of its
        // first event.
        for i in 0..2u64 {
            b.handle_event(at(51 + i), i);
        }
        b.set_config(
            at(52),
            BatchConfig {
                max_events: 1000,
                max_delay: Duration::from_millis(5),
                max_idle: Duration::from_millis(2),
            },
        );
        for t in 53..56 {
            b.handle_event(at(t), t);
            b.handle_timeout(at(t));
        }
        assert!(b.poll_output().is_none());
        b.handle_timeout(at(56));
        let due = b.poll_output().expect("deadline batch");
        assert_eq!(due.reason, FlushReason::Deadline);
        assert_eq!(due.items.len(), 5);
    }
}
