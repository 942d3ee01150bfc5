//! Frame codec throughput for 256-byte payloads.
//!
//! `cargo bench -p daemoneye-benches --bench codec`. The decode benchmark pushes a batch of
//! frames as one read and decodes them all, so its per-element time is the cost of one frame
//! (target: under 100 ns).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use daemoneye_proto::{DEFAULT_MAX_FRAME, FrameDecoder, encode};
use std::hint::black_box;

// The agent runs on mimalloc; measure with the allocator it uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 256;

fn publish_frame() -> pb::Frame {
    pb::Frame {
        body: Some(Body::Publish(pb::Publish {
            topic: "events.process.new".into(),
            payload: Bytes::from(vec![0x5A; 256]),
            qos: 0,
            sequence: 123_456,
            ..Default::default()
        })),
    }
}

fn codec(c: &mut Criterion) {
    let frame = publish_frame();
    let mut group = c.benchmark_group("codec_256B");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(BATCH * 300);
        b.iter(|| {
            out.clear();
            for _ in 0..BATCH {
                encode(black_box(&frame), DEFAULT_MAX_FRAME, &mut out).expect("encode");
            }
            black_box(out.len())
        })
    });
    let mut stream = Vec::new();
    for _ in 0..BATCH {
        encode(&frame, DEFAULT_MAX_FRAME, &mut stream).expect("encode");
    }
    group.bench_function("decode", |b| {
        // One long-lived decoder, as a connection has: its buffer is reused across reads.
        let mut d = FrameDecoder::default();
        b.iter(|| {
            d.push(black_box(&stream)).expect("valid");
            let mut n = 0;
            while let Some(f) = d.next_frame().expect("valid") {
                black_box(&f);
                n += 1;
            }
            assert_eq!(n, BATCH);
        })
    });
    group.finish();
}

criterion_group!(benches, codec);

criterion_main!(benches);
