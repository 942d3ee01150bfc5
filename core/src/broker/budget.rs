//! The memory budget: bytes of messages the broker holds for subscribers, counted once per
//! message while any subscription holds a copy of it (queued or handed out unacknowledged).
//!
//! Each message counts its held copies itself ([`Copies`]); the budget is the only thing
//! that changes the count: [`MemoryBudget::charge`] when copies are queued,
//! [`MemoryBudget::release`] when one leaves for good (acknowledged, handed out at QoS0,
//! dropped). Moving a copy (requeue, redelivery to another group member) changes nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use super::queue::Entry;

/// Copies of one message the broker holds. The broker is single-threaded; the atomic only
/// makes a shared message `Sync`.
#[derive(Debug, Default)]
pub(crate) struct Copies(AtomicU32);

impl Copies {
    /// Copies held now.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u32) -> u32 {
        self.0.fetch_add(n, Ordering::Relaxed)
    }

    /// Takes one away; returns how many were held before.
    fn remove_one(&self) -> u32 {
        let before = self.get();
        self.0.store(before.saturating_sub(1), Ordering::Relaxed);
        before
    }
}

/// Bytes held against the configured budget.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: u64,
    queued: u64,
}

impl MemoryBudget {
    /// An empty budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, queued: 0 }
    }

    /// Bytes held now.
    pub fn queued_bytes(&self) -> u64 {
        self.queued
    }

    /// Whether a new message of `size` bytes would go over the limit.
    pub fn would_exceed(&self, size: u64) -> bool {
        self.queued + size > self.limit
    }

    /// Whether anything fits (publishers stalled on the budget may retry).
    pub fn has_room(&self) -> bool {
        self.queued < self.limit
    }

    /// At 80% of the limit or more (publishers are asked to slow down).
    pub fn under_pressure(&self) -> bool {
        self.queued * 5 >= self.limit * 4
    }

    /// `copies` more copies of a message of `size` bytes are held (the first of its copies
    /// charges its bytes).
    pub fn charge(&mut self, copies: &Copies, size: u64, n: u32) {
        if n > 0 && copies.add(n) == 0 {
            self.queued += size;
        }
    }

    /// One copy leaves for good; the message's bytes leave with its last copy.
    pub fn release(&mut self, entry: Entry) {
        if entry.msg.copies.remove_one() == 1 {
            self.queued = self.queued.saturating_sub(entry.msg.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use daemoneye_proto::frame::QoS;

    use super::*;
    use crate::Instant;
    use crate::broker::Message;
    use crate::topic::TopicName;

    fn message(size: u64) -> Arc<Message> {
        Arc::new(Message {
            id: 1,
            topic: TopicName::parse("a.b").expect("topic"),
            payload: Bytes::new(),
            publisher_id: Arc::from("p"),
            publisher_pid: 0,
            publisher_uid: 0,
            sequence: 1,
            correlation: None,
            reply_to: None,
            priority: 0,
            qos: QoS::AtMostOnce,
            resent: false,
            published_at: Instant::ZERO,
            size,
            copies: Copies::default(),
        })
    }

    fn copy(msg: &Arc<Message>) -> Entry {
        Entry {
            msg: msg.clone(),
            redelivered: false,
            tracked: false,
        }
    }

    #[test]
    fn a_message_is_charged_once_and_freed_with_its_last_copy() {
        let mut b = MemoryBudget::new(1000);
        let m = message(300);
        b.charge(&m.copies, m.size, 3);
        assert_eq!((b.queued_bytes(), m.copies.get()), (300, 3));
        b.release(copy(&m));
        b.release(copy(&m));
        assert_eq!((b.queued_bytes(), m.copies.get()), (300, 1));
        b.release(copy(&m));
        assert_eq!((b.queued_bytes(), m.copies.get()), (0, 0));
    }

    #[test]
    fn the_count_does_not_depend_on_other_references_to_the_message() {
        let mut b = MemoryBudget::new(1000);
        let m = message(100);
        let _held_elsewhere = m.clone();
        b.charge(&m.copies, m.size, 1);
        b.release(copy(&m));
        assert_eq!(b.queued_bytes(), 0);
    }

    #[test]
    fn no_copies_charge_nothing_and_later_copies_charge_no_more() {
        let mut b = MemoryBudget::new(1000);
        let m = message(100);
        b.charge(&m.copies, m.size, 0);
        assert_eq!(b.queued_bytes(), 0);
        b.charge(&m.copies, m.size, 1);
        b.charge(&m.copies, m.size, 2);
        assert_eq!((b.queued_bytes(), m.copies.get()), (100, 3));
    }

    #[test]
    fn limits_room_and_pressure() {
        let mut b = MemoryBudget::new(1000);
        assert!(!b.would_exceed(1000) && b.would_exceed(1001));
        let m = message(800);
        b.charge(&m.copies, m.size, 1);
        assert!(b.under_pressure() && b.has_room());
        assert!(b.would_exceed(201));
        let n = message(200);
        b.charge(&n.copies, n.size, 1);
        assert!(!b.has_room());
    }
}
