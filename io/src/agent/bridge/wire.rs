//! What an export looks like on disk and on NATS: the disk queue's envelope, the export
//! headers, and the origin tag that marks an imported message.

use async_nats::{HeaderMap, HeaderName};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use daemoneye_core::bridge::{
    Export, HEADER_MSG_ID, HEADER_ORIGIN, HEADER_PUBLISHER, HEADER_SEQUENCE, HEADER_TOPIC,
    IMPORTED_TAG,
};
use daemoneye_proto::pb::bus::{Correlation, Tags};
use prost::Message;
/// A QoS1 export as kept on disk: the WAL record's topic is the local topic, its payload
/// the publisher id (u16 length first), the publisher's sequence (u64) and the payload.
pub(super) fn encode_envelope(e: &Export) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + e.publisher.len() + 8 + e.payload.len());
    out.put_u16(e.publisher.len().min(u16::MAX as usize) as u16);
    out.put_slice(&e.publisher.as_bytes()[..e.publisher.len().min(u16::MAX as usize)]);
    out.put_u64(e.sequence);
    out.put_slice(&e.payload);
    out.freeze()
}

pub(super) fn decode_envelope(mut b: Bytes) -> Option<(String, u64, Bytes)> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n + 8 {
        return None;
    }
    let publisher = String::from_utf8(b.split_to(n).to_vec()).ok()?;
    let sequence = b.get_u64();
    Some((publisher, sequence, b))
}

/// The export headers' names, built once (a name from a `&str` is a copy per message).
const ORIGIN: HeaderName = HeaderName::from_static(HEADER_ORIGIN);
const TOPIC: HeaderName = HeaderName::from_static(HEADER_TOPIC);
const PUBLISHER: HeaderName = HeaderName::from_static(HEADER_PUBLISHER);
const SEQUENCE: HeaderName = HeaderName::from_static(HEADER_SEQUENCE);
const MSG_ID: HeaderName = HeaderName::from_static(HEADER_MSG_ID);

/// An export's headers; its strings are moved in (a header value from a `&str` is a copy).
/// A QoS0 export has no message id (`msg_id` empty) and no `Nats-Msg-Id`.
pub(super) fn headers(
    host: &str,
    topic: String,
    publisher: String,
    sequence: u64,
    msg_id: String,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ORIGIN, host);
    h.insert(TOPIC, topic);
    h.insert(PUBLISHER, publisher);
    h.insert(SEQUENCE, sequence.to_string());
    if !msg_id.is_empty() {
        h.insert(MSG_ID, msg_id);
    }
    h
}

pub(super) fn headers_of(host: &str, e: &Export) -> HeaderMap {
    headers(
        host,
        e.topic.clone(),
        e.publisher.clone(),
        e.sequence,
        e.msg_id.clone(),
    )
}

/// The origin host a local message was imported from, if it was.
pub(super) fn imported_from(c: Option<&Correlation>) -> Option<String> {
    let tags = c.filter(|c| !c.tags.is_empty())?;
    Tags::decode(tags.tags.clone())
        .ok()?
        .entries
        .remove(IMPORTED_TAG)
}
