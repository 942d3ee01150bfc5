//! What the broker tells about itself: counts, snapshots and health, for the driver,
//! the stats report, tests and simulations. Read-only.

use super::stats::{Counters, LatencyHistogram};
use super::{Broker, ConnId, Health, SubscriptionInfo};

impl Broker {
    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the broker still knows the connection (it forgets one when it closes it or
    /// is told it is gone).
    pub fn has_connection(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Live subscriptions (durable ones without an owner included).
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Bytes of queued messages charged to the memory budget.
    pub fn queued_bytes(&self) -> u64 {
        self.budget.queued_bytes()
    }

    /// Broker-wide counters.
    pub fn totals(&self) -> Counters {
        self.totals
    }

    /// The publish-to-ack latency histogram.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Session id of a connection, once its handshake is done.
    pub fn session_of(&self, conn: ConnId) -> Option<u64> {
        self.conns
            .get(&conn)
            .map(|c| c.session_id)
            .filter(|&s| s != 0)
    }

    /// Heap bytes a connection holds in the broker (decoder and unsent output), for the
    /// per-connection memory bound.
    pub fn connection_memory(&self, conn: ConnId) -> Option<usize> {
        self.conns
            .get(&conn)
            .map(|c| c.decoder.capacity() + c.out.capacity())
    }

    /// Records the queue-group deduplication holds (bounded by its window plus the copies
    /// in flight).
    pub fn group_dedup_records(&self) -> usize {
        self.dedup.len()
    }

    /// QoS1 publishes waiting for their PubAck.
    pub fn pending_pubacks(&self) -> usize {
        self.pubacks.len()
    }

    /// Every subscription, in key order.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.subs
            .values()
            .map(|s| SubscriptionInfo {
                key: s.key,
                owner: s.owner,
                client_sub_id: s.client_sub_id,
                filter: s.filter.as_str().to_string(),
                group: s.group.as_deref().map(str::to_string),
                queued: s.queue.len(),
                unacked: s.unacked.len(),
                capacity: s.capacity,
                overflow: s.overflow,
                dropped: s.dropped_total,
            })
            .collect()
    }

    /// Current health and the reasons for anything worse than Healthy.
    pub fn health(&self) -> (Health, Vec<String>) {
        let mut health = Health::Healthy;
        let mut reasons = Vec::new();
        let budget = self.config.memory_budget.max(1);
        if self.budget.queued_bytes() * 100 >= budget * 95 {
            health = Health::Unhealthy;
            reasons.push(format!(
                "queued bytes {} at 95% of the budget {}",
                self.budget.queued_bytes(),
                budget
            ));
        } else if self.budget.queued_bytes() * 100 >= budget * 80 {
            health = Health::Degraded;
            reasons.push(format!(
                "queued bytes {} at 80% of the budget {}",
                self.budget.queued_bytes(),
                budget
            ));
        }
        if self.ordinary_conns >= self.config.max_connections {
            health = health.max(Health::Degraded);
            reasons.push(format!(
                "connection limit {} reached",
                self.config.max_connections
            ));
        }
        let pressured = self.subs.values().filter(|s| s.under_pressure()).count();
        if pressured > 0 {
            health = health.max(Health::Degraded);
            reasons.push(format!(
                "{pressured} subscription queue(s) at 80% of capacity or more"
            ));
        }
        (health, reasons)
    }
}
