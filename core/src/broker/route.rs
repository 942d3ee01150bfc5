//! Publish routing, queue groups, overflow, QoS1 acks and delivery.

use std::sync::Arc;
use std::time::Duration;

use daemoneye_proto::frame::{Overflow, Publish, QoS, QueueStrategy, Target};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::dedup::{DedupKey, Seen};
use super::queue::Entry;
use super::{Broker, ConnId, Message, Output, Phase, PubAckState, Subscription, wire};
use crate::Instant;
use crate::topic::{TopicName, topics};

/// Bytes reserved at once for a connection's outgoing frames.
const OUT_RESERVE: usize = 64 * 1024;
/// Messages taken from one subscription before moving to the connection's next one.
const DELIVERY_BATCH: usize = 32;
/// Fixed cost charged to the memory budget per message besides its topic and payload.
const MESSAGE_OVERHEAD: u64 = 128;
/// Least time between two SlowDown notices to one publisher.
const SLOW_DOWN_EVERY: Duration = Duration::from_secs(1);
/// Publisher id stamped on the broker's own messages.
const BROKER_PUBLISHER: &str = "$broker";

/// A publish could not be routed yet: a Block queue (or the memory budget) has no room.
pub(super) struct Blocked {
    publish: Publish,
    on: BlockedOn,
}

pub(super) enum BlockedOn {
    Subscription(u64, String),
    Budget,
}

impl Broker {
    pub(super) fn handle_publish(&mut self, now: Instant, conn: ConnId, p: Publish) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.deferred.is_empty() {
            c.deferred_bytes += p.payload.len();
            c.deferred.push_back(p);
            return;
        }
        if let Err(blocked) = self.try_publish(now, conn, p) {
            self.stall(conn, *blocked);
        }
    }

    /// Validates and routes one publish; `Err` hands it back when it must wait for room.
    fn try_publish(&mut self, now: Instant, conn: ConnId, p: Publish) -> Result<(), Box<Blocked>> {
        let seq = p.sequence;
        let fail = |b: &mut Broker, code: pb::ErrorCode, msg: String| {
            b.send_error(conn, code, msg, seq, pb::AnswerKind::Publish);
            Ok(())
        };
        let cached = self
            .conns
            .get(&conn)
            .and_then(|c| c.last_topic.as_ref())
            .filter(|t| t.as_str() == p.topic)
            .cloned();
        let topic = match cached {
            Some(t) => t,
            None => match TopicName::parse(&p.topic) {
                Ok(t) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.last_topic = Some(t.clone());
                    }
                    t
                }
                Err(e) => {
                    let msg = format!("invalid topic {:?}: {e}", p.topic);
                    return fail(self, pb::ErrorCode::InvalidTopic, msg);
                }
            },
        };
        if let Some(reply_to) = &p.reply_to
            && let Err(e) = TopicName::parse(reply_to)
        {
            return fail(
                self,
                pb::ErrorCode::InvalidTopic,
                format!("invalid reply_to {reply_to:?}: {e}"),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let principal = c.principal;
        if topic.is_reserved() {
            // `$` topics belong to the broker; a publish there with reply_to is a request.
            let is_request = p.reply_to.is_some()
                && (topic.as_str() == topics::BROKER_STATS
                    || topic.as_str() == topics::BROKER_HEALTH);
            if is_request && self.acl.allows_publish(principal, &topic) {
                self.answer_request(now, conn, &topic, &p);
                return Ok(());
            }
            self.totals.denied += 1;
            let msg = format!("topic {:?} is reserved for the broker", topic.as_str());
            return fail(self, pb::ErrorCode::PermissionDenied, msg);
        }
        if !self.acl.allows_publish(principal, &topic) {
            self.totals.denied += 1;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.counters.denied += 1;
            }
            let msg = format!(
                "uid {} may not publish to {:?}",
                principal.uid,
                topic.as_str()
            );
            return fail(self, pb::ErrorCode::PermissionDenied, msg);
        }
        self.route(now, Some(conn), p, topic)
    }

    /// Puts a blocked publish at the front of the connection's waiting publishes.
    fn stall(&mut self, conn: ConnId, blocked: Blocked) {
        let reason = match &blocked.on {
            BlockedOn::Subscription(key, why) => {
                if let Some(s) = self.subs.get_mut(key)
                    && !s.blocked.contains(&conn)
                {
                    s.blocked.push(conn);
                }
                why.clone()
            }
            BlockedOn::Budget => {
                self.budget_blocked.insert(conn);
                format!(
                    "broker memory budget of {} bytes is full",
                    self.config.memory_budget
                )
            }
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.deferred_bytes += blocked.publish.payload.len();
        c.deferred.push_front(blocked.publish);
        if !c.blocked_notified {
            c.blocked_notified = true;
            let level = pb::BackpressureLevel::Blocked as i32;
            self.send_frame(conn, Body::Backpressure(pb::Backpressure { level, reason }));
        }
    }

    /// Retries a stalled publisher's waiting publishes in order; once all are routed it
    /// goes on with the frames it sent after them.
    pub(super) fn retry_stalled(&mut self, now: Instant, conn: ConnId) {
        self.budget_blocked.remove(&conn);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(p) = c.deferred.pop_front() else {
                break;
            };
            c.deferred_bytes = c.deferred_bytes.saturating_sub(p.payload.len());
            if let Err(blocked) = self.try_publish(now, conn, p) {
                self.stall(conn, *blocked);
                return;
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.goodbye {
            // Everything it published before its Goodbye is routed: answer and close.
            return self.answer_goodbye(now, conn);
        }
        let was_paused = std::mem::replace(&mut c.read_paused, false);
        let notified = std::mem::replace(&mut c.blocked_notified, false);
        if was_paused {
            self.outputs.push_back(Output::ResumeRead { conn });
        }
        if notified {
            let level = pb::BackpressureLevel::None as i32;
            self.send_frame(
                conn,
                Body::Backpressure(pb::Backpressure {
                    level,
                    reason: String::new(),
                }),
            );
        }
        self.process_frames(now, conn);
        self.note_partial_frame(now, conn);
    }

    fn resolve_target(
        &mut self,
        origin: Option<ConnId>,
        p: &Publish,
    ) -> Result<Option<ConnId>, ()> {
        let found = match &p.target {
            None => return Ok(None),
            Some(Target::Session(s)) => self.sessions.get(s).copied(),
            Some(Target::Collector(id)) => self.collectors.get(id).copied(),
        };
        match found {
            Some(c) => Ok(Some(c)),
            None => {
                if let Some(origin) = origin {
                    let what = match &p.target {
                        Some(Target::Session(s)) => format!("session {s}"),
                        Some(Target::Collector(id)) => format!("collector {id:?}"),
                        None => String::new(),
                    };
                    self.send_error(
                        origin,
                        pb::ErrorCode::UnknownTarget,
                        format!("direct publish to unknown or departed {what}"),
                        p.sequence,
                        pb::AnswerKind::Publish,
                    );
                }
                Err(())
            }
        }
    }

    /// The broker never sends a frame above the `max_frame` it advertised: a publish whose
    /// largest Deliver would not fit is refused with an Error for that publish naming the
    /// largest payload it could carry (see `wire::max_deliver_frame_len` for the bound). The
    /// connection stays open.
    fn fits_max_frame(&mut self, origin: Option<ConnId>, p: &Publish, topic: &TopicName) -> bool {
        let publisher_id = match origin.and_then(|o| self.conns.get(&o)) {
            Some(c) => c.publisher_id.clone(),
            None => Arc::from(BROKER_PUBLISHER),
        };
        let shape = wire::DeliverShape {
            topic: topic.as_str(),
            payload_len: p.payload.len(),
            publisher_id: &publisher_id,
            sequence: p.sequence,
            correlation: p.correlation.as_deref(),
            reply_to: p.reply_to.as_deref(),
            priority: p.priority,
        };
        let max = self.config.max_frame;
        let len = wire::max_deliver_frame_len(&shape);
        if len <= max as usize {
            return true;
        }
        self.totals.too_large += 1;
        if let Some(o) = origin {
            let largest = match wire::largest_payload(&shape, max) {
                Some(n) => format!("the largest payload accepted for it is {n} bytes"),
                None => "its topic and metadata alone leave no room for a payload".to_string(),
            };
            let msg = format!(
                "a publish of {} payload bytes to {:?} would be delivered as a frame of up to {len} bytes, above the max_frame of {max}; {largest}",
                p.payload.len(),
                topic.as_str()
            );
            self.send_error(
                o,
                pb::ErrorCode::FrameTooLarge,
                msg,
                p.sequence,
                pb::AnswerKind::Publish,
            );
        }
        false
    }

    /// Picks the member of `group` that gets a message among the matched keys.
    pub(super) fn pick_member(&mut self, group: &Arc<str>, matched: &[u64]) -> Option<u64> {
        let g = self.groups.get(group)?;
        let subs = &self.subs;
        let candidates: Vec<u64> = matched
            .iter()
            .copied()
            .filter(|k| subs.get(k).is_some_and(|s| s.group.as_ref() == Some(group)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let has_room = |k: &u64| subs.get(k).is_some_and(|s| !s.is_full());
        let chosen = match g.strategy {
            QueueStrategy::RoundRobin => {
                // Next after the last one served, in key order, skipping full members; if
                // every member is full, the plain next one (whose overflow strategy decides).
                let after = candidates.iter().copied().filter(|k| *k > g.last);
                let before = candidates.iter().copied().filter(|k| *k <= g.last);
                let order: Vec<u64> = after.chain(before).collect();
                order
                    .iter()
                    .copied()
                    .find(|k| has_room(k))
                    .unwrap_or(order[0])
            }
            QueueStrategy::LeastLoaded => candidates
                .iter()
                .copied()
                .min_by_key(|k| (subs.get(k).map_or(usize::MAX, Subscription::occupancy), *k))
                .unwrap_or(candidates[0]),
            QueueStrategy::Random => {
                let roomy: Vec<u64> = candidates.iter().copied().filter(has_room).collect();
                let pool = if roomy.is_empty() {
                    &candidates
                } else {
                    &roomy
                };
                pool[self.rng.below(pool.len() as u64) as usize]
            }
        };
        Some(chosen)
    }

    /// Routes one publish. `Err` hands the publish back when a Block queue or the memory
    /// budget has no room; nothing has been queued then.
    pub(super) fn route(
        &mut self,
        now: Instant,
        origin: Option<ConnId>,
        p: Publish,
        topic: TopicName,
    ) -> Result<(), Box<Blocked>> {
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        let routed = self.route_with(now, origin, p, topic, &mut targets);
        self.targets = targets;
        routed
    }

    fn route_with(
        &mut self,
        now: Instant,
        origin: Option<ConnId>,
        p: Publish,
        topic: TopicName,
        targets: &mut Vec<u64>,
    ) -> Result<(), Box<Blocked>> {
        if !self.fits_max_frame(origin, &p, &topic) {
            return Ok(());
        }
        let Ok(target) = self.resolve_target(origin, &p) else {
            return Ok(());
        };
        let mut matched = std::mem::take(&mut self.scratch);
        matched.clear();
        self.index.matches(&topic, &mut matched);
        if let Some(t) = target {
            let subs = &self.subs;
            matched.retain(|k| subs.get(k).is_some_and(|s| s.owner == Some(t)));
        }
        let mut groups_seen: Vec<Arc<str>> = Vec::new();
        for k in &matched {
            match self.subs.get(k).and_then(|s| s.group.clone()) {
                None => targets.push(*k),
                Some(g) if !groups_seen.contains(&g) => groups_seen.push(g),
                Some(_) => {}
            }
        }
        // The publisher's identity, for QoS1 group deduplication of its resends.
        let dedup_publisher = match origin.and_then(|o| self.conns.get(&o)) {
            Some(c) if p.qos == QoS::AtLeastOnce && !c.publisher_id.is_empty() => {
                Some(c.publisher_id.clone())
            }
            _ => None,
        };
        // Groups that already hold or acknowledged this resend: they get no second copy.
        let mut skipped: Vec<(DedupKey, Seen)> = Vec::new();
        let mut picks = Vec::with_capacity(groups_seen.len());
        for g in &groups_seen {
            if p.resent
                && let Some(publisher) = &dedup_publisher
            {
                let key = (g.clone(), publisher.clone(), p.sequence);
                let seen = self.dedup.seen(&key);
                if seen != Seen::No {
                    skipped.push((key, seen));
                    continue;
                }
            }
            if let Some(k) = self.pick_member(g, &matched) {
                targets.push(k);
                picks.push((g.clone(), k));
            }
        }
        self.scratch = matched;

        let size = p.payload.len() as u64 + topic.as_str().len() as u64 + MESSAGE_OVERHEAD;
        let over_budget = self.queued_bytes + size > self.config.memory_budget;
        if origin.is_some() {
            for k in targets.iter() {
                let Some(s) = self.subs.get(k) else { continue };
                if s.overflow != Overflow::Block {
                    continue;
                }
                if over_budget {
                    return Err(Box::new(Blocked {
                        publish: p,
                        on: BlockedOn::Budget,
                    }));
                }
                if s.is_full() {
                    let why = format!(
                        "subscription {} ({:?}) is full",
                        s.client_sub_id,
                        s.filter.as_str()
                    );
                    return Err(Box::new(Blocked {
                        publish: p,
                        on: BlockedOn::Subscription(*k, why),
                    }));
                }
            }
        }
        for (g, k) in picks {
            if let Some(state) = self.groups.get_mut(&g) {
                state.last = k;
            }
        }

        self.next_msg += 1;
        let (publisher_id, publisher_pid, publisher_uid) =
            match origin.and_then(|o| self.conns.get(&o)) {
                Some(c) => (c.publisher_id.clone(), c.peer.pid.unwrap_or(0), c.peer.uid),
                None => (Arc::from(BROKER_PUBLISHER), 0, 0),
            };
        let msg = Arc::new(Message {
            id: self.next_msg,
            topic,
            payload: p.payload,
            publisher_id,
            publisher_pid,
            publisher_uid,
            sequence: p.sequence,
            correlation: p.correlation,
            reply_to: p.reply_to,
            priority: p.priority,
            qos: p.qos,
            resent: p.resent,
            published_at: now,
            size,
        });
        self.totals.published += 1;
        self.topic_counters.get_mut(msg.topic.as_str()).published += 1;
        if let Some(c) = origin.and_then(|o| self.conns.get_mut(&o)) {
            c.counters.published += 1;
        }
        let wants_puback = p.qos == QoS::AtLeastOnce && origin.is_some();
        if !skipped.is_empty() {
            self.totals.deduplicated += skipped.len() as u64;
        }
        if targets.is_empty() && skipped.is_empty() {
            self.totals.no_interest += 1;
            self.topic_counters.get_mut(msg.topic.as_str()).no_interest += 1;
            if wants_puback && let Some(o) = origin {
                let ack = pb::PubAck {
                    sequence: p.sequence,
                    delivered: 0,
                    dropped: 0,
                    no_interest: true,
                };
                self.send_frame(o, Body::PubAck(ack));
            }
            return Ok(());
        }

        let mut remaining = 0u32;
        // Copies of this message refused by a full queue (all QoS), and those of them that
        // held a PubAck share.
        let mut refused = 0u64;
        let mut canary_delivered = 0u32;
        let mut dropped_now = 0u32;
        let mut evicted: Vec<(Entry, Option<Arc<str>>)> = Vec::new();
        let mut slow_down = false;
        let mut error_subs: Vec<String> = Vec::new();
        for k in targets.iter() {
            let Some(s) = self.subs.get_mut(k) else {
                continue;
            };
            let canary =
                self.config.canary_early_puback && wants_puback && s.qos == QoS::AtLeastOnce;
            let tracked = wants_puback && s.qos == QoS::AtLeastOnce && !canary;
            let entry = Entry {
                msg: msg.clone(),
                redelivered: false,
                tracked,
            };
            let no_room = s.is_full() || over_budget;
            let accept = if !no_room {
                true
            } else {
                match s.overflow {
                    Overflow::DropOldest => match s.queue.pop_oldest_lowest() {
                        Some(old) => {
                            s.dropped_total += 1;
                            s.dropped_unreported += 1;
                            s.counters.dropped += 1;
                            evicted.push((old, s.group.clone()));
                            true
                        }
                        None => false,
                    },
                    Overflow::Error => {
                        error_subs.push(format!(
                            "subscription {} ({:?})",
                            s.client_sub_id,
                            s.filter.as_str()
                        ));
                        false
                    }
                    // Block reaches here only for the broker's own messages, which never wait.
                    Overflow::DropNewest | Overflow::Block => false,
                }
            };
            if accept {
                if tracked {
                    remaining += 1;
                    if let (Some(g), Some(publisher)) = (&s.group, &dedup_publisher) {
                        self.dedup
                            .handed_out((g.clone(), publisher.clone(), p.sequence));
                    }
                }
                if canary {
                    canary_delivered += 1;
                }
                s.queue.push_back(entry);
                if s.under_pressure() {
                    slow_down = true;
                }
            } else {
                s.dropped_total += 1;
                s.dropped_unreported += 1;
                s.counters.dropped += 1;
                refused += 1;
                if tracked {
                    dropped_now += 1;
                }
            }
            if let Some(owner) = s.owner {
                self.ready.insert(owner);
            }
        }
        let drops = refused + evicted.len() as u64;
        if drops > 0 {
            self.topic_counters.get_mut(msg.topic.as_str()).dropped += drops;
            self.totals.dropped += drops;
        }
        if Arc::strong_count(&msg) > 1 {
            self.queued_bytes += msg.size;
        }
        for (old, group) in evicted {
            self.discard(old, group.as_ref());
        }
        if let Some(o) = origin {
            for what in error_subs {
                self.send_error(
                    o,
                    pb::ErrorCode::QueueFull,
                    format!("{what} is full; message dropped"),
                    p.sequence,
                    pb::AnswerKind::Publish,
                );
            }
            if slow_down || self.queued_bytes * 5 >= self.config.memory_budget * 4 {
                self.maybe_slow_down(now, o);
            }
        }
        // A group that acknowledged this resend's original counts as delivered now; one that
        // still holds the original resolves this PubAck's share when that copy resolves.
        let mut skipped_acked = 0u32;
        let mut waiting_on: Vec<DedupKey> = Vec::new();
        for (key, seen) in skipped {
            match seen {
                Seen::Acked => skipped_acked += 1,
                Seen::InFlight if wants_puback => {
                    remaining += 1;
                    waiting_on.push(key);
                }
                Seen::InFlight | Seen::No => {}
            }
        }
        for key in &waiting_on {
            self.dedup.wait(key, msg.id);
        }
        if wants_puback && let Some(o) = origin {
            if remaining == 0 {
                let ack = pb::PubAck {
                    sequence: p.sequence,
                    delivered: canary_delivered + skipped_acked,
                    dropped: dropped_now,
                    no_interest: false,
                };
                self.send_frame(o, Body::PubAck(ack));
            } else {
                self.pubacks.insert(
                    msg.id,
                    PubAckState {
                        conn: o,
                        sequence: p.sequence,
                        remaining,
                        delivered: skipped_acked,
                        dropped: dropped_now,
                    },
                );
            }
        }
        Ok(())
    }

    fn maybe_slow_down(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.slow_down_sent.is_some_and(|t| t + SLOW_DOWN_EVERY > now) {
            return;
        }
        c.slow_down_sent = Some(now);
        let level = pb::BackpressureLevel::SlowDown as i32;
        let reason = "a subscription queue is at 80% of its capacity".to_string();
        self.send_frame(conn, Body::Backpressure(pb::Backpressure { level, reason }));
    }

    /// Releases a queued copy that will not be delivered: resolves its PubAck share as
    /// dropped and its memory. `group` is the queue group of the subscription that held it.
    pub(super) fn discard(&mut self, entry: Entry, group: Option<&Arc<str>>) {
        if entry.tracked {
            self.resolve_share(entry.msg.id, false);
            if let Some(g) = group {
                let key = (
                    g.clone(),
                    entry.msg.publisher_id.clone(),
                    entry.msg.sequence,
                );
                for waiter in self.dedup.dropped(&key) {
                    self.resolve_share(waiter, false);
                }
            }
        }
        self.release(entry);
    }

    /// Drops the broker's hold on one copy; the message's bytes leave the budget with its
    /// last copy.
    fn release(&mut self, entry: Entry) {
        if Arc::strong_count(&entry.msg) == 1 {
            self.queued_bytes = self.queued_bytes.saturating_sub(entry.msg.size);
        }
    }

    fn resolve_share(&mut self, msg_id: u64, delivered: bool) {
        let Some(st) = self.pubacks.get_mut(&msg_id) else {
            return;
        };
        if delivered {
            st.delivered += 1;
        } else {
            st.dropped += 1;
        }
        st.remaining = st.remaining.saturating_sub(1);
        if st.remaining > 0 {
            return;
        }
        let Some(st) = self.pubacks.remove(&msg_id) else {
            return;
        };
        if self.conns.contains_key(&st.conn) {
            let ack = pb::PubAck {
                sequence: st.sequence,
                delivered: st.delivered,
                dropped: st.dropped,
                no_interest: false,
            };
            self.send_frame(st.conn, Body::PubAck(ack));
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
            self.resolve_share(entry.msg.id, true);
            if let Some(g) = group {
                let key = (g, entry.msg.publisher_id.clone(), entry.msg.sequence);
                for waiter in self.dedup.acked(&key) {
                    self.resolve_share(waiter, true);
                }
            }
        }
        self.release(entry);
        self.ready.insert(conn);
        self.wake(now, key);
    }

    /// A subscription's queue has room again: retry the publishers stalled on it, and those
    /// stalled on the memory budget if it has room.
    fn wake(&mut self, now: Instant, key: u64) {
        let blocked = match self.subs.get_mut(&key) {
            Some(s) if !s.is_full() && !s.blocked.is_empty() => std::mem::take(&mut s.blocked),
            _ => Vec::new(),
        };
        for conn in blocked {
            self.retry_stalled(now, conn);
        }
        if !self.budget_blocked.is_empty() && self.queued_bytes < self.config.memory_budget {
            let waiting: Vec<ConnId> = self.budget_blocked.iter().copied().collect();
            for conn in waiting {
                self.retry_stalled(now, conn);
            }
        }
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
                        if Arc::strong_count(&entry.msg) == 1 {
                            self.queued_bytes = self.queued_bytes.saturating_sub(entry.msg.size);
                        }
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
            self.resolve_share(id, true);
        }
        drained.sort_unstable();
        drained.dedup();
        (woken, drained)
    }
}
