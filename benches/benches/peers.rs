//! The comparison with peers, in one run: DaemonEye's agent (the bus alone: no collectors,
//! store or detection), nats-server and mosquitto, each driven by the same lean blocking
//! clients (one OS thread per connection, 64 KiB buffered writes), so that the brokers and
//! not the clients are measured.
//!
//! ```sh
//! cargo build --release -p daemoneye-io         # the agent under test
//! cargo bench -p daemoneye-benches --bench peers
//! ```
//!
//! `benches/compare.sh` does both and installs the peers from Debian packages when absent.
//!
//! Workloads (DESIGN.md section 10), 256-byte payloads: fan-in of 4 publishers to 1
//! wildcard subscriber, fan-out of 1 publisher to 4 subscribers, a queue group of 3 (NATS
//! queue group, MQTT `$share`), all QoS0 (delivered rate, loss, broker CPU per message
//! from `/proc`); one-way latency paced at 10k msg/s (p50, p99, p99.9) beside the relay
//! floor (a plain read-and-forward thread between two sockets, measured by the same
//! harness); QoS1 throughput (acknowledged publishes and acknowledged deliveries; NATS
//! through a JetStream memory stream); the memory of 1,000 idle connections; start-up
//! time. `PEERS_REPS` repetitions (default 3) of every workload, brokers interleaved; the
//! table shows medians and ranges and the ratio to each peer. Results go to
//! `benches/results/peers.json` (with the machine's description) and `peers.svg`.
//!
//! `PEERS_MSGS` sets the message count of the throughput runs (default 1,000,000).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use daemoneye_proto::{FrameDecoder, encode};
use serde_json::{Value, json};

const SIZE: usize = 256;
const WRITE_BUF: usize = 64 * 1024;
/// Idle connections in the memory measure.
const IDLE_CONNS: usize = 1_000;
/// Messages of the paced latency run.
const LAT_MSGS: u64 = 20_000;
/// Its pace.
const LAT_RATE: u64 = 10_000;
/// How long a run waits for deliveries that stopped coming before it counts them lost.
const IDLE: Duration = Duration::from_secs(3);

fn clock(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Result of one run.
#[derive(Debug, Default, Clone)]
struct Run {
    /// Deliveries expected.
    expected: u64,
    delivered: u64,
    /// QoS1: publishes the broker acknowledged.
    acked: u64,
    secs: f64,
    cpu_secs: f64,
    latencies_ns: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_secs * 1e6 / self.delivered.max(1) as f64
    }
    /// The `q` quantile of the latencies, in microseconds.
    fn pct(&self, q: f64) -> f64 {
        quantile(&self.latencies_ns, q) / 1000.0
    }
}

/// The `q` quantile of sorted or unsorted values (0 when empty).
fn quantile(values: &[u64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)] as f64
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; after the ')' they are 12 and 13 (1-based 3..).
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- protocol clients

/// The publishing and subscribing side of one protocol.
trait Proto: Send + Sync + 'static {
    type Conn: Read + Write + Send + 'static;
    fn connect(&self, name: &str) -> Self::Conn;
    /// Connects without a handshake, to see whether the broker accepts yet.
    fn accepts(&self) -> bool;
    fn clone_conn(&self, conn: &Self::Conn) -> Self::Conn;
    /// Ends a connection from another thread (its reader sees the end).
    fn close(&self, conn: &Self::Conn);
    /// Subscribes (optionally in a queue group, at QoS1 if `qos1`) and returns once the
    /// broker confirmed it.
    fn subscribe(&self, conn: &mut Self::Conn, filter: &str, group: Option<&str>, qos1: bool);
    /// What a QoS1 publisher needs before it publishes on `topic` (NATS: a JetStream
    /// stream and an inbox for the acknowledgements).
    fn prepare_qos1(&self, _conn: &mut Self::Conn, _topic: &str) {}
    /// One publish as it goes on the wire, appended to `out`. `seq`: 0 for QoS0, else the
    /// QoS1 sequence (from 1).
    fn encode_publish(&self, out: &mut Vec<u8>, topic: &str, payload: &[u8], seq: u64);
    /// Reads the acknowledgements of QoS1 publishes until `want` arrived or the connection
    /// ends.
    fn read_pub_acks(&self, conn: Self::Conn, want: u64) -> u64;
    /// Reads deliveries until the connection ends, acknowledging them when `qos1`; calls
    /// `each` with every payload.
    fn read_deliveries(&self, conn: Self::Conn, qos1: bool, each: &mut dyn FnMut(&[u8])) -> u64;
    /// Topic spelling: `.` for DaemonEye and NATS, `/` for MQTT.
    fn topic(&self, dotted: &str) -> String {
        dotted.to_string()
    }
    fn wildcard(&self) -> &'static str;
}

struct DaemonEye {
    socket: PathBuf,
}

/// Distinct client names, so that no two runs share a publisher id (QoS1 deduplicates by
/// publisher and sequence).
static CLIENTS: AtomicU64 = AtomicU64::new(0);

fn de_frame(body: Body) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&pb::Frame { body: Some(body) }, u32::MAX, &mut v).expect("encode");
    v
}

fn de_read_until(
    conn: &mut UnixStream,
    decoder: &mut FrameDecoder,
    mut pred: impl FnMut(&Body) -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(f) = decoder.next_frame().expect("frame") {
            if let Some(b) = &f.body
                && pred(b)
            {
                return;
            }
        }
        let n = conn.read(&mut buf).expect("read");
        assert!(n > 0, "broker closed");
        decoder.push(&buf[..n]).expect("push");
    }
}

/// A protobuf varint from the front of `buf`.
fn pb_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The next field of a protobuf message: its number and, for a length-delimited field,
/// its bytes (a varint's value is returned as the number's companion).
fn pb_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Result<&'a [u8], u64>)> {
    let key = pb_varint(buf)?;
    let value = match key & 7 {
        0 => Err(pb_varint(buf)?),
        1 => {
            *buf = buf.get(8..)?;
            Err(0)
        }
        2 => {
            let len = usize::try_from(pb_varint(buf)?).ok()?;
            let (v, rest) = (buf.get(..len)?, buf.get(len..)?);
            *buf = rest;
            Ok(v)
        }
        5 => {
            *buf = buf.get(4..)?;
            Err(0)
        }
        _ => return None,
    };
    Some((key >> 3, value))
}

/// Walks the whole frames at the front of `buf`, calling `each` with the payload and the
/// delivery id of every Deliver; returns the bytes they took.
fn de_scan(buf: &[u8], each: &mut dyn FnMut(&[u8], u64)) -> usize {
    let mut at = 0;
    while let Some(header) = buf.get(at..at + 4) {
        let len = u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize;
        let Some(mut body) = buf.get(at + 4..at + 4 + len) else {
            break;
        };
        at += 4 + len;
        // Frame.body is a oneof: Deliver is field 7.
        while let Some((field, value)) = pb_field(&mut body) {
            let (7, Ok(mut deliver)) = (field, value) else {
                continue;
            };
            let (mut payload, mut delivery_id) = (&[][..], 0);
            while let Some((f, v)) = pb_field(&mut deliver) {
                match (f, v) {
                    (2, Err(id)) => delivery_id = id,
                    (4, Ok(p)) => payload = p,
                    _ => {}
                }
            }
            each(payload, delivery_id);
        }
    }
    at
}

impl Proto for DaemonEye {
    type Conn = UnixStream;
    fn connect(&self, name: &str) -> UnixStream {
        let mut c = UnixStream::connect(&self.socket).expect("connect agent");
        let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
        c.write_all(&de_frame(Body::Hello(pb::Hello {
            protocol_version: 1,
            client_name: format!("{name}-{n}"),
            ..Default::default()
        })))
        .expect("hello");
        let mut d = FrameDecoder::default();
        de_read_until(&mut c, &mut d, |b| matches!(b, Body::Welcome(_)));
        c
    }
    fn accepts(&self) -> bool {
        UnixStream::connect(&self.socket).is_ok()
    }
    fn clone_conn(&self, conn: &UnixStream) -> UnixStream {
        conn.try_clone().expect("clone")
    }
    fn close(&self, conn: &UnixStream) {
        let _ = conn.shutdown(Shutdown::Both);
    }
    fn subscribe(&self, conn: &mut UnixStream, filter: &str, group: Option<&str>, qos1: bool) {
        let qos = if qos1 {
            pb::Qos::AtLeastOnce
        } else {
            pb::Qos::AtMostOnce
        };
        conn.write_all(&de_frame(Body::Subscribe(pb::Subscribe {
            sub_id: 1,
            filter: filter.into(),
            queue_group: group.unwrap_or("").into(),
            qos: qos as i32,
            // Big enough that Block never stalls publishers on a reading subscriber.
            capacity: 100_000,
            ..Default::default()
        })))
        .expect("subscribe");
        let mut d = FrameDecoder::default();
        de_read_until(conn, &mut d, |b| matches!(b, Body::SubAck(_)));
    }
    fn encode_publish(&self, out: &mut Vec<u8>, topic: &str, payload: &[u8], seq: u64) {
        let qos = if seq > 0 {
            pb::Qos::AtLeastOnce
        } else {
            pb::Qos::AtMostOnce
        };
        let f = pb::Frame {
            body: Some(Body::Publish(pb::Publish {
                topic: topic.into(),
                payload: Bytes::copy_from_slice(payload),
                qos: qos as i32,
                sequence: seq,
                ..Default::default()
            })),
        };
        encode(&f, u32::MAX, out).expect("encode");
    }
    fn read_pub_acks(&self, mut conn: UnixStream, want: u64) -> u64 {
        let mut d = FrameDecoder::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < want {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            d.push(&buf[..n]).expect("push");
            while let Some(f) = d.next_frame().expect("frame") {
                if let Some(Body::PubAck(_)) = f.body {
                    got += 1;
                }
            }
        }
        got
    }
    fn read_deliveries(
        &self,
        mut conn: UnixStream,
        qos1: bool,
        each: &mut dyn FnMut(&[u8]),
    ) -> u64 {
        // The lean reader every protocol gets: no decoding beyond finding the payload (and
        // the delivery id to acknowledge), no allocation per message.
        let mut acks = BufWriter::with_capacity(WRITE_BUF, self.clone_conn(&conn));
        let mut buf = vec![0u8; 256 * 1024];
        let (mut start, mut end) = (0, 0);
        let mut got = 0;
        loop {
            if end == buf.len() {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            let n = match conn.read(&mut buf[end..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            end += n;
            start += de_scan(&buf[start..end], &mut |payload, delivery_id| {
                each(payload);
                got += 1;
                if qos1 {
                    let ack = de_frame(Body::Ack(pb::Ack { delivery_id }));
                    let _ = acks.write_all(&ack);
                }
            });
            // The acknowledgements of what one read brought, in one write.
            let _ = acks.flush();
        }
        got
    }
    fn wildcard(&self) -> &'static str {
        "bench.#"
    }
}

struct Nats {
    port: u16,
}

fn read_line(conn: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while conn.read(&mut b).expect("read") == 1 {
        line.push(b[0]);
        if line.ends_with(b"\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Reads NATS protocol lines and messages until the connection ends, answering PINGs if
/// `pong` (never on a connection another thread publishes on: a PONG would land inside a
/// buffered publish); calls `each` with each message's subject and payload.
fn nats_read(conn: TcpStream, pong: bool, each: &mut dyn FnMut(&str, &[u8]) -> bool) {
    let mut w = conn.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(256 * 1024, conn);
    let mut line = String::new();
    let mut payload = Vec::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.starts_with("MSG ") {
            let subject = line.split_ascii_whitespace().nth(1).unwrap_or("");
            let size: usize = line
                .split_ascii_whitespace()
                .next_back()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            payload.resize(size + 2, 0);
            if r.read_exact(&mut payload).is_err() {
                return;
            }
            if !each(subject, &payload[..size]) {
                return;
            }
        } else if pong && line.starts_with("PING") {
            let _ = w.write_all(b"PONG\r\n");
        } else if line.starts_with("-ERR") {
            panic!("nats-server: {line}");
        }
    }
}

impl Proto for Nats {
    type Conn = TcpStream;
    fn connect(&self, _name: &str) -> TcpStream {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect nats");
        c.set_nodelay(true).expect("nodelay");
        let info = read_line(&mut c);
        assert!(info.starts_with("INFO"), "{info}");
        c.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .expect("connect");
        while !read_line(&mut c).starts_with("PONG") {}
        c
    }
    fn accepts(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
    fn clone_conn(&self, conn: &TcpStream) -> TcpStream {
        conn.try_clone().expect("clone")
    }
    fn close(&self, conn: &TcpStream) {
        let _ = conn.shutdown(Shutdown::Both);
    }
    fn subscribe(&self, conn: &mut TcpStream, filter: &str, group: Option<&str>, _qos1: bool) {
        // NATS core subscriptions have no acknowledgements; QoS1 is JetStream's, on the
        // publishing side.
        let cmd = match group {
            Some(g) => format!("SUB {filter} {g} 1\r\nPING\r\n"),
            None => format!("SUB {filter} 1\r\nPING\r\n"),
        };
        conn.write_all(cmd.as_bytes()).expect("sub");
        while !read_line(conn).starts_with("PONG") {}
    }
    fn prepare_qos1(&self, conn: &mut TcpStream, topic: &str) {
        // A memory stream over the topic (bounded, so that repetitions do not grow it),
        // and the inbox its acknowledgements come to.
        let config = format!(
            "{{\"name\":\"BENCHQ1\",\"subjects\":[\"{topic}\"],\"storage\":\"memory\",\"max_msgs\":200000,\"discard\":\"old\"}}"
        );
        let cmd = format!(
            "SUB _INBOX.create 97\r\nSUB _INBOX.acks.* 98\r\nPUB $JS.API.STREAM.CREATE.BENCHQ1 _INBOX.create {}\r\n{config}\r\n",
            config.len()
        );
        conn.write_all(cmd.as_bytes()).expect("stream create");
        let reply = loop {
            let line = read_line(conn);
            assert!(!line.is_empty(), "nats-server closed");
            if line.starts_with("MSG _INBOX.create") {
                let size: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; size + 2];
                conn.read_exact(&mut body).expect("stream reply");
                break String::from_utf8_lossy(&body[..size]).into_owned();
            }
        };
        assert!(
            !reply.contains("\"error\""),
            "JetStream stream not created (is JetStream enabled?): {reply}"
        );
    }
    fn encode_publish(&self, out: &mut Vec<u8>, topic: &str, payload: &[u8], seq: u64) {
        if seq > 0 {
            write!(out, "PUB {topic} _INBOX.acks.{seq} {}\r\n", payload.len()).expect("pub");
        } else {
            write!(out, "PUB {topic} {}\r\n", payload.len()).expect("pub");
        }
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    fn read_pub_acks(&self, conn: TcpStream, want: u64) -> u64 {
        let mut got = 0;
        nats_read(conn, false, &mut |subject, body| {
            if subject.starts_with("_INBOX.acks.") && !body.windows(5).any(|w| w == b"error") {
                got += 1;
            }
            got < want
        });
        got
    }
    fn read_deliveries(&self, conn: TcpStream, _qos1: bool, each: &mut dyn FnMut(&[u8])) -> u64 {
        let mut got = 0;
        nats_read(conn, true, &mut |_, payload| {
            each(payload);
            got += 1;
            true
        });
        got
    }
    fn wildcard(&self) -> &'static str {
        "bench.>"
    }
}

struct Mqtt {
    port: u16,
}

fn mqtt_remaining_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn mqtt_read_packet(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut body = Vec::new();
    let t = mqtt_read_into(r, &mut body)?;
    Some((t, body))
}

/// Reads one packet into `body` (reused: no allocation per message); returns its type byte.
fn mqtt_read_into(r: &mut impl Read, body: &mut Vec<u8>) -> Option<u8> {
    let mut h = [0u8; 1];
    r.read_exact(&mut h).ok()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).ok()?;
        len += (b[0] & 0x7F) as usize * mult;
        if b[0] & 0x80 == 0 {
            break;
        }
        mult *= 128;
    }
    body.resize(len, 0);
    r.read_exact(body).ok()?;
    Some(h[0])
}

impl Proto for Mqtt {
    type Conn = TcpStream;
    fn connect(&self, name: &str) -> TcpStream {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect mosquitto");
        c.set_nodelay(true).expect("nodelay");
        let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
        let mut var = Vec::new();
        mqtt_str("MQTT", &mut var);
        var.extend_from_slice(&[4, 0x02, 0, 60]); // v3.1.1, clean session, keepalive 60 s
        mqtt_str(&format!("{name}-{}-{n}", std::process::id()), &mut var);
        let mut p = vec![0x10];
        mqtt_remaining_len(var.len(), &mut p);
        p.extend(var);
        c.write_all(&p).expect("connect");
        let (t, _) = mqtt_read_packet(&mut c).expect("connack");
        assert_eq!(t >> 4, 2, "CONNACK");
        c
    }
    fn accepts(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
    fn clone_conn(&self, conn: &TcpStream) -> TcpStream {
        conn.try_clone().expect("clone")
    }
    fn close(&self, conn: &TcpStream) {
        let _ = conn.shutdown(Shutdown::Both);
    }
    fn subscribe(&self, conn: &mut TcpStream, filter: &str, group: Option<&str>, qos1: bool) {
        let filter = match group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter.to_string(),
        };
        let mut var = vec![0, 1];
        mqtt_str(&filter, &mut var);
        var.push(u8::from(qos1));
        let mut p = vec![0x82];
        mqtt_remaining_len(var.len(), &mut p);
        p.extend(var);
        conn.write_all(&p).expect("subscribe");
        let (t, body) = mqtt_read_packet(conn).expect("suback");
        assert_eq!(t >> 4, 9, "SUBACK");
        assert_ne!(body.last(), Some(&0x80), "mosquitto refused {filter}");
    }
    fn encode_publish(&self, out: &mut Vec<u8>, topic: &str, payload: &[u8], seq: u64) {
        let id = (seq > 0).then(|| (seq % 65_535 + 1) as u16);
        out.push(if id.is_some() { 0x32 } else { 0x30 });
        let len = 2 + topic.len() + payload.len() + if id.is_some() { 2 } else { 0 };
        mqtt_remaining_len(len, out);
        mqtt_str(topic, out);
        if let Some(id) = id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(payload);
    }
    fn read_pub_acks(&self, conn: TcpStream, want: u64) -> u64 {
        let mut r = BufReader::with_capacity(64 * 1024, conn);
        let mut got = 0;
        while got < want {
            let Some((t, _)) = mqtt_read_packet(&mut r) else {
                break;
            };
            if t >> 4 == 4 {
                got += 1;
            }
        }
        got
    }
    fn read_deliveries(&self, conn: TcpStream, qos1: bool, each: &mut dyn FnMut(&[u8])) -> u64 {
        let mut acks = BufWriter::with_capacity(WRITE_BUF, self.clone_conn(&conn));
        let mut r = BufReader::with_capacity(256 * 1024, conn);
        let mut got = 0;
        let mut body = Vec::with_capacity(SIZE + 64);
        while let Some(t) = mqtt_read_into(&mut r, &mut body) {
            if t >> 4 == 3 && body.len() >= 2 {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut at = 2 + tl;
                if (t >> 1) & 3 == 1 && body.len() >= at + 2 {
                    if qos1 {
                        let _ = acks.write_all(&[0x40, 0x02, body[at], body[at + 1]]);
                    }
                    at += 2;
                }
                each(&body[at..]);
                got += 1;
            }
            // The acknowledgements of what one read brought, in one write.
            if r.buffer().is_empty() {
                let _ = acks.flush();
            }
        }
        got
    }
    fn topic(&self, dotted: &str) -> String {
        dotted.replace('.', "/")
    }
    fn wildcard(&self) -> &'static str {
        "bench/#"
    }
}

// ---------------------------------------------------------------- workloads

/// One workload: `pubs` publishers send `msgs` in all on `topic` to `subs` subscribers of
/// the wildcard (all in `group` if given), as fast as they can or paced at `rate` msg/s in
/// all, at QoS1 if `qos1`.
#[derive(Debug, Clone, Copy)]
struct Load {
    pubs: usize,
    subs: usize,
    group: Option<&'static str>,
    msgs: u64,
    rate: Option<u64>,
    qos1: bool,
}

fn fan<P: Proto>(p: &Arc<P>, broker_pid: u32, load: Load) -> Run {
    let Load {
        pubs,
        subs,
        group,
        msgs,
        rate,
        qos1,
    } = load;
    let origin = Instant::now();
    let filter = p.wildcard();
    let expected = if group.is_some() {
        msgs
    } else {
        msgs * subs as u64
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let mut sub_conns = Vec::new();
    let mut closers = Vec::new();
    for i in 0..subs {
        let mut c = p.connect(&format!("sub{i}"));
        p.subscribe(&mut c, filter, group, qos1);
        closers.push(p.clone_conn(&c));
        sub_conns.push(c);
    }
    let start = Arc::new(Barrier::new(pubs + subs + 1));
    let mut sub_threads = Vec::new();
    for c in sub_conns {
        let p = p.clone();
        let start = start.clone();
        let delivered = delivered.clone();
        sub_threads.push(thread::spawn(move || {
            start.wait();
            let mut lat = Vec::new();
            let mut last = 0u64;
            let got = p.read_deliveries(c, qos1, &mut |payload| {
                let now = clock(origin);
                if rate.is_some() {
                    let sent = u64::from_le_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                    lat.push(now.saturating_sub(sent));
                }
                last = now;
                delivered.fetch_add(1, Ordering::Relaxed);
            });
            (got, lat, last)
        }));
    }
    let topic = p.topic(if qos1 { "bench.q1" } else { "bench.data" });
    let mut pub_threads = Vec::new();
    for i in 0..pubs {
        let p = p.clone();
        let start = start.clone();
        let topic = topic.clone();
        let n = msgs / pubs as u64 + u64::from((i as u64) < msgs % pubs as u64);
        pub_threads.push(thread::spawn(move || {
            let mut conn = p.connect(&format!("pub{i}"));
            if qos1 {
                p.prepare_qos1(&mut conn, &topic);
            }
            let acks = qos1.then(|| {
                let c = p.clone_conn(&conn);
                let p = p.clone();
                thread::spawn(move || p.read_pub_acks(c, n))
            });
            let closer = p.clone_conn(&conn);
            let mut w = BufWriter::with_capacity(WRITE_BUF, conn);
            let mut payload = [0x5Au8; SIZE];
            // QoS0: every publish is the same bytes but for the timestamp at the payload's
            // front, so the publishers encode once (as lean for every protocol).
            let mut template = Vec::new();
            p.encode_publish(&mut template, &topic, &payload, 0);
            let at = template
                .windows(SIZE)
                .position(|w| w == payload)
                .expect("payload in the encoded publish");
            let mut frame = Vec::new();
            start.wait();
            let interval = rate.map(|r| Duration::from_nanos(1_000_000_000 * pubs as u64 / r));
            let begin = Instant::now();
            for k in 0..n {
                if let Some(iv) = interval {
                    let due = begin + iv * k as u32;
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                }
                let stamp = clock(origin).to_le_bytes();
                if qos1 {
                    payload[..8].copy_from_slice(&stamp);
                    frame.clear();
                    p.encode_publish(&mut frame, &topic, &payload, k + 1);
                    w.write_all(&frame).expect("publish");
                } else {
                    template[at..at + 8].copy_from_slice(&stamp);
                    w.write_all(&template).expect("publish");
                }
                if interval.is_some() {
                    w.flush().expect("flush");
                }
            }
            w.flush().expect("flush");
            // The connection stays open until the subscribers are done.
            (w, closer, acks)
        }));
    }
    let cpu_before = cpu_secs(broker_pid);
    start.wait();
    let t0 = clock(origin);
    let publishers: Vec<_> = pub_threads
        .into_iter()
        .map(|t| t.join().expect("publisher"))
        .collect();
    // Until everything expected arrived, or nothing more came for a while.
    let mut seen = delivered.load(Ordering::Relaxed);
    let mut progress = Instant::now();
    while seen < expected && progress.elapsed() < IDLE {
        thread::sleep(Duration::from_millis(2));
        let now = delivered.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            progress = Instant::now();
        }
    }
    let cpu_after = cpu_secs(broker_pid);
    let mut run = Run {
        expected,
        ..Default::default()
    };
    for c in &closers {
        p.close(c);
    }
    let mut last = t0;
    for t in sub_threads {
        let (got, lat, l) = t.join().expect("subscriber");
        run.delivered += got;
        run.latencies_ns.extend(lat);
        last = last.max(l);
    }
    for (w, closer, acks) in publishers {
        if let Some(acks) = acks {
            // The acknowledgements may trail the deliveries: wait for them all, or for a
            // while, then end the connection.
            let deadline = Instant::now() + IDLE;
            while !acks.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            p.close(&closer);
            run.acked += acks.join().expect("acks");
        }
        drop(w);
    }
    run.secs = (last.saturating_sub(t0)) as f64 / 1e9;
    run.cpu_secs = cpu_after - cpu_before;
    run
}

/// The floor: a relay thread copying bytes from one Unix socket to another, the publisher
/// and the subscriber as in [`fan`].
fn relay_floor(msgs: u64, rate: u64) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("relay.sock");
    let listener = UnixListener::bind(&path).expect("bind relay");
    let origin = Instant::now();
    let relay = thread::spawn(move || {
        let (mut from, _) = listener.accept().expect("pub");
        let (mut to, _) = listener.accept().expect("sub");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => to.write_all(&buf[..n]).expect("relay write"),
            }
        }
    });
    let mut publisher = UnixStream::connect(&path).expect("pub connect");
    let subscriber = UnixStream::connect(&path).expect("sub connect");
    let reader = thread::spawn(move || {
        let mut s = subscriber;
        let mut lat = Vec::new();
        let mut frame = [0u8; SIZE];
        for _ in 0..msgs {
            if s.read_exact(&mut frame).is_err() {
                break;
            }
            let sent = u64::from_le_bytes(frame[..8].try_into().unwrap_or([0; 8]));
            lat.push(clock(origin).saturating_sub(sent));
        }
        lat
    });
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let begin = Instant::now();
    let mut payload = [0u8; SIZE];
    for k in 0..msgs {
        let due = begin + interval * k as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        payload[..8].copy_from_slice(&clock(origin).to_le_bytes());
        publisher.write_all(&payload).expect("write");
    }
    let lat = reader.join().expect("reader");
    drop(publisher);
    relay.join().expect("relay");
    Run {
        expected: msgs,
        delivered: lat.len() as u64,
        latencies_ns: lat,
        secs: 1.0,
        ..Default::default()
    }
}

/// The memory of `IDLE_CONNS` connections that each subscribed and then stay idle: the
/// broker's RSS in KiB before and with them.
fn idle_memory<P: Proto>(p: &P, pid: u32) -> (u64, u64) {
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(IDLE_CONNS);
    for i in 0..IDLE_CONNS {
        let mut c = p.connect(&format!("idle{i}"));
        p.subscribe(&mut c, &p.topic(&format!("idle.{i}")), None, false);
        conns.push(c);
    }
    let with = rss_kib(pid);
    (before, with)
}

// ---------------------------------------------------------------- brokers

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn agent_bin() -> Option<PathBuf> {
    let p = std::env::var_os("PEERS_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/daemoneye-agent")
        });
    p.exists().then_some(p)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The brokers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    DaemonEye,
    Nats,
    Mosquitto,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DaemonEye => "daemoneye",
            Kind::Nats => "nats-server",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// A running broker and a client design for it.
enum Running {
    DaemonEye(Proc, Arc<DaemonEye>),
    Nats(Proc, Arc<Nats>),
    Mosquitto(Proc, Arc<Mqtt>),
}

impl Running {
    fn accepts(&self) -> bool {
        match self {
            Running::DaemonEye(_, c) => c.accepts(),
            Running::Nats(_, c) => c.accepts(),
            Running::Mosquitto(_, c) => c.accepts(),
        }
    }
    fn fan(&self, load: Load) -> Run {
        match self {
            Running::DaemonEye(p, c) => fan(c, p.0.id(), load),
            Running::Nats(p, c) => fan(c, p.0.id(), load),
            Running::Mosquitto(p, c) => fan(c, p.0.id(), load),
        }
    }
    /// Sends SIGTERM and waits for the exit: how long it took.
    fn terminate(self) -> Duration {
        let (Running::DaemonEye(mut p, _) | Running::Nats(mut p, _) | Running::Mosquitto(mut p, _)) =
            self;
        let t = Instant::now();
        let pid = nix::unistd::Pid::from_raw(p.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = p.0.wait();
        t.elapsed()
    }
    fn idle_memory(&self) -> (u64, u64) {
        match self {
            Running::DaemonEye(p, c) => idle_memory(c.as_ref(), p.0.id()),
            Running::Nats(p, c) => idle_memory(c.as_ref(), p.0.id()),
            Running::Mosquitto(p, c) => idle_memory(c.as_ref(), p.0.id()),
        }
    }
}

/// Starts a broker of `kind` in `dir` and returns it with the time from spawn until it
/// accepted a connection.
fn start(kind: Kind, dir: &Path, agent: &Path) -> (Running, Duration) {
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
    };
    let t = Instant::now();
    let running = match kind {
        Kind::DaemonEye => {
            // The bus alone, as the peers are: no collectors, store or detection.
            let conf = dir.join("agent.toml");
            std::fs::write(
                &conf,
                format!(
                    "collectors = []\n[agent]\nstate_dir = \"{}\"\n[broker]\nmax_connections = {}\n[store]\nenabled = false\n[detection]\nenabled = false\n",
                    dir.join("state").display(),
                    IDLE_CONNS + 64
                ),
            )
            .expect("agent config");
            let socket = dir.join("broker.sock");
            let mut cmd = Command::new(agent);
            cmd.arg("--config")
                .arg(&conf)
                .arg("--socket")
                .arg(&socket)
                .arg("--log-level")
                .arg("error");
            quiet(&mut cmd);
            let child = cmd.spawn().expect("spawn agent");
            Running::DaemonEye(Proc(child), Arc::new(DaemonEye { socket }))
        }
        Kind::Nats => {
            let port = free_port();
            // The subscriber's pending limit raised so that nats does not cut a fast
            // reader; JetStream in memory for the QoS1 row.
            let conf = dir.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "port: {port}\nmax_pending: 1GB\nwrite_deadline: \"30s\"\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 1GB\n}}\n",
                    dir.join("js").display()
                ),
            )
            .expect("nats conf");
            let mut cmd = Command::new(which("nats-server").expect("nats-server"));
            cmd.arg("-c").arg(&conf);
            quiet(&mut cmd);
            let child = cmd.spawn().expect("nats-server");
            Running::Nats(Proc(child), Arc::new(Nats { port }))
        }
        Kind::Mosquitto => {
            let port = free_port();
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nset_tcp_nodelay true\n"
                ),
            )
            .expect("mosquitto conf");
            let mut cmd = Command::new(which("mosquitto").expect("mosquitto"));
            cmd.arg("-c").arg(&conf);
            quiet(&mut cmd);
            let child = cmd.spawn().expect("mosquitto");
            Running::Mosquitto(Proc(child), Arc::new(Mqtt { port }))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running.accepts() {
        assert!(Instant::now() < deadline, "{} never accepted", kind.name());
        thread::sleep(Duration::from_micros(500));
    }
    (running, t.elapsed())
}

fn version(kind: Kind, agent: &Path) -> String {
    let out = match kind {
        Kind::DaemonEye => Command::new(agent).arg("--version").output(),
        Kind::Nats => Command::new(which("nats-server").expect("nats"))
            .arg("--version")
            .output(),
        Kind::Mosquitto => Command::new(which("mosquitto").expect("mosquitto"))
            .arg("-h")
            .output(),
    };
    out.map(|o| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        text.lines().next().unwrap_or("").trim().to_string()
    })
    .unwrap_or_default()
}

// ---------------------------------------------------------------- results

/// The values of one measure over the repetitions.
#[derive(Debug, Default, Clone)]
struct Series(Vec<f64>);

impl Series {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    fn json(&self) -> Value {
        json!({"median": self.median(), "min": self.min(), "max": self.max(), "runs": self.0})
    }
}

/// Every measure of every broker, by name.
#[derive(Debug, Default)]
struct Results(BTreeMap<(String, &'static str), Series>);

impl Results {
    fn add(&mut self, who: &str, measure: &'static str, v: f64) {
        self.0
            .entry((who.to_string(), measure))
            .or_default()
            .0
            .push(v);
    }
    fn get(&self, who: &str, measure: &'static str) -> Option<&Series> {
        self.0.get(&(who.to_string(), measure))
    }
}

/// What each measure is, its unit and whether more is better.
const MEASURES: &[(&str, &str, &str, bool)] = &[
    ("fan_in", "fan-in 4 -> 1, QoS0", "M msg/s", true),
    ("fan_in_lost", "  lost", "msgs", false),
    ("fan_in_cpu", "  broker CPU", "us/msg", false),
    ("fan_out", "fan-out 1 -> 4, QoS0", "M msg/s", true),
    ("fan_out_lost", "  lost", "msgs", false),
    ("fan_out_cpu", "  broker CPU", "us/msg", false),
    ("queue", "queue group of 3, QoS0", "M msg/s", true),
    ("queue_lost", "  lost", "msgs", false),
    ("queue_cpu", "  broker CPU", "us/msg", false),
    ("p50", "latency p50 @10k msg/s", "us", false),
    ("p99", "latency p99", "us", false),
    ("p999", "latency p99.9", "us", false),
    ("qos1", "QoS1 1 -> 1, acked", "M msg/s", true),
    ("qos1_lost", "  lost", "msgs", false),
    ("idle_mb", "1,000 idle connections", "MB RSS", false),
    ("idle_kib_per_conn", "  per connection", "KiB", false),
    ("start_ms", "start to accepting", "ms", false),
    ("stop_ms", "SIGTERM to exit, after the runs", "ms", false),
];

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(s: Option<&Series>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.0.len() == 1 || s.min() == s.max() => fmt(s.median()),
        Some(s) => format!("{} ({}-{})", fmt(s.median()), fmt(s.min()), fmt(s.max())),
    }
}

/// The targets of DESIGN.md section 10 and the issue, checked run by run: (what, met in
/// how many runs, of how many).
fn targets(r: &Results, reps: usize) -> Vec<(String, usize, usize)> {
    let de = |m| r.get("daemoneye", m);
    let nats = |m| r.get("nats-server", m);
    let floor = r.get("relay", "p50");
    let mut out = Vec::new();
    let per_run = |f: &dyn Fn(usize) -> Option<bool>| -> (usize, usize) {
        let mut met = 0;
        let mut of = 0;
        for i in 0..reps {
            if let Some(ok) = f(i) {
                of += 1;
                met += usize::from(ok);
            }
        }
        (met, of)
    };
    let at = |s: Option<&Series>, i: usize| s.and_then(|s| s.0.get(i).copied());
    for (m, label) in [
        ("fan_in", "fan-in >= 1.1x nats-server, 0 lost"),
        ("fan_out", "fan-out >= 1.1x nats-server, 0 lost"),
        ("queue", "queue group >= 1.1x nats-server, 0 lost"),
    ] {
        let lost: &'static str = match m {
            "fan_in" => "fan_in_lost",
            "fan_out" => "fan_out_lost",
            _ => "queue_lost",
        };
        let (met, of) =
            per_run(&|i| Some(at(de(m), i)? >= 1.1 * at(nats(m), i)? && at(de(lost), i)? == 0.0));
        out.push((label.to_string(), met, of));
    }
    let (met, of) = per_run(&|i| Some(at(de("fan_in_cpu"), i)? <= 0.5));
    out.push(("broker CPU <= 0.5 us/msg (fan-in)".into(), met, of));
    let (met, of) = per_run(&|i| Some(at(de("p50"), i)? <= 1.5 * at(floor, i)?));
    out.push(("p50 <= 1.5x the relay floor".into(), met, of));
    let (met, of) = per_run(&|i| Some(at(de("p99"), i)? < at(nats("p99"), i)?));
    out.push(("p99 < nats-server's p99".into(), met, of));
    let (met, of) = per_run(&|i| Some(at(de("idle_mb"), i)? < 20.0));
    out.push(("1,000 idle connections < 20 MB".into(), met, of));
    out
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().next().unwrap_or("").to_string();
    json!({
        "cpu": model,
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// The latency distribution of a run as (percentile, microseconds) points for a CDF.
fn cdf(lat: &[u64]) -> Vec<(f64, f64)> {
    let mut v = lat.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Vec::new();
    }
    // Every percent to 90, every tenth to 99, every hundredth above.
    let steps = (0..90)
        .map(|i| f64::from(i) / 100.0)
        .chain((900..990).map(|i| f64::from(i) / 1000.0))
        .chain((9900..=10000).map(|i| f64::from(i) / 10000.0));
    let mut points = Vec::new();
    for q in steps {
        let idx = ((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1);
        points.push(((q * 10000.0).round() / 100.0, v[idx] as f64 / 1000.0));
    }
    points
}

/// Throughput bars and the latency CDF, side by side.
fn svg(r: &Results, cdfs: &BTreeMap<String, Vec<(f64, f64)>>, names: &[String]) -> String {
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"];
    let color = |name: &str| {
        names
            .iter()
            .position(|n| n == name)
            .map_or(colors[3], |i| colors[i.min(2)])
    };
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"400\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"960\" height=\"400\" fill=\"white\"/>\n",
    );
    // Bars.
    let rows = [
        ("fan_in", "fan-in 4->1"),
        ("fan_out", "fan-out 1->4"),
        ("queue", "queue group 3"),
        ("qos1", "QoS1 1->1"),
    ];
    let top = rows
        .iter()
        .flat_map(|(m, _)| {
            names
                .iter()
                .filter_map(move |n| r.get(n, m).map(Series::median))
        })
        .fold(0.0f64, f64::max)
        .max(0.1);
    let (x0, y0, w, h) = (50.0, 40.0, 400.0, 300.0);
    s += &format!(
        "<text x=\"{x0}\" y=\"20\" font-size=\"14\">Delivered, M msg/s (median of runs)</text>\n"
    );
    s += &format!(
        "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        y0 + h,
        x0 + w,
        y0 + h
    );
    let group_w = w / rows.len() as f64;
    let bar_w = group_w * 0.8 / names.len() as f64;
    for (g, (m, label)) in rows.iter().enumerate() {
        let gx = x0 + g as f64 * group_w + group_w * 0.1;
        for (i, n) in names.iter().enumerate() {
            let Some(v) = r.get(n, m).map(Series::median) else {
                continue;
            };
            let bh = h * v / top;
            let bx = gx + i as f64 * bar_w;
            s += &format!(
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{:.2}</text>\n",
                y0 + h - bh,
                bar_w - 2.0,
                color(n),
                bx + bar_w / 2.0 - 1.0,
                y0 + h - bh - 3.0,
                v
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            gx + group_w * 0.4,
            y0 + h + 16.0
        );
    }
    // Legend.
    for (i, n) in names
        .iter()
        .chain(std::iter::once(&"relay floor".to_string()))
        .enumerate()
    {
        let lx = x0 + i as f64 * 120.0;
        s += &format!(
            "<rect x=\"{lx}\" y=\"375\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"386\">{n}</text>\n",
            if n == "relay floor" {
                colors[3]
            } else {
                color(n)
            },
            lx + 16.0
        );
    }
    // CDF: x is log10 of microseconds from 1 us to 100 ms.
    let (cx0, cy0, cw, ch) = (540.0, 40.0, 390.0, 300.0);
    s += &format!(
        "<text x=\"{cx0}\" y=\"20\" font-size=\"14\">One-way latency at 10k msg/s by percentile (last run)</text>\n"
    );
    s += &format!(
        "<rect x=\"{cx0}\" y=\"{cy0}\" width=\"{cw}\" height=\"{ch}\" fill=\"none\" stroke=\"black\"/>\n"
    );
    let lx = |us: f64| cx0 + cw * (us.max(1.0).log10() / 5.0).min(1.0);
    // y is the tail's scale: 0, 90, 99, 99.9 and 99.99 percent equally spaced.
    let ly = |pct: f64| {
        let nines = -(1.0 - pct / 100.0).max(1e-4).log10();
        cy0 + ch - ch * nines / 4.0
    };
    for (e, label) in [
        (0, "1us"),
        (1, "10us"),
        (2, "100us"),
        (3, "1ms"),
        (4, "10ms"),
        (5, "100ms"),
    ] {
        let x = lx(10f64.powi(e));
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{cy0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            cy0 + ch,
            cy0 + ch + 16.0
        );
    }
    for pct in [0.0, 50.0, 90.0, 99.0, 99.9, 99.99] {
        let y = ly(pct);
        s += &format!(
            "<line x1=\"{cx0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{pct}%</text>\n",
            cx0 + cw,
            cx0 - 4.0,
            y + 4.0
        );
    }
    for (n, points) in cdfs {
        let path: Vec<String> = points
            .iter()
            .map(|(pct, us)| format!("{:.1},{:.1}", lx(*us), ly(*pct)))
            .collect();
        let c = if n == "relay" { colors[3] } else { color(n) };
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
    }
    s += "</svg>\n";
    s
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let msgs = env("PEERS_MSGS", 1_000_000);
    let qos1_msgs = env("PEERS_QOS1_MSGS", 200_000);
    let reps = env("PEERS_REPS", 3).max(1) as usize;
    let Some(agent) = agent_bin() else {
        println!(
            "peers: no agent binary; run `cargo build --release -p daemoneye-io` first (or set PEERS_AGENT_BIN)"
        );
        return;
    };
    // A thousand idle connections and the runs' own need more descriptors than the usual
    // soft limit; the brokers inherit it.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(65_536),
            hard,
        );
    }
    let mut kinds = vec![Kind::DaemonEye];
    // `PEERS_ONLY=daemoneye` (a comma-separated list) leaves the others out.
    let only = std::env::var("PEERS_ONLY").unwrap_or_default();
    for (kind, bin) in [(Kind::Nats, "nats-server"), (Kind::Mosquitto, "mosquitto")] {
        if !only.is_empty() && !only.split(',').any(|o| o == kind.name()) {
            continue;
        }
        if which(bin).is_some() {
            kinds.push(kind);
        } else {
            println!(
                "peers: {bin} is not installed (apt-get install -y {bin}); its rows are empty"
            );
        }
    }
    let names: Vec<String> = kinds.iter().map(|k| k.name().to_string()).collect();
    // mosquitto is an order of magnitude slower: a fifth of the messages keeps the run short
    // (rates are rates).
    let scaled = |kind: Kind, n: u64| if kind == Kind::Mosquitto { n / 5 } else { n };
    println!(
        "peers: {reps} runs; {msgs} messages of {SIZE} B a throughput run (mosquitto {}), {qos1_msgs} at QoS1, {LAT_MSGS} paced at {LAT_RATE} msg/s",
        msgs / 5
    );
    // The machine as the run starts (its load average included: the host is shared).
    let machine = machine();
    let mut results = Results::default();
    let mut cdfs: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for rep in 0..reps {
        println!("run {}/{reps}", rep + 1);
        let floor = relay_floor(LAT_MSGS, LAT_RATE);
        results.add("relay", "p50", floor.pct(0.5));
        results.add("relay", "p99", floor.pct(0.99));
        results.add("relay", "p999", floor.pct(0.999));
        cdfs.insert("relay".into(), cdf(&floor.latencies_ns));
        for &kind in &kinds {
            let name = kind.name();
            let dir = tempfile::tempdir().expect("tempdir");
            // Start-up and the memory of idle connections on a broker of their own, so that
            // nothing the throughput runs left behind is counted, or weighs on them.
            let (fresh, ready) = start(kind, dir.path(), &agent);
            results.add(name, "start_ms", ready.as_secs_f64() * 1e3);
            let (before, with) = fresh.idle_memory();
            results.add(name, "idle_mb", with as f64 / 1024.0);
            results.add(
                name,
                "idle_kib_per_conn",
                with.saturating_sub(before) as f64 / IDLE_CONNS as f64,
            );
            drop(fresh);
            let dir = tempfile::tempdir().expect("tempdir");
            let (broker, _) = start(kind, dir.path(), &agent);
            let throughput = |m: &'static str, load: Load, results: &mut Results| {
                let r = broker.fan(load);
                results.add(name, m, r.rate() / 1e6);
                results.add(
                    name,
                    match m {
                        "fan_in" => "fan_in_lost",
                        "fan_out" => "fan_out_lost",
                        "queue" => "queue_lost",
                        _ => "qos1_lost",
                    },
                    r.lost() as f64,
                );
                if m != "qos1" {
                    let cpu: &'static str = match m {
                        "fan_in" => "fan_in_cpu",
                        "fan_out" => "fan_out_cpu",
                        _ => "queue_cpu",
                    };
                    results.add(name, cpu, r.cpu_us_per_msg());
                }
                if m == "qos1" && r.acked < load.msgs {
                    println!(
                        "  {name}: {} of {} QoS1 publishes acknowledged",
                        r.acked, load.msgs
                    );
                }
                r
            };
            let n = scaled(kind, msgs);
            let base = Load {
                pubs: 1,
                subs: 1,
                group: None,
                msgs: n,
                rate: None,
                qos1: false,
            };
            throughput("fan_in", Load { pubs: 4, ..base }, &mut results);
            throughput("fan_out", Load { subs: 4, ..base }, &mut results);
            throughput(
                "queue",
                Load {
                    subs: 3,
                    group: Some("workers"),
                    ..base
                },
                &mut results,
            );
            let lat = broker.fan(Load {
                msgs: LAT_MSGS,
                rate: Some(LAT_RATE),
                ..base
            });
            results.add(name, "p50", lat.pct(0.5));
            results.add(name, "p99", lat.pct(0.99));
            results.add(name, "p999", lat.pct(0.999));
            cdfs.insert(name.to_string(), cdf(&lat.latencies_ns));
            throughput(
                "qos1",
                Load {
                    msgs: scaled(kind, qos1_msgs),
                    qos1: true,
                    ..base
                },
                &mut results,
            );
            println!(
                "  {name:<12} fan-in {:.2}  fan-out {:.2}  queue {:.2}  qos1 {:.3} M msg/s; p50 {:.1} us (floor {:.1}); idle {:.1} MB",
                results.get(name, "fan_in").map_or(0.0, |s| s.0[rep]),
                results.get(name, "fan_out").map_or(0.0, |s| s.0[rep]),
                results.get(name, "queue").map_or(0.0, |s| s.0[rep]),
                results.get(name, "qos1").map_or(0.0, |s| s.0[rep]),
                lat.pct(0.5),
                floor.pct(0.5),
                with as f64 / 1024.0,
            );
            results.add(name, "stop_ms", broker.terminate().as_secs_f64() * 1e3);
        }
    }

    // The table: medians (ranges), then the ratios run by run.
    println!();
    print!("{:<28} {:<8}", "measure", "unit");
    for n in &names {
        print!(" {n:>22}");
    }
    println!(" {:>16}", "relay floor");
    for (m, label, unit, _) in MEASURES {
        print!("{label:<28} {unit:<8}");
        for n in &names {
            print!(" {:>22}", cell(results.get(n, m)));
        }
        println!(" {:>16}", cell(results.get("relay", m)));
    }
    let mut ratios = serde_json::Map::new();
    println!();
    println!("ratios daemoneye / peer, medians of the runs' ratios (range):");
    for (m, label, _, _) in MEASURES {
        if m.ends_with("_lost") {
            continue;
        }
        let Some(de) = results.get("daemoneye", m) else {
            continue;
        };
        let mut line = format!("  {:<26}", label.trim());
        for peer in names.iter().skip(1).map(String::as_str).chain(["relay"]) {
            let Some(other) = results.get(peer, m) else {
                continue;
            };
            let per_run = Series(
                de.0.iter()
                    .zip(&other.0)
                    .map(|(a, b)| a / b.max(1e-9))
                    .collect(),
            );
            line += &format!(" vs {peer}: {}", cell(Some(&per_run)));
            ratios.insert(format!("{m}_vs_{peer}"), per_run.json());
        }
        println!("{line}");
    }
    println!();
    println!("targets, run by run:");
    let met = targets(&results, reps);
    for (what, ok, of) in &met {
        println!("  {what:<44} met in {ok} of {of}");
    }

    let mut brokers = serde_json::Map::new();
    for n in names.iter().map(String::as_str).chain(["relay"]) {
        let mut m = serde_json::Map::new();
        for (measure, _, _, _) in MEASURES {
            if let Some(s) = results.get(n, measure) {
                m.insert(measure.to_string(), s.json());
            }
        }
        brokers.insert(n.to_string(), Value::Object(m));
    }
    let versions: serde_json::Map<String, Value> = kinds
        .iter()
        .map(|k| (k.name().to_string(), Value::from(version(*k, &agent))))
        .collect();
    let report = json!({
        "machine": machine,
        "versions": versions,
        "runs": reps,
        "messages": msgs,
        "qos1_messages": qos1_msgs,
        "payload_bytes": SIZE,
        "units": MEASURES.iter().map(|(m, _, u, _)| (m.to_string(), Value::from(*u))).collect::<serde_json::Map<_, _>>(),
        "results": brokers,
        "ratios": ratios,
        "targets": met.iter().map(|(w, ok, of)| json!({"target": w, "met": ok, "of": of})).collect::<Vec<_>>(),
        "latency_cdf_us": cdfs.iter().map(|(n, p)| (n.clone(), json!(p))).collect::<serde_json::Map<_, _>>(),
    });
    let out = std::env::var_os("PEERS_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    std::fs::create_dir_all(&out).expect("results directory");
    std::fs::write(
        out.join("peers.json"),
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write peers.json");
    std::fs::write(out.join("peers.svg"), svg(&results, &cdfs, &names)).expect("write peers.svg");
    println!();
    println!(
        "wrote {} and {}",
        out.join("peers.json").display(),
        out.join("peers.svg").display()
    );
}
