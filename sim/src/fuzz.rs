//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the stable test
//! that replays the committed corpus (`sim/tests/fuzz_corpus.rs`). Each one panics only when
//! a property fails; hostile input itself must never make the code under test panic.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig, ConnId, Output, PeerCreds};
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_core::wal::{self, Wal, WalAction, WalConfig, WalReader};
use daemoneye_proto::frame::{ClientFrame, ServerFrame};
use daemoneye_proto::pb::bus as pb;
use daemoneye_proto::{FrameDecoder, decode_body};
use prost::Message;

/// The frame decoder over arbitrary bytes in arbitrary chunks: never panics, holds no more
/// than it received plus its slack, and decodes the same frames whatever the chunking.
pub fn frame_decoder(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let max_frame = 4096;
    let whole = decode_all(rest, rest.len().max(1), max_frame);
    let chunked = decode_all(rest, chunk, max_frame);
    assert_eq!(whole, chunked, "chunking changed the result");
}

fn decode_all(data: &[u8], chunk: usize, max_frame: u32) -> (Vec<pb::Frame>, Option<String>) {
    let mut d = FrameDecoder::new(max_frame);
    let mut frames = Vec::new();
    let mut received = 0;
    for part in data.chunks(chunk) {
        received += part.len();
        let _ = d.push(part);
        assert!(
            d.capacity() <= received + 16 * 1024 + 64,
            "decoder holds {} after {received}",
            d.capacity()
        );
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, d.finish().err().map(|e| e.to_string()))
}

/// Protobuf bodies into validated domain types: the fast path agrees with prost, domain
/// conversion never panics, and a valid client frame survives the round trip.
pub fn frame_domain(data: &[u8]) {
    let fast = decode_body(data).ok();
    let reference = pb::Frame::decode(data).ok();
    assert_eq!(fast, reference, "fast decode disagrees with prost");
    let Some(frame) = reference else { return };
    let _ = ServerFrame::try_from(frame.clone());
    if let Ok(client) = ClientFrame::try_from(frame) {
        let wire: pb::Frame = client.clone().into();
        let bytes = wire.encode_to_vec();
        let back = decode_body(&bytes).expect("re-encoded frame decodes");
        assert_eq!(
            ClientFrame::try_from(back).ok(),
            Some(client),
            "round trip changed the frame"
        );
    }
}

/// Topic grammar against the rules, and matching against a naive oracle.
pub fn topic(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (filter_text, name_text) = text.split_once('\n').unwrap_or((&text, &text));
    let name = TopicName::parse(name_text);
    if let Ok(n) = &name {
        assert!(!n.as_str().contains(['+', '#', '\0']));
        assert!(n.levels().all(|l| !l.is_empty()));
    }
    let filter = TopicFilter::parse(filter_text);
    if let (Ok(f), Ok(n)) = (&filter, &name) {
        assert_eq!(
            f.matches(n),
            crate::reference::naive_match(f.as_str(), n.as_str()),
            "{f} vs {n}"
        );
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Connect {
        root: bool,
    },
    Hello {
        conn: u8,
        version: u8,
    },
    Subscribe {
        conn: u8,
        sub_id: u8,
        filter: String,
        group: Option<String>,
        qos1: bool,
        capacity: u8,
        overflow: u8,
    },
    Publish {
        conn: u8,
        topic: String,
        payload: Vec<u8>,
        qos1: bool,
        priority: u8,
    },
    Ack {
        conn: u8,
        delivery_id: u8,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    Written {
        conn: u8,
        n: u16,
    },
    Disconnect {
        conn: u8,
    },
    Advance {
        ms: u16,
    },
}

fn frame_bytes(body: pb::frame::Body) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = daemoneye_proto::encode(&pb::Frame { body: Some(body) }, u32::MAX, &mut out);
    out
}

/// A structure-aware broker scenario: arbitrary connects, handshakes, subscriptions,
/// publishes, acks, raw bytes and disconnects. The broker must never panic, never exceed a
/// queue's capacity, and keep each connection's memory bounded.
pub fn broker_scenario(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let config = BrokerConfig {
        owner_uid: 1000,
        max_frame: 4096,
        write_window: 512,
        ..BrokerConfig::default()
    };
    let mut broker = Broker::new(config, Acl::owner_only(1000), 7);
    let mut now = Instant::from_nanos(1);
    let mut conns: Vec<ConnId> = Vec::new();
    let pick = |conns: &[ConnId], i: u8| conns.get(usize::from(i) % conns.len().max(1)).copied();
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        match op {
            Op::Connect { root } => {
                let uid = if root { 0 } else { 1000 };
                conns.push(broker.handle_connect(
                    now,
                    PeerCreds {
                        uid,
                        gid: uid,
                        pid: None,
                    },
                ));
            }
            Op::Hello { conn, version } => {
                if let Some(c) = pick(&conns, conn) {
                    let body = pb::frame::Body::Hello(pb::Hello {
                        protocol_version: u32::from(version % 3),
                        client_name: "fuzz".into(),
                        ..Default::default()
                    });
                    broker.handle_bytes(now, c, &frame_bytes(body));
                }
            }
            Op::Subscribe {
                conn,
                sub_id,
                filter,
                group,
                qos1,
                capacity,
                overflow,
            } => {
                if let Some(c) = pick(&conns, conn) {
                    let body = pb::frame::Body::Subscribe(pb::Subscribe {
                        sub_id: u64::from(sub_id),
                        filter,
                        queue_group: group.unwrap_or_default(),
                        qos: i32::from(qos1),
                        capacity: u32::from(capacity % 8),
                        overflow: i32::from(overflow % 6),
                        ..Default::default()
                    });
                    broker.handle_bytes(now, c, &frame_bytes(body));
                }
            }
            Op::Publish {
                conn,
                topic,
                payload,
                qos1,
                priority,
            } => {
                if let Some(c) = pick(&conns, conn) {
                    let body = pb::frame::Body::Publish(pb::Publish {
                        topic,
                        payload: Bytes::from(payload),
                        qos: i32::from(qos1),
                        sequence: 1,
                        priority: u32::from(priority),
                        ..Default::default()
                    });
                    broker.handle_bytes(now, c, &frame_bytes(body));
                }
            }
            Op::Ack { conn, delivery_id } => {
                if let Some(c) = pick(&conns, conn) {
                    let body = pb::frame::Body::Ack(pb::Ack {
                        delivery_id: u64::from(delivery_id),
                    });
                    broker.handle_bytes(now, c, &frame_bytes(body));
                }
            }
            Op::Raw { conn, bytes } => {
                if let Some(c) = pick(&conns, conn) {
                    broker.handle_bytes(now, c, &bytes);
                }
            }
            Op::Written { conn, n } => {
                if let Some(c) = pick(&conns, conn) {
                    broker.handle_written(now, c, usize::from(n));
                }
            }
            Op::Disconnect { conn } => {
                if let Some(c) = pick(&conns, conn) {
                    broker.handle_disconnect(now, c);
                }
            }
            Op::Advance { ms } => {
                now = now + std::time::Duration::from_millis(u64::from(ms));
                broker.handle_timeout(now);
            }
        }
        while let Some(out) = broker.poll_output() {
            if let Output::Close { conn, .. } = out {
                conns.retain(|c| *c != conn);
            }
        }
        for s in broker.subscriptions() {
            assert!(
                s.queued + s.unacked <= s.capacity as usize,
                "queue over capacity: {s:?}"
            );
        }
        for c in &conns {
            if let Some(mem) = broker.connection_memory(*c) {
                assert!(
                    mem <= 4 * 4096 + (1 << 20) + 64 * 1024,
                    "connection {c:?} holds {mem} bytes"
                );
            }
        }
    }
}

/// WAL replay over an arbitrary log in arbitrary chunks: never panics; keeps exactly a
/// prefix of whole records whose re-encoding is byte-for-byte that prefix; the chunking does
/// not change the result; and recovery truncates to that prefix and re-publishes exactly
/// its event records, in order, after syncing it.
pub fn wal_replay(data: &[u8]) {
    let Some((&first, log)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 32) + 1;
    let max_record = 4096;
    let read = |size: usize| {
        let mut reader = WalReader::new(max_record);
        let mut records = Vec::new();
        for part in log.chunks(size) {
            reader.push(part);
            assert!(
                reader.buffered() <= max_record as usize + wal::HEADER_LEN + size,
                "the reader holds {} bytes",
                reader.buffered()
            );
            while let Some(r) = reader.next_record() {
                records.push(r);
            }
        }
        (records, reader.finish())
    };
    let (records, end) = read(log.len().max(1));
    assert_eq!(
        read(chunk),
        (records.clone(), end.clone()),
        "chunking changed replay"
    );
    let valid = end.valid_len as usize;
    assert!(valid <= log.len());
    assert_eq!(end.tail.is_none(), valid == log.len(), "{end}");
    let mut again = bytes::BytesMut::new();
    let mut last = 0;
    for r in &records {
        // Only a reserving or settled checkpoint may repeat the sequence before it.
        let may_repeat = wal::is_checkpoint(r) && (r.reserved_through > 0 || r.settled);
        assert!(
            r.sequence > last || (may_repeat && r.sequence == last),
            "sequences must increase"
        );
        last = r.sequence;
        wal::encode_record(r, &mut again);
    }
    assert_eq!(
        &again[..],
        &log[..valid],
        "replayed records re-encode to the prefix"
    );

    let mut events = Vec::new();
    for r in records {
        wal::gather_events(&mut events, r);
    }
    let mut machine = Wal::recover(WalConfig::new("fuzz"), events.clone(), &end);
    let mut published = Vec::new();
    while let Some(action) = machine.poll_output() {
        match action {
            WalAction::Truncate { len } => assert_eq!(len, end.valid_len),
            WalAction::Sync { len } => {
                assert_eq!(len, end.valid_len);
                machine.handle_synced(Instant::ZERO, len);
            }
            WalAction::Publish { record, replayed } => {
                assert!(replayed);
                published.push(record);
            }
            other => panic!("recovery asked for {other:?}"),
        }
    }
    assert_eq!(
        published, events,
        "recovery re-publishes exactly the replayed events"
    );
    if let Ok(next) = machine.append(0, "t", Bytes::new()) {
        assert!(next > end.last_sequence, "a sequence would be reused");
    }
}

/// One input to the broker in a byte-split scenario.
#[derive(Debug, Clone, Arbitrary)]
pub enum SplitEvent {
    /// A new connection (of root, or of the owner's uid).
    Connect {
        /// Root's credentials instead of the owner's.
        root: bool,
    },
    /// Bytes from a connection: frames (see [`SplitFrame`]), delivered in one read or cut
    /// into pieces.
    Bytes {
        /// Which connection (modulo the live ones).
        conn: u8,
        /// The frames, encoded back to back.
        frames: Vec<SplitFrame>,
        /// Keep only this many bytes of the last frame (a frame cut short), if set.
        cut_last: Option<u8>,
    },
    /// The driver reports everything transmitted to a connection as written.
    Written {
        /// Which connection.
        conn: u8,
    },
    /// The peer shut its sending side.
    Eof {
        /// Which connection.
        conn: u8,
    },
    /// The connection failed.
    Disconnect {
        /// Which connection.
        conn: u8,
    },
    /// Time passes.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
}

/// A client frame from a small alphabet (so that they interact), or raw bytes.
#[derive(Debug, Clone, Arbitrary)]
pub enum SplitFrame {
    /// Hello, as a client or as the agent.
    Hello {
        /// Role Agent.
        agent: bool,
    },
    /// Subscribe with a small queue.
    Subscribe {
        /// 1..=3.
        sub_id: u8,
        /// From a fixed list.
        filter: u8,
        /// Joins group `g`.
        group: bool,
        /// QoS1.
        qos1: bool,
        /// 1..=4.
        capacity: u8,
        /// Overflow strategy (modulo 5).
        overflow: u8,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// 1..=3.
        sub_id: u8,
    },
    /// Publish.
    Publish {
        /// From a fixed list.
        topic: u8,
        /// QoS1.
        qos1: bool,
        /// Priority.
        priority: u8,
        /// Payload length.
        len: u8,
    },
    /// Ack a delivery id 1..=8.
    Ack {
        /// The id.
        delivery_id: u8,
    },
    /// Ping.
    Ping,
    /// Goodbye.
    Goodbye,
    /// Raw bytes.
    Raw(Vec<u8>),
}

const SPLIT_FILTERS: &[&str] = &["t.#", "t.a", "t.+", "#", "u"];
const SPLIT_TOPICS: &[&str] = &["t.a", "t.b", "u", "$sys.broker.stats"];

impl SplitFrame {
    fn encode(&self, sequence: &mut u64, out: &mut Vec<u8>) {
        use pb::frame::Body;
        let body = match self {
            SplitFrame::Hello { agent } => Body::Hello(pb::Hello {
                protocol_version: 1,
                client_name: "split".into(),
                role: if *agent {
                    pb::Role::Agent as i32
                } else {
                    pb::Role::Client as i32
                },
                publisher_id: "split".into(),
                ..Default::default()
            }),
            SplitFrame::Subscribe {
                sub_id,
                filter,
                group,
                qos1,
                capacity,
                overflow,
            } => Body::Subscribe(pb::Subscribe {
                sub_id: u64::from(sub_id % 3 + 1),
                filter: SPLIT_FILTERS[usize::from(*filter) % SPLIT_FILTERS.len()].into(),
                queue_group: if *group { "g".into() } else { String::new() },
                qos: i32::from(*qos1),
                capacity: u32::from(capacity % 4 + 1),
                overflow: i32::from(overflow % 5),
                ..Default::default()
            }),
            SplitFrame::Unsubscribe { sub_id } => Body::Unsubscribe(pb::Unsubscribe {
                sub_id: u64::from(sub_id % 3 + 1),
            }),
            SplitFrame::Publish {
                topic,
                qos1,
                priority,
                len,
            } => {
                *sequence += 1;
                Body::Publish(pb::Publish {
                    topic: SPLIT_TOPICS[usize::from(*topic) % SPLIT_TOPICS.len()].into(),
                    payload: Bytes::from(vec![0xA5; usize::from(*len)]),
                    qos: i32::from(*qos1),
                    sequence: *sequence,
                    priority: u32::from(priority % 3),
                    ..Default::default()
                })
            }
            SplitFrame::Ack { delivery_id } => Body::Ack(pb::Ack {
                delivery_id: u64::from(delivery_id % 8 + 1),
            }),
            SplitFrame::Ping => Body::Ping(pb::Ping { nonce: 7 }),
            SplitFrame::Goodbye => Body::Goodbye(pb::Goodbye {
                reason: "split".into(),
            }),
            SplitFrame::Raw(bytes) => {
                out.extend_from_slice(bytes);
                return;
            }
        };
        out.extend_from_slice(&frame_bytes(body));
    }
}

/// What the broker did for each connection: the bytes it transmitted, concatenated, and
/// its reads paused/resumed and closes, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ConnOutputs {
    bytes: Vec<u8>,
    events: Vec<String>,
}

struct SplitRun {
    broker: Broker,
    outputs: std::collections::BTreeMap<ConnId, ConnOutputs>,
    written: std::collections::BTreeMap<ConnId, usize>,
}

impl SplitRun {
    fn new() -> Self {
        let config = BrokerConfig {
            owner_uid: 1000,
            max_frame: 2048,
            max_connections: 3,
            reserved_agent_slots: 1,
            write_window: 300,
            ..BrokerConfig::default()
        };
        Self {
            broker: Broker::new(config, Acl::owner_only(1000), 11),
            outputs: Default::default(),
            written: Default::default(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, data } => self
                    .outputs
                    .entry(conn)
                    .or_default()
                    .bytes
                    .extend_from_slice(&data),
                Output::PauseRead { conn } => self
                    .outputs
                    .entry(conn)
                    .or_default()
                    .events
                    .push("pause".into()),
                Output::ResumeRead { conn } => self
                    .outputs
                    .entry(conn)
                    .or_default()
                    .events
                    .push("resume".into()),
                Output::Close { conn, reason } => self
                    .outputs
                    .entry(conn)
                    .or_default()
                    .events
                    .push(format!("close {reason:?}")),
            }
        }
    }
}

/// DESIGN.md section 5 (and simulation invariant 8): the broker's outputs depend on its
/// input byte streams and times, never on how those bytes were split into reads. Runs the
/// same events through two brokers, one reading every chunk whole, the other reading it
/// cut at the given points, and compares, after every event, each connection's transmitted
/// bytes (concatenated), pauses, resumes and closes. `Err` names the first difference.
pub fn check_split(events: &[SplitEvent], cuts: &[u16]) -> Result<(), String> {
    let mut whole = SplitRun::new();
    let mut split = SplitRun::new();
    let mut now = Instant::from_nanos(1_000_000_000);
    let mut conns: Vec<ConnId> = Vec::new();
    let mut sequence = 0u64;
    let mut cut = cuts.iter().copied().cycle();
    let pick = |conns: &[ConnId], i: u8| conns.get(usize::from(i) % conns.len().max(1)).copied();
    for (step, event) in events.iter().enumerate() {
        match event {
            SplitEvent::Connect { root } => {
                let uid = if *root { 0 } else { 1000 };
                let peer = PeerCreds {
                    uid,
                    gid: uid,
                    pid: Some(4242),
                };
                let a = whole.broker.handle_connect(now, peer);
                let b = split.broker.handle_connect(now, peer);
                if a != b {
                    return Err(format!("step {step}: connection ids {a:?} and {b:?}"));
                }
                conns.push(a);
            }
            SplitEvent::Bytes {
                conn,
                frames,
                cut_last,
            } => {
                let Some(c) = pick(&conns, *conn) else {
                    continue;
                };
                let mut bytes = Vec::new();
                let mut last_start = 0;
                for f in frames {
                    last_start = bytes.len();
                    f.encode(&mut sequence, &mut bytes);
                }
                if let Some(keep) = cut_last {
                    let end = (last_start + usize::from(*keep)).min(bytes.len());
                    bytes.truncate(end);
                }
                whole.broker.handle_bytes(now, c, &bytes);
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = match cut.next() {
                        Some(n) => usize::from(n).clamp(1, rest.len()),
                        None => rest.len(),
                    };
                    split.broker.handle_bytes(now, c, &rest[..n]);
                    rest = &rest[n..];
                }
            }
            SplitEvent::Written { conn } => {
                let Some(c) = pick(&conns, *conn) else {
                    continue;
                };
                let sent = whole.outputs.get(&c).map_or(0, |o| o.bytes.len());
                let done = whole.written.entry(c).or_default();
                let n = sent - *done;
                *done = sent;
                whole.broker.handle_written(now, c, n);
                split.broker.handle_written(now, c, n);
            }
            SplitEvent::Eof { conn } => {
                if let Some(c) = pick(&conns, *conn) {
                    whole.broker.handle_eof(now, c);
                    split.broker.handle_eof(now, c);
                }
            }
            SplitEvent::Disconnect { conn } => {
                if let Some(c) = pick(&conns, *conn) {
                    whole.broker.handle_disconnect(now, c);
                    split.broker.handle_disconnect(now, c);
                }
            }
            SplitEvent::Advance { ms } => {
                now = now + std::time::Duration::from_millis(u64::from(*ms));
                whole.broker.handle_timeout(now);
                split.broker.handle_timeout(now);
            }
        }
        whole.drain();
        split.drain();
        if whole.outputs != split.outputs {
            for (c, a) in &whole.outputs {
                let b = split.outputs.get(c).cloned().unwrap_or_default();
                if *a != b {
                    let at = a
                        .bytes
                        .iter()
                        .zip(&b.bytes)
                        .position(|(x, y)| x != y)
                        .unwrap_or(a.bytes.len().min(b.bytes.len()));
                    return Err(format!(
                        "step {step} ({event:?}): {c:?} differs: {} vs {} bytes (first difference at {at}), events {:?} vs {:?}",
                        a.bytes.len(),
                        b.bytes.len(),
                        a.events,
                        b.events
                    ));
                }
            }
            return Err(format!(
                "step {step}: a connection has outputs only when split"
            ));
        }
        if whole.broker.totals() != split.broker.totals() {
            return Err(format!(
                "step {step}: counters {:?} vs {:?}",
                whole.broker.totals(),
                split.broker.totals()
            ));
        }
    }
    Ok(())
}

/// Fuzz target: arbitrary events, and cut points, for [`check_split`]; panics on a
/// difference.
pub fn byte_split(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(cuts) = Vec::<u16>::arbitrary(&mut u) else {
        return;
    };
    let cuts: Vec<u16> = cuts.into_iter().map(|c| c % 64 + 1).take(32).collect();
    // Three connections past their handshake (one of them the agent), so that every input
    // goes straight to the interesting part.
    let mut events = Vec::new();
    for conn in 0..3u8 {
        events.push(SplitEvent::Connect { root: false });
        events.push(SplitEvent::Bytes {
            conn,
            frames: vec![SplitFrame::Hello { agent: conn == 2 }],
            cut_last: None,
        });
    }
    for _ in 0..48 {
        let Ok(e) = SplitEvent::arbitrary(&mut u) else {
            break;
        };
        events.push(e);
    }
    if let Err(e) = check_split(&events, &cuts) {
        panic!("{e}");
    }
}

/// The kernel process connector's datagrams (`daemoneye_core::procmon::netlink`): any bytes
/// decode or give one typed error, never a panic; an error ends the datagram; every message
/// consumes at least a netlink header; and a process event that decodes decodes again the
/// same from the bytes that carried it alone (the decoder keeps no hidden state).
pub fn proc_connector(data: &[u8]) {
    use daemoneye_core::procmon::netlink::{self, Message};
    let results: Vec<_> = netlink::decode(data).collect();
    assert!(
        results.len() <= data.len() / netlink::NLMSG_HEADER_LEN + 1,
        "more messages than headers"
    );
    if let Some(i) = results.iter().position(Result::is_err) {
        assert_eq!(i, results.len() - 1, "decoding went on after an error");
    }
    let mut rest = data;
    for result in &results {
        let Ok(message) = result else { break };
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let alone: Vec<_> = netlink::decode(&rest[..len]).collect();
        assert_eq!(
            alone,
            vec![Ok(message.clone())],
            "a message decodes alone the same"
        );
        if let Message::Proc { event, .. } = message
            && let netlink::ProcEventKind::Exit { exit_code, .. } = event.kind
        {
            let code = netlink::exit_code_of_status(exit_code);
            assert!((0..=255).contains(&code), "exit code {code}");
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
}
