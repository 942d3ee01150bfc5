//! QoS1 through the client machine over perfect links: PubAcks, resends after a reconnect, and durable subscriptions.

mod common;

use std::time::Duration;

use common::*;
use daemoneye_core::broker::BrokerConfig;
use daemoneye_core::client::ClientEvent;
use daemoneye_proto::frame::QoS;

#[test]
fn qos1_puback_waits_for_every_matched_subscription_to_ack() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.subscribe(a, with(sub_spec("t"), QoS::AtLeastOnce, None, None));
    w.subscribe(b, with(sub_spec("t"), QoS::AtLeastOnce, None, None));
    let p = w.connect("p");
    let seq = w.publish(p, "t", "m", QoS::AtLeastOnce);
    let ma = w.take_messages(a);
    let mb = w.take_messages(b);
    assert!(w.pubacks(p).is_empty(), "no PubAck before any ack");
    w.ack_all(a, &ma);
    assert!(w.pubacks(p).is_empty(), "no PubAck before every ack");
    w.ack_all(b, &mb);
    assert_eq!(w.pubacks(p), vec![(seq, 2, 0, false)]);
    assert_eq!(w.client(p).pending_publishes(), 0);
    assert_eq!(w.broker.queued_bytes(), 0);
}

#[test]
fn qos1_publish_with_no_interest_is_acked_at_once_and_counted() {
    let mut w = World::new();
    let p = w.connect("p");
    let seq = w.publish(p, "nobody.listens", "m", QoS::AtLeastOnce);
    assert_eq!(w.pubacks(p), vec![(seq, 0, 0, true)]);
    assert_eq!(w.broker.totals().no_interest, 1);
}

#[test]
fn plain_qos1_subscriber_leaving_resolves_its_share_as_dropped() {
    let mut w = World::new();
    let a = w.connect("a");
    w.subscribe(a, with(sub_spec("t"), QoS::AtLeastOnce, None, None));
    let p = w.connect("p");
    let seq = w.publish(p, "t", "m", QoS::AtLeastOnce);
    w.disconnect(a);
    assert_eq!(
        w.pubacks(p),
        vec![(seq, 0, 1, false)],
        "the publisher is told, not silently acked"
    );
}

#[test]
fn publisher_resends_unacked_qos1_after_reconnect_and_subscriber_dedups() {
    let mut w = World::new();
    let s = w.connect("s");
    w.subscribe(s, with(sub_spec("t"), QoS::AtLeastOnce, None, None));
    let p = w.connect("p");
    w.publish(p, "t", "once", QoS::AtLeastOnce);
    let first = w.take_messages(s);
    assert_eq!(first.len(), 1);
    // The publisher loses its connection before the PubAck: it keeps the message.
    let mut client = w.clients.remove(&p).expect("client");
    w.broker.handle_disconnect(w.now, p);
    client.handle_disconnect(w.now, "lost");
    assert_eq!(client.pending_publishes(), 1);
    w.run();
    // Reconnect the same client machine: it re-sends with the same sequence.
    let p2 = w.broker.handle_connect(
        w.now,
        daemoneye_core::broker::PeerCreds {
            uid: OWNER,
            gid: OWNER,
            pid: None,
        },
    );
    client.connect(w.now);
    w.clients.insert(p2, client);
    w.run();
    // The broker delivers it again (at least once) and the subscriber's dedup drops it.
    assert!(
        w.take_messages(s).is_empty(),
        "duplicate must not reach the application"
    );
    assert_eq!(w.client(s).duplicates_dropped(), 1);
    w.ack_all(s, &first);
    assert_eq!(
        w.client(p2).pending_publishes(),
        0,
        "the re-sent copy is acked once the duplicate was acked"
    );
}

#[test]
fn durable_subscription_keeps_its_queue_while_the_owner_is_away() {
    let mut w = World::new();
    let s = w.connect("siem");
    let mut spec = with(sub_spec("events.#"), QoS::AtLeastOnce, None, None);
    spec.durable_name = Some("siem-forwarder".into());
    w.subscribe(s, spec.clone());
    let p = w.connect("p");
    w.disconnect(s);
    let seqs: Vec<u64> = (0..3)
        .map(|i| w.publish(p, "events.process.new", &i.to_string(), QoS::AtLeastOnce))
        .collect();
    assert!(
        w.pubacks(p).is_empty(),
        "PubAcks wait for the durable subscriber"
    );
    let s2 = w.connect("siem");
    w.subscribe(s2, spec);
    let msgs = w.take_messages(s2);
    assert_eq!(msgs.len(), 3);
    let backlog: Vec<_> = w
        .events_of(s2)
        .into_iter()
        .filter(|e| matches!(e, ClientEvent::Subscribed { .. }))
        .collect();
    assert!(
        matches!(backlog[0], ClientEvent::Subscribed { backlog: 3, .. }),
        "{backlog:?}"
    );
    w.ack_all(s2, &msgs);
    let mut acks: Vec<u64> = w.pubacks(p).iter().map(|a| a.0).collect();
    acks.sort();
    assert_eq!(acks, seqs);
}

#[test]
fn durable_subscription_expires_and_resolves_pubacks_as_dropped() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        durable_expiry: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let s = w.connect("siem");
    let mut spec = with(sub_spec("t"), QoS::AtLeastOnce, None, None);
    spec.durable_name = Some("d".into());
    w.subscribe(s, spec);
    w.disconnect(s);
    let p = w.connect("p");
    let seq = w.publish(p, "t", "m", QoS::AtLeastOnce);
    w.advance(Duration::from_secs(59));
    assert!(w.pubacks(p).is_empty());
    assert!(w.broker.poll_timeout().is_some());
    w.advance(Duration::from_secs(2));
    assert_eq!(w.pubacks(p), vec![(seq, 0, 1, false)]);
    assert_eq!(w.broker.subscription_count(), 0);
}
