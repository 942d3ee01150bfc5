//! Overflow strategies and flow control through the client machine over perfect links: drop oldest, drop newest, error, block (stalls), SlowDown and the memory budget.

mod common;

use common::*;
use daemoneye_core::broker::BrokerConfig;
use daemoneye_core::client::ClientEvent;
use daemoneye_proto::frame::{Overflow, QoS};
use daemoneye_proto::pb::bus::{AnswerKind, BackpressureLevel, ErrorCode};

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
