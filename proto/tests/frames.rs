//! Validated domain types: structurally invalid frames never reach the core.

use bytes::Bytes;
use daemoneye_proto::frame::{
    ClientFrame, GroupSpec, Hello, Overflow, ProtocolError, Publish, QoS, QueueStrategy, Role,
    ServerFrame, Subscribe, Target,
};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};

fn client(body: Body) -> Result<ClientFrame, ProtocolError> {
    ClientFrame::try_from(pb::Frame { body: Some(body) })
}

fn subscribe(f: impl FnOnce(&mut pb::Subscribe)) -> Result<ClientFrame, ProtocolError> {
    let mut s = pb::Subscribe {
        sub_id: 1,
        filter: "events.#".into(),
        ..Default::default()
    };
    f(&mut s);
    client(Body::Subscribe(s))
}

#[test]
fn broker_only_frames_from_a_client_are_rejected() {
    assert_eq!(
        client(Body::Deliver(pb::Deliver::default())),
        Err(ProtocolError::WrongDirection {
            kind: "Deliver",
            sender: "client"
        })
    );
    assert_eq!(
        client(Body::Welcome(pb::Welcome::default())),
        Err(ProtocolError::WrongDirection {
            kind: "Welcome",
            sender: "client"
        })
    );
}

#[test]
fn client_only_frames_from_a_broker_are_rejected() {
    let f = pb::Frame {
        body: Some(Body::Publish(pb::Publish::default())),
    };
    assert_eq!(
        ServerFrame::try_from(f),
        Err(ProtocolError::WrongDirection {
            kind: "Publish",
            sender: "broker"
        })
    );
}

#[test]
fn empty_or_whitespace_group_name_is_rejected() {
    assert_eq!(
        subscribe(|s| s.queue_group = "   ".into()),
        Err(ProtocolError::InvalidName {
            field: "queue_group",
            reason: "must not be only whitespace"
        })
    );
    assert_eq!(
        subscribe(|s| s.queue_group = "a\nb".into()),
        Err(ProtocolError::InvalidName {
            field: "queue_group",
            reason: "must not contain control characters"
        })
    );
    assert_eq!(
        subscribe(|s| s.queue_group = "g".repeat(257)),
        Err(ProtocolError::InvalidName {
            field: "queue_group",
            reason: "is longer than 256 bytes"
        })
    );
    // Empty means "no group".
    match subscribe(|s| s.queue_group = String::new()) {
        Ok(ClientFrame::Subscribe(s)) => assert_eq!(s.group, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_enum_values_are_rejected() {
    assert_eq!(
        subscribe(|s| s.qos = 2),
        Err(ProtocolError::UnknownEnum {
            field: "qos",
            value: 2
        })
    );
    assert_eq!(
        subscribe(|s| s.strategy = 9),
        Err(ProtocolError::UnknownEnum {
            field: "strategy",
            value: 9
        })
    );
    assert_eq!(
        subscribe(|s| s.overflow = -1),
        Err(ProtocolError::UnknownEnum {
            field: "overflow",
            value: -1
        })
    );
}

#[test]
fn zero_ids_are_rejected() {
    assert_eq!(
        subscribe(|s| s.sub_id = 0),
        Err(ProtocolError::ZeroId { field: "sub_id" })
    );
    assert_eq!(
        client(Body::Ack(pb::Ack { delivery_id: 0 })),
        Err(ProtocolError::ZeroId {
            field: "delivery_id"
        })
    );
    assert_eq!(
        client(Body::Unsubscribe(pb::Unsubscribe { sub_id: 0 })),
        Err(ProtocolError::ZeroId { field: "sub_id" })
    );
}

#[test]
fn durable_subscription_at_qos0_is_rejected() {
    assert_eq!(
        subscribe(|s| s.durable_name = "siem".into()),
        Err(ProtocolError::DurableNeedsQos1)
    );
}

#[test]
fn collector_hello_without_identity_is_rejected() {
    let hello = pb::Hello {
        protocol_version: 1,
        client_name: "procmond".into(),
        role: pb::Role::Collector as i32,
        ..Default::default()
    };
    assert_eq!(
        client(Body::Hello(hello)),
        Err(ProtocolError::CollectorIdentityMissing)
    );
}

#[test]
fn hello_without_client_name_is_rejected() {
    let hello = pb::Hello {
        protocol_version: 1,
        ..Default::default()
    };
    assert_eq!(
        client(Body::Hello(hello)),
        Err(ProtocolError::InvalidName {
            field: "client_name",
            reason: "must not be empty"
        })
    );
}

#[test]
fn priority_above_255_is_rejected() {
    let p = pb::Publish {
        topic: "a".into(),
        priority: 256,
        ..Default::default()
    };
    assert_eq!(
        client(Body::Publish(p)),
        Err(ProtocolError::PriorityTooHigh(256))
    );
}

#[test]
fn client_frames_round_trip_through_the_wire_types() {
    let frames = vec![
        ClientFrame::Hello(Hello {
            protocol_version: 1,
            client_name: "cli".into(),
            role: Role::Client,
            publisher_id: "cli-1".into(),
            collector: None,
        }),
        ClientFrame::Subscribe(Subscribe {
            sub_id: 3,
            filter: "events.process.+".into(),
            group: Some(GroupSpec {
                name: "workers".into(),
                strategy: QueueStrategy::LeastLoaded,
            }),
            qos: QoS::AtLeastOnce,
            capacity: Some(10),
            overflow: Some(Overflow::DropOldest),
            durable_name: Some("d".into()),
        }),
        ClientFrame::Publish(Publish {
            topic: "events.process.new".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            sequence: 4,
            correlation: None,
            reply_to: Some("reply.1".into()),
            priority: 9,
            target: Some(Target::Collector("procmond".into())),
            resent: false,
        }),
        ClientFrame::Ack { delivery_id: 5 },
        ClientFrame::Unsubscribe { sub_id: 3 },
        ClientFrame::Ping { nonce: 1 },
        ClientFrame::Goodbye {
            reason: "done".into(),
        },
    ];
    for f in frames {
        let wire: pb::Frame = f.clone().into();
        assert_eq!(ClientFrame::try_from(wire), Ok(f));
    }
}

#[test]
fn unknown_error_code_from_a_newer_broker_reads_as_unspecified() {
    let f = pb::Frame {
        body: Some(Body::Error(pb::Error {
            code: 999,
            message: "new".into(),
            answers: 1,
            answers_kind: 1,
        })),
    };
    match ServerFrame::try_from(f) {
        Ok(ServerFrame::Error(e)) => {
            assert_eq!(e.code, pb::ErrorCode::Unspecified);
            assert_eq!(e.message, "new");
        }
        other => panic!("{other:?}"),
    }
}
