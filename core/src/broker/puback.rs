//! The PubAck ledger: which QoS1 publishes still wait for copies to resolve, and the
//! PubAck each is owed (DESIGN.md section 7).
//!
//! A QoS1 publish is owed one PubAck once every copy that holds a share of it has resolved:
//! acknowledged by a QoS1 subscriber or handed out at QoS0 (delivered), or dropped by an
//! overflow strategy, an expiry or a departure (dropped). The ledger only counts; the
//! broker decides when a share resolves:
//!
//! - a subscriber that disconnects or unsubscribes holds its shares: its unacknowledged
//!   copies go back to the queue (requeue) and resolve when redelivered and acked, or as
//!   dropped when the queue goes;
//! - a publisher that disconnects keeps its entries: they are counted down as their copies
//!   resolve, and the PubAck that falls due is dropped because the connection is gone (the
//!   publisher's client resends after reconnecting).

use rustc_hash::FxHashMap;

use daemoneye_proto::pb::bus as pb;

use super::ConnId;

/// How one of a publish's shares resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// Acknowledged, or handed out at QoS0.
    Delivered,
    /// Dropped before delivery.
    Dropped,
}

/// What a publish's copies came to when it was routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Shares still to resolve.
    pub awaiting: u32,
    /// Shares already delivered.
    pub delivered: u32,
    /// Shares already dropped.
    pub dropped: u32,
}

/// A PubAck that is due: send `ack` to `conn` if it is still connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuePubAck {
    /// The publisher.
    pub conn: ConnId,
    /// The acknowledgement.
    pub ack: pb::PubAck,
}

#[derive(Debug)]
struct Pending {
    conn: ConnId,
    sequence: u64,
    tally: Tally,
}

/// Outstanding PubAcks, by message id.
#[derive(Debug, Default)]
pub(crate) struct PubAckLedger {
    pending: FxHashMap<u64, Pending>,
}

impl PubAckLedger {
    /// A publish (message `msg_id`, the publisher's `sequence`) was routed with `tally`:
    /// returns its PubAck at once when no share awaits, else remembers it.
    pub fn open(
        &mut self,
        msg_id: u64,
        conn: ConnId,
        sequence: u64,
        tally: Tally,
    ) -> Option<DuePubAck> {
        if tally.awaiting == 0 {
            return Some(DuePubAck {
                conn,
                ack: ack(sequence, tally),
            });
        }
        self.pending.insert(
            msg_id,
            Pending {
                conn,
                sequence,
                tally,
            },
        );
        None
    }

    /// One share of message `msg_id` resolved: returns the PubAck when it was the last.
    /// Unknown ids (QoS0 or already acknowledged publishes) are ignored.
    pub fn resolve(&mut self, msg_id: u64, share: Share) -> Option<DuePubAck> {
        let p = self.pending.get_mut(&msg_id)?;
        match share {
            Share::Delivered => p.tally.delivered += 1,
            Share::Dropped => p.tally.dropped += 1,
        }
        p.tally.awaiting = p.tally.awaiting.saturating_sub(1);
        if p.tally.awaiting > 0 {
            return None;
        }
        let p = self.pending.remove(&msg_id)?;
        Some(DuePubAck {
            conn: p.conn,
            ack: ack(p.sequence, p.tally),
        })
    }

    /// Publishes waiting for their PubAck.
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

fn ack(sequence: u64, tally: Tally) -> pb::PubAck {
    pb::PubAck {
        sequence,
        delivered: tally.delivered,
        dropped: tally.dropped,
        no_interest: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISHER: ConnId = ConnId(7);

    fn tally(awaiting: u32, delivered: u32, dropped: u32) -> Tally {
        Tally {
            awaiting,
            delivered,
            dropped,
        }
    }

    #[test]
    fn a_publish_with_nothing_awaiting_is_acked_at_once_with_its_tally() {
        let mut l = PubAckLedger::default();
        let due = l.open(1, PUBLISHER, 40, tally(0, 2, 1)).expect("due now");
        assert_eq!(due.conn, PUBLISHER);
        assert_eq!(
            (due.ack.sequence, due.ack.delivered, due.ack.dropped),
            (40, 2, 1)
        );
        assert!(!due.ack.no_interest);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn the_puback_is_due_when_the_last_share_resolves_and_counts_each_outcome() {
        let mut l = PubAckLedger::default();
        assert_eq!(l.open(1, PUBLISHER, 9, tally(3, 1, 0)), None);
        assert_eq!(l.len(), 1);
        assert_eq!(l.resolve(1, Share::Delivered), None);
        assert_eq!(l.resolve(1, Share::Dropped), None);
        let due = l.resolve(1, Share::Delivered).expect("last share");
        assert_eq!(
            (due.ack.sequence, due.ack.delivered, due.ack.dropped),
            (9, 3, 1)
        );
        assert_eq!(l.len(), 0);
        // A copy redelivered and acked again after the PubAck went out changes nothing.
        assert_eq!(l.resolve(1, Share::Delivered), None);
    }

    #[test]
    fn publishes_are_tracked_independently() {
        let mut l = PubAckLedger::default();
        assert_eq!(l.open(1, ConnId(1), 1, tally(1, 0, 0)), None);
        assert_eq!(l.open(2, ConnId(2), 1, tally(2, 0, 0)), None);
        assert_eq!(l.resolve(2, Share::Dropped), None);
        let first = l.resolve(1, Share::Delivered).expect("first is due");
        assert_eq!(first.conn, ConnId(1));
        let second = l.resolve(2, Share::Delivered).expect("second is due");
        assert_eq!((second.conn, second.ack.dropped), (ConnId(2), 1));
    }

    #[test]
    fn unknown_messages_resolve_nothing() {
        let mut l = PubAckLedger::default();
        assert_eq!(l.resolve(99, Share::Delivered), None);
        assert_eq!(l.len(), 0);
    }
}
