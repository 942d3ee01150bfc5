//! The broker's own answers: `$sys.broker.stats` and `$sys.broker.health` requests and
//! the periodic stats and health publications.

use bytes::Bytes;
use prost::Message as _;

use daemoneye_proto::frame::{Publish, QoS, Target};
use daemoneye_proto::pb::{control as pbc, stats as pbs};

use super::{Broker, ConnId};
use crate::Instant;
use crate::topic::{TopicName, topics};

impl Broker {
    pub(super) fn answer_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        topic: &TopicName,
        p: &Publish,
    ) {
        let Some(reply_to) = p.reply_to.clone() else {
            return;
        };
        let Ok(reply_topic) = TopicName::parse(&reply_to) else {
            return;
        };
        let Some(session) = self.session_of(conn) else {
            return;
        };
        let payload = if topic.as_str() == topics::BROKER_STATS {
            Bytes::from(self.stats_report(now).encode_to_vec())
        } else {
            Bytes::from(self.health_report().encode_to_vec())
        };
        let reply = Publish {
            correlation: p.correlation.clone(),
            target: Some(Target::Session(session)),
            ..Publish::new(reply_to, payload, QoS::AtMostOnce)
        };
        let _ = self.route(now, None, reply, reply_topic);
    }

    /// Publishes stats and health on their `$sys` topics.
    pub(super) fn publish_stats(&mut self, now: Instant) {
        let elapsed = now.saturating_since(self.last_rate.0).as_secs_f64();
        if elapsed > 0.0 {
            self.rates = (
                (self.totals.published - self.last_rate.1) as f64 / elapsed,
                (self.totals.delivered - self.last_rate.2) as f64 / elapsed,
            );
        }
        self.last_rate = (now, self.totals.published, self.totals.delivered);
        let stats = Bytes::from(self.stats_report(now).encode_to_vec());
        let health = Bytes::from(self.health_report().encode_to_vec());
        for (topic, payload) in [
            (topics::BROKER_STATS, stats),
            (topics::BROKER_HEALTH, health),
        ] {
            let Ok(t) = TopicName::parse(topic) else {
                continue;
            };
            let p = Publish::new(topic, payload, QoS::AtMostOnce);
            let _ = self.route(now, None, p, t);
        }
    }

    fn health_report(&self) -> pbc::HealthReport {
        let (health, reasons) = self.health();
        let state = match health {
            super::Health::Healthy => pbc::HealthState::Healthy,
            super::Health::Degraded => pbc::HealthState::Degraded,
            super::Health::Unhealthy => pbc::HealthState::Unhealthy,
        } as i32;
        pbc::HealthReport {
            overall: state,
            broker: state,
            coordinator: 0,
            detection: 0,
            bridge: 0,
            collectors: Vec::new(),
            reasons,
        }
    }

    /// The full statistics report.
    pub fn stats_report(&self, now: Instant) -> pbs::BrokerStats {
        let (health, reasons) = self.health();
        let queued: u64 = self.subs.values().map(|s| s.occupancy() as u64).sum();
        pbs::BrokerStats {
            uptime_ms: self
                .started
                .map_or(0, |s| now.saturating_since(s).as_millis() as u64),
            totals: Some(self.totals.to_pb(queued)),
            connections: self.conns.len() as u64,
            subscriptions: self.subs.len() as u64,
            queued_bytes: self.budget.queued_bytes(),
            memory_budget_bytes: self.config.memory_budget,
            publish_rate: self.rates.0,
            deliver_rate: self.rates.1,
            ack_latency: Some(self.latency.summary()),
            topics: self.topic_counters.to_pb(),
            subscriptions_detail: self
                .subs
                .values()
                .map(|s| pbs::SubscriptionStats {
                    session_id: s.owner.and_then(|o| self.session_of(o)).unwrap_or(0),
                    sub_id: s.client_sub_id,
                    filter: s.filter.as_str().to_string(),
                    queue_group: s.group.as_deref().unwrap_or("").to_string(),
                    durable_name: s.durable.as_ref().map_or(String::new(), |d| d.1.clone()),
                    capacity: s.capacity,
                    overflow: s.overflow.as_str().to_string(),
                    counters: Some(s.counters.to_pb(s.queue.len() as u64)),
                    unacked: s.unacked.len() as u64,
                })
                .collect(),
            connections_detail: self
                .conns
                .values()
                .filter(|c| c.session_id != 0)
                .map(|c| pbs::ConnectionStats {
                    session_id: c.session_id,
                    client_name: c.client_name.clone(),
                    uid: c.peer.uid,
                    pid: c.peer.pid.unwrap_or(0),
                    role: c.principal.role.as_str().to_string(),
                    counters: Some(c.counters.to_pb(0)),
                    subscriptions: c.subs.len() as u64,
                    reading_paused: c.read_paused,
                })
                .collect(),
            health: health.as_str().to_string(),
            health_reasons: reasons,
        }
    }
}
