//! The client session's acknowledgement rules (issue 11 items 1 and 3): a QoS1 delivery is
//! acked only when the application says so, on the connection it came from; a dropped
//! subscription's deliveries are never acked, so the broker redelivers them; dropping a
//! durable subscription's handle detaches it instead of deleting its queue.

mod common;

use common::{World, group_spec, sub_spec, with};
use daemoneye_core::client::AckMode;
use daemoneye_proto::frame::{QoS, QueueStrategy, Subscribe};

fn qos1(spec: Subscribe) -> Subscribe {
    with(spec, QoS::AtLeastOnce, None, None)
}

#[test]
fn a_qos1_delivery_is_acked_only_by_the_application() {
    let mut w = World::new();
    let sub = w.connect("sub");
    let publ = w.connect("pub");
    let id = w.subscribe(sub, qos1(sub_spec("t")));
    w.publish(publ, "t", "m", QoS::AtLeastOnce);
    let msgs = w.take_messages(sub);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].sub_id, id);
    let connection = w.client(sub).connection();
    // Handed to the application: it still awaits the ack, and the publisher waits.
    assert!(w.client(sub).handed_over(connection, msgs[0].delivery_id));
    w.run();
    assert!(w.pubacks(publ).is_empty(), "no PubAck before the ack");
    assert_eq!(w.client(sub).awaiting_ack(), 1);
    // An ack from an earlier connection's delivery of the same id does nothing.
    assert!(!w.client(sub).ack_on(connection - 1, msgs[0].delivery_id));
    assert!(w.client(sub).ack_on(connection, msgs[0].delivery_id));
    // Twice is once.
    assert!(!w.client(sub).ack_on(connection, msgs[0].delivery_id));
    w.run();
    assert_eq!(w.pubacks(publ).len(), 1);
    assert!(w.errors(sub).is_empty(), "{:?}", w.errors(sub));
}

#[test]
fn on_hand_over_subscriptions_ack_when_handed_over() {
    let mut w = World::new();
    let sub = w.connect("sub");
    let publ = w.connect("pub");
    w.client(sub)
        .subscribe_with(qos1(sub_spec("t")), AckMode::OnHandOver);
    w.run();
    w.publish(publ, "t", "m", QoS::AtLeastOnce);
    let msgs = w.take_messages(sub);
    let connection = w.client(sub).connection();
    assert!(!w.client(sub).handed_over(connection, msgs[0].delivery_id));
    w.run();
    assert_eq!(w.pubacks(publ).len(), 1);
}

#[test]
fn a_dropped_group_members_unacked_deliveries_go_to_another_member() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    let publ = w.connect("pub");
    let a_id = w.subscribe(a, qos1(group_spec("t", "g", QueueStrategy::RoundRobin)));
    w.subscribe(b, qos1(group_spec("t", "g", QueueStrategy::RoundRobin)));
    for _ in 0..4 {
        w.publish(publ, "t", "m", QoS::AtLeastOnce);
    }
    assert_eq!(w.take_messages(a).len(), 2);
    let first = w.take_messages(b);
    w.ack_all(b, &first);
    // A lets go of its subscription without acking.
    w.client(a).drop_subscription(a_id).expect("known");
    w.run();
    let again = w.take_messages(b);
    assert_eq!(again.len(), 2, "redelivered to the other member");
    assert!(again.iter().all(|d| d.redelivered));
    w.ack_all(b, &again);
    let acks = w.pubacks(publ);
    assert_eq!(acks.len(), 4);
    assert!(
        acks.iter()
            .all(|&(_, delivered, dropped, _)| (delivered, dropped) == (1, 0))
    );
    assert!(w.errors(a).is_empty(), "{:?}", w.errors(a));
}

#[test]
fn dropping_a_durable_subscription_detaches_it_and_keeps_its_queue() {
    let mut w = World::new();
    let sub = w.connect("fwd");
    let publ = w.connect("pub");
    let durable = || Subscribe {
        durable_name: Some("fwd".into()),
        ..qos1(sub_spec("orders"))
    };
    let id = w.subscribe(sub, durable());
    w.client(sub).drop_subscription(id).expect("known");
    w.run();
    assert_eq!(w.broker.subscription_count(), 1, "not deleted");
    for _ in 0..3 {
        w.publish(publ, "orders", "o", QoS::AtLeastOnce);
    }
    // Delivered to the connection, discarded there unacked.
    assert!(w.take_messages(sub).is_empty());
    assert_eq!(w.client(sub).discarded_deliveries(), 3);
    assert!(w.pubacks(publ).is_empty());
    w.disconnect(sub);
    let again = w.connect("fwd");
    w.subscribe(again, durable());
    let msgs = w.take_messages(again);
    assert_eq!(msgs.len(), 3, "the next resume gets them");
    w.ack_all(again, &msgs);
    assert_eq!(w.pubacks(publ).len(), 3);
}
