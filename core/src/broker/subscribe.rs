//! Subscriptions: creating, resuming, unsubscribing (after their queue drains) and
//! removing them, with their queue-group membership and durable names.

use std::collections::BTreeMap;
use std::sync::Arc;

use daemoneye_proto::frame::{GroupSpec, Overflow, QoS, Subscribe};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::group::{MemberLoad, QueueGroup};
use super::queue::{Entry, SubQueue};
use super::stats::Counters;
use super::{Broker, ConnId};
use crate::Instant;
use crate::topic::{TopicError, TopicFilter};

#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) key: u64,
    pub(super) owner: Option<ConnId>,
    pub(super) client_sub_id: u64,
    pub(super) filter: TopicFilter,
    pub(super) group: Option<Arc<str>>,
    pub(super) qos: QoS,
    pub(super) capacity: u32,
    pub(super) overflow: Overflow,
    pub(super) durable: Option<(u32, String)>,
    pub(super) queue: SubQueue,
    /// Delivered QoS1 copies waiting for Ack, by delivery id.
    pub(super) unacked: BTreeMap<u64, Entry>,
    /// Publishers stalled on this queue.
    pub(super) blocked: Vec<ConnId>,
    /// Unsubscribed: it matches nothing new and goes once its queue is handed out.
    pub(super) unsubscribed: bool,
    pub(super) dropped_total: u64,
    pub(super) dropped_unreported: u64,
    pub(super) detached_at: Option<Instant>,
    pub(super) counters: Counters,
}

impl Subscription {
    /// Copies it holds: queued and handed out unacknowledged.
    pub(super) fn occupancy(&self) -> usize {
        self.queue.len() + self.unacked.len()
    }
    /// At capacity.
    pub(super) fn is_full(&self) -> bool {
        self.occupancy() >= self.capacity as usize
    }
    /// At 80% of capacity or more.
    pub(super) fn under_pressure(&self) -> bool {
        self.occupancy() * 5 >= self.capacity as usize * 4
    }

    /// How loaded it is, for a queue-group pick.
    pub(super) fn load(&self) -> MemberLoad {
        MemberLoad {
            occupancy: self.occupancy(),
            full: self.is_full(),
        }
    }
}

/// What a new subscription is made of.
pub(super) struct NewSubscription {
    pub owner: Option<ConnId>,
    pub client_sub_id: u64,
    pub filter: TopicFilter,
    pub group: Option<GroupSpec>,
    pub qos: QoS,
    pub capacity: u32,
    pub overflow: Overflow,
    pub durable: Option<(u32, String)>,
    pub detached_at: Option<Instant>,
}

/// Why a Subscribe is refused (the connection stays); answered with an Error for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SubscribeRefusal {
    /// The filter does not parse.
    #[error("invalid filter {filter:?}: {source}")]
    InvalidFilter {
        /// The filter text.
        filter: String,
        /// The rule it breaks.
        source: TopicError,
    },
    /// The ACL does not let this uid read what the filter matches.
    #[error("uid {uid} may not subscribe to {filter:?}")]
    Denied {
        /// The subscriber's uid.
        uid: u32,
        /// The filter.
        filter: String,
    },
    /// The connection already has a subscription with this id.
    #[error("sub_id {0} is already in use")]
    SubIdInUse(u64),
    /// The connection holds `max_subscriptions_per_connection` already.
    #[error("subscription limit of {limit} per connection reached")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// The capacity asked for is above `max_capacity`.
    #[error("capacity {capacity} is above the maximum of {max}")]
    CapacityTooLarge {
        /// Asked for.
        capacity: u32,
        /// The broker's maximum.
        max: u32,
    },
    /// The durable subscription is held by another live connection.
    #[error("durable subscription {name:?} is in use by another connection")]
    DurableInUse {
        /// The durable name.
        name: String,
    },
    /// The durable subscription exists with another filter.
    #[error("durable subscription {name:?} exists with filter {filter:?}")]
    DurableFilterMismatch {
        /// The durable name.
        name: String,
        /// Its filter.
        filter: String,
    },
}

impl SubscribeRefusal {
    /// The error code the refusal is answered with.
    pub(super) fn code(&self) -> pb::ErrorCode {
        match self {
            SubscribeRefusal::InvalidFilter { .. } => pb::ErrorCode::InvalidFilter,
            SubscribeRefusal::Denied { .. } => pb::ErrorCode::PermissionDenied,
            SubscribeRefusal::SubIdInUse(_) | SubscribeRefusal::DurableInUse { .. } => {
                pb::ErrorCode::DuplicateSubscription
            }
            SubscribeRefusal::TooMany { .. } => pb::ErrorCode::TooManySubscriptions,
            SubscribeRefusal::CapacityTooLarge { .. }
            | SubscribeRefusal::DurableFilterMismatch { .. } => pb::ErrorCode::InvalidSubscription,
        }
    }
}

impl Broker {
    pub(super) fn handle_subscribe(&mut self, conn: ConnId, s: Subscribe) {
        let sub_id = s.sub_id;
        if let Err(refusal) = self.subscribe(conn, s) {
            self.send_error(
                conn,
                refusal.code(),
                refusal.to_string(),
                sub_id,
                pb::AnswerKind::Subscription,
            );
        }
    }

    /// Creates the subscription a Subscribe asks for, or resumes the durable one it names,
    /// and answers SubAck; `Err` says why it is refused (the connection stays).
    fn subscribe(&mut self, conn: ConnId, s: Subscribe) -> Result<(), SubscribeRefusal> {
        let sub_id = s.sub_id;
        let filter =
            TopicFilter::parse(&s.filter).map_err(|source| SubscribeRefusal::InvalidFilter {
                filter: s.filter.clone(),
                source,
            })?;
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let principal = c.principal;
        let uid = c.peer.uid;
        if !self.acl.allows_subscribe(principal, &filter) {
            self.totals.denied += 1;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.counters.denied += 1;
            }
            return Err(SubscribeRefusal::Denied {
                uid,
                filter: filter.as_str().to_string(),
            });
        }
        if c.subs.contains_key(&sub_id) {
            return Err(SubscribeRefusal::SubIdInUse(sub_id));
        }
        if c.subs.len() >= self.config.max_subscriptions_per_connection {
            return Err(SubscribeRefusal::TooMany {
                limit: self.config.max_subscriptions_per_connection,
            });
        }
        let capacity = s.capacity.unwrap_or(self.config.default_capacity);
        if capacity > self.config.max_capacity {
            return Err(SubscribeRefusal::CapacityTooLarge {
                capacity,
                max: self.config.max_capacity,
            });
        }
        // Nothing is lost by default: a subscriber that wants loss must ask for it.
        let overflow = s.overflow.unwrap_or(Overflow::Block);

        if let Some(name) = &s.durable_name
            && let Some(&key) = self.durables.get(&(uid, name.clone()))
        {
            let Some(existing) = self.subs.get_mut(&key) else {
                return Ok(());
            };
            if existing.owner.is_some() {
                return Err(SubscribeRefusal::DurableInUse { name: name.clone() });
            }
            if existing.filter != filter {
                return Err(SubscribeRefusal::DurableFilterMismatch {
                    name: name.clone(),
                    filter: existing.filter.as_str().to_string(),
                });
            }
            existing.owner = Some(conn);
            existing.client_sub_id = sub_id;
            existing.detached_at = None;
            let backlog = existing.queue.len() as u64;
            let ack = pb::SubAck {
                sub_id,
                capacity: existing.capacity,
                overflow: existing.overflow.to_pb() as i32,
                resumed_backlog: backlog,
            };
            if let Some(c) = self.conns.get_mut(&conn) {
                c.subs.insert(sub_id, key);
            }
            self.send_frame(conn, Body::SubAck(ack));
            self.ready.insert(conn);
            self.disarm_durable_expiry(key);
            return Ok(());
        }

        let key = self.add_subscription(NewSubscription {
            owner: Some(conn),
            client_sub_id: sub_id,
            filter,
            group: s.group,
            qos: s.qos,
            capacity,
            overflow,
            durable: s.durable_name.map(|n| (uid, n)),
            detached_at: None,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.subs.insert(sub_id, key);
        }
        let ack = pb::SubAck {
            sub_id,
            capacity,
            overflow: overflow.to_pb() as i32,
            resumed_backlog: 0,
        };
        self.send_frame(conn, Body::SubAck(ack));
        Ok(())
    }

    /// Creates a subscription: its queue-group membership, index entry and durable name.
    pub(super) fn add_subscription(&mut self, new: NewSubscription) -> u64 {
        self.next_sub += 1;
        let key = self.next_sub;
        let group = new
            .group
            .as_ref()
            .map(|g| Arc::<str>::from(g.name.as_str()));
        if let (Some(name), Some(spec)) = (&group, &new.group) {
            self.groups
                .entry(name.clone())
                .or_insert_with(|| QueueGroup::new(spec.strategy))
                .join(key);
        }
        self.index.insert(&new.filter, key);
        if let Some(d) = &new.durable {
            self.durables.insert(d.clone(), key);
            self.durables_generation += 1;
        }
        self.subs.insert(
            key,
            Subscription {
                key,
                owner: new.owner,
                client_sub_id: new.client_sub_id,
                filter: new.filter,
                group,
                qos: new.qos,
                capacity: new.capacity,
                overflow: new.overflow,
                durable: new.durable,
                queue: Default::default(),
                unacked: Default::default(),
                blocked: Vec::new(),
                unsubscribed: false,
                dropped_total: 0,
                dropped_unreported: 0,
                detached_at: new.detached_at,
                counters: Default::default(),
            },
        );
        self.arm_durable_expiry(key);
        key
    }

    pub(super) fn handle_unsubscribe(&mut self, now: Instant, conn: ConnId, sub_id: u64) {
        let key = self
            .conns
            .get(&conn)
            .and_then(|c| c.subs.get(&sub_id).copied());
        match key {
            Some(key) => self.unsubscribe(now, key),
            None => self.send_error(
                conn,
                pb::ErrorCode::UnknownSubscription,
                format!("no subscription with sub_id {sub_id}"),
                sub_id,
                pb::AnswerKind::Subscription,
            ),
        }
    }

    /// An Unsubscribe takes effect after what was already queued for the subscription is
    /// delivered (DESIGN.md section 5): it stops matching at once, and goes once its queue
    /// has been handed out.
    fn unsubscribe(&mut self, now: Instant, key: u64) {
        let Some(s) = self.subs.get_mut(&key) else {
            return;
        };
        if s.unsubscribed {
            return;
        }
        if s.queue.len() == 0 {
            return self.remove_subscription(now, key, true);
        }
        s.unsubscribed = true;
        let filter = s.filter.clone();
        let group = s.group.clone();
        let durable = s.durable.take();
        self.index.remove(&filter, key);
        if let Some(d) = durable {
            self.durables.remove(&d);
        }
        if let Some(g) = group {
            self.leave_group(&g, key);
        }
        if let Some(owner) = self.subs.get(&key).and_then(|s| s.owner) {
            self.ready.insert(owner);
        }
        // Publishers stalled on it wait no longer: it takes nothing new.
        let blocked = self
            .subs
            .get_mut(&key)
            .map(|s| std::mem::take(&mut s.blocked))
            .unwrap_or_default();
        for conn in blocked {
            self.retry_stalled(now, conn);
        }
    }

    /// Moves a subscription's unacknowledged deliveries back to the front of its queue, in
    /// their original order, marked redelivered.
    pub(super) fn requeue_unacked(&mut self, key: u64) {
        let Some(s) = self.subs.get_mut(&key) else {
            return;
        };
        let unacked = std::mem::take(&mut s.unacked);
        for (_, mut e) in unacked.into_iter().rev() {
            e.redelivered = true;
            s.queue.push_front(e);
        }
    }

    /// Removes a subscription. Its queued and unacknowledged copies go to another member of
    /// its queue group when `redeliver` and one matches with room; otherwise they are
    /// dropped, counted, and their PubAck shares resolved.
    pub(super) fn remove_subscription(&mut self, now: Instant, key: u64, redeliver: bool) {
        self.requeue_unacked(key);
        let Some(mut s) = self.subs.remove(&key) else {
            return;
        };
        self.index.remove(&s.filter, key);
        if let Some(d) = &s.durable {
            self.durables.remove(d);
            self.durables_generation += 1;
        }
        if let Some(owner) = s.owner
            && let Some(c) = self.conns.get_mut(&owner)
        {
            c.subs.remove(&s.client_sub_id);
            c.unacked.retain(|_, k| *k != key);
        }
        if let Some(g) = &s.group {
            self.leave_group(g, key);
        }
        self.disarm_durable_expiry(key);
        let entries = s.queue.drain_all();
        let mut dropped = 0u64;
        for mut e in entries {
            if redeliver && let Some(g) = s.group.clone() {
                let mut matched = Vec::new();
                self.index.matches(&e.msg.topic, &mut matched);
                if e.tracked {
                    // A copy that holds a PubAck share may only go where it will be acked:
                    // a QoS0 member would count it delivered once written, even if the
                    // connection then dies, and the PubAck would promise what never arrived.
                    let subs = &self.subs;
                    matched.retain(|k| subs.get(k).is_some_and(|m| m.qos == QoS::AtLeastOnce));
                }
                if let Some(member) = self.pick_member(&g, &matched)
                    && let Some(m) = self.subs.get_mut(&member)
                    && !m.is_full()
                {
                    e.redelivered = true;
                    m.queue.push_back(e);
                    if let Some(owner) = m.owner {
                        self.ready.insert(owner);
                    }
                    if let Some(group) = self.groups.get_mut(&g) {
                        group.served(member);
                    }
                    continue;
                }
            }
            dropped += 1;
            self.topic_counters.get_mut(e.msg.topic.as_str()).dropped += 1;
            self.discard(e, s.group.as_ref());
        }
        self.totals.dropped += dropped;
        s.dropped_total += dropped;
        for conn in std::mem::take(&mut s.blocked) {
            self.retry_stalled(now, conn);
        }
    }

    /// Subscription `key` leaves its queue group, which goes with its last member.
    fn leave_group(&mut self, group: &Arc<str>, key: u64) {
        if let Some(g) = self.groups.get_mut(group)
            && g.leave(key)
        {
            self.groups.remove(group);
        }
    }
}
