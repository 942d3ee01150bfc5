//! Publish and subscribe through the client machine over perfect links: matching, order, priority, reserved topics, requests, direct delivery and per-subscription errors.

mod common;

use std::time::Duration;

use common::*;
use daemoneye_core::broker::BrokerConfig;
use daemoneye_proto::frame::{QoS, QueueStrategy, Target};
use daemoneye_proto::pb::bus::ErrorCode;

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
fn a_nats_wildcard_filter_is_refused_with_a_hint_and_the_connection_stays() {
    let mut w = World::new();
    let c = w.connect("c");
    w.sub(c, "events.*");
    w.sub(c, "events.>");
    let errs = w.errors(c);
    assert_eq!(errs.len(), 2);
    assert!(errs.iter().all(|e| e.code == ErrorCode::InvalidFilter));
    assert!(errs[0].message.contains("use '+'"), "{}", errs[0].message);
    assert!(errs[1].message.contains("use '#'"), "{}", errs[1].message);
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
