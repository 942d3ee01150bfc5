//! Publish admission and flow control: a publish is validated (topic, reply-to, reserved
//! topics, ACL) and routed, or held whole when a Block queue or the memory budget has no
//! room. A held publish stalls its publisher: later publishes wait behind it in order, the
//! publisher is told (Backpressure), and past a bounded backlog its connection stops being
//! read. Room made anywhere (an ack, a delivery, a departure) wakes the publishers stalled
//! on it. Publishers filling queues past 80% are asked to slow down.

use std::time::Duration;

use daemoneye_proto::frame::Publish;
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::{Broker, ConnId, Output};
use crate::Instant;
use crate::topic::{TopicError, TopicName, topics};

/// Least time between two SlowDown notices to one publisher.
const SLOW_DOWN_EVERY: Duration = Duration::from_secs(1);

/// A publish could not be routed yet: a Block queue (or the memory budget) has no room.
#[derive(Debug)]
pub(super) struct Blocked {
    pub publish: Publish,
    pub on: BlockedOn,
}

/// What a held publish waits for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BlockedOn {
    /// A Block subscription's queue is full.
    #[error("subscription {sub_id} ({filter:?}) is full")]
    Subscription {
        /// The subscription's broker-wide key.
        key: u64,
        /// The subscriber's id for it.
        sub_id: u64,
        /// Its filter.
        filter: String,
    },
    /// The broker's memory budget is full.
    #[error("broker memory budget of {limit} bytes is full")]
    Budget {
        /// The budget.
        limit: u64,
    },
}

/// Why a publish is refused before routing; answered with an Error for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PublishRefusal {
    /// The topic does not parse.
    #[error("invalid topic {topic:?}: {source}")]
    InvalidTopic {
        /// The topic text.
        topic: String,
        /// The rule it breaks.
        source: TopicError,
    },
    /// The reply-to topic does not parse.
    #[error("invalid reply_to {reply_to:?}: {source}")]
    InvalidReplyTo {
        /// The reply-to text.
        reply_to: String,
        /// The rule it breaks.
        source: TopicError,
    },
    /// `$` topics belong to the broker.
    #[error("topic {topic:?} is reserved for the broker")]
    Reserved {
        /// The topic.
        topic: String,
    },
    /// The ACL does not let this uid publish there.
    #[error("uid {uid} may not publish to {topic:?}")]
    Denied {
        /// The publisher's uid.
        uid: u32,
        /// The topic.
        topic: String,
    },
}

impl PublishRefusal {
    /// The error code the refusal is answered with.
    fn code(&self) -> pb::ErrorCode {
        match self {
            PublishRefusal::InvalidTopic { .. } | PublishRefusal::InvalidReplyTo { .. } => {
                pb::ErrorCode::InvalidTopic
            }
            PublishRefusal::Reserved { .. } | PublishRefusal::Denied { .. } => {
                pb::ErrorCode::PermissionDenied
            }
        }
    }
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
    pub(super) fn try_publish(
        &mut self,
        now: Instant,
        conn: ConnId,
        p: Publish,
    ) -> Result<(), Box<Blocked>> {
        match self.check_publish(now, conn, &p) {
            Ok(Some(topic)) => self.route(now, Some(conn), p, topic),
            Ok(None) => Ok(()),
            Err(refusal) => {
                let code = refusal.code();
                let msg = refusal.to_string();
                self.send_error(conn, code, msg, p.sequence, pb::AnswerKind::Publish);
                Ok(())
            }
        }
    }

    /// The topic a publish goes to, if it may be routed; `Ok(None)` when it needs no
    /// routing (a `$sys` request, answered here; a connection already gone).
    fn check_publish(
        &mut self,
        now: Instant,
        conn: ConnId,
        p: &Publish,
    ) -> Result<Option<TopicName>, PublishRefusal> {
        let cached = self
            .conns
            .get(&conn)
            .and_then(|c| c.last_topic.as_ref())
            .filter(|t| t.as_str() == p.topic)
            .cloned();
        let topic = match cached {
            Some(t) => t,
            None => {
                let t =
                    TopicName::parse(&p.topic).map_err(|source| PublishRefusal::InvalidTopic {
                        topic: p.topic.clone(),
                        source,
                    })?;
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_topic = Some(t.clone());
                }
                t
            }
        };
        if let Some(reply_to) = &p.reply_to
            && let Err(source) = TopicName::parse(reply_to)
        {
            return Err(PublishRefusal::InvalidReplyTo {
                reply_to: reply_to.clone(),
                source,
            });
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(None);
        };
        let principal = c.principal;
        if topic.is_reserved() {
            // `$` topics belong to the broker; a publish there with reply_to is a request.
            let is_request = p.reply_to.is_some()
                && (topic.as_str() == topics::BROKER_STATS
                    || topic.as_str() == topics::BROKER_HEALTH);
            if is_request && self.acl.allows_publish(principal, &topic) {
                self.answer_request(now, conn, &topic, p);
                return Ok(None);
            }
            self.totals.denied += 1;
            return Err(PublishRefusal::Reserved {
                topic: topic.as_str().to_string(),
            });
        }
        if !self.acl.allows_publish(principal, &topic) {
            self.totals.denied += 1;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.counters.denied += 1;
            }
            return Err(PublishRefusal::Denied {
                uid: principal.uid,
                topic: topic.as_str().to_string(),
            });
        }
        Ok(Some(topic))
    }

    /// Puts a blocked publish at the front of the connection's waiting publishes.
    pub(super) fn stall(&mut self, conn: ConnId, blocked: Blocked) {
        match &blocked.on {
            BlockedOn::Subscription { key, .. } => {
                if let Some(s) = self.subs.get_mut(key)
                    && !s.blocked.contains(&conn)
                {
                    s.blocked.push(conn);
                }
            }
            BlockedOn::Budget { .. } => {
                self.budget_blocked.insert(conn);
            }
        }
        let reason = blocked.on.to_string();
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

    /// A subscription's queue has room again: retry the publishers stalled on it, and those
    /// stalled on the memory budget if it has room.
    pub(super) fn wake(&mut self, now: Instant, key: u64) {
        let blocked = match self.subs.get_mut(&key) {
            Some(s) if !s.is_full() && !s.blocked.is_empty() => std::mem::take(&mut s.blocked),
            _ => Vec::new(),
        };
        for conn in blocked {
            self.retry_stalled(now, conn);
        }
        if !self.budget_blocked.is_empty() && self.budget.has_room() {
            let waiting: Vec<ConnId> = self.budget_blocked.iter().copied().collect();
            for conn in waiting {
                self.retry_stalled(now, conn);
            }
        }
    }

    pub(super) fn maybe_slow_down(&mut self, now: Instant, conn: ConnId) {
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
}
