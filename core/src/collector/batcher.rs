//! The event batcher: events a collector's sources produce are held and sent together, at
//! most `max_events` at a time, and none waits longer than `max_delay` after the first event
//! of its batch arrived (DESIGN.md section 8: 100 events or 100 ms, whichever comes first).
//!
//! The batcher holds the items themselves (`T`: the runtime's `(topic, payload)`), so that a
//! batch that goes out is exactly what was counted. It never drops: bounding what arrives is
//! the job of the sources' queue in front of it.
//!
//! Rules:
//! - an event that makes the batch `max_events` long flushes it at once ([`FlushReason::Full`]);
//! - otherwise the batch goes out at `first_event_at + max_delay` ([`FlushReason::Deadline`]),
//!   given by [`Batcher::poll_timeout`];
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
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 100,
            max_delay: Duration::from_millis(100),
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
    ready: VecDeque<Batch<T>>,
}

impl<T> Batcher<T> {
    /// An empty batcher; `max_events` of 0 is taken as 1.
    pub fn new(config: BatchConfig) -> Self {
        Self {
            config: Self::sane(config),
            current: Vec::new(),
            first_at: None,
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
        }
        self.current.push(item);
        if self.current.len() >= self.config.max_events {
            self.cut(FlushReason::Full);
        }
    }

    /// Time passed: a batch whose first event has waited `max_delay` goes out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((due, Timer::Flush)) = self.poll_timeout()
            && due <= now
        {
            self.cut(FlushReason::Deadline);
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
        self.first_at
            .map(|at| (at.saturating_add(self.config.max_delay), Timer::Flush))
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
}
