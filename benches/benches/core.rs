//! Core benchmarks: topic matching against 10,000 subscriptions, routing 256-byte
//! publishes through the broker machine from bytes in to bytes out, and asking the broker
//! for its next deadline after every read with 1,000 connections open.
//!
//! `cargo bench -p daemoneye-benches --bench core`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig, ConnId, Output, PeerCreds};
use daemoneye_core::client::{ClientConfig, ClientSession};
use daemoneye_core::index::SubscriptionIndex;
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_proto::frame::{
    ClientFrame, GroupSpec, Overflow, Publish, QoS, QueueStrategy, Subscribe,
};

// The agent runs on mimalloc; measure with the allocator it uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn mixed_index(n: usize) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new();
    for i in 0..n {
        let f = match i % 5 {
            0 => format!("events.process.{i}"),
            1 => format!("events.+.{i}"),
            2 => format!("events.c{i}.#"),
            3 => format!("control.collector.task.{i}"),
            _ => format!("tenant{i}.+.x"),
        };
        index.insert(&TopicFilter::parse(&f).expect("valid"), i as u64);
    }
    // A few that match the probe topic.
    for f in ["events.process.new", "events.#", "events.+.new", "#"] {
        index.insert(&TopicFilter::parse(f).expect("valid"), n as u64);
    }
    index
}

fn topic_match(c: &mut Criterion) {
    let index = mixed_index(10_000);
    let name = TopicName::parse("events.process.new").expect("valid");
    let mut out = Vec::with_capacity(16);
    c.bench_function("match_one_topic_10k_subscriptions", |b| {
        b.iter(|| {
            out.clear();
            index.matches(black_box(&name), &mut out);
            black_box(out.len())
        })
    });
}

const BATCH: usize = 256;
const PEER: PeerCreds = PeerCreds {
    uid: 1000,
    gid: 1000,
    pid: None,
};

fn handshake(broker: &mut Broker, now: Instant, name: &str) -> (ConnId, ClientSession) {
    let conn = broker.handle_connect(now, PEER);
    let mut client = ClientSession::new(ClientConfig::new(name));
    client.connect(now);
    exchange(broker, now, conn, &mut client);
    (conn, client)
}

fn exchange(broker: &mut Broker, now: Instant, conn: ConnId, client: &mut ClientSession) {
    for _ in 0..10 {
        if let Some(b) = client.poll_transmit() {
            broker.handle_bytes(now, conn, &b);
        }
        while let Some(out) = broker.poll_output() {
            if let Output::Transmit { conn: c, data } = out {
                if c == conn {
                    client.handle_bytes(now, &data);
                }
                broker.handle_written(now, c, data.len());
            }
        }
        while client.poll_output().is_some() {}
    }
}

/// Routes 256-byte publishes from one connection to subscribers on connections of their
/// own (one per Subscribe), bytes in to bytes out.
fn bench_route(c: &mut Criterion, name: &str, subscriptions: Vec<Subscribe>) {
    let now = Instant::from_nanos(1);
    let config = BrokerConfig {
        owner_uid: 1000,
        default_capacity: 100_000,
        ..Default::default()
    };
    let mut broker = Broker::new(config, Acl::owner_only(1000), 1);
    for (i, subscribe) in subscriptions.into_iter().enumerate() {
        let (conn, mut sub) = handshake(&mut broker, now, &format!("sub{i}"));
        sub.subscribe(subscribe);
        exchange(&mut broker, now, conn, &mut sub);
    }
    let (pub_conn, mut publisher) = handshake(&mut broker, now, "pub");
    let payload = Bytes::from(vec![0xAB; 256]);
    for _ in 0..BATCH {
        publisher
            .publish(Publish::new(
                "events.process.new",
                payload.clone(),
                QoS::AtMostOnce,
            ))
            .expect("publish");
    }
    let chunk = publisher.poll_transmit().expect("bytes");
    let mut group = c.benchmark_group("route_256B");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(name, |b| {
        b.iter(|| {
            broker.handle_bytes(now, pub_conn, black_box(&chunk));
            let mut delivered = 0;
            while let Some(out) = broker.poll_output() {
                if let Output::Transmit { conn, data } = out {
                    delivered += data.len();
                    broker.handle_written(now, conn, data.len());
                }
            }
            black_box(delivered)
        })
    });
    group.finish();
    assert_eq!(broker.totals().dropped, 0);
}

fn route(c: &mut Criterion) {
    let subscribe = Subscribe {
        overflow: Some(Overflow::Block),
        ..Subscribe::new("events.#")
    };
    bench_route(
        c,
        "publish_to_one_subscriber_bytes_in_bytes_out",
        vec![subscribe],
    );
}

/// The same publishes to a queue group of three members, round robin.
fn route_queue_group(c: &mut Criterion) {
    let member = Subscribe {
        overflow: Some(Overflow::Block),
        group: Some(GroupSpec {
            name: "workers".into(),
            strategy: QueueStrategy::RoundRobin,
        }),
        ..Subscribe::new("events.#")
    };
    bench_route(
        c,
        "publish_to_a_queue_group_of_3_bytes_in_bytes_out",
        vec![member; 3],
    );
}

/// The io server asks `poll_timeout` after every dispatch: a frame from one of many
/// connections (which moves that connection's keepalive later) and then the question.
fn poll_timeout_after_each_read(c: &mut Criterion) {
    const CONNECTIONS: usize = 1000;
    let mut now = Instant::from_nanos(1);
    let config = BrokerConfig {
        owner_uid: 1000,
        max_connections: CONNECTIONS + 1,
        ..Default::default()
    };
    let mut broker = Broker::new(config, Acl::owner_only(1000), 1);
    let conns: Vec<ConnId> = (0..CONNECTIONS)
        .map(|i| handshake(&mut broker, now, &format!("c{i}")).0)
        .collect();
    let mut ping = Vec::new();
    daemoneye_proto::encode(&ClientFrame::Ping { nonce: 1 }.into(), u32::MAX, &mut ping)
        .expect("encodes");
    let mut next = 0;
    c.bench_function("poll_timeout_after_a_frame_1k_connections", |b| {
        b.iter(|| {
            now = now + std::time::Duration::from_micros(10);
            let conn = conns[next % CONNECTIONS];
            next += 1;
            broker.handle_bytes(now, conn, black_box(&ping));
            while let Some(out) = broker.poll_output() {
                if let Output::Transmit { conn, data } = out {
                    broker.handle_written(now, conn, data.len());
                }
            }
            black_box(broker.poll_timeout())
        })
    });
}

criterion_group!(
    benches,
    topic_match,
    route,
    route_queue_group,
    poll_timeout_after_each_read
);
criterion_main!(benches);
