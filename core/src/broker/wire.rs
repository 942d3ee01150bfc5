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

/// What a Deliver carries from its publish.
pub(crate) struct DeliverShape<'a> {
    pub topic: &'a str,
    pub payload_len: usize,
    pub publisher_id: &'a str,
    pub sequence: u64,
    pub correlation: Option<&'a daemoneye_proto::pb::bus::Correlation>,
    pub reply_to: Option<&'a str>,
    pub priority: u8,
}

/// The body length of a Deliver message (without the Frame wrapper).
#[allow(clippy::too_many_arguments)]
fn deliver_body_len(
    shape: &DeliverShape<'_>,
    sub_id: u64,
    delivery_id: u64,
    qos1: bool,
    redelivered: bool,
    pid: u32,
    uid: u32,
) -> usize {
    let corr_len = shape
        .correlation
        .map_or(0, |c| prost::encoding::message::encoded_len(8, c));
    let payload_len = if shape.payload_len == 0 {
        0
    } else {
        len_delimited_len(4, shape.payload_len)
    };
    varint_len(1, sub_id)
        + varint_len(2, delivery_id)
        + bytes_len(3, shape.topic.as_bytes())
        + payload_len
        + varint_len(5, u64::from(qos1))
        + bytes_len(6, shape.publisher_id.as_bytes())
        + varint_len(7, shape.sequence)
        + corr_len
        + bytes_len(9, shape.reply_to.unwrap_or("").as_bytes())
        + varint_len(10, u64::from(shape.priority))
        + varint_len(11, u64::from(redelivered))
        + varint_len(12, u64::from(pid))
        + varint_len(13, u64::from(uid))
}

/// The largest frame length (the `N` of the header, checked against `max_frame`) any
/// Deliver of this message can have: every per-copy field at its largest (subscription id
/// and delivery id `u64::MAX`, QoS1, redelivered, publisher pid and uid `u32::MAX`).
///
/// The bound, for `max_frame` below 2 MiB (body length varints of 3 bytes at most): a
/// payload of P bytes is delivered in a frame of at most P + 62 + (T + 1) + (I + 1) bytes,
/// T and I being the topic's and the publisher id's lengths (each `+ 1` is its length
/// varint, one byte below 128), plus the encoded correlation and reply-to if any. The 62:
/// Frame key 1, body length 3, sub_id 11, delivery_id 11, topic key 1, payload key and
/// length 4, qos 2, publisher id key 1, sequence 11, priority 3, redelivered 2, pid 6,
/// uid 6. So with the default 1 MiB, a publish with a 20-byte topic and an 8-byte publisher
/// id always fits with a payload up to 1,048,576 - 62 - 21 - 9 = 1,048,484 bytes; the
/// exact limit of a given publish (its own sequence and priority) is named in the Error.
pub(crate) fn max_deliver_frame_len(shape: &DeliverShape<'_>) -> usize {
    let body = deliver_body_len(shape, u64::MAX, u64::MAX, true, true, u32::MAX, u32::MAX);
    len_delimited_len(FRAME_DELIVER_TAG, body)
}

/// The largest payload a message of this shape may carry for every Deliver of it to fit in
/// `max_frame`, or `None` if not even an empty payload fits.
pub(crate) fn largest_payload(shape: &DeliverShape<'_>, max_frame: u32) -> Option<usize> {
    let max = max_frame as usize;
    let with = |n: usize| {
        max_deliver_frame_len(&DeliverShape {
            payload_len: n,
            ..*shape
        })
    };
    let empty = with(0);
    if empty > max {
        return None;
    }
    // Shrinking the payload by the excess always fits (length varints only shrink); then
    // step up while a byte more still fits (a shorter varint may have freed a byte or two).
    let mut n = max.saturating_sub(with(max).saturating_sub(max));
    while n > 0 && with(n) > max {
        n -= 1;
    }
    while with(n + 1) <= max {
        n += 1;
    }
    Some(n)
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
    let shape = DeliverShape {
        topic: m.topic.as_str(),
        payload_len: m.payload.len(),
        publisher_id: &m.publisher_id,
        sequence: m.sequence,
        correlation: m.correlation.as_deref(),
        reply_to: m.reply_to.as_deref(),
        priority: m.priority,
    };
    let body = deliver_body_len(
        &shape,
        sub_id,
        delivery_id,
        qos1,
        entry.redelivered || m.resent,
        m.publisher_pid,
        m.publisher_uid,
    );
    let frame_len = len_delimited_len(FRAME_DELIVER_TAG, body);
    // The broker routes only messages whose largest Deliver fits max_frame (a u32).
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
                copies: Default::default(),
            }),
            redelivered,
            tracked: false,
        }
    }

    #[test]
    fn the_largest_deliver_is_the_bound_and_the_largest_payload_just_fits() {
        let corr = pb::Correlation {
            correlation_id: "c".into(),
            ..Default::default()
        };
        for (payload_len, correlation, reply_to) in [
            (0, None, None),
            (13, Some(corr.clone()), Some("reply.x")),
            (70_000, None, Some("r")),
        ] {
            let mut e = entry(correlation.clone(), reply_to, 9, true);
            let msg = Arc::get_mut(&mut e.msg).expect("unique");
            msg.payload = Bytes::from(vec![7u8; payload_len]);
            msg.publisher_pid = u32::MAX;
            msg.publisher_uid = u32::MAX;
            let mut out = Vec::new();
            let n = encode_deliver(u64::MAX, u64::MAX, true, &e, &mut out);
            let m = &*e.msg;
            let shape = DeliverShape {
                topic: m.topic.as_str(),
                payload_len,
                publisher_id: &m.publisher_id,
                sequence: m.sequence,
                correlation: m.correlation.as_deref(),
                reply_to: m.reply_to.as_deref(),
                priority: m.priority,
            };
            assert_eq!(max_deliver_frame_len(&shape), n - 4);
            for max in [200u32, 16_384, 1 << 20] {
                let Some(largest) = largest_payload(&shape, max) else {
                    continue;
                };
                let at = |len| {
                    max_deliver_frame_len(&DeliverShape {
                        payload_len: len,
                        ..shape
                    })
                };
                assert!(at(largest) <= max as usize, "{largest} fits {max}");
                assert!(
                    at(largest + 1) > max as usize,
                    "{} does not fit {max}",
                    largest + 1
                );
            }
        }
    }

    #[test]
    fn the_documented_bound_holds_at_the_default_max_frame() {
        let shape = DeliverShape {
            topic: "events.process.new.x",
            payload_len: 0,
            publisher_id: "procmond",
            sequence: u64::MAX,
            correlation: None,
            reply_to: None,
            priority: 255,
        };
        assert_eq!(shape.topic.len(), 20);
        assert_eq!(
            largest_payload(&shape, daemoneye_proto::DEFAULT_MAX_FRAME),
            Some(1_048_484)
        );
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
