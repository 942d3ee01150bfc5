//! Exactly-once hand-out of QoS1 messages to queue groups, across a publisher's resends.
//!
//! A client library re-sends its unacknowledged QoS1 publishes after a reconnect (and a
//! WAL-backed collector replays its log after a crash), marked as resends. Subscribers drop
//! the copies they already have by (publisher id, sequence), but a queue group may hand the
//! resend to a different member than the original, which has never seen it: the group
//! would process the message twice. So the broker remembers, per group, which
//! (publisher id, sequence) pairs it handed to a QoS1 member, for as long as its window
//! allows within this broker instance (an epoch; a restarted broker starts empty, which is
//! why the guarantee is "in practice"), and a resend that finds its pair:
//!
//! - already acknowledged by a member: skips the group, and the group's share of the
//!   resend's PubAck counts as delivered at once;
//! - still queued or unacknowledged somewhere in the group: skips the group, and the
//!   resend's PubAck waits for that copy (it resolves both publishes' shares).
//!
//! A copy that the group dropped (overflow, expiry) is forgotten, so its resend is handed
//! out again: it was never delivered. Records of acknowledged copies are kept for the most
//! recent `window` of them; records of copies in flight are bounded by the group's queues.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// (group, publisher id, sequence).
pub(crate) type DedupKey = (Arc<str>, Arc<str>, u64);

#[derive(Debug)]
enum Record {
    /// A member holds the copy (queued or unacknowledged); these resends' PubAcks wait.
    InFlight { waiters: Vec<u64> },
    /// A member acknowledged it.
    Acked,
}

/// What a resend finds for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The group never had it (or dropped it): hand it out.
    No,
    /// A member holds it: wait for that copy.
    InFlight,
    /// A member acknowledged it.
    Acked,
}

/// The broker's memory of QoS1 group hand-outs.
#[derive(Debug)]
pub(crate) struct GroupDedup {
    records: BTreeMap<DedupKey, Record>,
    /// Acknowledged records, oldest first, for eviction beyond the window.
    acked_order: VecDeque<DedupKey>,
    window: usize,
}

impl GroupDedup {
    pub fn new(window: usize) -> Self {
        Self {
            records: BTreeMap::new(),
            acked_order: VecDeque::new(),
            window,
        }
    }

    pub fn seen(&self, key: &DedupKey) -> Seen {
        match self.records.get(key) {
            None => Seen::No,
            Some(Record::InFlight { .. }) => Seen::InFlight,
            Some(Record::Acked) => Seen::Acked,
        }
    }

    /// A QoS1 member of the group was given the copy.
    pub fn handed_out(&mut self, key: DedupKey) {
        if self.window == 0 {
            return;
        }
        self.records.entry(key).or_insert(Record::InFlight {
            waiters: Vec::new(),
        });
    }

    /// A resend (message `msg_id`) waits for the copy in flight.
    pub fn wait(&mut self, key: &DedupKey, msg_id: u64) {
        if let Some(Record::InFlight { waiters }) = self.records.get_mut(key) {
            waiters.push(msg_id);
        }
    }

    /// A member acknowledged the copy: returns the resends waiting for it.
    pub fn acked(&mut self, key: &DedupKey) -> Vec<u64> {
        let Some(record) = self.records.get_mut(key) else {
            return Vec::new();
        };
        let waiters = match std::mem::replace(record, Record::Acked) {
            Record::InFlight { waiters } => waiters,
            Record::Acked => return Vec::new(),
        };
        self.acked_order.push_back(key.clone());
        while self.acked_order.len() > self.window {
            if let Some(old) = self.acked_order.pop_front()
                && matches!(self.records.get(&old), Some(Record::Acked))
            {
                self.records.remove(&old);
            }
        }
        waiters
    }

    /// The group dropped the copy: forgets it and returns the resends waiting for it.
    pub fn dropped(&mut self, key: &DedupKey) -> Vec<u64> {
        match self.records.get(key) {
            Some(Record::InFlight { .. }) => {}
            _ => return Vec::new(),
        }
        match self.records.remove(key) {
            Some(Record::InFlight { waiters }) => waiters,
            _ => Vec::new(),
        }
    }

    /// Records held, for the memory bound.
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> DedupKey {
        (Arc::from("g"), Arc::from("p"), seq)
    }

    #[test]
    fn a_resend_sees_what_the_group_holds_and_acked() {
        let mut d = GroupDedup::new(8);
        assert_eq!(d.seen(&key(1)), Seen::No);
        d.handed_out(key(1));
        assert_eq!(d.seen(&key(1)), Seen::InFlight);
        d.wait(&key(1), 42);
        assert_eq!(d.acked(&key(1)), vec![42]);
        assert_eq!(d.seen(&key(1)), Seen::Acked);
        // Acking twice (a redelivered copy) wakes nobody again.
        assert!(d.acked(&key(1)).is_empty());
    }

    #[test]
    fn a_dropped_copy_is_forgotten_and_releases_its_waiters() {
        let mut d = GroupDedup::new(8);
        d.handed_out(key(1));
        d.wait(&key(1), 7);
        assert_eq!(d.dropped(&key(1)), vec![7]);
        assert_eq!(d.seen(&key(1)), Seen::No);
    }

    #[test]
    fn acked_records_beyond_the_window_are_evicted_oldest_first() {
        let mut d = GroupDedup::new(2);
        for s in 1..=3 {
            d.handed_out(key(s));
            d.acked(&key(s));
        }
        assert_eq!(d.seen(&key(1)), Seen::No);
        assert_eq!(d.seen(&key(2)), Seen::Acked);
        assert_eq!(d.seen(&key(3)), Seen::Acked);
        // Copies in flight are never evicted by the window.
        d.handed_out(key(4));
        for s in 5..=9 {
            d.handed_out(key(s));
            d.acked(&key(s));
        }
        assert_eq!(d.seen(&key(4)), Seen::InFlight);
        assert_eq!(d.len(), 3);
    }
}
