//! The client session's reconnect rule: after a lost transport it asks to dial again after a
//! backoff that grows to its cap, jittered within bounds and the same for the same seed,
//! and it gives up for good when the owner closed it, when reconnecting is off, or when the
//! broker refused it in a way another connection would not change.

use std::time::Duration;

use bytes::BytesMut;
use daemoneye_core::Instant;
use daemoneye_core::client::{
    ClientConfig, ClientSession, Disconnect, GiveUp, Reconnect, ReconnectPolicy, Timer,
};
use daemoneye_proto::pb::bus::{self as pb, AnswerKind, ErrorCode, frame::Body};
use proptest::prelude::*;

fn at_ms(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

fn session(policy: Option<ReconnectPolicy>) -> ClientSession {
    let mut config = ClientConfig::new("c");
    config.reconnect = policy;
    ClientSession::new(config)
}

fn server_bytes(body: Body) -> Vec<u8> {
    let mut out = BytesMut::new();
    daemoneye_proto::encode(&pb::Frame { body: Some(body) }, 1 << 20, &mut out).expect("encode");
    out.to_vec()
}

fn welcome(s: &mut ClientSession, now: Instant) {
    s.handle_bytes(
        now,
        &server_bytes(Body::Welcome(pb::Welcome {
            protocol_version: daemoneye_proto::PROTOCOL_VERSION,
            session_id: 1,
            max_frame: 1 << 20,
            heartbeat_interval_ms: 1000,
            publisher_id: "c".into(),
        })),
    );
    assert!(s.is_connected());
}

fn refuse(s: &mut ClientSession, now: Instant, code: ErrorCode, kind: AnswerKind) {
    s.handle_bytes(
        now,
        &server_bytes(Body::Error(pb::Error {
            code: code as i32,
            message: "no".into(),
            answers: 1,
            answers_kind: kind as i32,
        })),
    );
}

/// The instant the session wants to dial at, checked against `poll_timeout`.
fn dial_at(s: &ClientSession) -> Instant {
    match s.reconnect() {
        Some(Reconnect::At(at)) => {
            assert_eq!(s.poll_timeout(), Some((*at, Timer::Reconnect)));
            *at
        }
        other => panic!("expected a dial, got {other:?}"),
    }
}

fn gave_up(s: &ClientSession) -> GiveUp {
    match s.reconnect() {
        Some(Reconnect::GiveUp(why)) => {
            assert_eq!(s.poll_timeout(), None, "no timer after giving up");
            why.clone()
        }
        other => panic!("expected to give up, got {other:?}"),
    }
}

/// The waits of a lost connection followed by `failures` failed dials, each dial at the
/// instant asked for.
fn waits(policy: &ReconnectPolicy, failures: usize) -> Vec<Duration> {
    let mut s = session(Some(policy.clone()));
    let mut now = at_ms(0);
    s.connect(now);
    welcome(&mut s, now);
    s.handle_disconnect(now, Disconnect::BrokerClosed);
    let mut out = Vec::new();
    for i in 0..=failures {
        let at = dial_at(&s);
        out.push(at.saturating_since(now));
        now = at;
        if i < failures {
            s.handle_dial_failed(now);
        }
    }
    out
}

fn policy() -> impl Strategy<Value = ReconnectPolicy> {
    (1u64..2_000, 0u64..120_000, 0.0f64..=1.0, any::<u64>()).prop_map(
        |(initial, extra, jitter, seed)| ReconnectPolicy {
            backoff_initial: Duration::from_millis(initial),
            backoff_max: Duration::from_millis(initial + extra),
            jitter,
            seed,
        },
    )
}

/// The wait before jitter: the initial one doubled per failure, capped.
fn cap(policy: &ReconnectPolicy, failures: u32) -> Duration {
    policy
        .backoff_initial
        .saturating_mul(2u32.saturating_pow(failures))
        .min(policy.backoff_max)
}

proptest! {
    #[test]
    fn every_wait_stays_within_its_jitter_band_below_the_maximum(p in policy(), n in 0usize..40) {
        for (i, w) in waits(&p, n).into_iter().enumerate() {
            let cap = cap(&p, i as u32);
            prop_assert!(w <= p.backoff_max, "wait {i} {w:?} above max");
            prop_assert!(w <= cap, "wait {i} {w:?} above its cap {cap:?}");
            // One nanosecond of slack for the float product.
            let floor = cap.mul_f64(1.0 - p.jitter).saturating_sub(Duration::from_nanos(1));
            prop_assert!(w >= floor, "wait {i} {w:?} below {floor:?}");
        }
    }

    #[test]
    fn without_jitter_each_wait_doubles_the_last_until_the_maximum(p in policy(), n in 1usize..40) {
        let p = ReconnectPolicy { jitter: 0.0, ..p };
        let w = waits(&p, n);
        prop_assert_eq!(w[0], p.backoff_initial);
        for pair in w.windows(2) {
            prop_assert!(pair[1] >= pair[0], "waits shrink: {:?}", w);
            prop_assert_eq!(pair[1], (pair[0] * 2).min(p.backoff_max));
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_waits(p in policy(), n in 0usize..30) {
        prop_assert_eq!(waits(&p, n), waits(&p, n));
    }

    #[test]
    fn a_successful_dial_starts_the_backoff_over(p in policy(), n in 0usize..20) {
        let p = ReconnectPolicy { jitter: 0.0, ..p };
        let mut s = session(Some(p.clone()));
        let mut now = at_ms(0);
        s.connect(now);
        s.handle_disconnect(now, Disconnect::BrokerClosed);
        for _ in 0..n {
            now = dial_at(&s);
            s.handle_dial_failed(now);
        }
        now = dial_at(&s);
        s.connect(now);
        prop_assert_eq!(s.reconnect(), None);
        s.handle_disconnect(now, Disconnect::BrokerClosed);
        prop_assert_eq!(dial_at(&s).saturating_since(now), p.backoff_initial);
    }

    #[test]
    fn after_the_owner_closes_nothing_is_dialed(p in policy(), failures in 0usize..5, early in any::<bool>()) {
        let mut s = session(Some(p));
        let mut now = at_ms(0);
        s.connect(now);
        welcome(&mut s, now);
        if early {
            s.close("done");
        }
        s.handle_disconnect(now, Disconnect::BrokerClosed);
        for _ in 0..failures {
            if early {
                break;
            }
            now = dial_at(&s);
            s.handle_dial_failed(now);
        }
        s.close("done");
        prop_assert_eq!(gave_up(&s), GiveUp::Closed);
        prop_assert!(s.closed_by_owner());
        s.handle_dial_failed(now);
        prop_assert_eq!(gave_up(&s), GiveUp::Closed);
    }
}

#[test]
fn the_backoff_starts_when_the_driver_drops_the_transport_not_when_the_session_gives_up() {
    let mut s = session(Some(ReconnectPolicy::default()));
    s.connect(at_ms(0));
    welcome(&mut s, at_ms(0));
    // Three silent heartbeat intervals: this side is done, the driver still holds the socket.
    s.handle_timeout(at_ms(3_000));
    assert!(s.is_closed());
    assert_eq!(s.last_disconnect(), Some(&Disconnect::BrokerSilent));
    assert_eq!(s.reconnect(), None);
    assert_eq!(s.poll_timeout(), None);
    s.handle_disconnect(at_ms(3_500), Disconnect::BrokerClosed);
    assert_eq!(dial_at(&s), at_ms(3_600));
    // The session's own reason is kept.
    assert_eq!(s.last_disconnect(), Some(&Disconnect::BrokerSilent));
}

#[test]
fn a_refusal_that_another_connection_would_not_change_ends_the_session() {
    for code in [
        ErrorCode::VersionMismatch,
        ErrorCode::PermissionDenied,
        ErrorCode::Protocol,
    ] {
        let mut s = session(Some(ReconnectPolicy::default()));
        s.connect(at_ms(0));
        welcome(&mut s, at_ms(0));
        refuse(&mut s, at_ms(1), code, AnswerKind::Connection);
        s.handle_disconnect(at_ms(2), Disconnect::BrokerClosed);
        match gave_up(&s) {
            GiveUp::Refused(e) => assert_eq!(e.code, code),
            other => panic!("{code:?}: {other:?}"),
        }
    }
}

#[test]
fn any_refusal_of_the_first_handshake_is_the_answer_not_a_reason_to_retry() {
    let mut s = session(Some(ReconnectPolicy::default()));
    s.connect(at_ms(0));
    refuse(
        &mut s,
        at_ms(1),
        ErrorCode::TooManyConnections,
        AnswerKind::Connection,
    );
    s.handle_disconnect(at_ms(2), Disconnect::BrokerClosed);
    assert!(matches!(gave_up(&s), GiveUp::Refused(e) if e.code == ErrorCode::TooManyConnections));
}

#[test]
fn a_broker_that_shed_a_welcomed_client_is_dialed_again() {
    for code in [
        ErrorCode::ShuttingDown,
        ErrorCode::IdleTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::MemoryLimit,
        ErrorCode::HandshakeTimeout,
        ErrorCode::TooManyConnections,
    ] {
        let mut s = session(Some(ReconnectPolicy::default()));
        s.connect(at_ms(0));
        welcome(&mut s, at_ms(0));
        refuse(&mut s, at_ms(1), code, AnswerKind::Connection);
        s.handle_disconnect(at_ms(2), Disconnect::BrokerClosed);
        assert_eq!(dial_at(&s), at_ms(102), "{code:?}");
    }
}

#[test]
fn a_refused_publish_or_subscription_does_not_end_the_session() {
    let mut s = session(Some(ReconnectPolicy::default()));
    s.connect(at_ms(0));
    welcome(&mut s, at_ms(0));
    refuse(
        &mut s,
        at_ms(1),
        ErrorCode::PermissionDenied,
        AnswerKind::Publish,
    );
    refuse(
        &mut s,
        at_ms(1),
        ErrorCode::InvalidFilter,
        AnswerKind::Subscription,
    );
    s.handle_disconnect(at_ms(2), Disconnect::BrokerClosed);
    assert_eq!(dial_at(&s), at_ms(102));
}

#[test]
fn without_a_policy_the_first_loss_is_the_end() {
    let mut s = session(None);
    s.connect(at_ms(0));
    welcome(&mut s, at_ms(0));
    s.handle_disconnect(at_ms(5), "gone");
    assert_eq!(gave_up(&s), GiveUp::Disabled);
    assert_eq!(s.last_disconnect(), Some(&Disconnect::from("gone")));
}

#[test]
fn a_dial_failure_the_session_did_not_ask_for_changes_nothing() {
    let mut s = session(Some(ReconnectPolicy::default()));
    s.handle_dial_failed(at_ms(0));
    assert_eq!(s.reconnect(), None);
    s.connect(at_ms(0));
    s.handle_dial_failed(at_ms(1));
    assert_eq!(s.reconnect(), None, "a transport is up");
}
