//! QoS1 queue groups get a publisher's resend once (issue: exactly once in practice).

mod common;

use common::*;
use daemoneye_core::broker::{ConnId, PeerCreds};
use daemoneye_core::client::ClientSession;
use daemoneye_proto::frame::{QoS, QueueStrategy};

fn qos1_member(w: &mut World, name: &str) -> ConnId {
    let c = w.connect(name);
    w.subscribe(
        c,
        with(
            group_spec("jobs", "workers", QueueStrategy::RoundRobin),
            QoS::AtLeastOnce,
            None,
            None,
        ),
    );
    c
}

/// The publisher's connection drops before its PubAck: its client machine keeps what is
/// unacknowledged.
fn drop_publisher(w: &mut World, p: ConnId) -> ClientSession {
    let mut client = w.clients.remove(&p).expect("client");
    w.broker.handle_disconnect(w.now, p);
    client.handle_disconnect(w.now, "lost");
    w.run();
    client
}

/// The same client machine reconnects and re-sends what was not acknowledged.
fn reconnect(w: &mut World, mut client: ClientSession) -> ConnId {
    let p2 = w.broker.handle_connect(
        w.now,
        PeerCreds {
            uid: OWNER,
            gid: OWNER,
            pid: Some(7),
        },
    );
    client.connect(w.now);
    w.clients.insert(p2, client);
    w.run();
    p2
}

fn reconnect_publisher(w: &mut World, p: ConnId) -> ConnId {
    let client = drop_publisher(w, p);
    reconnect(w, client)
}

#[test]
fn a_resend_of_a_copy_a_member_still_holds_reaches_no_other_member() {
    let mut w = World::new();
    let a = qos1_member(&mut w, "a");
    let b = qos1_member(&mut w, "b");
    let p = w.connect("p");
    let seq = w.publish(p, "jobs", "job-1", QoS::AtLeastOnce);
    let at_a = w.take_messages(a);
    assert_eq!(at_a.len(), 1, "round robin hands job-1 to a");
    let p2 = reconnect_publisher(&mut w, p);
    assert!(
        w.take_messages(b).is_empty(),
        "the resend must not go to b while a holds job-1"
    );
    assert!(w.take_messages(a).is_empty(), "nor to a a second time");
    assert!(w.pubacks(p2).is_empty(), "the PubAck waits for a's copy");
    assert_eq!(w.broker.totals().deduplicated, 1);
    w.ack_all(a, &at_a);
    assert_eq!(w.pubacks(p2), vec![(seq, 1, 0, false)]);
    assert_eq!(w.client(p2).pending_publishes(), 0);
    assert_eq!(w.broker.pending_pubacks(), 0, "both publishes resolved");
}

#[test]
fn a_resend_of_a_copy_the_group_acked_is_acked_at_once_and_not_handed_out() {
    let mut w = World::new();
    let a = qos1_member(&mut w, "a");
    let b = qos1_member(&mut w, "b");
    let p = w.connect("p");
    let seq = w.publish(p, "jobs", "job-1", QoS::AtLeastOnce);
    let at_a = w.take_messages(a);
    // The PubAck is lost with the publisher's connection: a acks after it dropped.
    let client = drop_publisher(&mut w, p);
    w.ack_all(a, &at_a);
    let p2 = reconnect(&mut w, client);
    assert!(w.take_messages(a).is_empty());
    assert!(w.take_messages(b).is_empty(), "b never sees job-1");
    assert_eq!(w.pubacks(p2), vec![(seq, 1, 0, false)]);
    assert_eq!(w.client(p2).pending_publishes(), 0);
}

#[test]
fn a_resend_of_a_copy_the_group_dropped_is_handed_out_again() {
    let mut w = World::new();
    let a = qos1_member(&mut w, "a");
    let p = w.connect("p");
    let seq = w.publish(p, "jobs", "job-1", QoS::AtLeastOnce);
    assert_eq!(w.take_messages(a).len(), 1);
    let client = drop_publisher(&mut w, p);
    // The only member leaves without acking: nobody can take its copy, which is dropped.
    w.disconnect(a);
    let c = qos1_member(&mut w, "c");
    let p2 = reconnect(&mut w, client);
    let at_c = w.take_messages(c);
    assert_eq!(at_c.len(), 1, "job-1 was never delivered, so the resend is");
    w.ack_all(c, &at_c);
    assert_eq!(w.pubacks(p2), vec![(seq, 1, 0, false)]);
}

#[test]
fn plain_subscribers_still_get_the_resend_and_the_group_does_not() {
    let mut w = World::new();
    let a = qos1_member(&mut w, "a");
    let b = qos1_member(&mut w, "b");
    let plain = w.connect("plain");
    w.subscribe(plain, with(sub_spec("jobs"), QoS::AtLeastOnce, None, None));
    let p = w.connect("p");
    let seq = w.publish(p, "jobs", "job-1", QoS::AtLeastOnce);
    let at_a = w.take_messages(a);
    let at_plain = w.take_messages(plain);
    assert_eq!((at_a.len(), at_plain.len()), (1, 1));
    let p2 = reconnect_publisher(&mut w, p);
    assert!(w.take_messages(b).is_empty());
    // The plain subscriber's library drops the duplicate by (publisher, sequence).
    assert!(w.take_messages(plain).is_empty());
    assert_eq!(w.client(plain).duplicates_dropped(), 1);
    w.ack_all(a, &at_a);
    w.ack_all(plain, &at_plain);
    assert_eq!(w.pubacks(p2), vec![(seq, 2, 0, false)]);
}

#[test]
fn group_deduplication_memory_is_bounded_by_its_window() {
    let mut w = World::with_config(daemoneye_core::broker::BrokerConfig {
        owner_uid: OWNER,
        group_dedup_window: 16,
        ..Default::default()
    });
    let a = qos1_member(&mut w, "a");
    let p = w.connect("p");
    for i in 0..200 {
        w.publish(p, "jobs", &format!("job-{i}"), QoS::AtLeastOnce);
        let got = w.take_messages(a);
        w.ack_all(a, &got);
    }
    assert!(
        w.broker.group_dedup_records() <= 16,
        "records: {}",
        w.broker.group_dedup_records()
    );
}
