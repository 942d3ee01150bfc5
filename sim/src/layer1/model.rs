//! Layer 1's reference model and the invariants it holds the machines to (DESIGN.md
//! section 9): what every client saw (delivery to live subscriptions, filter match,
//! per-publisher order, one member per group for QoS0, PubAck after delivery), what was
//! published (a sequence never names two messages), bounded queues and connection memory,
//! the restart policy, the registry's identity rule, and clean-close delivery (9).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::client::ClientEvent;
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_proto::frame::{Overflow, QoS, Subscribe};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

use super::{MAX_FRAME, World};
use crate::reference::naive_match;
use crate::report::Violation;

#[derive(Debug, Clone)]
pub(super) struct SubModel {
    pub(super) filter: TopicFilter,
    pub(super) group: Option<String>,
    /// Overflow Block.
    pub(super) block: bool,
}

/// A live subscription that must receive a message: (client, incarnation, link epoch,
/// sub id).
pub(super) type Watcher = (usize, u32, u32, u64);

/// Invariant 9: a QoS0 message of a publisher that closed cleanly, and a subscription that
/// must get it while it stays connected.
#[derive(Debug, Clone)]
pub(super) struct CleanCloseExpect {
    pub(super) publisher: String,
    pub(super) sequence: u64,
    pub(super) watcher: Watcher,
    pub(super) broker_epoch: u32,
}

/// (publisher id, sequence).
pub(super) type MessageId = (String, u64);
/// (client, incarnation, sub id).
pub(super) type SubscriptionId = (usize, u32, u64);
/// (client, incarnation, sub id, link epoch, broker epoch, publisher id, priority).
pub(super) type OrderKey = (usize, u32, u64, u32, u32, String, u8);

impl World {
    /// Records what a (publisher, sequence) carries; a sequence never names two messages.
    pub(super) fn note_publish(
        &mut self,
        id: MessageId,
        payload: Bytes,
        qos: QoS,
    ) -> Result<(), Violation> {
        if let Some(prev) = self.contents.insert(id.clone(), payload.clone())
            && prev != payload
        {
            return Err(self.violation(
                "sequence-reuse",
                format!("{}#{} published with two different payloads", id.0, id.1),
            ));
        }
        self.publish_qos.insert(id, qos);
        self.published += 1;
        Ok(())
    }

    /// DESIGN.md section 9, invariant 6: restarts never exceed the policy's count within
    /// its window.
    pub(super) fn check_restart_policy(&self, i: usize) -> Result<(), Violation> {
        let c = &self.clients[i];
        let policy = &c.policy;
        for (k, &a) in c.spawns.iter().enumerate() {
            let within = c.spawns[k..]
                .iter()
                .take_while(|&&b| b.saturating_since(a) < policy.window)
                .count();
            if within as u32 > policy.max_restarts {
                return Err(self.violation(
                    "restart-policy",
                    format!(
                        "c{i}: {within} restarts within {:?} (max {})",
                        policy.window, policy.max_restarts
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The broker answered a client's Goodbye: every QoS0 message it published on that link
    /// must reach every Block subscription that was live when it was published and stays
    /// connected (invariant 9, checked once the run has drained).
    pub(super) fn note_clean_close(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let watch = std::mem::take(&mut c.watch);
        if !c.closing || self.tainted.contains(&c.publisher_id) {
            return;
        }
        let publisher = c.publisher_id.clone();
        for (sequence, watchers) in watch {
            for watcher in watchers {
                self.clean_closes.push(CleanCloseExpect {
                    publisher: publisher.clone(),
                    sequence,
                    watcher,
                    broker_epoch: self.broker_epoch,
                });
            }
        }
    }

    /// The live Block subscriptions (plain, confirmed on their current link) of other
    /// clients that match `topic`.
    pub(super) fn live_block_watchers(&self, i: usize, topic: &str) -> Vec<Watcher> {
        let mut out = Vec::new();
        for (j, c) in self.clients.iter().enumerate() {
            if j == i || c.conn.is_none() || c.process_down {
                continue;
            }
            for sub_id in &c.acked_subs {
                if let Some(m) = c.subs.get(sub_id)
                    && m.block
                    && m.group.is_none()
                    && naive_match(m.filter.as_str(), topic)
                {
                    out.push((j, c.incarnation, c.link_epoch, *sub_id));
                }
            }
        }
        out
    }

    /// Invariant 9, once everything else has drained: what a cleanly closed publisher sent
    /// at QoS0 reaches every Block subscription that was live then and still is.
    pub(super) fn check_clean_closes(&mut self) -> Result<(), Violation> {
        let deadline = self.now + Duration::from_secs(60);
        loop {
            let missing: Vec<&CleanCloseExpect> = self
                .clean_closes
                .iter()
                .filter(|e| {
                    let (j, inc, epoch, sub_id) = e.watcher;
                    let c = &self.clients[j];
                    let live = e.broker_epoch == self.broker_epoch
                        && c.conn.is_some()
                        && c.incarnation == inc
                        && c.link_epoch == epoch;
                    live && !self
                        .received
                        .get(&(e.publisher.clone(), e.sequence))
                        .is_some_and(|r| r.contains(&(j, inc, sub_id)))
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if self.now >= deadline {
                let detail = format!(
                    "{} QoS0 message(s) of cleanly closed publishers never reached a live Block subscriber, e.g. {:?}",
                    missing.len(),
                    missing[0]
                );
                return Err(self.violation("clean-close-delivery", detail));
            }
            for _ in 0..200 {
                self.step_once(false)?;
            }
        }
    }

    // ----- client behaviour and invariants on what clients see -----

    pub(super) fn client_events(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(ev) = self.clients[i].session.poll_output() {
            match ev {
                ClientEvent::Message(d) => {
                    self.delivered += 1;
                    let inc = self.clients[i].incarnation;
                    let Some(sub) = self.clients[i].subs.get(&d.sub_id).cloned() else {
                        return Err(self.violation(
                            "delivery-to-live-subscription",
                            format!("c{i} got sub {} it does not hold", d.sub_id),
                        ));
                    };
                    let name = TopicName::parse(&d.topic)
                        .map_err(|e| self.violation("valid-topic", format!("{}: {e}", d.topic)))?;
                    if !naive_match(sub.filter.as_str(), name.as_str()) {
                        return Err(self.violation(
                            "filter-match",
                            format!("{} delivered to c{i} for filter {}", d.topic, sub.filter),
                        ));
                    }
                    if d.qos == QoS::AtLeastOnce {
                        self.clients[i].unacked.push(d.delivery_id);
                    }
                    self.received
                        .entry((d.publisher_id.clone(), d.sequence))
                        .or_default()
                        .insert((i, inc, d.sub_id));
                    if !d.redelivered && !self.tainted.contains(&d.publisher_id) {
                        let key = (
                            i,
                            inc,
                            d.sub_id,
                            self.clients[i].link_epoch,
                            self.broker_epoch,
                            d.publisher_id.clone(),
                            d.priority,
                        );
                        if let Some(prev) = self.order.insert(key, d.sequence)
                            && prev >= d.sequence
                        {
                            return Err(self.violation(
                                "per-publisher-order",
                                format!(
                                    "c{i} sub {} got {}#{} after #{prev}",
                                    d.sub_id, d.publisher_id, d.sequence
                                ),
                            ));
                        }
                        // A QoS1 publish may be re-sent after its publisher reconnects, and a
                        // group may then hand the copy to another member: at least once. Only
                        // QoS0 is held to exactly one member.
                        let qos0 = self.publish_qos.get(&(d.publisher_id.clone(), d.sequence))
                            == Some(&QoS::AtMostOnce);
                        if let Some(g) = sub.group.as_ref().filter(|_| qos0) {
                            let n = self
                                .group_firsts
                                .entry((
                                    g.clone(),
                                    d.publisher_id.clone(),
                                    d.sequence,
                                    self.broker_epoch,
                                ))
                                .or_default();
                            *n += 1;
                            if *n > 1 {
                                return Err(self.violation(
                                    "group-exactly-once",
                                    format!(
                                        "group {g} delivered {}#{} to a second member",
                                        d.publisher_id, d.sequence
                                    ),
                                ));
                            }
                        }
                    }
                    self.log(format!(
                        "c{i} got {}#{} on sub {} prio {}",
                        d.publisher_id, d.sequence, d.sub_id, d.priority
                    ));
                    if d.topic == daemoneye_core::topic::topics::task(super::tasks::CAPABILITY) {
                        self.take_task(i, &d);
                    }
                    if d.topic == format!("_reply.c{i}")
                        && let Some((reg, _)) = self.clients[i].registration.as_mut()
                        && let Ok(a) = pbc::RegisterResponse::decode(d.payload.clone())
                    {
                        let hb = Duration::from_millis(a.heartbeat_interval_ms);
                        reg.handle_answer(self.now, a.accepted, Some(hb));
                    }
                }
                ClientEvent::PubAck {
                    sequence,
                    delivered,
                    dropped,
                    no_interest,
                } => {
                    self.pubacks += 1;
                    let seen = self
                        .received
                        .get(&(self.clients[i].publisher_id.clone(), sequence))
                        .map_or(0, BTreeSet::len);
                    if (delivered as usize) > seen {
                        return Err(self.violation(
                            "puback-after-delivery",
                            format!(
                                "c{i} got PubAck #{sequence} delivered={delivered} but only {seen} subscription(s) have received it"
                            ),
                        ));
                    }
                    self.log(format!(
                        "c{i} puback #{sequence} d={delivered} x={dropped} none={no_interest}"
                    ));
                    if let Some(w) = self.clients[i].wal.as_mut() {
                        w.must_survive.remove(&sequence);
                        w.sent_early.remove(&sequence);
                        w.machine.handle_puback(self.now, sequence);
                        self.drive_wal(i)?;
                    }
                }
                ClientEvent::Backpressure { level, reason } => {
                    self.clients[i].blocked =
                        level == daemoneye_proto::pb::bus::BackpressureLevel::Blocked;
                    self.log(format!("c{i} backpressure {level:?} {reason}"));
                }
                ClientEvent::Subscribed { sub_id, backlog } => {
                    self.clients[i].acked_subs.insert(sub_id);
                    self.log(format!("c{i} subscribed {sub_id} backlog {backlog}"));
                }
                other => self.log(format!("c{i} event {other:?}")),
            }
        }
        Ok(())
    }

    pub(super) fn check_bounds(&self) -> Result<(), Violation> {
        for s in self.broker.subscriptions() {
            if s.queued + s.unacked > s.capacity as usize {
                return Err(self.violation("queue-capacity", format!("{s:?}")));
            }
        }
        // Decoder: at most a frame plus the deferred-publish backlog plus one read; output:
        // the write window plus one reserve.
        let bound =
            2 * MAX_FRAME as usize + (1 << 20) + 64 * 1024 + self.broker_config.write_window;
        for c in &self.clients {
            if let Some(conn) = c.conn
                && let Some(mem) = self.broker.connection_memory(conn)
                && mem > bound
            {
                return Err(self.violation(
                    "connection-memory",
                    format!("{conn:?} holds {mem} bytes > {bound}"),
                ));
            }
        }
        Ok(())
    }

    /// The identity invariant: a registered collector's entry is its own process's.
    pub(super) fn check_identity(&self, id: &str) -> Result<(), Violation> {
        let Some(entry) = self.fleet.registry().get(id) else {
            return Ok(());
        };
        let own = id
            .strip_prefix('c')
            .and_then(|k| k.parse::<u32>().ok())
            .map(|k| 100 + k);
        if own != Some(entry.pid) {
            return Err(self.violation(
                "identity",
                format!(
                    "{id} registered by pid {} (its process is {own:?})",
                    entry.pid
                ),
            ));
        }
        Ok(())
    }
}

pub(super) fn sub_model(spec: &Subscribe) -> SubModel {
    SubModel {
        filter: TopicFilter::parse(&spec.filter)
            .unwrap_or_else(|_| unreachable!("specs come from a fixed valid list")),
        group: spec.group.as_ref().map(|g| g.name.clone()),
        block: matches!(spec.overflow, None | Some(Overflow::Block)),
    }
}
