//! Connections through the client machine and raw bytes over perfect links: the ACL, the handshake, framing errors, timeouts, limits and shutdown.

mod common;

use std::time::Duration;

use common::*;
use daemoneye_core::acl::{Acl, AclConfig, AclRule};
use daemoneye_core::broker::{BrokerConfig, CloseReason};
use daemoneye_core::client::ClientEvent;
use daemoneye_proto::frame::QoS;
use daemoneye_proto::pb::bus::{AnswerKind, ErrorCode};

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
    let mut w = World::with_seed(
        BrokerConfig {
            owner_uid: OWNER,
            ..Default::default()
        },
        acl,
        SEED,
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
