//! Fan-out of one publish: which subscriptions get a copy (filters, a direct target, one
//! member per queue group, resends a group already has), whether the publish must wait
//! (a full Block queue, the memory budget), then one copy offered to each queue
//! ([`admit`]) and the publisher's PubAck opened in the ledger.

use std::sync::Arc;

use daemoneye_proto::frame::{Overflow, Publish, QoS, Target};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::dedup::{DedupKey, Seen};
use super::overflow::{Admission, admit};
use super::puback::Tally;
use super::publish::{Blocked, BlockedOn};
use super::queue::Entry;
use super::{Broker, ConnId, Message, wire};
use crate::Instant;
use crate::topic::TopicName;

/// Fixed cost charged to the memory budget per message besides its topic and payload.
const MESSAGE_OVERHEAD: u64 = 128;
/// Publisher id stamped on the broker's own messages.
const BROKER_PUBLISHER: &str = "$broker";

/// A direct publish names a target that is not connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum UnknownTarget {
    /// No connection has this session id.
    #[error("direct publish to unknown or departed session {0}")]
    Session(u64),
    /// No connection registered this collector id.
    #[error("direct publish to unknown or departed collector {0:?}")]
    Collector(String),
}

/// An Error-overflow subscription refused a copy: the publisher is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subscription {sub_id} ({filter:?}) is full; message dropped")]
struct QueueFull {
    sub_id: u64,
    filter: String,
}

/// What the queue groups a publish matched came to.
#[derive(Debug)]
struct GroupChoices {
    /// The member each group picked, recorded as served once the publish is routed.
    picks: Vec<(Arc<str>, u64)>,
    /// Groups that already hold or acknowledged this resend: they get no second copy.
    skipped: Vec<(DedupKey, Seen)>,
}

/// What one message's copies came to.
#[derive(Debug, Default)]
struct FanOut {
    /// Queued copies holding a share of the publish's PubAck.
    awaiting: u32,
    /// Copies counted delivered the moment they were queued (the early-PubAck canary).
    counted_early: u32,
    /// Refused copies that held a PubAck share.
    refused_shares: u32,
    /// Copies refused (all QoS).
    refused: u64,
    /// Copies queued.
    queued: u32,
    /// Older copies evicted to make room (DropOldest), with their subscription's group.
    evicted: Vec<(Entry, Option<Arc<str>>)>,
    /// A queue reached 80% of its capacity.
    slow_down: bool,
    /// Error-overflow subscriptions that refused their copy.
    full: Vec<QueueFull>,
}

impl Broker {
    /// The connection a direct publish goes to (`None`: not a direct publish).
    fn resolve_target(&self, p: &Publish) -> Result<Option<ConnId>, UnknownTarget> {
        match &p.target {
            None => Ok(None),
            Some(Target::Session(s)) => self
                .sessions
                .get(s)
                .map(|c| Some(*c))
                .ok_or(UnknownTarget::Session(*s)),
            Some(Target::Collector(id)) => self
                .collectors
                .get(id)
                .map(|c| Some(*c))
                .ok_or_else(|| UnknownTarget::Collector(id.clone())),
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
        let load = |k: u64| {
            subs.get(&k)
                .map(|s| s.load())
                .unwrap_or(super::group::MemberLoad {
                    occupancy: usize::MAX,
                    full: true,
                })
        };
        g.pick(matched, load, &mut self.rng)
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
        let target = match self.resolve_target(&p) {
            Ok(t) => t,
            Err(unknown) => {
                if let Some(o) = origin {
                    self.send_error(
                        o,
                        pb::ErrorCode::UnknownTarget,
                        unknown.to_string(),
                        p.sequence,
                        pb::AnswerKind::Publish,
                    );
                }
                return Ok(());
            }
        };
        // The publisher's identity, for QoS1 group deduplication of its resends.
        let dedup_publisher = match origin.and_then(|o| self.conns.get(&o)) {
            Some(c) if p.qos == QoS::AtLeastOnce && !c.publisher_id.is_empty() => {
                Some(c.publisher_id.clone())
            }
            _ => None,
        };
        let GroupChoices { picks, skipped } =
            self.choose_targets(&p, &topic, target, dedup_publisher.as_ref(), targets);

        let size = p.payload.len() as u64 + topic.as_str().len() as u64 + MESSAGE_OVERHEAD;
        let over_budget = self.budget.would_exceed(size);
        if origin.is_some()
            && let Some(on) = self.must_wait(targets, over_budget)
        {
            return Err(Box::new(Blocked { publish: p, on }));
        }
        for (g, k) in picks {
            if let Some(group) = self.groups.get_mut(&g) {
                group.served(k);
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
            copies: Default::default(),
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

        let fan = self.fan_out(
            &msg,
            targets,
            over_budget,
            wants_puback,
            dedup_publisher.as_ref(),
        );
        let drops = fan.refused + fan.evicted.len() as u64;
        if drops > 0 {
            self.topic_counters.get_mut(msg.topic.as_str()).dropped += drops;
            self.totals.dropped += drops;
        }
        self.budget.charge(&msg.copies, msg.size, fan.queued);
        for (old, group) in fan.evicted {
            self.discard(old, group.as_ref());
        }
        if let Some(o) = origin {
            for full in fan.full {
                self.send_error(
                    o,
                    pb::ErrorCode::QueueFull,
                    full.to_string(),
                    p.sequence,
                    pb::AnswerKind::Publish,
                );
            }
            if fan.slow_down || self.budget.under_pressure() {
                self.maybe_slow_down(now, o);
            }
        }
        // A group that acknowledged this resend's original counts as delivered now; one that
        // still holds the original resolves this PubAck's share when that copy resolves.
        let mut tally = Tally {
            awaiting: fan.awaiting,
            delivered: 0,
            dropped: fan.refused_shares,
        };
        let mut waiting_on: Vec<DedupKey> = Vec::new();
        for (key, seen) in skipped {
            match seen {
                Seen::Acked => tally.delivered += 1,
                Seen::InFlight if wants_puback => {
                    tally.awaiting += 1;
                    waiting_on.push(key);
                }
                Seen::InFlight | Seen::No => {}
            }
        }
        for key in &waiting_on {
            self.dedup.wait(key, msg.id);
        }
        if wants_puback && let Some(o) = origin {
            if tally.awaiting == 0 {
                // The canary's copies count only in a PubAck sent at once.
                tally.delivered += fan.counted_early;
            }
            if let Some(due) = self.pubacks.open(msg.id, o, p.sequence, tally) {
                self.send_frame(due.conn, Body::PubAck(due.ack));
            }
        }
        Ok(())
    }

    /// Fills `targets` with the subscriptions that get a copy: every matching plain
    /// subscription (of the direct target only, if any) and one member per matching queue
    /// group, and says what each group came to.
    fn choose_targets(
        &mut self,
        p: &Publish,
        topic: &TopicName,
        target: Option<ConnId>,
        dedup_publisher: Option<&Arc<str>>,
        targets: &mut Vec<u64>,
    ) -> GroupChoices {
        let mut matched = std::mem::take(&mut self.scratch);
        matched.clear();
        self.index.matches(topic, &mut matched);
        if let Some(t) = target {
            let subs = &self.subs;
            matched.retain(|k| subs.get(k).is_some_and(|s| s.owner == Some(t)));
        }
        // Each group once, its name cloned once (not once per member: the reference counts
        // are a hot spot of a group's publishes).
        let mut groups_seen = std::mem::take(&mut self.groups_seen);
        groups_seen.clear();
        for k in &matched {
            match self.subs.get(k).and_then(|s| s.group.as_ref()) {
                None => targets.push(*k),
                Some(g) if !groups_seen.iter().any(|seen| **seen == **g) => {
                    groups_seen.push(g.clone());
                }
                Some(_) => {}
            }
        }
        let mut skipped = Vec::new();
        let mut picks = Vec::new();
        for g in groups_seen.drain(..) {
            if p.resent
                && let Some(publisher) = dedup_publisher
            {
                let key = (g.clone(), publisher.clone(), p.sequence);
                let seen = self.dedup.seen(&key);
                if seen != Seen::No {
                    skipped.push((key, seen));
                    continue;
                }
            }
            if let Some(k) = self.pick_member(&g, &matched) {
                targets.push(k);
                picks.push((g, k));
            }
        }
        self.groups_seen = groups_seen;
        self.scratch = matched;
        GroupChoices { picks, skipped }
    }

    /// What a publisher's publish must wait for before any copy is queued: the first Block
    /// target that is full, or the memory budget if a Block target would go over it.
    fn must_wait(&self, targets: &[u64], over_budget: bool) -> Option<BlockedOn> {
        for k in targets {
            let Some(s) = self.subs.get(k) else { continue };
            if s.overflow != Overflow::Block {
                continue;
            }
            if over_budget {
                return Some(BlockedOn::Budget {
                    limit: self.config.memory_budget,
                });
            }
            if s.is_full() {
                return Some(BlockedOn::Subscription {
                    key: *k,
                    sub_id: s.client_sub_id,
                    filter: s.filter.as_str().to_string(),
                });
            }
        }
        None
    }

    /// Offers one copy of `msg` to each target's queue and says what came of them.
    fn fan_out(
        &mut self,
        msg: &Arc<Message>,
        targets: &[u64],
        over_budget: bool,
        wants_puback: bool,
        dedup_publisher: Option<&Arc<str>>,
    ) -> FanOut {
        let mut fan = FanOut::default();
        for k in targets {
            let Some(s) = self.subs.get_mut(k) else {
                continue;
            };
            let qos1 = wants_puback && s.qos == QoS::AtLeastOnce;
            let counted_early = qos1 && self.config.early_puback_canary();
            let tracked = qos1 && !counted_early;
            let entry = Entry {
                msg: msg.clone(),
                redelivered: false,
                tracked,
            };
            let has_room = !(s.is_full() || over_budget);
            let admission = admit(&mut s.queue, s.overflow, has_room, entry);
            if admission.queued() {
                fan.queued += 1;
                if tracked {
                    fan.awaiting += 1;
                    if let (Some(g), Some(publisher)) = (&s.group, dedup_publisher) {
                        self.dedup
                            .handed_out((g.clone(), publisher.clone(), msg.sequence));
                    }
                }
                if counted_early {
                    fan.counted_early += 1;
                }
                if s.under_pressure() {
                    fan.slow_down = true;
                }
            } else {
                s.dropped_total += 1;
                s.dropped_unreported += 1;
                s.counters.dropped += 1;
                fan.refused += 1;
                if tracked {
                    fan.refused_shares += 1;
                }
            }
            match admission {
                Admission::QueuedEvictingOldest(old) => {
                    s.dropped_total += 1;
                    s.dropped_unreported += 1;
                    s.counters.dropped += 1;
                    fan.evicted.push((old, s.group.clone()));
                }
                Admission::Rejected => fan.full.push(QueueFull {
                    sub_id: s.client_sub_id,
                    filter: s.filter.as_str().to_string(),
                }),
                Admission::Queued | Admission::Dropped => {}
            }
            if let Some(owner) = s.owner {
                self.ready.insert(owner);
            }
        }
        fan
    }
}
