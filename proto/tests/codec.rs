//! The frame codec against bad input: every case of DESIGN.md section 3, each a named test.

mod common;

use common::{encode_all, frame, publish};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use daemoneye_proto::{
    DEFAULT_MAX_FRAME, EncodeError, FrameDecoder, FrameError, HEADER_LEN, encode,
};
use proptest::prelude::*;

/// Decodes everything in `bytes` as one push, then finishes the stream.
fn decode_stream(decoder: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<pb::Frame>, FrameError> {
    let pushed = decoder.push(bytes);
    let mut frames = Vec::new();
    loop {
        match decoder.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => return Err(e),
        }
    }
    pushed?;
    decoder.finish()?;
    Ok(frames)
}

#[test]
fn zero_length_header_is_rejected() {
    let mut d = FrameDecoder::default();
    assert_eq!(d.push(&[0, 0, 0, 0]), Err(FrameError::EmptyFrame));
    assert_eq!(d.next_frame(), Err(FrameError::EmptyFrame));
}

#[test]
fn length_one_above_max_is_rejected_from_header_without_buffering_body() {
    let max = 1024;
    let mut d = FrameDecoder::new(max);
    let mut bytes = (max + 1).to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0xAA, 4096));
    assert_eq!(
        d.push(&bytes),
        Err(FrameError::TooLarge { len: max + 1, max })
    );
    // Not one byte of the refused frame, header or body, is held.
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.capacity(), 0);
    assert_eq!(
        d.next_frame(),
        Err(FrameError::TooLarge { len: max + 1, max })
    );
}

#[test]
fn oversized_header_split_before_body_is_rejected_once_header_completes() {
    let mut d = FrameDecoder::new(100);
    assert_eq!(d.push(&[0, 0]), Ok(()));
    assert_eq!(
        d.push(&[0, 101]),
        Err(FrameError::TooLarge { len: 101, max: 100 })
    );
    assert_eq!(d.buffered(), 0);
    assert_eq!(
        d.next_frame(),
        Err(FrameError::TooLarge { len: 101, max: 100 })
    );
}

#[test]
fn frame_of_exactly_max_length_is_accepted() {
    use prost::Message;
    // The payload length whose frame body is exactly the maximum (varint widths vary).
    let max = DEFAULT_MAX_FRAME as usize;
    let payload_len = (max - 64..max)
        .rev()
        .find(|&n| publish("t", &vec![0u8; n]).encoded_len() == max)
        .expect("some payload length hits the maximum exactly");
    let f = publish("t", &vec![7u8; payload_len]);
    let mut bytes = Vec::new();
    let written = encode(&f, DEFAULT_MAX_FRAME, &mut bytes).expect("encode at the limit");
    assert_eq!(
        written,
        DEFAULT_MAX_FRAME as usize + HEADER_LEN,
        "test frame must hit the limit exactly"
    );
    let mut d = FrameDecoder::default();
    assert_eq!(decode_stream(&mut d, &bytes), Ok(vec![f.clone()]));

    let bigger = publish("t", &vec![7u8; payload_len + 1]);
    let mut out = Vec::new();
    assert_eq!(
        encode(&bigger, DEFAULT_MAX_FRAME, &mut out),
        Err(EncodeError::TooLarge {
            len: DEFAULT_MAX_FRAME as usize + 1,
            max: DEFAULT_MAX_FRAME
        })
    );
    assert!(out.is_empty(), "a refused encode writes nothing");
}

#[test]
fn length_0x7fffffff_is_rejected() {
    let mut d = FrameDecoder::default();
    assert_eq!(
        d.push(&0x7FFF_FFFFu32.to_be_bytes()),
        Err(FrameError::TooLarge {
            len: 0x7FFF_FFFF,
            max: DEFAULT_MAX_FRAME
        })
    );
    assert_eq!(d.capacity(), 0);
}

#[test]
fn length_0xffffffff_is_rejected() {
    let mut d = FrameDecoder::default();
    assert_eq!(
        d.push(&[0xFF; 4]),
        Err(FrameError::TooLarge {
            len: 0xFFFF_FFFF,
            max: DEFAULT_MAX_FRAME
        })
    );
    assert_eq!(d.capacity(), 0);
}

#[test]
fn truncated_header_at_eof_is_an_error() {
    let mut d = FrameDecoder::default();
    d.push(&[0, 0, 1])
        .expect("partial header is fine until EOF");
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(d.finish(), Err(FrameError::TruncatedHeader { got: 3 }));
}

#[test]
fn truncated_body_at_eof_is_an_error() {
    let bytes = encode_all(&[publish("a.b", b"hello")]);
    let mut d = FrameDecoder::default();
    d.push(&bytes[..bytes.len() - 2])
        .expect("partial body is fine until EOF");
    assert_eq!(d.next_frame(), Ok(None));
    let body_len = (bytes.len() - HEADER_LEN) as u32;
    assert_eq!(
        d.finish(),
        Err(FrameError::TruncatedBody {
            got: body_len as usize - 2,
            len: body_len
        })
    );
}

#[test]
fn eof_on_frame_boundary_is_clean() {
    let frames = vec![publish("a", b"1"), publish("b", b"2")];
    let mut d = FrameDecoder::default();
    assert_eq!(decode_stream(&mut d, &encode_all(&frames)), Ok(frames));
    let mut empty = FrameDecoder::default();
    assert_eq!(empty.finish(), Ok(()));
}

#[test]
fn stream_split_at_every_byte_boundary_decodes_to_same_frames() {
    let frames = vec![
        publish("events.process.new", b"first"),
        frame(Body::Ping(pb::Ping { nonce: 9 })),
        publish("events.process.exit", &[0u8; 300]),
        frame(Body::Ack(pb::Ack { delivery_id: 42 })),
    ];
    let bytes = encode_all(&frames);
    for split in 0..=bytes.len() {
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for part in [&bytes[..split], &bytes[split..]] {
            d.push(part).expect("valid stream");
            while let Some(f) = d.next_frame().expect("valid frame") {
                got.push(f);
            }
        }
        d.finish().expect("clean end");
        assert_eq!(got, frames, "split at byte {split}");
    }
    // And one byte at a time.
    let mut d = FrameDecoder::default();
    let mut got = Vec::new();
    for b in &bytes {
        d.push(std::slice::from_ref(b)).expect("valid stream");
        while let Some(f) = d.next_frame().expect("valid frame") {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn many_frames_coalesced_in_one_read_decode_in_order() {
    let frames: Vec<_> = (0..1000)
        .map(|i| publish("t.x", format!("m{i}").as_bytes()))
        .collect();
    let mut d = FrameDecoder::default();
    assert_eq!(decode_stream(&mut d, &encode_all(&frames)), Ok(frames));
}

#[test]
fn valid_frames_before_a_bad_header_are_delivered_then_the_error() {
    let good = publish("a", b"ok");
    let mut bytes = encode_all(std::slice::from_ref(&good));
    bytes.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3]);
    let mut d = FrameDecoder::default();
    assert_eq!(d.push(&bytes), Err(FrameError::EmptyFrame));
    assert_eq!(d.next_frame(), Ok(Some(good)));
    assert_eq!(d.next_frame(), Err(FrameError::EmptyFrame));
    // Poisoned: never resynchronises.
    assert_eq!(
        d.push(&encode_all(&[publish("b", b"x")])),
        Err(FrameError::EmptyFrame)
    );
    assert_eq!(d.next_frame(), Err(FrameError::EmptyFrame));
}

fn body_with_header(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn assert_protobuf_error(body: &[u8]) {
    let mut d = FrameDecoder::default();
    d.push(&body_with_header(body)).expect("header is valid");
    match d.next_frame() {
        Err(FrameError::Protobuf(_)) => {}
        other => panic!("expected a protobuf error for {body:02x?}, got {other:?}"),
    }
    // The failure is sticky.
    assert!(matches!(d.next_frame(), Err(FrameError::Protobuf(_))));
}

#[test]
fn invalid_wire_type_is_a_protobuf_error() {
    // Field 1, wire type 7 (does not exist).
    assert_protobuf_error(&[0x0F, 0x00]);
}

#[test]
fn truncated_varint_is_a_protobuf_error() {
    // Field 11 (Ping) length-delimited, length 2, then Ping.nonce varint whose bytes all
    // have the continuation bit set.
    assert_protobuf_error(&[0x5A, 0x02, 0x08, 0x80]);
}

#[test]
fn overlong_varint_is_a_protobuf_error() {
    // Ping.nonce as an 11-byte varint (the maximum is 10).
    let mut ping = vec![0x08];
    ping.extend([0xFF; 10]);
    ping.push(0x01);
    let mut body = vec![0x5A, ping.len() as u8];
    body.extend(ping);
    assert_protobuf_error(&body);
}

#[test]
fn field_claiming_more_bytes_than_the_frame_holds_is_a_protobuf_error() {
    // Publish (field 6) claims 100 bytes; the frame holds 3.
    assert_protobuf_error(&[0x32, 100, 0x0A, 0x01, b'a']);
}

#[test]
fn unknown_field_is_ignored() {
    // Ping { nonce: 5 } followed by unknown field 99 (varint) inside Ping and unknown
    // field 200 (length-delimited) at the top level.
    let ping = [0x08, 0x05, 0x98, 0x06, 0x01];
    let mut body = vec![0x5A, ping.len() as u8];
    body.extend(ping);
    body.extend([0xC2, 0x0C, 0x02, b'h', b'i']);
    let mut d = FrameDecoder::default();
    d.push(&body_with_header(&body)).expect("valid header");
    assert_eq!(
        d.next_frame(),
        Ok(Some(frame(Body::Ping(pb::Ping { nonce: 5 }))))
    );
}

#[test]
fn frame_with_no_body_set_is_an_error() {
    // Only an unknown field: decodes to a Frame with no body.
    let mut d = FrameDecoder::default();
    d.push(&body_with_header(&[0xC2, 0x0C, 0x00]))
        .expect("valid header");
    assert_eq!(d.next_frame(), Err(FrameError::MissingBody));
    let mut out = Vec::new();
    assert_eq!(
        encode(&pb::Frame { body: None }, DEFAULT_MAX_FRAME, &mut out),
        Err(EncodeError::MissingBody)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_decode_is_identity(frames in proptest::collection::vec(common::any_frame(), 1..20),
                                      chunk in 1usize..300) {
        let bytes = encode_all(&frames);
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for part in bytes.chunks(chunk) {
            d.push(part).expect("valid stream");
            while let Some(f) = d.next_frame().expect("valid frame") {
                got.push(f);
            }
        }
        d.finish().expect("clean end");
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_fails_sticky(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64
    ) {
        let mut d = FrameDecoder::new(4096);
        let mut first_error = None;
        'outer: for part in bytes.chunks(chunk) {
            let _ = d.push(part);
            loop {
                match d.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => { first_error = Some(e); break 'outer; }
                }
            }
        }
        if let Some(e) = first_error {
            prop_assert_eq!(d.next_frame(), Err(e.clone()));
            prop_assert_eq!(d.finish(), Err(e));
        }
    }
}

mod fast_path {
    use super::common;
    use daemoneye_proto::decode_body;
    use daemoneye_proto::pb::bus as pb;
    use proptest::prelude::*;
    use prost::Message;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn fast_publish_decode_agrees_with_prost_on_valid_frames(f in common::any_frame()) {
            let body = f.encode_to_vec();
            prop_assert_eq!(decode_body(&body).ok(), Some(f));
        }

        #[test]
        fn fast_publish_decode_agrees_with_prost_on_arbitrary_bytes(
            tail in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            // Start like a Publish frame so the fast path is exercised, then anything.
            let mut body = vec![0x32, tail.len() as u8];
            body.extend(&tail);
            prop_assert_eq!(decode_body(&body).ok(), pb::Frame::decode(&body[..]).ok());
            prop_assert_eq!(decode_body(&tail).ok(), pb::Frame::decode(&tail[..]).ok());
        }

        #[test]
        fn fast_publish_decode_agrees_with_prost_on_mutated_publish_frames(
            f in common::any_frame(), at in any::<prop::sample::Index>(), byte in any::<u8>()
        ) {
            let mut body = f.encode_to_vec();
            let i = at.index(body.len());
            body[i] = byte;
            prop_assert_eq!(decode_body(&body).ok(), pb::Frame::decode(&body[..]).ok());
        }
    }
}
