//! The bridge machine's promises, as properties: the topic/subject mapping round-trips and
//! matches what the filter matches, nothing imported is exported again, QoS1 exports keep
//! their order across disconnects, and a full queue's drops are counted exactly.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::bridge::subject::{nats_matches, subject_for, subscriptions_for, topic_under};
use daemoneye_core::bridge::{Bridge, BridgeConfig, LocalMessage, Offer, Output, Skip, msg_id};
use daemoneye_core::topic::{TopicFilter, TopicName};
use proptest::prelude::*;

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("alerts".to_string()),
        "[a-z0-9_-]{1,6}",
    ]
}

fn topic() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| TopicName::parse(&l.join(".")).expect("valid"))
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    (
        prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 0..4),
        any::<bool>(),
    )
        .prop_filter_map("non-empty", |(mut levels, hash)| {
            if hash {
                levels.push("#".into());
            }
            if levels.is_empty() {
                return None;
            }
            TopicFilter::parse(&levels.join(".")).ok()
        })
}

fn msg(topic: &str, qos1: bool, seq: u64) -> LocalMessage {
    LocalMessage {
        topic: TopicName::parse(topic).expect("valid"),
        payload: Bytes::from(seq.to_be_bytes().to_vec()),
        at_least_once: qos1,
        publisher: "p1".into(),
        sequence: seq,
        imported_from: None,
    }
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn drain(b: &mut Bridge) -> Vec<Output> {
    std::iter::from_fn(|| b.poll_output()).collect()
}

proptest! {
    #[test]
    fn the_message_id_is_host_publisher_and_sequence_in_decimal(
        host in "[a-z0-9_-]{1,12}",
        publisher in "[a-z0-9._-]{0,12}",
        sequence in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
    ) {
        prop_assert_eq!(msg_id(&host, &publisher, sequence), format!("{host}.{publisher}.{sequence}"));
    }

    #[test]
    fn a_topic_maps_to_a_subject_and_back(prefix in prop::collection::vec(level(), 1..3), t in topic()) {
        let prefix = prefix.join(".");
        let subject = subject_for(&prefix, &t).expect("plain levels map");
        prop_assert_eq!(topic_under(&prefix, &subject), Some(t));
    }

    #[test]
    fn the_nats_subscriptions_match_exactly_what_the_filter_matches(f in filter(), t in topic()) {
        let subs = subscriptions_for("daemoneye.h1", &f);
        let subject = subject_for("daemoneye.h1", &t).expect("maps");
        let nats = subs.iter().any(|s| nats_matches(s, &subject));
        prop_assert_eq!(nats, f.matches(&t), "filter {} subs {:?} topic {}", f.as_str(), subs, t);
    }

    #[test]
    fn nothing_imported_is_exported_again(topics in prop::collection::vec(topic(), 1..40)) {
        let mut config = BridgeConfig::new("h1");
        config.export = vec![TopicFilter::parse("#").expect("valid")];
        let mut b = Bridge::new(config);
        b.handle_connected(at(0), "nats://x");
        for (i, t) in topics.iter().enumerate() {
            let mut m = msg(t.as_str(), i % 2 == 0, i as u64 + 1);
            m.imported_from = Some("h2".into());
            prop_assert_eq!(b.offer(at(1), m), Offer::Skipped(Skip::Imported));
        }
        prop_assert!(drain(&mut b).is_empty());
        prop_assert_eq!(b.status(at(1)).loops_prevented, topics.len() as u64);
    }

    #[test]
    fn order_is_kept_across_disconnects_and_every_export_is_acked_once(
        ops in prop::collection::vec(0u8..6, 1..300),
    ) {
        let mut config = BridgeConfig::new("h1");
        config.max_in_flight = 4;
        let mut b = Bridge::new(config);
        let mut now = 0;
        let mut next = 1u64;
        let mut sent: Vec<u64> = Vec::new();
        let mut stored: Vec<u64> = Vec::new();
        let mut in_flight: Vec<u64> = Vec::new();
        let mut connected = false;
        for op in ops {
            now += 10;
            match op {
                0 | 1 => {
                    prop_assert_eq!(b.offer(at(now), msg("alerts.high", true, next)), Offer::Queued(next));
                    next += 1;
                }
                2 => {
                    if connected {
                        b.handle_disconnected(at(now), "gone");
                        in_flight.clear();
                    } else {
                        b.handle_connected(at(now), "nats://x");
                    }
                    connected = !connected;
                }
                3 | 4 => {
                    // The server stores and acks the oldest in flight (FIFO link).
                    if let Some(seq) = (!in_flight.is_empty()).then(|| in_flight.remove(0)) {
                        if !stored.contains(&seq) {
                            stored.push(seq);
                        }
                        b.handle_ack(at(now), seq);
                        b.handle_ack(at(now), seq);
                    }
                }
                _ => {
                    now += 6000;
                    b.handle_timeout(at(now));
                    if b.status(at(now)).in_flight == 0 {
                        in_flight.clear();
                    }
                }
            }
            for o in drain(&mut b) {
                if let Output::Publish(e) = o {
                    sent.push(e.seq);
                    in_flight.retain(|s| *s != e.seq);
                    in_flight.push(e.seq);
                }
            }
        }
        // Liveness: connected, acked until empty.
        if !connected {
            b.handle_connected(at(now), "nats://x");
        }
        for _ in 0..10_000 {
            for o in drain(&mut b) {
                if let Output::Publish(e) = o {
                    in_flight.retain(|s| *s != e.seq);
                    in_flight.push(e.seq);
                }
            }
            let Some(seq) = (!in_flight.is_empty()).then(|| in_flight.remove(0)) else {
                // Nothing on the wire: a retry delay may hold the queue.
                match b.poll_timeout() {
                    Some((due, _)) if b.status(at(now)).queued > 0 => {
                        now = now.max(due.as_nanos() / 1_000_000 + 1);
                        b.handle_timeout(at(now));
                        continue;
                    }
                    _ => break,
                }
            };
            if !stored.contains(&seq) {
                stored.push(seq);
            }
            b.handle_ack(at(now), seq);
        }
        let expected: Vec<u64> = (1..next).collect();
        prop_assert_eq!(stored, expected, "first arrivals in order, none missing");
        prop_assert_eq!(b.status(at(now)).queued, 0);
        prop_assert_eq!(b.status(at(now)).exported, next - 1);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_exactly(max in 1usize..20, n in 0u64..100) {
        let mut config = BridgeConfig::new("h1");
        config.max_queued = max;
        let mut b = Bridge::new(config);
        for i in 1..=n {
            b.offer(at(i), msg("alerts.low", true, i));
        }
        let released: BTreeSet<u64> = drain(&mut b)
            .into_iter()
            .filter_map(|o| match o { Output::Release(s) => Some(s), Output::Publish(_) => None })
            .collect();
        let dropped = n.saturating_sub(max as u64);
        let s = b.status(at(n));
        prop_assert_eq!(s.dropped, dropped);
        prop_assert_eq!(s.queued, n - dropped);
        prop_assert_eq!(released, (1..=dropped).collect::<BTreeSet<u64>>(), "the oldest went");
        // What is left flows in order once connected.
        b.handle_connected(at(n), "nats://x");
        let published: Vec<u64> = drain(&mut b)
            .into_iter()
            .filter_map(|o| match o { Output::Publish(e) => Some(e.seq), Output::Release(_) => None })
            .collect();
        prop_assert_eq!(published, (dropped + 1..=n).collect::<Vec<u64>>());
    }
}

#[test]
fn own_exports_are_not_imported_and_others_land_under_their_topic() {
    let mut b = Bridge::new(BridgeConfig::new("h1"));
    assert_eq!(
        b.import(
            "daemoneye.h1",
            "daemoneye.h1.control.collector.task.process",
            Some("h1")
        ),
        Err(Skip::OwnExport)
    );
    assert_eq!(
        b.import(
            "daemoneye.all",
            "daemoneye.all.control.collector.task.process",
            Some("central")
        )
        .map(|t| t.as_str().to_string()),
        Ok("control.collector.task.process".into())
    );
    assert_eq!(
        b.import("daemoneye.h1", "daemoneye.h1.alerts.high", None),
        Err(Skip::NoMatch),
        "only what an import filter names"
    );
}

#[test]
fn qos0_is_published_at_once_when_connected_and_counted_when_not() {
    let mut b = Bridge::new(BridgeConfig::new("h1"));
    assert_eq!(
        b.offer(at(1), msg("alerts.low", false, 1)),
        Offer::Skipped(Skip::Disconnected)
    );
    b.handle_connected(at(2), "nats://x");
    match b.offer(at(3), msg("alerts.low", false, 2)) {
        Offer::Publish(e) => {
            assert_eq!(e.subject, "daemoneye.h1.alerts.low");
            assert_eq!(e.msg_id, "", "a QoS0 export is never deduplicated");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.status(at(3)).dropped_qos0, 1);
}

#[test]
fn an_overdue_ack_resends_after_the_retry_delay_and_health_says_why() {
    let mut b = Bridge::new(BridgeConfig::new("h1"));
    b.handle_connected(at(0), "nats://x");
    b.offer(at(0), msg("alerts.high", true, 1));
    assert!(matches!(drain(&mut b)[..], [Output::Publish(_)]));
    let (due, _) = b.poll_timeout().expect("an ack deadline");
    b.handle_timeout(due);
    let s = b.status(due);
    assert_eq!(s.state, daemoneye_core::bridge::BridgeState::Degraded);
    assert!(s.last_error.is_some());
    assert!(drain(&mut b).is_empty(), "waits for the retry delay");
    let (retry, _) = b.poll_timeout().expect("a retry");
    assert_eq!(retry, due.saturating_add(Duration::from_secs(1)));
    b.handle_timeout(retry);
    assert!(matches!(drain(&mut b)[..], [Output::Publish(_)]));
    b.handle_ack(retry, 1);
    assert_eq!(
        b.status(retry).state,
        daemoneye_core::bridge::BridgeState::Connected
    );
}
