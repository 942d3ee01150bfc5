//! The retention rule: whether the oldest kept event must go, by size or by age.
//!
//! A pure function of the store's counters, the oldest event's time and the caller's `now`
//! (no clock, no file), applied by the store inside each write transaction, one oldest
//! event at a time, until it says keep. It is a function rather than a core machine: it
//! holds no state between calls, arms no timer and emits nothing to the bus; the store's
//! counters it reads are the only state, and they live in the store's own transaction.

use std::time::Duration;

/// The records may take this share of `max_bytes`, so that the file stays below it: redb
/// holds them in B-tree pages with some slack, copy-on-write keeps the previous commit's
/// pages until the next one, and when it runs out of room redb doubles the file (up to
/// 4 GiB, then grows by 4 GiB regions), so the file can reach twice what is allocated.
/// Freed pages are reused, so once retention removes as much as arrives the file stops
/// growing. The size test fills a 4 MiB store eight times over and checks the file.
pub const RECORD_SHARE_PERCENT: u64 = 40;

/// The bounds of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The file stays about this size or smaller.
    pub max_bytes: u64,
    /// Events older than this are removed.
    pub max_age: Duration,
}

impl Limits {
    /// The bytes the records themselves may take (see [`RECORD_SHARE_PERCENT`]).
    pub fn record_budget(&self) -> u64 {
        self.max_bytes / 100 * RECORD_SHARE_PERCENT
    }
}

/// Why the oldest event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evict {
    /// The records take more than their share of `max_bytes`.
    Size,
    /// It is older than `max_age`.
    Age,
}

/// Whether the oldest event (received at `oldest_ms`, Unix ms; `None` when the store is
/// empty) must be removed from a store whose records take `record_bytes`, at `now_ms`. Age
/// is checked first: it is the reason an operator expects to read in the log.
pub fn evict_oldest(
    limits: &Limits,
    record_bytes: u64,
    oldest_ms: Option<u64>,
    now_ms: u64,
) -> Option<Evict> {
    let oldest_ms = oldest_ms?;
    let max_age_ms = u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX);
    if now_ms.saturating_sub(oldest_ms) > max_age_ms {
        return Some(Evict::Age);
    }
    if record_bytes > limits.record_budget() {
        return Some(Evict::Size);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn limits(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_age: DAY,
        }
    }

    #[test]
    fn an_empty_store_keeps_everything() {
        assert_eq!(evict_oldest(&limits(0), u64::MAX, None, u64::MAX), None);
    }

    #[test]
    fn an_event_exactly_max_age_old_stays_and_one_ms_older_goes() {
        let l = limits(1 << 30);
        let now = 10 * DAY.as_millis() as u64;
        let day = DAY.as_millis() as u64;
        assert_eq!(evict_oldest(&l, 0, Some(now - day), now), None);
        assert_eq!(
            evict_oldest(&l, 0, Some(now - day - 1), now),
            Some(Evict::Age)
        );
    }

    #[test]
    fn records_over_their_share_of_max_bytes_evict_by_size() {
        let l = limits(1000);
        assert_eq!(l.record_budget(), 400);
        assert_eq!(evict_oldest(&l, 400, Some(5), 5), None);
        assert_eq!(evict_oldest(&l, 401, Some(5), 5), Some(Evict::Size));
    }

    #[test]
    fn a_clock_that_went_back_does_not_evict_by_age() {
        // An event stamped after `now` (the wall clock stepped back) is not "old".
        assert_eq!(evict_oldest(&limits(1 << 30), 0, Some(1_000), 10), None);
    }

    #[test]
    fn age_is_named_before_size_when_both_hold() {
        let l = limits(100);
        let day = DAY.as_millis() as u64;
        assert_eq!(
            evict_oldest(&l, 1 << 20, Some(0), 2 * day),
            Some(Evict::Age)
        );
    }

    #[test]
    fn applying_the_rule_until_it_keeps_leaves_the_store_within_both_bounds() {
        // A reference run: events of varying sizes and times, evicted oldest first.
        let l = Limits {
            max_bytes: 10_000,
            max_age: Duration::from_millis(500),
        };
        let mut kept: std::collections::VecDeque<(u64, u64)> = Default::default();
        let mut bytes = 0u64;
        for i in 0..2_000u64 {
            let (time, size) = (i * 3, 50 + (i * 37) % 200);
            kept.push_back((time, size));
            bytes += size;
            while evict_oldest(&l, bytes, kept.front().map(|e| e.0), time).is_some() {
                let (_, size) = kept.pop_front().expect("non-empty");
                bytes -= size;
            }
            assert!(bytes <= l.record_budget());
            let oldest = kept.front().expect("the newest always fits").0;
            assert!(time - oldest <= 500);
        }
    }
}
