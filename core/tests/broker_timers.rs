//! The broker's `poll_timeout` against a scan of every connection and subscription, over
//! random sequences of connects, handshakes, partial frames, traffic, durable
//! subscriptions, departures and the passage of time.

mod common;

use std::time::Duration;

use common::*;
use daemoneye_core::broker::{BrokerConfig, ConnId, Timer};
use daemoneye_proto::frame::{QoS, Role};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A client connects and says Hello.
    Connect,
    /// A raw connection that never says Hello (handshake timer).
    ConnectRaw,
    /// A raw connection sends part of a frame (frame timer).
    PartialFrame(usize),
    /// A raw connection completes its Hello (handshake to keepalive).
    Hello(usize),
    /// A client publishes (keepalive moves later).
    Publish(usize),
    /// A client takes a durable subscription.
    Durable(usize),
    /// A connection goes away (durable subscriptions start to expire).
    Disconnect(usize),
    /// Time passes by this many milliseconds, and the broker handles its timers.
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Connect),
        1 => Just(Op::ConnectRaw),
        1 => (0usize..8).prop_map(Op::PartialFrame),
        1 => (0usize..8).prop_map(Op::Hello),
        3 => (0usize..8).prop_map(Op::Publish),
        1 => (0usize..8).prop_map(Op::Durable),
        1 => (0usize..8).prop_map(Op::Disconnect),
        3 => (1u32..40_000).prop_map(Op::Advance),
    ]
}

fn config() -> BrokerConfig {
    BrokerConfig {
        owner_uid: OWNER,
        handshake_timeout: Duration::from_secs(5),
        frame_timeout: Duration::from_secs(3),
        heartbeat_interval: Duration::from_secs(2),
        durable_expiry: Duration::from_secs(20),
        stats_interval: Duration::from_secs(30),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After every step, the deadline structure gives the instant and reason a scan of
    /// every connection and subscription gives, ties included.
    #[test]
    fn poll_timeout_agrees_with_a_scan_of_every_deadline(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::with_config(config());
        let mut clients: Vec<ConnId> = Vec::new();
        let mut raws: Vec<ConnId> = Vec::new();
        let mut durables = 0u32;
        for op in ops {
            match op {
                Op::Connect => clients.push(w.connect("c")),
                Op::ConnectRaw => raws.push(w.connect_raw(OWNER)),
                Op::PartialFrame(i) if !raws.is_empty() => {
                    let conn = raws[i % raws.len()];
                    let hello = hello_bytes("raw", Role::Client);
                    w.raw_send(conn, &hello[..hello.len() / 2]);
                }
                Op::Hello(i) if !raws.is_empty() => {
                    let conn = raws.remove(i % raws.len());
                    w.raw_send(conn, &hello_bytes("raw", Role::Client));
                }
                Op::Publish(i) if !clients.is_empty() => {
                    let conn = clients[i % clients.len()];
                    if w.broker.has_connection(conn) {
                        w.publish(conn, "events.a", "x", QoS::AtMostOnce);
                    }
                }
                Op::Durable(i) if !clients.is_empty() => {
                    let conn = clients[i % clients.len()];
                    if w.broker.has_connection(conn) {
                        durables += 1;
                        let mut spec = with(sub_spec("events.#"), QoS::AtLeastOnce, None, None);
                        spec.durable_name = Some(format!("d{durables}"));
                        w.subscribe(conn, spec);
                    }
                }
                Op::Disconnect(i) if !clients.is_empty() => {
                    let conn = clients.remove(i % clients.len());
                    w.disconnect(conn);
                }
                Op::Advance(ms) => w.advance(Duration::from_millis(u64::from(ms))),
                _ => {}
            }
            // World::run has compared the two after the step; compare once more here so
            // that the property reads on its own.
            prop_assert_eq!(w.broker.poll_timeout(), w.broker.poll_timeout_by_scan());
        }
    }
}

#[test]
fn a_connection_quiet_for_a_heartbeat_is_due_for_its_keepalive() {
    let mut w = World::with_config(config());
    let c = w.connect("c");
    let now = w.now;
    // The stats interval (30 s) is later than the keepalive (2 s).
    assert_eq!(
        w.broker.poll_timeout(),
        Some((now + Duration::from_secs(2), Timer::Keepalive(c)))
    );
    // Traffic moves it later without any bookkeeping of its own.
    w.advance(Duration::from_secs(1));
    w.publish(c, "events.a", "x", QoS::AtMostOnce);
    assert_eq!(
        w.broker.poll_timeout(),
        Some((now + Duration::from_secs(3), Timer::Keepalive(c)))
    );
}
