//! Hand-written encoding of the broker's hot frames.
//!
//! A Deliver shares its topic, payload, publisher id and correlation with every other copy of
//! the message; building an owned prost struct per subscriber would copy the strings each
//! time. These functions write the same bytes prost would (a test checks byte equality)
//! straight from borrowed fields.

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::queue::Entry;

const FRAME_DELIVER_TAG: u32 = 7;

fn len_delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(tag: u32, v: u64, out: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn put_bytes(tag: u32, v: &[u8], out: &mut impl BufMut) {
    if !v.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(v.len() as u64, out);
        out.put_slice(v);
    }
}

fn bytes_len(tag: u32, v: &[u8]) -> usize {
    if v.is_empty() {
        0
    } else {
        len_delimited_len(tag, v.len())
    }
}

/// Appends one `Frame { deliver }` (header included) for `entry`.
pub(crate) fn encode_deliver(
    sub_id: u64,
    delivery_id: u64,
    qos1: bool,
    entry: &Entry,
    out: &mut impl BufMut,
) -> usize {
    let m = &*entry.msg;
    let corr_len = m
        .correlation
        .as_ref()
        .map(|c| prost::encoding::message::encoded_len(8, c));
    let body = varint_len(1, sub_id)
        + varint_len(2, delivery_id)
        + bytes_len(3, m.topic.as_str().as_bytes())
        + bytes_len(4, &m.payload)
        + varint_len(5, u64::from(qos1))
        + bytes_len(6, m.publisher_id.as_bytes())
        + varint_len(7, m.sequence)
        + corr_len.unwrap_or(0)
        + bytes_len(9, m.reply_to.as_deref().unwrap_or("").as_bytes())
        + varint_len(10, u64::from(m.priority))
        + varint_len(11, u64::from(entry.redelivered || m.resent))
        + varint_len(12, u64::from(m.publisher_pid))
        + varint_len(13, u64::from(m.publisher_uid));
    let frame_len = len_delimited_len(FRAME_DELIVER_TAG, body);
    // Callers only deliver messages that arrived in frames within max_frame, and a Deliver
    // adds a few dozen bytes, so the length always fits a u32.
    out.put_u32(frame_len as u32);
    encode_key(FRAME_DELIVER_TAG, WireType::LengthDelimited, out);
    encode_varint(body as u64, out);
    put_varint(1, sub_id, out);
    put_varint(2, delivery_id, out);
    put_bytes(3, m.topic.as_str().as_bytes(), out);
    put_bytes(4, &m.payload, out);
    put_varint(5, u64::from(qos1), out);
    put_bytes(6, m.publisher_id.as_bytes(), out);
    put_varint(7, m.sequence, out);
    if let Some(c) = &m.correlation {
        prost::encoding::message::encode(8, c, out);
    }
    put_bytes(9, m.reply_to.as_deref().unwrap_or("").as_bytes(), out);
    put_varint(10, u64::from(m.priority), out);
    put_varint(11, u64::from(entry.redelivered || m.resent), out);
    put_varint(12, u64::from(m.publisher_pid), out);
    put_varint(13, u64::from(m.publisher_uid), out);
    4 + frame_len
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use daemoneye_proto::frame::QoS;
    use daemoneye_proto::pb::bus as pb;
    use prost::Message as _;

    use super::*;
    use crate::Instant;
    use crate::broker::Message;
    use crate::topic::TopicName;

    fn entry(
        correlation: Option<pb::Correlation>,
        reply_to: Option<&str>,
        priority: u8,
        redelivered: bool,
    ) -> Entry {
        Entry {
            msg: Arc::new(Message {
                id: 1,
                topic: TopicName::parse("events.process.new").expect("topic"),
                payload: Bytes::from_static(b"payload bytes"),
                publisher_id: Arc::from("procmond"),
                publisher_pid: 4242,
                publisher_uid: 1000,
                sequence: 77,
                correlation: correlation.map(Box::new),
                reply_to: reply_to.map(str::to_string),
                priority,
                qos: QoS::AtLeastOnce,
                resent: false,
                published_at: Instant::ZERO,
                size: 0,
            }),
            redelivered,
            tracked: false,
        }
    }

    #[test]
    fn hand_encoded_deliver_is_byte_identical_to_prost() {
        let corr = pb::Correlation {
            correlation_id: "c".into(),
            root_id: "r".into(),
            sequence: 3,
            ..Default::default()
        };
        for (e, sub, did, qos1) in [
            (entry(None, None, 0, false), 1, 0, false),
            (
                entry(Some(corr.clone()), Some("reply.x"), 7, true),
                9,
                12345,
                true,
            ),
            (
                entry(Some(pb::Correlation::default()), None, 255, false),
                u64::MAX,
                u64::MAX,
                true,
            ),
        ] {
            let mut hand = Vec::new();
            let n = encode_deliver(sub, did, qos1, &e, &mut hand);
            let m = &*e.msg;
            let frame = pb::Frame {
                body: Some(pb::frame::Body::Deliver(pb::Deliver {
                    sub_id: sub,
                    delivery_id: did,
                    topic: m.topic.as_str().into(),
                    payload: m.payload.clone(),
                    qos: i32::from(qos1),
                    publisher_id: m.publisher_id.to_string(),
                    sequence: m.sequence,
                    correlation: m.correlation.clone(),
                    reply_to: m.reply_to.clone().unwrap_or_default(),
                    priority: u32::from(m.priority),
                    redelivered: e.redelivered,
                    publisher_pid: m.publisher_pid,
                    publisher_uid: m.publisher_uid,
                })),
            };
            let mut reference = Vec::new();
            daemoneye_proto::encode(&frame, u32::MAX, &mut reference).expect("encode");
            assert_eq!(hand, reference);
            assert_eq!(n, hand.len());
            assert_eq!(pb::Frame::decode(&hand[4..]).expect("decodes"), frame);
        }
    }
}
