//! The decoder allocates only for bytes that have arrived.
//!
//! One test in this binary, so that the global allocation counters see only it.

mod common;

use daemoneye_proto::{FrameDecoder, HEADER_LEN};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Small constant the decoder may hold beyond the bytes received: its growth slack plus the
/// per-field rounding of a decoded frame.
const SLACK: usize = 16 * 1024 + 1024;

fn net(region: &Region<'_, System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

fn check_stream(bytes: &[u8], chunk: usize, max_frame: u32) -> Result<(), TestCaseError> {
    let region = Region::new(GLOBAL);
    let mut d = FrameDecoder::new(max_frame);
    let mut received = 0usize;
    'outer: for part in bytes.chunks(chunk) {
        received += part.len();
        let _ = d.push(part);
        let held = net(&region);
        prop_assert!(
            held <= (received + SLACK) as isize,
            "decoder holds {held} bytes after receiving {received}"
        );
        loop {
            let before = net(&region);
            match d.next_frame() {
                Ok(Some(frame)) => {
                    // A decoded frame owns at most its own body plus a constant.
                    let frame_heap = net(&region) - before;
                    prop_assert!(frame_heap <= (received + SLACK) as isize);
                    drop(frame);
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    drop(d);
    prop_assert!(net(&region) <= 0, "decoder leaked: {:?}", region.change());
    Ok(())
}

#[test]
fn decoder_never_allocates_more_than_received_plus_constant() {
    let mut runner = TestRunner::new(Config::with_cases(128));
    // Arbitrary bytes, including headers that claim up to the 1 MiB maximum.
    runner
        .run(
            &(proptest::collection::vec(any::<u8>(), 0..4096), 1usize..512),
            |(bytes, chunk)| check_stream(&bytes, chunk, daemoneye_proto::DEFAULT_MAX_FRAME),
        )
        .expect("arbitrary bytes");
    // Valid frames, dribbled.
    runner
        .run(
            &(
                proptest::collection::vec(common::any_frame(), 1..10),
                1usize..64,
            ),
            |(frames, chunk)| {
                check_stream(
                    &common::encode_all(&frames),
                    chunk,
                    daemoneye_proto::DEFAULT_MAX_FRAME,
                )
            },
        )
        .expect("valid frames");
    // A header that claims the maximum, then a trickle: nothing is reserved up front.
    let mut claim = daemoneye_proto::DEFAULT_MAX_FRAME.to_be_bytes().to_vec();
    claim.extend([0u8; 100]);
    check_stream(&claim, 7, daemoneye_proto::DEFAULT_MAX_FRAME).expect("claimed maximum");
    let region = Region::new(GLOBAL);
    let mut d = FrameDecoder::default();
    d.push(&claim).expect("valid header");
    assert!(d.capacity() < claim.len() + SLACK);
    assert!(net(&region) < (HEADER_LEN + 100 + SLACK) as isize);
}
