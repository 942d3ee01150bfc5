//! A hand-written decoder for the hot frame kind, `Frame { publish }`.
//!
//! It accepts only the plain shape (each field at most once, known fields with their
//! proper wire types, canonical varints of at most 9 bytes) and returns `None` for
//! anything else, which then goes through prost. Where it returns `Some`, the result equals
//! prost's (a property test checks this on arbitrary frames and arbitrary bytes).

use bytes::Bytes;

use crate::pb::bus::{Correlation, Frame, Publish, frame::Body, publish::Target};

/// Reads a varint of at most 9 bytes (values below 2^63); `None` for longer ones, which
/// prost then judges.
#[inline]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *buf.get(i)?;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte < 0x80 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[inline]
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Some(head)
}

#[inline]
fn string(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Decodes `body` if it is a plain `Frame { publish }`.
pub(crate) fn publish_frame(body: &[u8]) -> Option<Frame> {
    let mut buf = body;
    // Field 6 (publish), length-delimited, spanning the whole frame.
    if buf.first() != Some(&0x32) {
        return None;
    }
    buf = &buf[1..];
    let mut fields = length_delimited(&mut buf)?;
    if !buf.is_empty() {
        return None;
    }
    let mut p = Publish::default();
    let mut seen = 0u16;
    while !fields.is_empty() {
        let key = fields[0];
        fields = &fields[1..];
        let field = key >> 3;
        if field == 0 || field > 10 || seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        match key {
            0x0A => p.topic = string(length_delimited(&mut fields)?)?,
            0x12 => p.payload = Bytes::copy_from_slice(length_delimited(&mut fields)?),
            0x18 => p.qos = varint(&mut fields)? as i32,
            0x20 => p.sequence = varint(&mut fields)?,
            0x2A => {
                let bytes = length_delimited(&mut fields)?;
                p.correlation = Some(Box::new(
                    <Correlation as prost::Message>::decode(bytes).ok()?,
                ));
            }
            0x32 => p.reply_to = string(length_delimited(&mut fields)?)?,
            0x38 => p.priority = varint(&mut fields)? as u32,
            0x40 if seen & (1 << 9) == 0 => {
                p.target = Some(Target::TargetSession(varint(&mut fields)?))
            }
            0x4A if seen & (1 << 8) == 0 => {
                p.target = Some(Target::TargetCollector(string(length_delimited(
                    &mut fields,
                )?)?))
            }
            0x50 => p.resent = varint(&mut fields)? != 0,
            _ => return None,
        }
    }
    Some(Frame {
        body: Some(Body::Publish(p)),
    })
}
