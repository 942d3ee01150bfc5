//! Replays every committed fuzz corpus file through its target's entry point, on stable
//! Rust, in the normal test run. `write_seed_corpus` (ignored) regenerates the hand-made
//! seeds that the fuzzer grows from.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use daemoneye_proto::pb::bus as pb;
use prost::Message;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
        .join("corpus")
        .join(target)
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).expect("read corpus file");
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(
            result.is_ok(),
            "{target}: corpus file {} fails",
            path.display()
        );
        n += 1;
    }
    n
}

#[test]
fn every_frame_decoder_corpus_file_passes() {
    assert!(replay("frame_decoder", daemoneye_sim::fuzz::frame_decoder) > 0);
}

#[test]
fn every_frame_domain_corpus_file_passes() {
    assert!(replay("frame_domain", daemoneye_sim::fuzz::frame_domain) > 0);
}

#[test]
fn every_topic_corpus_file_passes() {
    assert!(replay("topic", daemoneye_sim::fuzz::topic) > 0);
}

#[test]
fn every_broker_scenario_corpus_file_passes() {
    assert!(replay("broker_scenario", daemoneye_sim::fuzz::broker_scenario) > 0);
}

#[test]
fn every_wal_replay_corpus_file_passes() {
    assert!(replay("wal_replay", daemoneye_sim::fuzz::wal_replay) > 0);
}

#[test]
fn every_byte_split_corpus_file_passes() {
    assert!(replay("byte_split", daemoneye_sim::fuzz::byte_split) > 0);
}

#[test]
fn every_proc_connector_corpus_file_passes() {
    assert!(replay("proc_connector", daemoneye_sim::fuzz::proc_connector) > 0);
}

fn frame(body: pb::frame::Body) -> pb::Frame {
    pb::Frame { body: Some(body) }
}

#[test]
#[ignore = "writes the hand-made seed corpus; run once when the targets change"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("write");
    };
    let publish = frame(pb::frame::Body::Publish(pb::Publish {
        topic: "events.process.new".into(),
        payload: Bytes::from_static(b"pid=42"),
        qos: 1,
        sequence: 7,
        ..Default::default()
    }));
    let hello = frame(pb::frame::Body::Hello(pb::Hello {
        protocol_version: 1,
        client_name: "seed".into(),
        ..Default::default()
    }));
    let subscribe = frame(pb::frame::Body::Subscribe(pb::Subscribe {
        sub_id: 1,
        filter: "events.#".into(),
        queue_group: "g".into(),
        qos: 1,
        ..Default::default()
    }));
    let mut stream = vec![7u8];
    for f in [&hello, &subscribe, &publish] {
        daemoneye_proto::encode(f, u32::MAX, &mut stream).expect("encode");
    }
    write("frame_decoder", "valid-stream", &stream);
    write("frame_decoder", "zero-length", &[1, 0, 0, 0, 0]);
    write(
        "frame_decoder",
        "four-gib",
        &[3, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3],
    );
    write("frame_decoder", "truncated", &stream[..stream.len() - 3]);
    for (name, f) in [
        ("hello", &hello),
        ("subscribe", &subscribe),
        ("publish", &publish),
    ] {
        write("frame_domain", name, &f.encode_to_vec());
    }
    write(
        "frame_domain",
        "overlong-varint",
        &[
            0x5A, 0x0C, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
        ],
    );
    for (name, t) in [
        ("multi", "events.#\nevents.process.new"),
        ("single", "events.+.new\nevents.process.new"),
        ("reserved", "#\n$sys.broker.stats"),
        ("bad", "a.#.b\na..b"),
    ] {
        write("topic", name, t.as_bytes());
    }
    let mut log = bytes::BytesMut::from(&[5u8][..]);
    for (sequence, topic) in [
        (1, "events.process.new"),
        (2, "events.process.exit"),
        (4, ""),
    ] {
        let record = daemoneye_proto::pb::wal::WalRecord {
            sequence,
            topic: topic.into(),
            payload: Bytes::from_static(b"pid=42"),
            accepted_at_ms: 1_700_000_000_000,
            source: "procmond".into(),
            // The checkpoint also reserves sequences up to 12.
            reserved_through: if topic.is_empty() { 12 } else { 0 },
            settled: false,
        };
        daemoneye_core::wal::encode_record(&record, &mut log);
    }
    write("wal_replay", "valid-with-checkpoint", &log);
    write("wal_replay", "torn", &log[..log.len() - 5]);
    let mut flipped = log.to_vec();
    flipped[20] ^= 0x10;
    write("wal_replay", "flipped", &flipped);
    let mut zeros = log[..1].to_vec();
    zeros.extend_from_slice(&[0; 64]);
    write("wal_replay", "zeros", &zeros);
    // Seeded random inputs: `byte_split` reads them as cut points and events.
    let mut rng = daemoneye_core::rng::SeededRng::new(0x5_9117);
    for i in 0..12 {
        let len = 256 + 256 * (i % 4);
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        write("byte_split", &format!("random-{i}"), &data);
    }
    write_proc_connector_seeds(&write);
    write(
        "broker_scenario",
        "bytes-a",
        &(0u8..=255).collect::<Vec<_>>(),
    );
    write(
        "broker_scenario",
        "bytes-b",
        &(0u8..=255).rev().cycle().take(1024).collect::<Vec<_>>(),
    );
}

/// Process connector datagrams as the kernel sends them (native byte order): an exec, a
/// datagram of an exit then a fork, the listen ack, an overrun, and a truncated event.
fn write_proc_connector_seeds(write: &dyn Fn(&str, &str, &[u8])) {
    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }
    fn event(what: u32, fields: &[u32]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&what.to_ne_bytes());
        data.extend_from_slice(&1u32.to_ne_bytes());
        data.extend_from_slice(&123_456_789u64.to_ne_bytes());
        let mut union = [0u8; 24];
        for (i, f) in fields.iter().enumerate() {
            union[4 * i..4 * i + 4].copy_from_slice(&f.to_ne_bytes());
        }
        data.extend_from_slice(&union);
        let mut cn = Vec::new();
        for v in [1u32, 1, 7, 0] {
            cn.extend_from_slice(&v.to_ne_bytes());
        }
        cn.extend_from_slice(&(data.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&0u16.to_ne_bytes());
        cn.extend_from_slice(&data);
        message(3, &cn)
    }
    let exec = event(2, &[4242, 4242]);
    write("proc_connector", "exec", &exec);
    let mut two = event(0x8000_0000, &[4242, 4242, 3 << 8, 17, 1, 1]);
    two.extend(event(1, &[1, 1, 4243, 4243]));
    write("proc_connector", "exit-then-fork", &two);
    write("proc_connector", "ack", &event(0, &[0]));
    write("proc_connector", "overrun", &message(4, &[]));
    write("proc_connector", "truncated", &exec[..exec.len() - 20]);
}
