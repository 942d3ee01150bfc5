//! The lean clients, one per protocol: the same design for every broker (one OS thread a
//! connection, publishes encoded once, deliveries found in place).

use super::*;

/// The publishing and subscribing side of one protocol.
pub(crate) trait Proto: Send + Sync + 'static {
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

pub(crate) struct DaemonEye {
    pub(crate) socket: PathBuf,
}

/// Distinct client names, so that no two runs share a publisher id (QoS1 deduplicates by
/// publisher and sequence).
pub(crate) static CLIENTS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn de_frame(body: Body) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&pb::Frame { body: Some(body) }, u32::MAX, &mut v).expect("encode");
    v
}

pub(crate) fn de_read_until(
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
pub(crate) fn pb_varint(buf: &mut &[u8]) -> Option<u64> {
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
pub(crate) fn pb_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Result<&'a [u8], u64>)> {
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
pub(crate) fn de_scan(buf: &[u8], each: &mut dyn FnMut(&[u8], u64)) -> usize {
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

pub(crate) struct Nats {
    pub(crate) port: u16,
}

pub(crate) fn read_line(conn: &mut TcpStream) -> String {
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
pub(crate) fn nats_read(conn: TcpStream, pong: bool, each: &mut dyn FnMut(&str, &[u8]) -> bool) {
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

pub(crate) struct Mqtt {
    pub(crate) port: u16,
}

pub(crate) fn mqtt_remaining_len(mut n: usize, out: &mut Vec<u8>) {
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

pub(crate) fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn mqtt_read_packet(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut body = Vec::new();
    let t = mqtt_read_into(r, &mut body)?;
    Some((t, body))
}

/// Reads one packet into `body` (reused: no allocation per message); returns its type byte.
pub(crate) fn mqtt_read_into(r: &mut impl Read, body: &mut Vec<u8>) -> Option<u8> {
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
