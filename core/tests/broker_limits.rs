//! Broker limits and endings through the client machine over perfect links: clean close,
//! frame size both ways, truncation and slow frames at the frame level, reserved slots.

mod common;

use std::time::Duration;

use common::*;
use daemoneye_core::broker::{BrokerConfig, CloseReason};
use daemoneye_core::client::ClientEvent;
use daemoneye_proto::frame::{Overflow, QoS};
use daemoneye_proto::pb::bus::{AnswerKind, ErrorCode};

use daemoneye_core::client::ClientConfig;
use daemoneye_proto::frame::{ClientFrame, Publish, Role, Subscribe};
use daemoneye_proto::pb::bus::frame::Body;

/// A subscriber whose reader has stopped (deliveries pile up beyond a tiny write window),
/// with a Block queue of 4, and a publisher.
fn stalled_subscriber_world() -> (
    World,
    daemoneye_core::broker::ConnId,
    daemoneye_core::broker::ConnId,
) {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        write_window: 256,
        ..Default::default()
    });
    let s = w.connect("s");
    w.subscribe(
        s,
        with(
            sub_spec("t"),
            QoS::AtMostOnce,
            Some(4),
            Some(Overflow::Block),
        ),
    );
    w.stalled_readers.insert(s);
    let p = w.connect("p");
    (w, s, p)
}

#[test]
fn a_stalled_publisher_that_says_goodbye_has_every_message_delivered() {
    let (mut w, s, p) = stalled_subscriber_world();
    for i in 0..100 {
        w.client(p)
            .publish(publish_spec("t", &format!("m{i}"), QoS::AtMostOnce))
            .expect("publish");
    }
    w.run();
    w.client(p).close("done");
    w.run();
    assert!(
        !w.closed.contains_key(&p),
        "the Goodbye is answered only once what the broker holds is routed"
    );
    w.release(s);
    let mut got = w.payloads(s);
    for _ in 0..100 {
        if got.len() >= 100 {
            break;
        }
        w.stalled_readers.insert(s);
        w.release(s);
        got.extend(w.payloads(s));
    }
    assert_eq!(got, (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(w.closed.get(&p), Some(&CloseReason::Goodbye));
    assert!(
        w.events_of(p)
            .iter()
            .any(|e| matches!(e, ClientEvent::Closed { reason } if reason.contains("broker said goodbye"))),
        "the publisher saw the broker's answer and the close"
    );
    let t = w.broker.totals();
    assert_eq!((t.published, t.dropped, t.lost_on_disconnect), (100, 0, 0));
}

#[test]
fn publishes_held_for_a_publisher_that_vanishes_are_counted_lost() {
    let (mut w, s, p) = stalled_subscriber_world();
    for i in 0..50 {
        w.client(p)
            .publish(publish_spec("t", &format!("m{i}"), QoS::AtMostOnce))
            .expect("publish");
    }
    w.run();
    let published = w.broker.totals().published;
    assert!(published < 50, "some publishes wait behind the full queue");
    w.disconnect(p);
    assert_eq!(w.broker.totals().lost_on_disconnect, 50 - published);
    let report = w.broker.stats_report(w.now);
    assert_eq!(
        report.totals.expect("totals").lost_on_disconnect,
        50 - published,
        "surfaced in the stats report"
    );
    let _ = s;
}

fn max_frame_world(
    max_frame: u32,
) -> (
    World,
    daemoneye_core::broker::ConnId,
    daemoneye_core::broker::ConnId,
) {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        max_frame,
        ..Default::default()
    });
    // The subscriber's decoder refuses anything above max_frame: a larger Deliver would
    // disconnect it.
    let mut config = ClientConfig::new("s");
    config.max_frame = max_frame;
    let s = w.connect_with(config, OWNER);
    w.subscribe(s, with(sub_spec("t.#"), QoS::AtLeastOnce, None, None));
    let mut config = ClientConfig::new("p");
    config.max_frame = max_frame;
    let p = w.connect_with(config, OWNER);
    (w, s, p)
}

fn largest_named(msg: &str) -> usize {
    let at = msg
        .find("the largest payload accepted for it is ")
        .expect(msg)
        + 39;
    msg[at..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect(msg)
}

#[test]
fn a_publish_whose_delivery_would_exceed_max_frame_is_refused_naming_the_largest_payload() {
    for max_frame in [1000u32, 70_000] {
        let (mut w, s, p) = max_frame_world(max_frame);
        // A publish within max_frame whose Deliver would not be.
        let payload = vec![b'x'; max_frame as usize - 40];
        let seq = w
            .client(p)
            .publish(Publish::new("t.big", payload.into(), QoS::AtLeastOnce))
            .expect("publish");
        w.run();
        let errors = w.errors(p);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].code, ErrorCode::FrameTooLarge);
        assert_eq!(
            (errors[0].answers, errors[0].answers_kind),
            (seq, AnswerKind::Publish)
        );
        let largest = largest_named(&errors[0].message);
        assert!(w.client(p).is_connected() && w.client(s).is_connected());
        assert!(w.take_messages(s).is_empty());
        // One byte more than named: refused; exactly as named: delivered, within max_frame.
        w.events_of(p);
        w.client(p)
            .publish(Publish::new(
                "t.big",
                vec![b'y'; largest + 1].into(),
                QoS::AtLeastOnce,
            ))
            .expect("publish");
        w.run();
        assert_eq!(w.errors(p).len(), 1, "largest + 1 is refused");
        w.events_of(p);
        w.client(p)
            .publish(Publish::new(
                "t.big",
                vec![b'z'; largest].into(),
                QoS::AtLeastOnce,
            ))
            .expect("publish");
        w.run();
        assert!(w.errors(p).is_empty());
        let msgs = w.take_messages(s);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].payload.len(), largest);
        w.ack_all(s, &msgs);
        assert!(
            w.client(s).is_connected(),
            "the subscriber was never cut off"
        );
        assert_eq!(w.broker.totals().too_large, 2);
    }
}

#[test]
fn with_the_default_max_frame_a_near_limit_publish_cannot_cut_off_subscribers() {
    // The reported case: a 1,048,550-byte payload fits a Publish frame but not a Deliver.
    let (mut w, s, p) = max_frame_world(daemoneye_proto::DEFAULT_MAX_FRAME);
    w.client(p)
        .publish(Publish::new(
            "t.big",
            vec![0u8; 1_048_550].into(),
            QoS::AtMostOnce,
        ))
        .expect("publish");
    w.run();
    let errors = w.errors(p);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, ErrorCode::FrameTooLarge);
    assert!(w.client(s).is_connected() && w.client(p).is_connected());
    w.publish(p, "t.small", "after", QoS::AtMostOnce);
    assert_eq!(w.payloads(s), vec!["after"]);
}

/// Hello, Subscribe (QoS1), three Publishes to it, Unsubscribe, Ping: the reported stream.
fn unsubscribe_stream() -> Vec<u8> {
    let mut bytes = hello_bytes("raw", Role::Client);
    bytes.extend(frame_bytes(ClientFrame::Subscribe(Subscribe {
        sub_id: 1,
        qos: QoS::AtLeastOnce,
        ..Subscribe::new("t")
    })));
    for i in 1..=3u64 {
        bytes.extend(frame_bytes(ClientFrame::Publish(Publish {
            sequence: i,
            ..Publish::new("t", format!("m{i}").into_bytes().into(), QoS::AtLeastOnce)
        })));
    }
    bytes.extend(frame_bytes(ClientFrame::Unsubscribe { sub_id: 1 }));
    bytes.extend(frame_bytes(ClientFrame::Ping { nonce: 9 }));
    bytes
}

#[test]
fn unsubscribe_takes_effect_after_what_was_queued_and_the_split_does_not_matter() {
    let stream = unsubscribe_stream();
    let mut outputs = Vec::new();
    for chunk in [stream.len(), 1, 7] {
        let mut w = World::new();
        let c = w.connect_raw(OWNER);
        for piece in stream.chunks(chunk) {
            w.raw_send(c, piece);
        }
        let out = w.raw_out.remove(&c).unwrap_or_default();
        let delivers: Vec<_> = server_frames(&out)
            .into_iter()
            .filter_map(|f| match f.body {
                Some(Body::Deliver(d)) => Some(String::from_utf8_lossy(&d.payload).into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(delivers, ["m1", "m2", "m3"], "split in chunks of {chunk}");
        // Handed out and never acked before the Unsubscribe: resolved as dropped, and
        // counted so on the topic too.
        assert_eq!(w.broker.totals().dropped, 3);
        let report = w.broker.stats_report(w.now);
        let topic = report
            .topics
            .iter()
            .find(|t| t.topic == "t")
            .expect("topic");
        assert_eq!(topic.counters.as_ref().map(|c| c.dropped), Some(3));
        outputs.push(out);
    }
    assert!(
        outputs.windows(2).all(|p| p[0] == p[1]),
        "the same bytes whatever the split"
    );
}

#[test]
fn a_frame_cut_short_at_end_of_stream_is_counted_and_answered() {
    let sub = frame_bytes(ClientFrame::Subscribe(Subscribe {
        sub_id: 1,
        ..Subscribe::new("t")
    }));
    for (cut, what) in [(2, "header"), (sub.len() - 1, "body")] {
        let mut w = World::new();
        let c = w.connect_raw(OWNER);
        w.raw_send(c, &hello_bytes("raw", Role::Client));
        w.raw_send(c, &sub[..cut]);
        w.raw_eof(c);
        assert!(
            matches!(w.closed.get(&c), Some(CloseReason::Protocol(m)) if m.contains("ended inside a frame")),
            "{what}: {:?}",
            w.closed.get(&c)
        );
        let frames = server_frames(&w.raw_out.remove(&c).unwrap_or_default());
        let last = frames.last().and_then(|f| f.body.clone());
        assert!(
            matches!(&last, Some(Body::Error(e)) if e.message.contains(what)),
            "{what}: answered with an Error: {last:?}"
        );
        assert_eq!(w.broker.totals().truncated, 1);
        assert_eq!(w.broker.connection_count(), 0);
    }
    // On a frame boundary: a clean end, nothing counted, nothing sent.
    let mut w = World::new();
    let c = w.connect_raw(OWNER);
    w.raw_send(c, &hello_bytes("raw", Role::Client));
    let before = w.raw_out.get(&c).map_or(0, Vec::len);
    w.raw_eof(c);
    assert_eq!(w.raw_out.get(&c).map_or(0, Vec::len), before);
    assert_eq!(w.broker.totals().truncated, 0);
    assert_eq!(w.broker.connection_count(), 0);
}

#[test]
fn a_frame_dribbled_slower_than_the_frame_timeout_closes_the_connection() {
    let mut w = World::new();
    let c = w.connect_raw(OWNER);
    w.raw_send(c, &hello_bytes("raw", Role::Client));
    let publish = frame_bytes(ClientFrame::Publish(Publish::new(
        "t",
        vec![1u8; 200].into(),
        QoS::AtMostOnce,
    )));
    let mut sent = 0;
    while !w.closed.contains_key(&c) && sent < publish.len() {
        w.raw_send(c, &publish[sent..=sent]);
        sent += 1;
        w.advance(Duration::from_millis(300));
    }
    assert!(
        matches!(w.closed.get(&c), Some(CloseReason::Protocol(m)) if m.contains("frame timeout")),
        "{:?}",
        w.closed.get(&c)
    );
    // Closed at 10 s from the frame's first byte, though bytes kept coming.
    assert_eq!(sent, 34);
    assert_eq!(w.broker.totals().frame_timeouts, 1);
}

#[test]
fn a_large_frame_arriving_steadily_within_the_timeout_is_accepted() {
    let mut w = World::new();
    let s = w.connect("s");
    w.sub(s, "t");
    let c = w.connect_raw(OWNER);
    w.raw_send(c, &hello_bytes("raw", Role::Client));
    let big = frame_bytes(ClientFrame::Publish(Publish::new(
        "t",
        vec![1u8; 1_000_000].into(),
        QoS::AtMostOnce,
    )));
    // 64 KiB every 600 ms: the whole frame takes 9.6 s, within the 10 s of the timeout,
    // and its bytes keep the connection from looking idle.
    for piece in big.chunks(64 * 1024) {
        w.advance(Duration::from_millis(600));
        w.raw_send(c, piece);
    }
    assert!(!w.closed.contains_key(&c), "{:?}", w.closed.get(&c));
    let msgs = w.take_messages(s);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].payload.len(), 1_000_000);
    // The next frame gets its own 10 s.
    let small = frame_bytes(ClientFrame::Ping { nonce: 1 });
    w.raw_send(c, &small[..2]);
    w.advance(Duration::from_secs(9));
    w.raw_send(c, &small[2..]);
    assert!(!w.closed.contains_key(&c));
    assert_eq!(w.broker.totals().frame_timeouts, 0);
}

fn agent_client(w: &mut World, name: &str) -> daemoneye_core::broker::ConnId {
    let mut config = ClientConfig::new(name);
    config.role = Role::Agent;
    w.connect_with(config, OWNER)
}

#[test]
fn agent_clients_take_the_reserved_slots_then_ordinary_ones() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        max_connections: 3,
        reserved_agent_slots: 8,
        ..Default::default()
    });
    let a = w.connect("a");
    let b = w.connect("b");
    // One ordinary slot free, eight reserved: ten agent clients, nine get in.
    let agents: Vec<_> = (0..10)
        .map(|i| agent_client(&mut w, &format!("agent{i}")))
        .collect();
    let accepted: Vec<_> = agents
        .iter()
        .filter(|c| w.clients[c].is_connected())
        .copied()
        .collect();
    assert_eq!(accepted.len(), 9, "8 reserved + the 1 free ordinary slot");
    assert!(matches!(
        w.closed.get(&agents[9]),
        Some(CloseReason::Refused(m)) if m.contains("connection limit of 3")
    ));
    let c = w.connect("c");
    assert!(
        matches!(w.closed.get(&c), Some(CloseReason::Refused(_))),
        "the ninth agent client took the last ordinary slot"
    );
    // A reserved agent client leaves: the one in the ordinary slot moves to the reserve
    // and the ordinary slot is free again.
    w.disconnect(agents[0]);
    let d = w.connect("d");
    assert!(w.client(d).is_connected());
    assert!(w.client(a).is_connected() && w.client(b).is_connected());
    let e = w.connect("e");
    assert!(matches!(w.closed.get(&e), Some(CloseReason::Refused(_))));
}

#[test]
fn ordinary_clients_keep_every_slot_with_the_agents_clients_connected() {
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        max_connections: 4,
        reserved_agent_slots: 8,
        ..Default::default()
    });
    for i in 0..7 {
        let a = agent_client(&mut w, &format!("agent{i}"));
        assert!(w.client(a).is_connected());
    }
    for i in 0..4 {
        let c = w.connect(&format!("c{i}"));
        assert!(w.client(c).is_connected(), "client {i}");
    }
    // The owner's uid finds a reserved slot at connect, but a client that is not the
    // agent must find an ordinary one at Hello.
    let extra = w.connect("extra");
    assert!(matches!(
        w.closed.get(&extra),
        Some(CloseReason::Refused(m)) if m.contains("connection limit of 4")
    ));
    let a = agent_client(&mut w, "agent7");
    assert!(w.client(a).is_connected(), "the eighth reserved slot");
    let a = agent_client(&mut w, "agent8");
    assert!(matches!(w.closed.get(&a), Some(CloseReason::Refused(_))));
}

#[test]
fn a_publisher_stalled_on_its_own_subscription_can_still_close_cleanly() {
    // Its Goodbye ends its own subscriptions (it will ack nothing more), so what it holds
    // behind its own full queue is routed to the others, then the Goodbye is answered.
    let mut w = World::with_config(BrokerConfig {
        owner_uid: OWNER,
        write_window: 64,
        ..Default::default()
    });
    let other = w.connect("other");
    w.sub(other, "t");
    let c = w.connect("self");
    w.subscribe(
        c,
        with(
            sub_spec("t"),
            QoS::AtMostOnce,
            Some(2),
            Some(Overflow::Block),
        ),
    );
    // It does not read what it is sent.
    w.stalled_readers.insert(c);
    for i in 0..6 {
        w.client(c)
            .publish(publish_spec("t", &i.to_string(), QoS::AtMostOnce))
            .expect("publish");
    }
    w.run();
    assert!(w.broker.totals().published < 6, "stalled on its own queue");
    w.client(c).close("done");
    w.run();
    assert_eq!(w.closed.get(&c), Some(&CloseReason::Goodbye));
    assert_eq!(w.payloads(other), ["0", "1", "2", "3", "4", "5"]);
    assert_eq!(w.broker.totals().lost_on_disconnect, 0);
}
