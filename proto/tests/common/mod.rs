//! Frame generators shared by the codec tests.
#![allow(dead_code)]

use bytes::Bytes;
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use proptest::prelude::*;

pub fn frame(body: Body) -> pb::Frame {
    pb::Frame { body: Some(body) }
}

pub fn publish(topic: &str, payload: &[u8]) -> pb::Frame {
    frame(Body::Publish(pb::Publish {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
        qos: 1,
        sequence: 7,
        ..Default::default()
    }))
}

pub fn encode_all(frames: &[pb::Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        daemoneye_proto::encode(f, daemoneye_proto::DEFAULT_MAX_FRAME, &mut out).expect("encode");
    }
    out
}

fn correlation() -> impl Strategy<Value = Option<pb::Correlation>> {
    proptest::option::of(
        (
            ".{0,12}",
            ".{0,12}",
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(cid, root, seq, tags)| pb::Correlation {
                correlation_id: cid,
                root_id: root,
                sequence: seq,
                tags: Bytes::from(tags),
                ..Default::default()
            }),
    )
}

/// Arbitrary frames of every kind, with arbitrary field values.
pub fn any_frame() -> impl Strategy<Value = pb::Frame> {
    let body = prop_oneof![
        (any::<u32>(), ".{0,20}", 0i32..4, ".{0,10}").prop_map(|(v, name, role, cid)| Body::Hello(
            pb::Hello {
                protocol_version: v,
                client_name: name,
                role,
                collector_id: cid,
                ..Default::default()
            }
        )),
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(s, m, h)| Body::Welcome(
            pb::Welcome {
                protocol_version: 1,
                session_id: s,
                max_frame: m,
                heartbeat_interval_ms: h,
                publisher_id: String::new(),
            }
        )),
        (
            any::<u64>(),
            "[a-z.+#]{0,30}",
            ".{0,8}",
            0i32..3,
            0i32..2,
            any::<u32>()
        )
            .prop_map(
                |(id, filter, group, strategy, qos, capacity)| Body::Subscribe(pb::Subscribe {
                    sub_id: id,
                    filter,
                    queue_group: group,
                    strategy,
                    qos,
                    capacity,
                    ..Default::default()
                })
            ),
        (
            "[a-z.]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..512),
            0i32..2,
            any::<u64>(),
            correlation(),
            any::<u8>()
        )
            .prop_map(|(topic, payload, qos, seq, corr, prio)| Body::Publish(
                pb::Publish {
                    topic,
                    payload: Bytes::from(payload),
                    qos,
                    sequence: seq,
                    correlation: corr.map(Box::new),
                    priority: u32::from(prio),
                    ..Default::default()
                }
            )),
        (
            any::<u64>(),
            any::<u64>(),
            "[a-z.]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..512),
            any::<bool>()
        )
            .prop_map(|(sub, did, topic, payload, redelivered)| Body::Deliver(
                pb::Deliver {
                    sub_id: sub,
                    delivery_id: did,
                    topic,
                    payload: Bytes::from(payload),
                    qos: 1,
                    redelivered,
                    ..Default::default()
                }
            )),
        any::<u64>().prop_map(|d| Body::Ack(pb::Ack { delivery_id: d })),
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(s, d, x, n)| {
            Body::PubAck(pb::PubAck {
                sequence: s,
                delivered: d,
                dropped: x,
                no_interest: n,
            })
        }),
        (0i32..19, ".{0,40}", any::<u64>()).prop_map(|(code, message, answers)| Body::Error(
            pb::Error {
                code,
                message,
                answers,
                answers_kind: 1,
            }
        )),
        any::<u64>().prop_map(|n| Body::Ping(pb::Ping { nonce: n })),
        any::<u64>().prop_map(|n| Body::Pong(pb::Pong { nonce: n })),
        ".{0,20}".prop_map(|r| Body::Goodbye(pb::Goodbye { reason: r })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, c, t)| Body::Dropped(
            pb::Dropped {
                sub_id: s,
                count: c,
                total: t,
            }
        )),
    ];
    body.prop_map(frame)
}
