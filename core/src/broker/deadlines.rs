//! Deadlines by key, earliest first, with lazy re-arming: the structure behind the broker's
//! `poll_timeout`, so that asking for the next deadline after every input is cheap.
//!
//! Each key (a connection's keepalive, a durable subscription's expiry, ...) has a true
//! deadline that its owner computes from its own state; the structure keeps at most one
//! entry per key, at or before that true deadline. A deadline that moves later (a
//! connection's keepalive, on every frame it sends) needs no update: when its stale entry
//! surfaces, [`Deadlines::next`] asks for the true deadline and re-files it. A deadline
//! that appears or moves earlier must be [`arm`](Deadlines::arm)ed. The answer is exact:
//! the earliest true deadline, ties to the smallest key.

use std::collections::{BTreeMap, BTreeSet};

use crate::Instant;

/// Deadlines by key `K`; ties go to the smallest key.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    /// (entry instant, key), at most one per key.
    queue: BTreeSet<(Instant, K)>,
    /// The instant of each key's entry in `queue`.
    armed: BTreeMap<K, Instant>,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            queue: BTreeSet::new(),
            armed: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// `key`'s true deadline is now `at` or later. Cheap when the key already has an entry
    /// at or before `at` (nothing changes); otherwise its entry moves to `at`.
    pub fn arm(&mut self, key: K, at: Instant) {
        match self.armed.get_mut(&key) {
            Some(entry) if *entry <= at => {}
            Some(entry) => {
                self.queue.remove(&(*entry, key));
                *entry = at;
                self.queue.insert((at, key));
            }
            None => {
                self.armed.insert(key, at);
                self.queue.insert((at, key));
            }
        }
    }

    /// `key` has no deadline any more (optional: a key whose true deadline is gone is also
    /// dropped when its entry surfaces; this frees the entry now).
    pub fn disarm(&mut self, key: K) {
        if let Some(at) = self.armed.remove(&key) {
            self.queue.remove(&(at, key));
        }
    }

    /// The earliest true deadline and its key. `deadline_of` gives a key's true deadline
    /// (`None`: it has none); it must never be earlier than the key's entry (a deadline
    /// that moves earlier is armed). Stale entries met on the way are re-filed or dropped.
    pub fn next(
        &mut self,
        mut deadline_of: impl FnMut(K) -> Option<Instant>,
    ) -> Option<(Instant, K)> {
        loop {
            let &(at, key) = self.queue.first()?;
            match deadline_of(key) {
                Some(t) if t == at => return Some((at, key)),
                Some(t) => {
                    debug_assert!(t > at, "a deadline moved earlier without being armed");
                    self.queue.remove(&(at, key));
                    self.queue.insert((t, key));
                    self.armed.insert(key, t);
                }
                None => {
                    self.queue.remove(&(at, key));
                    self.armed.remove(&key);
                }
            }
        }
    }

    /// Entries held (stale ones included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(n: u64) -> Instant {
        Instant::from_nanos(n)
    }

    #[test]
    fn a_deadline_that_moves_later_is_refiled_when_it_surfaces() {
        let mut d = Deadlines::default();
        let mut truth = BTreeMap::from([(1u32, t(10)), (2, t(20))]);
        d.arm(1, t(10));
        d.arm(2, t(20));
        truth.insert(1, t(30));
        d.arm(1, t(30)); // later: no change needed
        assert_eq!(d.next(|k| truth.get(&k).copied()), Some((t(20), 2)));
        truth.remove(&2);
        assert_eq!(d.next(|k| truth.get(&k).copied()), Some((t(30), 1)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn ties_go_to_the_smallest_key_and_an_earlier_deadline_is_armed() {
        let mut d = Deadlines::default();
        let truth = BTreeMap::from([(5u32, t(10)), (3, t(10))]);
        d.arm(5, t(10));
        d.arm(3, t(40));
        d.arm(3, t(10));
        assert_eq!(d.next(|k| truth.get(&k).copied()), Some((t(10), 3)));
        d.disarm(3);
        d.disarm(5);
        assert_eq!(d.next(|k| truth.get(&k).copied()), None);
        assert_eq!(d.len(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Set a key's true deadline (arming only if it moved earlier or appeared).
        Set(u8, u16),
        /// The key's deadline is gone (disarmed eagerly or left to surface).
        Clear(u8, bool),
        /// Ask for the next deadline.
        Next,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..12, 0u16..200).prop_map(|(k, at)| Op::Set(k, at)),
            1 => (0u8..12, any::<bool>()).prop_map(|(k, eager)| Op::Clear(k, eager)),
            2 => Just(Op::Next),
        ]
    }

    proptest! {
        /// After any sequence of changes, `next` gives what a scan of every key's true
        /// deadline gives: the earliest, ties to the smallest key.
        #[test]
        fn next_agrees_with_a_scan_of_every_true_deadline(ops in prop::collection::vec(op(), 1..200)) {
            let mut d = Deadlines::default();
            let mut truth: BTreeMap<u8, Instant> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(k, at) => {
                        let at = t(u64::from(at));
                        // Lazy: only a deadline that appears or moves earlier is armed.
                        if truth.get(&k).is_none_or(|old| at < *old) {
                            d.arm(k, at);
                        }
                        truth.insert(k, at);
                    }
                    Op::Clear(k, eager) => {
                        truth.remove(&k);
                        if eager {
                            d.disarm(k);
                        }
                    }
                    Op::Next => {}
                }
                let scan = truth.iter().map(|(k, at)| (*at, *k)).min();
                prop_assert_eq!(d.next(|k| truth.get(&k).copied()), scan);
                prop_assert!(d.len() <= 12);
            }
        }
    }
}
