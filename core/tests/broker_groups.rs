//! Queue groups through the client machine over perfect links: each strategy, membership changes, and redelivery within a group.

mod common;

use common::*;
use daemoneye_proto::frame::{QoS, QueueStrategy};

#[test]
fn queue_group_round_robin_splits_exactly_and_delivers_each_once() {
    let mut w = World::new();
    let members: Vec<_> = (0..3).map(|i| w.connect(&format!("m{i}"))).collect();
    for m in &members {
        w.subscribe(
            *m,
            group_spec("jobs.#", "workers", QueueStrategy::RoundRobin),
        );
    }
    let p = w.connect("p");
    for i in 0..300 {
        w.client(p)
            .publish(publish_spec("jobs.scan", &i.to_string(), QoS::AtMostOnce))
            .expect("publish");
    }
    w.run();
    let mut all = Vec::new();
    for m in &members {
        let got = w.payloads(*m);
        assert_eq!(got.len(), 100, "exact round-robin share");
        all.extend(got);
    }
    all.sort_by_key(|s| s.parse::<u32>().expect("number"));
    assert_eq!(
        all,
        (0..300).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

#[test]
fn several_groups_and_plain_subscribers_on_one_topic_each_get_the_message() {
    let mut w = World::new();
    let g1: Vec<_> = (0..2).map(|i| w.connect(&format!("g1-{i}"))).collect();
    let g2: Vec<_> = (0..2).map(|i| w.connect(&format!("g2-{i}"))).collect();
    for m in &g1 {
        w.subscribe(*m, group_spec("t", "one", QueueStrategy::RoundRobin));
    }
    for m in &g2 {
        w.subscribe(*m, group_spec("t", "two", QueueStrategy::LeastLoaded));
    }
    let plain = w.connect("plain");
    w.sub(plain, "t");
    let p = w.connect("p");
    for i in 0..10 {
        w.publish(p, "t", &i.to_string(), QoS::AtMostOnce);
    }
    let count = |w: &mut World, ms: &[daemoneye_core::broker::ConnId]| -> usize {
        ms.iter().map(|m| w.take_messages(*m).len()).sum()
    };
    assert_eq!(count(&mut w, &g1), 10);
    assert_eq!(count(&mut w, &g2), 10);
    assert_eq!(w.payloads(plain).len(), 10);
}

#[test]
fn wildcard_filters_in_a_group_behave_as_plain_ones() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.subscribe(
        a,
        group_spec("events.+.new", "g", QueueStrategy::RoundRobin),
    );
    w.subscribe(b, group_spec("events.#", "g", QueueStrategy::RoundRobin));
    let p = w.connect("p");
    for _ in 0..4 {
        w.publish(p, "events.process.new", "x", QoS::AtMostOnce);
    }
    // Only b's filter matches this one: it must go to b whatever the rotation says.
    w.publish(p, "events.process.exit", "exit", QoS::AtMostOnce);
    let got_a = w.payloads(a);
    let got_b = w.payloads(b);
    assert_eq!(got_a.len(), 2);
    assert_eq!(got_b.len(), 3);
    assert!(got_b.contains(&"exit".to_string()));
}

#[test]
fn membership_change_moves_the_share_to_remaining_members() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.subscribe(a, group_spec("t", "g", QueueStrategy::RoundRobin));
    let sb = w.subscribe(b, group_spec("t", "g", QueueStrategy::RoundRobin));
    let p = w.connect("p");
    for _ in 0..4 {
        w.publish(p, "t", "x", QoS::AtMostOnce);
    }
    assert_eq!((w.take_messages(a).len(), w.take_messages(b).len()), (2, 2));
    w.client(b).unsubscribe(sb).expect("unsubscribe");
    w.run();
    for _ in 0..4 {
        w.publish(p, "t", "y", QoS::AtMostOnce);
    }
    assert_eq!((w.take_messages(a).len(), w.take_messages(b).len()), (4, 0));
    let c = w.connect("c");
    w.subscribe(c, group_spec("t", "g", QueueStrategy::RoundRobin));
    for _ in 0..4 {
        w.publish(p, "t", "z", QoS::AtMostOnce);
    }
    assert_eq!((w.take_messages(a).len(), w.take_messages(c).len()), (2, 2));
}

#[test]
fn a_group_with_no_members_receives_nothing_and_affects_nobody() {
    let mut w = World::new();
    let a = w.connect("a");
    let sa = w.subscribe(a, group_spec("t", "g", QueueStrategy::Random));
    w.client(a).unsubscribe(sa).expect("unsubscribe");
    let plain = w.connect("plain");
    w.sub(plain, "t");
    let p = w.connect("p");
    w.publish(p, "t", "1", QoS::AtLeastOnce);
    assert!(w.take_messages(a).is_empty());
    let got = w.take_messages(plain);
    assert_eq!(got.len(), 1);
    assert_eq!(w.broker.subscription_count(), 1);
}

#[test]
fn random_strategy_is_seeded_and_delivers_each_message_once() {
    let run = || {
        let mut w = World::new();
        let ms: Vec<_> = (0..3).map(|i| w.connect(&format!("m{i}"))).collect();
        for m in &ms {
            w.subscribe(*m, group_spec("t", "g", QueueStrategy::Random));
        }
        let p = w.connect("p");
        for i in 0..60 {
            w.publish(p, "t", &i.to_string(), QoS::AtMostOnce);
        }
        ms.iter().map(|m| w.payloads(*m)).collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run(), "same seed, same split");
    assert_eq!(first.iter().map(Vec::len).sum::<usize>(), 60);
    assert!(
        first.iter().all(|v| !v.is_empty()),
        "random spreads over members: {first:?}"
    );
}

#[test]
fn least_loaded_prefers_the_member_with_fewest_unacked() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.subscribe(
        a,
        with(
            group_spec("t", "g", QueueStrategy::LeastLoaded),
            QoS::AtLeastOnce,
            None,
            None,
        ),
    );
    w.subscribe(
        b,
        with(
            group_spec("t", "g", QueueStrategy::LeastLoaded),
            QoS::AtLeastOnce,
            None,
            None,
        ),
    );
    let p = w.connect("p");
    w.publish(p, "t", "1", QoS::AtLeastOnce);
    w.publish(p, "t", "2", QoS::AtLeastOnce);
    let ma = w.take_messages(a);
    let mb = w.take_messages(b);
    assert_eq!((ma.len(), mb.len()), (1, 1));
    // a acks, b does not: a now holds fewer unacknowledged copies and gets the next one.
    w.ack_all(a, &ma);
    w.publish(p, "t", "3", QoS::AtLeastOnce);
    assert_eq!(w.take_messages(a).len(), 1);
    assert_eq!(w.take_messages(b).len(), 0);
}

#[test]
fn unacked_qos1_is_redelivered_to_another_group_member_when_its_subscriber_goes_away() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.subscribe(
        a,
        with(
            group_spec("t", "g", QueueStrategy::RoundRobin),
            QoS::AtLeastOnce,
            None,
            None,
        ),
    );
    w.subscribe(
        b,
        with(
            group_spec("t", "g", QueueStrategy::RoundRobin),
            QoS::AtLeastOnce,
            None,
            None,
        ),
    );
    let p = w.connect("p");
    let s1 = w.publish(p, "t", "1", QoS::AtLeastOnce);
    let s2 = w.publish(p, "t", "2", QoS::AtLeastOnce);
    let ma = w.take_messages(a);
    let mb = w.take_messages(b);
    assert_eq!((ma.len(), mb.len()), (1, 1));
    w.ack_all(b, &mb);
    // a dies without acking: its message goes to b, marked redelivered.
    w.disconnect(a);
    let again = w.take_messages(b);
    assert_eq!(again.len(), 1);
    assert!(again[0].redelivered);
    assert_eq!(again[0].payload, ma[0].payload);
    let acked_before = w.pubacks(p).len();
    assert_eq!(acked_before, 1, "only the message b acked is resolved");
    w.ack_all(b, &again);
    let mut acks = w.pubacks(p);
    acks.sort();
    assert_eq!(acks, vec![(s1, 1, 0, false), (s2, 1, 0, false)]);
}

#[test]
fn unacked_qos1_copy_is_not_redelivered_to_a_qos0_member_that_cannot_ack() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.subscribe(
        a,
        with(
            group_spec("t", "g", QueueStrategy::RoundRobin),
            QoS::AtLeastOnce,
            None,
            None,
        ),
    );
    w.subscribe(
        b,
        with(
            group_spec("t", "g", QueueStrategy::RoundRobin),
            QoS::AtMostOnce,
            None,
            None,
        ),
    );
    let p = w.connect("p");
    let seq = w.publish(p, "t", "m", QoS::AtLeastOnce);
    assert_eq!(w.take_messages(a).len(), 1, "round robin starts with a");
    // b (QoS0) must not take over the copy: nothing would ever ack it.
    w.disconnect(a);
    assert!(w.take_messages(b).is_empty());
    assert_eq!(
        w.pubacks(p),
        vec![(seq, 0, 1, false)],
        "reported dropped, never falsely delivered"
    );
}
