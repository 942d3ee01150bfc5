//! Delivery: queued copies are handed to each ready connection within its write window
//! (round robin over its subscriptions, a batch at a time), QoS1 copies wait for their Ack,
//! and a copy that leaves for good (acked, handed out at QoS0, dropped) resolves its PubAck
//! share and is released from the memory budget.

use std::sync::Arc;

use daemoneye_proto::frame::QoS;
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::connection::Phase;
use super::puback::Share;
use super::queue::Entry;
use super::{Broker, ConnId, wire};
use crate::Instant;

/// Bytes reserved at once for a connection's outgoing frames.
const OUT_RESERVE: usize = 64 * 1024;
/// Messages taken from one subscription before moving to the connection's next one.
const DELIVERY_BATCH: usize = 32;

impl Broker {
    /// Releases a queued copy that will not be delivered: resolves its PubAck share as
    /// dropped and its memory. `group` is the queue group of the subscription that held it.
    pub(super) fn discard(&mut self, entry: Entry, group: Option<&Arc<str>>) {
        if entry.tracked {
            self.resolve_share(entry.msg.id, Share::Dropped);
            if let Some(g) = group {
                let key = (
                    g.clone(),
                    entry.msg.publisher_id.clone(),
                    entry.msg.sequence,
                );
                for waiter in self.dedup.dropped(&key) {
                    self.resolve_share(waiter, Share::Dropped);
                }
            }
        }
        self.budget.release(entry);
    }

    /// One share of message `msg_id`'s PubAck resolved; the PubAck goes out when it was the
    /// last and its publisher is still connected.
    fn resolve_share(&mut self, msg_id: u64, share: Share) {
        if let Some(due) = self.pubacks.resolve(msg_id, share)
            && self.conns.contains_key(&due.conn)
        {
            self.send_frame(due.conn, Body::PubAck(due.ack));
        }
    }

    pub(super) fn handle_ack(&mut self, now: Instant, conn: ConnId, delivery_id: u64) {
        let key = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.unacked.remove(&delivery_id));
        let Some(key) = key else {
            self.send_error(
                conn,
                pb::ErrorCode::Protocol,
                format!("no unacknowledged delivery with id {delivery_id}"),
                delivery_id,
                pb::AnswerKind::Ack,
            );
            return;
        };
        let Some(s) = self.subs.get_mut(&key) else {
            return;
        };
        let Some(entry) = s.unacked.remove(&delivery_id) else {
            return;
        };
        s.counters.acked += 1;
        let group = s.group.clone();
        self.totals.acked += 1;
        self.topic_counters.get_mut(entry.msg.topic.as_str()).acked += 1;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.counters.acked += 1;
        }
        self.latency
            .record(now.saturating_since(entry.msg.published_at));
        if entry.tracked {
            self.resolve_share(entry.msg.id, Share::Delivered);
            if let Some(g) = group {
                let key = (g, entry.msg.publisher_id.clone(), entry.msg.sequence);
                for waiter in self.dedup.acked(&key) {
                    self.resolve_share(waiter, Share::Delivered);
                }
            }
        }
        self.budget.release(entry);
        self.ready.insert(conn);
        self.wake(now, key);
    }

    /// Hands queued messages to every ready connection, within its write window.
    pub(super) fn pump(&mut self, now: Instant) {
        if self.pumping {
            // A frame handled while waking a stalled publisher: the outer loop goes on.
            return;
        }
        self.pumping = true;
        while let Some(conn) = self.ready.pop_first() {
            let (woken, drained) = self.pump_conn(conn);
            for key in woken {
                self.wake(now, key);
            }
            for key in drained {
                self.remove_subscription(now, key, true);
            }
        }
        self.pumping = false;
    }

    /// Encodes deliveries for one connection; returns the subscriptions whose queues shrank
    /// (QoS0 copies leave the queue when handed out) and the unsubscribed ones now empty.
    fn pump_conn(&mut self, conn: ConnId) -> (Vec<u64>, Vec<u64>) {
        let window = self.config.write_window;
        let mut woken = Vec::new();
        let mut drained = Vec::new();
        let mut resolved = Vec::new();
        let Some(c) = self.conns.get_mut(&conn) else {
            return (woken, drained);
        };
        if matches!(c.phase, Phase::Handshaking { .. }) {
            return (woken, drained);
        }
        let keys: Vec<u64> = {
            let cursor = c.cursor;
            let after = c.subs.values().copied().filter(|k| *k > cursor);
            let before = c.subs.values().copied().filter(|k| *k <= cursor);
            after.chain(before).collect()
        };
        let mut wrote = false;
        let mut reserved = false;
        loop {
            let mut progress = false;
            for &key in &keys {
                if c.in_flight + c.out.len() >= window {
                    break;
                }
                let Some(s) = self.subs.get_mut(&key) else {
                    continue;
                };
                if s.dropped_unreported > 0 {
                    let d = pb::Dropped {
                        sub_id: s.client_sub_id,
                        count: s.dropped_unreported,
                        total: s.dropped_total,
                    };
                    let frame = pb::Frame {
                        body: Some(Body::Dropped(d)),
                    };
                    if daemoneye_proto::encode(&frame, u32::MAX, &mut c.out).is_ok() {
                        s.dropped_unreported = 0;
                        wrote = true;
                    }
                }
                let mut shrank = false;
                for _ in 0..DELIVERY_BATCH {
                    if c.in_flight + c.out.len() >= window {
                        break;
                    }
                    let Some(entry) = s.queue.pop() else { break };
                    if !reserved {
                        // One allocation for this round of frames instead of doubling as
                        // they are encoded (the last buffer went to the driver whole).
                        reserved = true;
                        let room = window
                            .saturating_sub(c.in_flight + c.out.len())
                            .min(OUT_RESERVE);
                        if c.out.capacity() - c.out.len() < room {
                            c.out.reserve(room);
                        }
                    }
                    let qos1 = s.qos == QoS::AtLeastOnce && entry.msg.qos == QoS::AtLeastOnce;
                    let delivery_id = if qos1 {
                        c.next_delivery += 1;
                        c.next_delivery
                    } else {
                        0
                    };
                    wire::encode_deliver(s.client_sub_id, delivery_id, qos1, &entry, &mut c.out);
                    s.counters.delivered += 1;
                    c.counters.delivered += 1;
                    self.totals.delivered += 1;
                    progress = true;
                    wrote = true;
                    c.cursor = key;
                    if qos1 {
                        c.unacked.insert(delivery_id, key);
                        s.unacked.insert(delivery_id, entry);
                    } else {
                        if entry.tracked {
                            resolved.push(entry.msg.id);
                        }
                        self.budget.release(entry);
                        shrank = true;
                    }
                }
                if shrank {
                    woken.push(key);
                }
                if s.unsubscribed && s.queue.len() == 0 {
                    drained.push(key);
                }
            }
            if !progress || c.in_flight + c.out.len() >= window {
                break;
            }
        }
        if wrote {
            self.dirty.insert(conn);
        }
        for id in resolved {
            self.resolve_share(id, Share::Delivered);
        }
        drained.sort_unstable();
        drained.dedup();
        (woken, drained)
    }
}
