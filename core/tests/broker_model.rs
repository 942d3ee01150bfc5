//! The broker against a reference model, over random sequences of connect, subscribe (with
//! and without groups), publish, ack, stalled readers and disconnect. After every step:
//! nothing is delivered that its filter does not match, queues stay within capacity,
//! per-publisher order holds per subscription (redeliveries excepted), and a queue group
//! hands each message to at most one member. After a liveness phase (every reader released,
//! everything acked): Block subscriptions lost nothing, and every QoS1 publish of a live
//! publisher got its PubAck.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use daemoneye_core::broker::ConnId;
use daemoneye_core::client::ClientEvent;
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_proto::frame::{Overflow, QoS, QueueStrategy};
use proptest::prelude::*;

const FILTERS: &[&str] = &["t.#", "t.a", "t.+", "#", "t.a.#", "t.b"];
const TOPICS: &[&str] = &["t.a", "t.b", "t.a.x", "u"];
const GROUPS: &[Option<&str>] = &[None, None, Some("g1"), Some("g2")];
const OVERFLOWS: &[Overflow] = &[Overflow::Block, Overflow::DropNewest, Overflow::DropOldest];
const STRATEGIES: &[QueueStrategy] = &[
    QueueStrategy::RoundRobin,
    QueueStrategy::LeastLoaded,
    QueueStrategy::Random,
];

#[derive(Debug, Clone)]
enum Op {
    Subscribe {
        client: usize,
        filter: usize,
        group: usize,
        qos1: bool,
        overflow: usize,
        capacity: u32,
        strategy: usize,
    },
    Publish {
        client: usize,
        topic: usize,
        qos1: bool,
    },
    Ack {
        client: usize,
    },
    StallReader {
        client: usize,
    },
    Release {
        client: usize,
    },
    Disconnect {
        client: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4usize, 0..FILTERS.len(), 0..GROUPS.len(), any::<bool>(), 0..OVERFLOWS.len(), 2..6u32, 0..STRATEGIES.len())
            .prop_map(|(client, filter, group, qos1, overflow, capacity, strategy)| Op::Subscribe {
                client, filter, group, qos1, overflow, capacity, strategy
            }),
        6 => (0..4usize, 0..TOPICS.len(), any::<bool>()).prop_map(|(client, topic, qos1)| Op::Publish { client, topic, qos1 }),
        2 => (0..4usize).prop_map(|client| Op::Ack { client }),
        1 => (0..4usize).prop_map(|client| Op::StallReader { client }),
        1 => (0..4usize).prop_map(|client| Op::Release { client }),
        1 => (0..4usize).prop_map(|client| Op::Disconnect { client }),
    ]
}

/// (publisher client, sequence, redelivered).
type Delivery = (usize, u64, bool);

#[derive(Debug)]
struct SubModel {
    filter: TopicFilter,
    group: Option<&'static str>,
    overflow: Overflow,
    /// Index into `published` of the first message this subscription must see.
    from: usize,
}

struct Model {
    w: World,
    conns: Vec<Option<ConnId>>,
    ever_disconnected: BTreeSet<usize>,
    /// (client, sub_id) -> model.
    subs: BTreeMap<(usize, u64), SubModel>,
    /// (publisher client, sequence, topic, qos1).
    published: Vec<(usize, u64, String, bool)>,
    /// (client, sub_id) -> deliveries (publisher client, sequence, redelivered).
    received: BTreeMap<(usize, u64), Vec<Delivery>>,
    unacked: BTreeMap<usize, Vec<u64>>,
}

impl Model {
    fn new() -> Self {
        let mut w = World::new();
        let conns = (0..4).map(|i| Some(w.connect(&format!("c{i}")))).collect();
        Model {
            w,
            conns,
            ever_disconnected: BTreeSet::new(),
            subs: BTreeMap::new(),
            published: Vec::new(),
            received: BTreeMap::new(),
            unacked: BTreeMap::new(),
        }
    }

    fn client_of(&self, conn: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| *c == Some(conn))
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Subscribe {
                client,
                filter,
                group,
                qos1,
                overflow,
                capacity,
                strategy,
            } => {
                let Some(conn) = self.conns[client] else {
                    return;
                };
                let spec = match GROUPS[group] {
                    Some(g) => group_spec(FILTERS[filter], g, STRATEGIES[strategy]),
                    None => sub_spec(FILTERS[filter]),
                };
                let qos = if qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                let spec = with(spec, qos, Some(capacity), Some(OVERFLOWS[overflow]));
                let id = self.w.subscribe(conn, spec);
                self.subs.insert(
                    (client, id),
                    SubModel {
                        filter: TopicFilter::parse(FILTERS[filter]).expect("valid"),
                        group: GROUPS[group],
                        overflow: OVERFLOWS[overflow],
                        from: self.published.len(),
                    },
                );
            }
            Op::Publish {
                client,
                topic,
                qos1,
            } => {
                let Some(conn) = self.conns[client] else {
                    return;
                };
                let qos = if qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                let seq = self
                    .w
                    .client(conn)
                    .publish(publish_spec(TOPICS[topic], "", qos))
                    .expect("publish");
                self.published
                    .push((client, seq, TOPICS[topic].to_string(), qos1));
                self.w.run();
            }
            Op::Ack { client } => {
                let Some(conn) = self.conns[client] else {
                    return;
                };
                for did in self.unacked.remove(&client).unwrap_or_default() {
                    self.w.client(conn).ack(did);
                }
                self.w.run();
            }
            Op::StallReader { client } => {
                if let Some(conn) = self.conns[client] {
                    self.w.stalled_readers.insert(conn);
                }
            }
            Op::Release { client } => {
                if let Some(conn) = self.conns[client] {
                    self.w.release(conn);
                }
            }
            Op::Disconnect { client } => {
                let Some(conn) = self.conns[client].take() else {
                    return;
                };
                self.w.held.remove(&conn);
                self.w.stalled_readers.remove(&conn);
                self.w.disconnect(conn);
                self.unacked.remove(&client);
                self.ever_disconnected.insert(client);
                self.subs.retain(|(c, _), _| *c != client);
            }
        }
        self.collect();
    }

    fn collect(&mut self) {
        let conns: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i, c)))
            .collect();
        for (client, conn) in conns {
            for ev in self.w.events_of(conn) {
                if let ClientEvent::Message(d) = ev {
                    let publisher = d
                        .publisher_id
                        .trim_start_matches('c')
                        .parse::<usize>()
                        .expect("publisher name");
                    if d.delivery_id != 0 {
                        self.unacked.entry(client).or_default().push(d.delivery_id);
                    }
                    let sub = self
                        .subs
                        .get(&(client, d.sub_id))
                        .expect("delivery for a live subscription");
                    let name = TopicName::parse(&d.topic).expect("delivered topic is valid");
                    assert!(
                        sub.filter.matches(&name),
                        "{} delivered to filter {}",
                        d.topic,
                        sub.filter
                    );
                    self.received.entry((client, d.sub_id)).or_default().push((
                        publisher,
                        d.sequence,
                        d.redelivered,
                    ));
                }
            }
            let _ = self.client_of(conn);
        }
    }

    fn check_safety(&self) {
        for info in self.w.broker.subscriptions() {
            assert!(
                info.queued + info.unacked <= info.capacity as usize,
                "queue over capacity: {info:?}"
            );
        }
        // Per publisher, per subscription: first deliveries in publish order.
        for (key, got) in &self.received {
            let mut last: BTreeMap<usize, u64> = BTreeMap::new();
            for (publisher, seq, redelivered) in got {
                if *redelivered {
                    continue;
                }
                let prev = last.insert(*publisher, *seq);
                assert!(
                    prev.is_none_or(|p| p < *seq),
                    "out of order on {key:?}: {prev:?} then {seq}"
                );
            }
        }
        // A group hands each message to at most one member (first deliveries).
        let mut per_group: BTreeMap<(&str, usize, u64), usize> = BTreeMap::new();
        for (key, got) in &self.received {
            let Some(group) = self.subs.get(key).and_then(|s| s.group) else {
                continue;
            };
            for (publisher, seq, redelivered) in got {
                if !redelivered {
                    *per_group.entry((group, *publisher, *seq)).or_default() += 1;
                }
            }
        }
        for (k, n) in per_group {
            assert!(n <= 1, "group delivered {k:?} {n} times");
        }
    }

    fn liveness(&mut self) {
        for _ in 0..50 {
            let conns: Vec<ConnId> = self.conns.iter().flatten().copied().collect();
            for conn in &conns {
                self.w.release(*conn);
            }
            for client in 0..4 {
                self.apply(&Op::Ack { client });
            }
            if self.w.broker.pending_pubacks() == 0
                && self.w.held.is_empty()
                && self.w.paused.is_empty()
            {
                break;
            }
        }
        for (&(client, sub_id), sub) in &self.subs {
            if sub.overflow != Overflow::Block || sub.group.is_some() {
                continue;
            }
            let got: BTreeSet<(usize, u64)> = self
                .received
                .get(&(client, sub_id))
                .map(|v| v.iter().map(|(p, s, _)| (*p, *s)).collect())
                .unwrap_or_default();
            for (publisher, seq, topic, _) in &self.published[sub.from..] {
                if self.ever_disconnected.contains(publisher) {
                    continue;
                }
                let name = TopicName::parse(topic).expect("valid");
                if sub.filter.matches(&name) {
                    assert!(
                        got.contains(&(*publisher, *seq)),
                        "Block subscription {sub_id} of c{client} lost c{publisher}#{seq}"
                    );
                }
            }
        }
        for (client, conn) in self.conns.iter().enumerate() {
            if let Some(conn) = conn {
                let pending = self
                    .w
                    .clients
                    .get(conn)
                    .map_or(0, |c| c.pending_publishes());
                assert_eq!(
                    pending, 0,
                    "c{client} still waits for PubAcks after the drain"
                );
            }
        }
    }
}

/// 300 cases by default; `PROPTEST_CASES=N` runs longer on demand.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 300;
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn broker_keeps_the_invariants_against_the_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut m = Model::new();
        for op in &ops {
            m.apply(op);
            m.check_safety();
        }
        m.liveness();
        m.check_safety();
    }
}
