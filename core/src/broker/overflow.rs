//! Overflow: what a subscription's queue does with a new copy when it has no room
//! (DESIGN.md section 8), as one decision that says what happened.
//!
//! [`admit`] is the only place an overflow strategy acts on a queue; a new strategy is a
//! new [`Overflow`] variant and one more arm here (plus, if it makes a publisher wait, the
//! broker's stall check before routing, as Block has). The caller counts and reports what
//! the [`Admission`] says.

use daemoneye_proto::frame::Overflow;

use super::queue::{Entry, SubQueue};

/// What became of a copy offered to a queue.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Queued; nothing else changed.
    Queued,
    /// Queued after evicting the oldest copy of the lowest priority (DropOldest): the
    /// evicted copy is dropped and must be released by the caller.
    QueuedEvictingOldest(Entry),
    /// Refused and dropped without telling the publisher: DropNewest; DropOldest when
    /// everything the subscription holds is handed out and unacknowledged; Block for a
    /// message that cannot wait (the broker's own).
    Dropped,
    /// Refused, and the publisher is told which subscription is full (Error).
    Rejected,
}

impl Admission {
    /// Whether the offered copy was queued.
    pub fn queued(&self) -> bool {
        matches!(self, Admission::Queued | Admission::QueuedEvictingOldest(_))
    }
}

/// Offers `entry` to `queue`, which applies `overflow` when it has no room (`has_room` is
/// the broker's view: the subscription's capacity and the memory budget).
pub(crate) fn admit(
    queue: &mut SubQueue,
    overflow: Overflow,
    has_room: bool,
    entry: Entry,
) -> Admission {
    if has_room {
        queue.push_back(entry);
        return Admission::Queued;
    }
    match overflow {
        Overflow::DropOldest => match queue.pop_oldest_lowest() {
            Some(old) => {
                queue.push_back(entry);
                Admission::QueuedEvictingOldest(old)
            }
            None => Admission::Dropped,
        },
        Overflow::Error => Admission::Rejected,
        // A publisher never reaches a full Block queue (it stalls before routing): only the
        // broker's own messages do, and they never wait.
        Overflow::DropNewest | Overflow::Block => Admission::Dropped,
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

    fn entry(id: u64, priority: u8) -> Entry {
        Entry {
            msg: Arc::new(Message {
                id,
                topic: TopicName::parse("a.b").expect("topic"),
                payload: Bytes::new(),
                publisher_id: Arc::from("p"),
                publisher_pid: 0,
                publisher_uid: 0,
                sequence: id,
                correlation: None,
                reply_to: None,
                priority,
                qos: QoS::AtMostOnce,
                resent: false,
                published_at: Instant::ZERO,
                size: 0,
                copies: Default::default(),
            }),
            redelivered: false,
            tracked: false,
        }
    }

    fn ids(q: &mut SubQueue) -> Vec<u64> {
        q.drain_all().into_iter().map(|e| e.msg.id).collect()
    }

    fn queue_of(ids: &[u64]) -> SubQueue {
        let mut q = SubQueue::default();
        for &id in ids {
            q.push_back(entry(id, 0));
        }
        q
    }

    const ALL: [Overflow; 4] = [
        Overflow::Block,
        Overflow::DropOldest,
        Overflow::DropNewest,
        Overflow::Error,
    ];

    #[test]
    fn with_room_every_strategy_queues() {
        for overflow in ALL {
            let mut q = queue_of(&[1]);
            assert!(matches!(
                admit(&mut q, overflow, true, entry(2, 0)),
                Admission::Queued
            ));
            assert_eq!(ids(&mut q), [1, 2], "{overflow:?}");
        }
    }

    #[test]
    fn drop_oldest_evicts_the_oldest_of_the_lowest_priority() {
        let mut q = queue_of(&[1, 2]);
        q.push_back(entry(3, 5));
        let a = admit(&mut q, Overflow::DropOldest, false, entry(4, 0));
        let Admission::QueuedEvictingOldest(old) = a else {
            panic!("expected an eviction, got {a:?}");
        };
        assert_eq!(old.msg.id, 1);
        assert_eq!(ids(&mut q), [3, 2, 4]);
    }

    #[test]
    fn drop_oldest_with_nothing_queued_drops_the_new_copy() {
        let mut q = SubQueue::default();
        let a = admit(&mut q, Overflow::DropOldest, false, entry(1, 0));
        assert!(matches!(a, Admission::Dropped));
        assert!(!a.queued());
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn drop_newest_and_block_keep_the_queue_and_drop_the_new_copy() {
        for overflow in [Overflow::DropNewest, Overflow::Block] {
            let mut q = queue_of(&[1, 2]);
            let a = admit(&mut q, overflow, false, entry(3, 0));
            assert!(matches!(a, Admission::Dropped), "{overflow:?}");
            assert_eq!(ids(&mut q), [1, 2]);
        }
    }

    #[test]
    fn error_keeps_the_queue_and_rejects_the_new_copy() {
        let mut q = queue_of(&[1]);
        let a = admit(&mut q, Overflow::Error, false, entry(2, 0));
        assert!(matches!(a, Admission::Rejected));
        assert!(!a.queued());
        assert_eq!(ids(&mut q), [1]);
    }
}
