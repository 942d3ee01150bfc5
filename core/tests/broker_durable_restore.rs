//! Durable subscriptions survive a broker restart through their stored definitions.

mod common;

use common::*;
use daemoneye_core::broker::{BrokerConfig, DurableDefinition};
use daemoneye_proto::frame::{Overflow, QoS, Subscribe};

fn durable(filter: &str, name: &str) -> Subscribe {
    Subscribe {
        durable_name: Some(name.into()),
        ..with(sub_spec(filter), QoS::AtLeastOnce, None, None)
    }
}

fn definition(name: &str, filter: &str) -> DurableDefinition {
    DurableDefinition {
        uid: OWNER,
        name: name.into(),
        filter: filter.into(),
        capacity: 10,
        overflow: Overflow::Block,
        group: None,
    }
}

#[test]
fn a_restored_durable_queues_a_resend_for_its_returning_owner() {
    // First broker: the durable subscriber exists and goes away.
    let mut w = World::new();
    let s = w.connect("s");
    w.subscribe(s, durable("orders.#", "fwd"));
    let gen_before = w.broker.durables_generation();
    let defs = w.broker.durable_definitions();
    assert_eq!(
        defs,
        vec![DurableDefinition {
            uid: OWNER,
            name: "fwd".into(),
            filter: "orders.#".into(),
            capacity: BrokerConfig::default().default_capacity,
            overflow: Overflow::Block,
            group: None,
        }]
    );
    assert!(gen_before > 0);

    // The broker crashes. A fresh one without the definitions answers "no interest".
    let mut bare = World::new();
    let p = bare.connect("p");
    let seq = bare.publish(p, "orders.new", "o-1", QoS::AtLeastOnce);
    assert_eq!(bare.pubacks(p), vec![(seq, 0, 0, true)]);

    // With the definitions restored, the publish waits for the durable subscriber.
    let mut w2 = World::new();
    let now = w2.now;
    for d in defs {
        w2.broker.restore_durable(now, d).expect("restored");
    }
    let p = w2.connect("p");
    let seq = w2.publish(p, "orders.new", "o-1", QoS::AtLeastOnce);
    assert!(w2.pubacks(p).is_empty(), "held for the durable subscriber");
    let s = w2.connect("s");
    w2.subscribe(s, durable("orders.#", "fwd"));
    let got = w2.take_messages(s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"o-1");
    w2.ack_all(s, &got);
    assert_eq!(w2.pubacks(p), vec![(seq, 1, 0, false)]);
}

#[test]
fn a_restored_durable_expires_like_any_detached_one() {
    let mut w = World::new();
    let now = w.now;
    w.broker
        .restore_durable(now, definition("fwd", "orders.#"))
        .expect("restored");
    let generation = w.broker.durables_generation();
    assert_eq!(w.broker.subscription_count(), 1);
    w.advance(BrokerConfig::default().durable_expiry);
    assert_eq!(w.broker.subscription_count(), 0);
    assert!(
        w.broker.durables_generation() > generation,
        "its removal is a change to store"
    );
    assert!(w.broker.durable_definitions().is_empty());
}

#[test]
fn restoring_refuses_bad_or_duplicate_definitions() {
    let mut w = World::new();
    let now = w.now;
    let def = definition("fwd", "orders.#");
    w.broker.restore_durable(now, def.clone()).expect("first");
    assert!(w.broker.restore_durable(now, def).is_err());
    let bad = definition("bad", "a.#.b");
    assert!(w.broker.restore_durable(now, bad).is_err());
    let huge = DurableDefinition {
        capacity: u32::MAX,
        ..definition("huge", "orders.#")
    };
    assert!(w.broker.restore_durable(now, huge).is_err());
}
