//! Broker behaviour through the client machine over perfect links.

mod common;

use std::time::Duration;

use common::*;
use daemoneye_core::acl::{Acl, AclConfig, AclRule};
use daemoneye_core::broker::{BrokerConfig, CloseReason};
use daemoneye_core::client::ClientEvent;
use daemoneye_proto::frame::{Overflow, QoS, QueueStrategy, Target};
use daemoneye_proto::pb::bus::{AnswerKind, BackpressureLevel, ErrorCode};

#[test]
fn pubsub_delivers_only_to_matching_filters() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    let p = w.connect("p");
    w.sub(a, "events.process.+");
    w.sub(b, "events.network.#");
    w.publish(p, "events.process.new", "proc", QoS::AtMostOnce);
    w.publish(p, "events.network.tcp.open", "net", QoS::AtMostOnce);
    w.publish(p, "events.process.new.extra", "deep", QoS::AtMostOnce);
    assert_eq!(w.payloads(a), vec!["proc"]);
    assert_eq!(w.payloads(b), vec!["net"]);
}

#[test]
fn broadcast_reaches_every_plain_subscriber_once() {
    let mut w = World::new();
    let subs: Vec<_> = (0..5).map(|i| w.connect(&format!("s{i}"))).collect();
    for (i, s) in subs.iter().enumerate() {
        w.sub(
            *s,
            if i % 2 == 0 {
                "control.#"
            } else {
                "control.health.status"
            },
        );
    }
    let p = w.connect("p");
    w.publish(p, "control.health.status", "ok", QoS::AtMostOnce);
    for s in subs {
        assert_eq!(w.payloads(s), vec!["ok"]);
    }
}

#[test]
fn messages_keep_publish_order_per_subscription() {
    let mut w = World::new();
    let s = w.connect("s");
    let p = w.connect("p");
    w.sub(s, "t.#");
    for i in 0..500 {
        w.client(p)
            .publish(publish_spec("t.x", &i.to_string(), QoS::AtMostOnce))
            .expect("publish");
    }
    w.run();
    let got: Vec<String> = w.payloads(s);
    let want: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
}

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

fn full_queue_world(
    overflow: Overflow,
) -> (
    World,
    daemoneye_core::broker::ConnId,
    daemoneye_core::broker::ConnId,
    u64,
) {
    let mut w = World::new();
    let s = w.connect("s");
    let sub = w.subscribe(
        s,
        with(sub_spec("t"), QoS::AtLeastOnce, Some(4), Some(overflow)),
    );
    let p = w.connect("p");
    (w, s, p, sub)
}

#[test]
fn drop_oldest_on_full_queue_evicts_the_oldest_and_reports_it() {
    let (mut w, s, p, sub) = full_queue_world(Overflow::DropOldest);
    // Four unacknowledged deliveries fill the capacity; copies already handed out cannot
    // be taken back, so with nothing queued to evict the new message is the one dropped.
    for i in 0..4 {
        w.publish(p, "t", &i.to_string(), QoS::AtLeastOnce);
    }
    let first = w.take_messages(s);
    assert_eq!(first.len(), 4);
    // Queue is full of unacked copies: nothing queued to evict, so new ones are dropped.
    w.publish(p, "t", "4", QoS::AtLeastOnce);
    let acks = w.pubacks(p);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].2, 1, "PubAck reports the drop");
    let dropped: Vec<_> = w
        .events_of(s)
        .into_iter()
        .filter(|e| matches!(e, ClientEvent::Dropped { .. }))
        .collect();
    assert_eq!(
        dropped,
        vec![ClientEvent::Dropped {
            sub_id: sub,
            count: 1,
            total: 1
        }]
    );
    assert_eq!(w.broker.subscriptions()[0].dropped, 1);
}

#[test]
fn drop_oldest_evicts_queued_copies_when_the_subscriber_is_not_reading() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        write_window: 64,
        ..Default::default()
    });
    let s = w.connect("s");
    let sub = w.subscribe(
        s,
        with(
            sub_spec("t"),
            QoS::AtMostOnce,
            Some(3),
            Some(Overflow::DropOldest),
        ),
    );
    let p = w.connect("p");
    w.stalled_readers.insert(s);
    for i in 0..10 {
        w.publish(p, "t", &i.to_string(), QoS::AtMostOnce);
        let info = &w.broker.subscriptions()[0];
        assert!(
            info.queued <= 3,
            "queue never exceeds its capacity: {info:?}"
        );
    }
    w.release(s);
    let got = w.payloads(s);
    // What was already in the socket arrives, then the newest three; the rest were evicted.
    let in_flight = got.len() - 3;
    assert_eq!(&got[in_flight..], ["7", "8", "9"]);
    assert_eq!(
        got[..in_flight],
        (0..in_flight).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    let lost = (10 - got.len()) as u64;
    assert!(lost > 0);
    let reported: u64 = w
        .events_of(s)
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Dropped { sub_id, count, .. } if *sub_id == sub => Some(*count),
            _ => None,
        })
        .sum();
    assert_eq!(reported, lost, "every drop is told to the subscriber");
    assert_eq!(w.broker.totals().dropped, lost);
}

#[test]
fn drop_newest_keeps_the_queue_and_drops_the_new_message() {
    let (mut w, s, p, _) = full_queue_world(Overflow::DropNewest);
    for i in 0..6 {
        w.publish(p, "t", &i.to_string(), QoS::AtLeastOnce);
    }
    let got = w.take_messages(s);
    assert_eq!(
        got.iter()
            .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
            .collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    let dropped: u32 = w.pubacks(p).iter().map(|a| a.2).sum();
    assert_eq!(dropped, 2);
    assert_eq!(w.broker.totals().dropped, 2);
}

#[test]
fn error_overflow_tells_the_publisher_which_subscription_is_full() {
    let (mut w, _s, p, sub) = full_queue_world(Overflow::Error);
    for i in 0..5 {
        w.publish(p, "t", &i.to_string(), QoS::AtLeastOnce);
    }
    let errors = w.errors(p);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, ErrorCode::QueueFull);
    assert_eq!(errors[0].answers_kind, AnswerKind::Publish);
    assert!(
        errors[0].message.contains(&format!("subscription {sub}")),
        "{}",
        errors[0].message
    );
}

#[test]
fn block_overflow_stalls_the_publisher_and_loses_nothing() {
    let (mut w, s, p, _) = full_queue_world(Overflow::Block);
    // More than the 256 publishes a stalled connection may have waiting: reading pauses.
    for i in 0..300 {
        w.client(p)
            .publish(publish_spec("t", &i.to_string(), QoS::AtLeastOnce))
            .expect("publish");
    }
    w.run();
    assert!(
        w.paused.contains(&p),
        "publisher's reads are paused once its backlog is full"
    );
    let bp: Vec<_> = w
        .events_of(p)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Backpressure { level, .. } => Some(level),
            _ => None,
        })
        .collect();
    assert_eq!(
        bp,
        vec![BackpressureLevel::SlowDown, BackpressureLevel::Blocked],
        "slowed at 80%, then told once it is blocked"
    );
    let mut got = Vec::new();
    for _ in 0..200 {
        let msgs = w.take_messages(s);
        if msgs.is_empty() {
            break;
        }
        let info = &w.broker.subscriptions()[0];
        assert!(info.queued + info.unacked <= 4, "{info:?}");
        got.extend(
            msgs.iter()
                .map(|d| String::from_utf8_lossy(&d.payload).into_owned()),
        );
        w.ack_all(s, &msgs);
    }
    assert_eq!(
        got,
        (0..300).map(|i| i.to_string()).collect::<Vec<_>>(),
        "all, in order"
    );
    assert!(!w.paused.contains(&p), "reading resumed");
    assert_eq!(w.pubacks(p).len(), 300);
    assert_eq!(w.broker.totals().dropped, 0);
    let levels: Vec<_> = w
        .events_of(p)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Backpressure { level, .. } => Some(level),
            _ => None,
        })
        .collect();
    assert_eq!(
        levels.last(),
        Some(&BackpressureLevel::None),
        "told when the block lifts"
    );
}

#[test]
fn publisher_blocked_on_its_own_subscription_can_still_ack_its_way_out() {
    let mut w = World::new();
    let c = w.connect("self");
    w.subscribe(
        c,
        with(
            sub_spec("t"),
            QoS::AtLeastOnce,
            Some(2),
            Some(Overflow::Block),
        ),
    );
    for i in 0..5 {
        w.client(c)
            .publish(publish_spec("t", &i.to_string(), QoS::AtLeastOnce))
            .expect("publish");
    }
    w.run();
    let mut got = Vec::new();
    for _ in 0..10 {
        let msgs = w.take_messages(c);
        if msgs.is_empty() {
            break;
        }
        got.extend(
            msgs.iter()
                .map(|d| String::from_utf8_lossy(&d.payload).into_owned()),
        );
        w.ack_all(c, &msgs);
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"]);
    assert_eq!(w.client(c).pending_publishes(), 0);
}

#[test]
fn backpressure_slow_down_is_sent_at_80_percent() {
    let mut w = World::new();
    let s = w.connect("s");
    w.subscribe(
        s,
        with(
            sub_spec("t"),
            QoS::AtLeastOnce,
            Some(10),
            Some(Overflow::Block),
        ),
    );
    let p = w.connect("p");
    for i in 0..7 {
        w.publish(p, "t", &i.to_string(), QoS::AtLeastOnce);
    }
    let slow = |w: &mut World| {
        w.events_of(p).into_iter().any(|e| {
            matches!(
                e,
                ClientEvent::Backpressure {
                    level: BackpressureLevel::SlowDown,
                    ..
                }
            )
        })
    };
    assert!(!slow(&mut w), "70% is below the threshold");
    w.publish(p, "t", "8", QoS::AtLeastOnce);
    assert!(slow(&mut w), "80% sends SlowDown");
}

#[test]
fn memory_budget_blocks_block_subscriptions_publishers() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        memory_budget: 2_000,
        ..Default::default()
    });
    let s = w.connect("s");
    w.subscribe(
        s,
        with(
            sub_spec("t"),
            QoS::AtLeastOnce,
            Some(1000),
            Some(Overflow::Block),
        ),
    );
    let p = w.connect("p");
    let payload = "x".repeat(300);
    for _ in 0..10 {
        w.client(p)
            .publish(publish_spec("t", &payload, QoS::AtLeastOnce))
            .expect("publish");
    }
    w.run();
    assert!(w.broker.queued_bytes() <= 2_000);
    let blocked = w.events_of(p).into_iter().any(|e| {
        matches!(e, ClientEvent::Backpressure { level: BackpressureLevel::Blocked, ref reason } if reason.contains("budget"))
    });
    assert!(blocked, "the publisher is told the budget blocks it");
    let mut total = 0;
    for _ in 0..20 {
        let msgs = w.take_messages(s);
        if msgs.is_empty() {
            break;
        }
        total += msgs.len();
        w.ack_all(s, &msgs);
        assert!(w.broker.queued_bytes() <= 2_000);
    }
    assert_eq!(total, 10, "nothing lost under the budget");
}

#[test]
fn acl_denied_publish_and_subscribe_get_permission_denied_and_route_nothing() {
    let config = AclConfig {
        rules: vec![AclRule {
            uid: 2000,
            role: None,
            publish: vec!["events.process.#".into()],
            subscribe: vec!["events.#".into()],
        }],
    };
    let acl = Acl::compile(OWNER, &config).expect("valid acl");
    let mut w = World::with_acl(
        BrokerConfig {
            owner_uid: OWNER,
            ..Default::default()
        },
        acl,
    );
    let owner_sub = w.connect("owner");
    w.sub(owner_sub, "#");
    let guest = w.connect_as("guest", 2000);
    w.publish(guest, "events.process.new", "ok", QoS::AtMostOnce);
    w.publish(
        guest,
        "control.collector.lifecycle",
        "evil",
        QoS::AtMostOnce,
    );
    w.sub(guest, "control.#");
    w.sub(guest, "events.process.+");
    assert_eq!(
        w.payloads(owner_sub),
        vec!["ok"],
        "the denied publish routed nothing"
    );
    let errors = w.errors(guest);
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e.code == ErrorCode::PermissionDenied));
    assert_eq!(errors[0].answers_kind, AnswerKind::Publish);
    assert_eq!(errors[1].answers_kind, AnswerKind::Subscription);
    assert_eq!(w.broker.totals().denied, 2);
    assert_eq!(
        w.broker.subscription_count(),
        2,
        "owner's # and guest's events.process.+"
    );
}

#[test]
fn other_uids_are_refused_at_connect_by_default() {
    let mut w = World::new();
    let c = w.connect_as("stranger", 4242);
    assert!(matches!(w.closed.get(&c), Some(CloseReason::Refused(m)) if m.contains("4242")));
    let root = w.connect_as("root", 0);
    assert!(w.client(root).is_connected());
}

#[test]
fn invalid_topic_publish_reaches_nobody_with_a_precise_error() {
    let mut w = World::new();
    let s = w.connect("s");
    w.sub(s, "#");
    let p = w.connect("p");
    for (topic, rule) in [
        ("a..b", "level 1 is empty"),
        ("a.+", "wildcards"),
        ("", "empty"),
        ("a.b.", "level 2 is empty"),
    ] {
        w.client(p)
            .publish(publish_spec(topic, "x", QoS::AtMostOnce))
            .expect("queued");
        w.run();
        let errs = w.errors(p);
        let last = errs.last().expect("an error");
        assert_eq!(last.code, ErrorCode::InvalidTopic);
        assert!(last.message.contains(rule), "{topic:?}: {}", last.message);
    }
    assert!(w.take_messages(s).is_empty());
    assert!(
        w.client(p).is_connected(),
        "a bad topic does not end the connection"
    );
}

#[test]
fn invalid_filter_and_whitespace_group_are_rejected_per_subscription() {
    let mut w = World::new();
    let c = w.connect("c");
    w.sub(c, "a.#.b");
    w.subscribe(c, group_spec("t", "  ", QueueStrategy::RoundRobin));
    let errs = w.errors(c);
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].code, ErrorCode::InvalidFilter);
    assert!(errs[0].message.contains("'#' must be the last level"));
    assert_eq!(errs[1].code, ErrorCode::InvalidSubscription);
    assert!(errs[1].message.contains("whitespace"));
    assert!(w.client(c).is_connected());
    assert_eq!(w.broker.subscription_count(), 0);
}

#[test]
fn reserved_topics_are_not_matched_by_leading_wildcards_and_not_publishable() {
    let mut w = World::new();
    let all = w.connect("all");
    w.sub(all, "#");
    let sys = w.connect("sys");
    w.sub(sys, "$sys.#");
    let p = w.connect("p");
    w.publish(p, "$sys.broker.stats", "fake", QoS::AtMostOnce);
    assert_eq!(w.errors(p)[0].code, ErrorCode::PermissionDenied);
    for _ in 0..7 {
        w.advance(Duration::from_secs(5));
    }
    assert!(
        w.take_messages(all)
            .iter()
            .all(|d| !d.topic.starts_with('$'))
    );
    let stats = w.take_messages(sys);
    assert!(
        stats.iter().any(|d| d.topic == "$sys.broker.stats"),
        "stats published every interval"
    );
}

#[test]
fn stats_request_is_answered_on_the_reply_topic() {
    use prost::Message;
    let mut w = World::new();
    let c = w.connect("c");
    w.sub(c, "reply.me");
    w.publish(c, "t", "x", QoS::AtMostOnce);
    let mut req = publish_spec("$sys.broker.stats", "", QoS::AtMostOnce);
    req.reply_to = Some("reply.me".into());
    w.client(c).publish(req).expect("publish");
    w.run();
    let msgs = w.take_messages(c);
    assert_eq!(msgs.len(), 1);
    let stats = daemoneye_proto::pb::stats::BrokerStats::decode(msgs[0].payload.clone())
        .expect("stats decode");
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.totals.expect("totals").no_interest, 1);
}

#[test]
fn request_reply_round_trip_carries_correlation() {
    let mut w = World::new();
    let server = w.connect("server");
    w.sub(server, "svc.echo");
    let client = w.connect("client");
    w.sub(client, "reply.client");
    let mut req = publish_spec("svc.echo", "ping", QoS::AtMostOnce);
    req.reply_to = Some("reply.client".into());
    req.correlation = Some(Box::new(daemoneye_proto::pb::bus::Correlation {
        correlation_id: "c-1".into(),
        ..Default::default()
    }));
    w.client(client).publish(req).expect("publish");
    w.run();
    let got = w.take_messages(server);
    assert_eq!(got[0].reply_to.as_deref(), Some("reply.client"));
    let mut reply = publish_spec(
        got[0].reply_to.as_deref().expect("reply_to"),
        "pong",
        QoS::AtMostOnce,
    );
    reply.correlation = got[0].correlation.clone();
    w.client(server).publish(reply).expect("publish");
    w.run();
    let answer = w.take_messages(client);
    assert_eq!(answer[0].payload.as_ref(), b"pong");
    assert_eq!(
        answer[0]
            .correlation
            .as_ref()
            .map(|c| c.correlation_id.as_str()),
        Some("c-1")
    );
}

#[test]
fn direct_delivery_reaches_only_the_target_and_unknown_target_is_an_error() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    w.sub(a, "control.collector.task.+");
    w.sub(b, "control.collector.task.+");
    let p = w.connect("p");
    let sb = w.client(b).session_id().expect("session");
    w.client(p)
        .publish(direct(
            publish_spec("control.collector.task.process", "do", QoS::AtMostOnce),
            Target::Session(sb),
        ))
        .expect("publish");
    w.run();
    assert!(w.take_messages(a).is_empty());
    assert_eq!(w.payloads(b), vec!["do"]);
    w.client(p)
        .publish(direct(
            publish_spec("control.collector.task.process", "x", QoS::AtMostOnce),
            Target::Session(999),
        ))
        .expect("publish");
    w.run();
    assert_eq!(w.errors(p)[0].code, ErrorCode::UnknownTarget);
}

#[test]
fn higher_priority_messages_are_handed_out_first() {
    // A one-byte write window and a subscriber that is not reading: the first message goes
    // out at once, the others wait in the queue together. Priority decides their order,
    // FIFO within a priority.
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        write_window: 1,
        ..Default::default()
    });
    let s = w.connect("s");
    w.subscribe(s, with(sub_spec("t"), QoS::AtLeastOnce, Some(100), None));
    w.stalled_readers.insert(s);
    let p = w.connect("p");
    for (i, prio) in [(0, 0u8), (1, 5), (2, 0), (3, 9), (4, 5)] {
        let mut m = publish_spec("t", &i.to_string(), QoS::AtMostOnce);
        m.priority = prio;
        w.client(p).publish(m).expect("publish");
    }
    w.run();
    let mut got = Vec::new();
    for _ in 0..10 {
        w.release(s);
        w.stalled_readers.insert(s);
        got.extend(w.payloads(s));
    }
    assert_eq!(got, vec!["0", "3", "1", "4", "2"]);
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

#[test]
fn version_mismatch_is_refused_naming_both_versions() {
    use daemoneye_proto::pb::bus as pb;
    let mut w = World::new();
    let c = w.connect_raw(OWNER);
    let hello = pb::Frame {
        body: Some(pb::frame::Body::Hello(pb::Hello {
            protocol_version: 7,
            client_name: "old".into(),
            ..Default::default()
        })),
    };
    let mut bytes = Vec::new();
    daemoneye_proto::encode(&hello, 1 << 20, &mut bytes).expect("encode");
    w.raw_send(c, &bytes);
    match w.closed.get(&c) {
        Some(CloseReason::Refused(m)) => {
            assert!(m.contains("version 7") && m.contains("version 1"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn first_frame_other_than_hello_closes_the_connection() {
    use daemoneye_proto::pb::bus as pb;
    let mut w = World::new();
    let c = w.connect_raw(OWNER);
    let f = pb::Frame {
        body: Some(pb::frame::Body::Ping(pb::Ping { nonce: 1 })),
    };
    let mut bytes = Vec::new();
    daemoneye_proto::encode(&f, 1 << 20, &mut bytes).expect("encode");
    w.raw_send(c, &bytes);
    assert!(
        matches!(w.closed.get(&c), Some(CloseReason::Protocol(m)) if m.contains("must be Hello"))
    );
}

#[test]
fn garbage_and_oversized_headers_close_only_that_connection() {
    let mut w = World::new();
    let s = w.connect("s");
    w.sub(s, "t");
    let p = w.connect("p");
    for bad in [
        vec![0u8, 0, 0, 0],
        vec![0xFF; 4],
        b"GET / HTTP/1.1\r\n".to_vec(),
    ] {
        let c = w.connect_raw(OWNER);
        w.raw_send(c, &bad);
        assert!(
            matches!(w.closed.get(&c), Some(CloseReason::Protocol(_))),
            "{bad:?}"
        );
        assert!(
            w.broker.connection_memory(c).is_none(),
            "connection forgotten"
        );
    }
    w.publish(p, "t", "still here", QoS::AtMostOnce);
    assert_eq!(w.payloads(s), vec!["still here"]);
}

#[test]
fn silent_or_dribbling_client_is_closed_at_the_handshake_timeout() {
    let mut w = World::new();
    let silent = w.connect_raw(OWNER);
    let dribbler = w.connect_raw(OWNER);
    w.raw_send(dribbler, &[0, 0]);
    w.advance(Duration::from_secs(4));
    w.raw_send(dribbler, &[0]);
    assert!(w.closed.is_empty());
    w.advance(Duration::from_secs(2));
    assert_eq!(w.closed.get(&silent), Some(&CloseReason::Timeout));
    assert_eq!(w.closed.get(&dribbler), Some(&CloseReason::Timeout));
}

#[test]
fn connection_beyond_the_limit_gets_an_error_and_close() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        max_connections: 3,
        ..Default::default()
    });
    let ok: Vec<_> = (0..3).map(|i| w.connect(&format!("c{i}"))).collect();
    let extra = w.connect("extra");
    assert!(
        matches!(w.closed.get(&extra), Some(CloseReason::Refused(m)) if m.contains("connection limit of 3"))
    );
    for c in ok {
        assert!(w.client(c).is_connected());
    }
}

#[test]
fn idle_connection_is_pinged_then_closed_after_three_heartbeats() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        heartbeat_interval: Duration::from_secs(10),
        stats_interval: Duration::from_secs(3600),
        ..Default::default()
    });
    let live = w.connect("live");
    // A raw connection that completes the handshake and then never answers.
    let mut hello = Vec::new();
    let mut machine = daemoneye_core::client::ClientSession::new(
        daemoneye_core::client::ClientConfig::new("mute"),
    );
    machine.connect(w.now);
    hello.extend_from_slice(&machine.poll_transmit().expect("hello"));
    let mute = w.connect_raw(OWNER);
    w.raw_send(mute, &hello);
    for _ in 0..4 {
        w.advance(Duration::from_secs(10));
    }
    assert_eq!(w.closed.get(&mute), Some(&CloseReason::Timeout));
    assert!(
        w.client(live).is_connected(),
        "a client that answers pings stays"
    );
}

#[test]
fn too_many_subscriptions_is_refused() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        max_subscriptions_per_connection: 2,
        ..Default::default()
    });
    let c = w.connect("c");
    w.sub(c, "a");
    w.sub(c, "b");
    w.sub(c, "c");
    assert_eq!(w.errors(c)[0].code, ErrorCode::TooManySubscriptions);
    assert_eq!(w.broker.subscription_count(), 2);
}

#[test]
fn shutdown_says_goodbye_to_everyone() {
    let mut w = World::new();
    let a = w.connect("a");
    let b = w.connect("b");
    let now = w.now;
    w.broker.shutdown(now);
    w.run();
    assert_eq!(w.closed.get(&a), Some(&CloseReason::Shutdown));
    assert_eq!(w.closed.get(&b), Some(&CloseReason::Shutdown));
    assert!(
        w.events_of(a)
            .iter()
            .any(|e| matches!(e, ClientEvent::Closed { reason } if reason.contains("goodbye")))
    );
    assert_eq!(w.broker.connection_count(), 0);
}

#[test]
fn qos0_drops_are_counted_in_totals_and_per_topic() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        write_window: 64,
        ..Default::default()
    });
    let s = w.connect("s");
    w.subscribe(
        s,
        with(
            sub_spec("t"),
            QoS::AtMostOnce,
            Some(2),
            Some(Overflow::DropNewest),
        ),
    );
    let p = w.connect("p");
    w.stalled_readers.insert(s);
    for i in 0..20 {
        w.publish(p, "t", &i.to_string(), QoS::AtMostOnce);
    }
    let sub_dropped = w.broker.subscriptions()[0].dropped;
    assert!(sub_dropped > 0);
    assert_eq!(
        w.broker.totals().dropped,
        sub_dropped,
        "totals count QoS0 drops too"
    );
    let stats = w.broker.stats_report(w.now);
    let topic = stats
        .topics
        .iter()
        .find(|t| t.topic == "t")
        .expect("topic t");
    assert_eq!(topic.counters.expect("counters").dropped, sub_dropped);
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

#[test]
fn the_agents_own_connection_does_not_count_against_the_limit() {
    use daemoneye_core::client::{ClientConfig, ClientSession};
    use daemoneye_proto::frame::Role;
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        max_connections: 2,
        ..Default::default()
    });
    let conn = w.broker.handle_connect(
        w.now,
        daemoneye_core::broker::PeerCreds {
            uid: OWNER,
            gid: OWNER,
            pid: None,
        },
    );
    let mut config = ClientConfig::new("agent");
    config.role = Role::Agent;
    let mut agent = ClientSession::new(config);
    agent.connect(w.now);
    w.clients.insert(conn, agent);
    w.run();
    let a = w.connect("a");
    let b = w.connect("b");
    assert!(
        w.client(a).is_connected() && w.client(b).is_connected(),
        "two clients besides the agent"
    );
    let c = w.connect("c");
    assert!(matches!(w.closed.get(&c), Some(CloseReason::Refused(_))));
}

#[test]
fn a_restarted_broker_never_hands_out_a_session_id_seen_before() {
    // A collector re-registers when its session id changes: a restarted broker (a new
    // seed) must not start numbering where the last one did.
    let ids = |seed: u64| {
        let config = BrokerConfig {
            owner_uid: OWNER,
            ..Default::default()
        };
        let mut w = World::with_seed(config, Acl::owner_only(OWNER), seed);
        let a = w.connect("a");
        let b = w.connect("b");
        (
            w.client(a).session_id().expect("session"),
            w.client(b).session_id().expect("session"),
        )
    };
    let (a1, b1) = ids(1);
    let (a2, b2) = ids(2);
    assert_ne!(a1, b1);
    for x in [a1, b1] {
        assert!(x != a2 && x != b2, "{a1} {b1} / {a2} {b2}");
    }
}
