//! Broker statistics: counters per topic, subscription and connection, and a publish-to-ack
//! latency histogram.

use std::collections::BTreeMap;
use std::time::Duration;

use daemoneye_proto::pb::stats as pb;

/// Distinct topics tracked individually; the rest are summed under `(other)` so that a
/// client publishing to endless fresh topics cannot grow the broker's memory.
pub const MAX_TRACKED_TOPICS: usize = 1024;

/// Monotonic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages published (accepted for routing).
    pub published: u64,
    /// Copies handed to subscribers.
    pub delivered: u64,
    /// Copies dropped by an overflow strategy, an expiry or a departure.
    pub dropped: u64,
    /// QoS1 copies acknowledged.
    pub acked: u64,
    /// Publishes that matched no subscription.
    pub no_interest: u64,
    /// Operations refused by the ACL.
    pub denied: u64,
    /// Publishes the broker held for a connection (waiting behind a full Block queue) that
    /// ended without a clean close: thrown away with it.
    pub lost_on_disconnect: u64,
    /// Connections whose stream ended inside a frame (header or body cut short).
    pub truncated: u64,
    /// Connections closed because a started frame did not complete within the frame timeout.
    pub frame_timeouts: u64,
    /// Publishes refused because their delivery would exceed the advertised `max_frame`.
    pub too_large: u64,
    /// Queue-group copies of QoS1 resends not handed out again (the group already had them).
    pub deduplicated: u64,
}

impl Counters {
    pub(crate) fn to_pb(self, queued: u64) -> pb::Counters {
        pb::Counters {
            published: self.published,
            delivered: self.delivered,
            dropped: self.dropped,
            acked: self.acked,
            queued,
            no_interest: self.no_interest,
            denied: self.denied,
            lost_on_disconnect: self.lost_on_disconnect,
            truncated: self.truncated,
            frame_timeouts: self.frame_timeouts,
            too_large: self.too_large,
            deduplicated: self.deduplicated,
        }
    }
}

/// Log-linear latency histogram in microseconds: 16 sub-buckets per power of two, so every
/// reported percentile is within about 6% of the true value. Fixed size, no allocation.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Box<[u64; 64 * 16]>,
    count: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: Box::new([0; 64 * 16]),
            count: 0,
            max_us: 0,
        }
    }
}

impl LatencyHistogram {
    fn bucket(us: u64) -> usize {
        if us < 16 {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as usize; // >= 4
        let sub = ((us >> (exp - 4)) & 15) as usize;
        (exp - 3) * 16 + sub
    }

    fn bucket_floor(index: usize) -> u64 {
        if index < 16 {
            return index as u64;
        }
        let exp = index / 16 + 3;
        let sub = (index % 16) as u64;
        (16 + sub) << (exp - 4)
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(us).min(64 * 16 - 1)] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), as the floor of its bucket, in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::bucket_floor(i).min(self.max_us);
            }
        }
        self.max_us
    }

    pub(crate) fn summary(&self) -> pb::LatencySummary {
        pb::LatencySummary {
            count: self.count,
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
            max_us: self.max_us,
        }
    }
}

/// Per-topic counters with a bound on the number of topics.
#[derive(Debug, Default)]
pub(crate) struct TopicCounters {
    topics: BTreeMap<Box<str>, Counters>,
    other: Counters,
}

impl TopicCounters {
    pub fn get_mut(&mut self, topic: &str) -> &mut Counters {
        if !self.topics.contains_key(topic) {
            if self.topics.len() >= MAX_TRACKED_TOPICS {
                return &mut self.other;
            }
            self.topics.insert(topic.into(), Counters::default());
        }
        self.topics.get_mut(topic).unwrap_or(&mut self.other)
    }

    pub fn to_pb(&self) -> Vec<pb::TopicStats> {
        let mut v: Vec<_> = self
            .topics
            .iter()
            .map(|(t, c)| pb::TopicStats {
                topic: t.to_string(),
                counters: Some(c.to_pb(0)),
            })
            .collect();
        if self.other != Counters::default() {
            v.push(pb::TopicStats {
                topic: "(other)".into(),
                counters: Some(self.other.to_pb(0)),
            });
        }
        v
    }
}
