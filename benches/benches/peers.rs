//! End-to-end benchmark against peers, in one run: DaemonEye's agent, nats-server and
//! mosquitto, each driven by a lean blocking client per connection (one OS thread each,
//! 64 KiB buffered writes), so that the brokers and not the clients are measured.
//!
//! ```sh
//! apt-get install -y nats-server mosquitto      # peers (skipped with a note if absent)
//! cargo build --release -p daemoneye-io         # the agent under test
//! cargo bench -p daemoneye-benches --bench peers
//! ```
//!
//! Workloads (DESIGN.md section 10): fan-in of 4 publishers to 1 wildcard subscriber with
//! 256-byte QoS0 payloads (delivered rate, loss, broker CPU per message); one-way latency at
//! 10k msg/s against a plain relay (the floor); a 3-member queue group; RSS with 64
//! connections each holding a full default queue; agent start and shutdown times.
//! `PEERS_MSGS` sets the message count (default 1,000,000).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_proto::pb::bus::{self as pb, frame::Body};
use daemoneye_proto::{FrameDecoder, encode};

const SIZE: usize = 256;
const WRITE_BUF: usize = 64 * 1024;

fn clock(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Result of one run.
#[derive(Debug, Default, Clone)]
struct Run {
    sent: u64,
    delivered: u64,
    secs: f64,
    cpu_secs: f64,
    latencies_us: Vec<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs.max(1e-9)
    }
    fn pct(&self, q: f64) -> u64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        if v.is_empty() {
            0
        } else {
            v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
        }
    }
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
    /// Subscribes (optionally in a queue group) and returns once the broker confirmed it.
    fn subscribe(&self, conn: &mut Self::Conn, filter: &str, group: Option<&str>);
    fn write_publish(&self, w: &mut BufWriter<Self::Conn>, topic: &str, payload: &[u8]);
    /// Reads deliveries until `want` arrived or the stream is idle for `idle`; calls `each`
    /// with every payload.
    fn read_deliveries(
        &self,
        conn: Self::Conn,
        want: u64,
        idle: Duration,
        each: &mut dyn FnMut(&[u8]),
    ) -> u64;
    /// Topic spelling: `.` for DaemonEye and NATS, `/` for MQTT.
    fn topic(&self, dotted: &str) -> String {
        dotted.to_string()
    }
    fn wildcard(&self) -> &'static str;
}

struct DaemonEye {
    socket: PathBuf,
}

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

impl Proto for DaemonEye {
    type Conn = UnixStream;
    fn connect(&self, name: &str) -> UnixStream {
        let mut c = UnixStream::connect(&self.socket).expect("connect agent");
        c.write_all(&de_frame(Body::Hello(pb::Hello {
            protocol_version: 1,
            client_name: name.into(),
            ..Default::default()
        })))
        .expect("hello");
        let mut d = FrameDecoder::default();
        de_read_until(&mut c, &mut d, |b| matches!(b, Body::Welcome(_)));
        c
    }
    fn subscribe(&self, conn: &mut UnixStream, filter: &str, group: Option<&str>) {
        conn.write_all(&de_frame(Body::Subscribe(pb::Subscribe {
            sub_id: 1,
            filter: filter.into(),
            queue_group: group.unwrap_or("").into(),
            // Big enough that Block never stalls publishers on a reading subscriber.
            capacity: 100_000,
            ..Default::default()
        })))
        .expect("subscribe");
        let mut d = FrameDecoder::default();
        de_read_until(conn, &mut d, |b| matches!(b, Body::SubAck(_)));
    }
    fn write_publish(&self, w: &mut BufWriter<UnixStream>, topic: &str, payload: &[u8]) {
        let f = pb::Frame {
            body: Some(Body::Publish(pb::Publish {
                topic: topic.into(),
                payload: Bytes::copy_from_slice(payload),
                ..Default::default()
            })),
        };
        let mut v = Vec::with_capacity(SIZE + 64);
        encode(&f, u32::MAX, &mut v).expect("encode");
        w.write_all(&v).expect("publish");
    }
    fn read_deliveries(
        &self,
        mut conn: UnixStream,
        want: u64,
        idle: Duration,
        each: &mut dyn FnMut(&[u8]),
    ) -> u64 {
        conn.set_read_timeout(Some(idle)).expect("timeout");
        let mut d = FrameDecoder::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < want {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            d.push(&buf[..n]).expect("push");
            while let Some(f) = d.next_frame().expect("frame") {
                if let Some(Body::Deliver(m)) = f.body {
                    each(&m.payload);
                    got += 1;
                }
            }
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
    fn subscribe(&self, conn: &mut TcpStream, filter: &str, group: Option<&str>) {
        let cmd = match group {
            Some(g) => format!("SUB {filter} {g} 1\r\nPING\r\n"),
            None => format!("SUB {filter} 1\r\nPING\r\n"),
        };
        conn.write_all(cmd.as_bytes()).expect("sub");
        while !read_line(conn).starts_with("PONG") {}
    }
    fn write_publish(&self, w: &mut BufWriter<TcpStream>, topic: &str, payload: &[u8]) {
        write!(w, "PUB {topic} {}\r\n", payload.len()).expect("pub");
        w.write_all(payload).expect("payload");
        w.write_all(b"\r\n").expect("crlf");
    }
    fn read_deliveries(
        &self,
        conn: TcpStream,
        want: u64,
        idle: Duration,
        each: &mut dyn FnMut(&[u8]),
    ) -> u64 {
        conn.set_read_timeout(Some(idle)).expect("timeout");
        let mut w = conn.try_clone().expect("clone");
        let mut r = BufReader::with_capacity(256 * 1024, conn);
        let mut got = 0;
        let mut line = String::new();
        let mut payload = vec![0u8; SIZE + 2];
        while got < want {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.starts_with("MSG ") {
                let size: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                payload.resize(size + 2, 0);
                if r.read_exact(&mut payload).is_err() {
                    break;
                }
                each(&payload[..size]);
                got += 1;
            } else if line.starts_with("PING") {
                let _ = w.write_all(b"PONG\r\n");
            }
        }
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
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((h[0], body))
}

impl Proto for Mqtt {
    type Conn = TcpStream;
    fn connect(&self, name: &str) -> TcpStream {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect mosquitto");
        c.set_nodelay(true).expect("nodelay");
        let mut var = Vec::new();
        mqtt_str("MQTT", &mut var);
        var.extend_from_slice(&[4, 0x02, 0, 60]); // v3.1.1, clean session, keepalive 60 s
        mqtt_str(&format!("{name}-{}", std::process::id()), &mut var);
        let mut p = vec![0x10];
        mqtt_remaining_len(var.len(), &mut p);
        p.extend(var);
        c.write_all(&p).expect("connect");
        let (t, _) = mqtt_read_packet(&mut c).expect("connack");
        assert_eq!(t >> 4, 2, "CONNACK");
        c
    }
    fn subscribe(&self, conn: &mut TcpStream, filter: &str, _group: Option<&str>) {
        let mut var = vec![0, 1];
        mqtt_str(filter, &mut var);
        var.push(0);
        let mut p = vec![0x82];
        mqtt_remaining_len(var.len(), &mut p);
        p.extend(var);
        conn.write_all(&p).expect("subscribe");
        let (t, _) = mqtt_read_packet(conn).expect("suback");
        assert_eq!(t >> 4, 9, "SUBACK");
    }
    fn write_publish(&self, w: &mut BufWriter<TcpStream>, topic: &str, payload: &[u8]) {
        let mut p = Vec::with_capacity(payload.len() + topic.len() + 8);
        p.push(0x30);
        mqtt_remaining_len(2 + topic.len() + payload.len(), &mut p);
        mqtt_str(topic, &mut p);
        p.extend_from_slice(payload);
        w.write_all(&p).expect("publish");
    }
    fn read_deliveries(
        &self,
        conn: TcpStream,
        want: u64,
        idle: Duration,
        each: &mut dyn FnMut(&[u8]),
    ) -> u64 {
        conn.set_read_timeout(Some(idle)).expect("timeout");
        let mut r = BufReader::with_capacity(256 * 1024, conn);
        let mut got = 0;
        while got < want {
            let Some((t, body)) = mqtt_read_packet(&mut r) else {
                break;
            };
            if t >> 4 == 3 && body.len() >= 2 {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                each(&body[2 + tl..]);
                got += 1;
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

/// `pubs` publishers send `msgs` in all to `subs` subscribers (all in `group` if given), as
/// fast as they can, or paced at `rate` msg/s in all.
fn fan<P: Proto>(
    p: &Arc<P>,
    broker_pid: Option<u32>,
    pubs: usize,
    subs: usize,
    group: Option<&str>,
    msgs: u64,
    rate: Option<u64>,
) -> Run {
    let origin = Instant::now();
    let filter = p.wildcard();
    let mut sub_conns = Vec::new();
    for i in 0..subs {
        let mut c = p.connect(&format!("sub{i}"));
        p.subscribe(&mut c, filter, group);
        sub_conns.push(c);
    }
    // A group member cannot know its share: it reads until `msgs` or the idle timeout.
    let per_sub_want = msgs;
    let start = Arc::new(Barrier::new(pubs + subs + 1));
    let mut sub_threads = Vec::new();
    for c in sub_conns {
        let p = p.clone();
        let start = start.clone();
        sub_threads.push(thread::spawn(move || {
            start.wait();
            let mut lat = Vec::new();
            let mut last = 0u64;
            let got = p.read_deliveries(c, per_sub_want, Duration::from_secs(3), &mut |payload| {
                let now = clock(origin);
                let sent = u64::from_le_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                lat.push(now.saturating_sub(sent) / 1000);
                last = now;
            });
            (got, lat, last)
        }));
    }
    let topic = p.topic("bench.data");
    let mut pub_threads = Vec::new();
    for i in 0..pubs {
        let p = p.clone();
        let start = start.clone();
        let topic = topic.clone();
        let n = msgs / pubs as u64 + u64::from((i as u64) < msgs % pubs as u64);
        pub_threads.push(thread::spawn(move || {
            let conn = p.connect(&format!("pub{i}"));
            let mut w = BufWriter::with_capacity(WRITE_BUF, conn);
            let mut payload = [0x5Au8; SIZE];
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
                payload[..8].copy_from_slice(&clock(origin).to_le_bytes());
                p.write_publish(&mut w, &topic, &payload);
                if interval.is_some() {
                    w.flush().expect("flush");
                }
            }
            w.flush().expect("flush");
            // Keep the connection open until the subscribers are done.
            w
        }));
    }
    let cpu_before = broker_pid.map_or(0.0, cpu_secs);
    start.wait();
    let t0 = clock(origin);
    let writers: Vec<_> = pub_threads
        .into_iter()
        .map(|t| t.join().expect("publisher"))
        .collect();
    let mut run = Run {
        sent: msgs,
        ..Default::default()
    };
    let mut last = t0;
    for t in sub_threads {
        let (got, lat, l) = t.join().expect("subscriber");
        run.delivered += got;
        run.latencies_us.extend(lat);
        last = last.max(l);
    }
    run.secs = (last.saturating_sub(t0)) as f64 / 1e9;
    run.cpu_secs = broker_pid.map_or(0.0, cpu_secs) - cpu_before;
    drop(writers);
    run
}

/// The floor: a relay thread copying bytes from one Unix socket to another.
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
            lat.push(clock(origin).saturating_sub(sent) / 1000);
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
        sent: msgs,
        delivered: lat.len() as u64,
        latencies_us: lat,
        secs: 1.0,
        ..Default::default()
    }
}

// ---------------------------------------------------------------- brokers

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on port {port}");
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

fn start_agent(bin: &Path, dir: &Path) -> (Proc, PathBuf, Duration) {
    let socket = dir.join("broker.sock");
    let t = Instant::now();
    let mut child = Command::new(bin)
        .arg("--socket")
        .arg(&socket)
        .arg("--log-level")
        .arg("error")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while err.read_line(&mut line).expect("read") > 0 && !line.contains("listening on") {}
    let ready = t.elapsed();
    // Keep reading the agent's stderr so that a later log line never meets a closed pipe.
    thread::spawn(move || {
        let mut rest = String::new();
        while err.read_line(&mut rest).unwrap_or(0) > 0 {
            eprint!("agent: {rest}");
            rest.clear();
        }
    });
    (Proc(child), socket, ready)
}

fn report(name: &str, r: &Run, with_cpu: bool) {
    let loss = r.sent.saturating_sub(r.delivered);
    let cpu = if with_cpu && r.delivered > 0 {
        format!(
            ", broker CPU {:.2} us/msg",
            r.cpu_secs * 1e6 / r.delivered as f64
        )
    } else {
        String::new()
    };
    println!(
        "  {name:<12} {:>10.0} msg/s delivered, lost {loss} of {} ({:.1}%), p50 {} us, p99 {} us{cpu}",
        r.rate(),
        r.sent,
        100.0 * loss as f64 / r.sent.max(1) as f64,
        r.pct(0.5),
        r.pct(0.99)
    );
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    let msgs: u64 = std::env::var("PEERS_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let Some(agent) = agent_bin() else {
        println!(
            "peers: no agent binary; run `cargo build --release -p daemoneye-io` first (or set PEERS_AGENT_BIN)"
        );
        return;
    };
    // Memory, on a fresh agent: 64 connections (63 subscribers that never read and a
    // filler),
    // each queue filled to its default capacity (1000 x 256 B).
    {
        let mem_dir = tempfile::tempdir().expect("tempdir");
        let (mem_agent, mem_socket, _) = start_agent(&agent, mem_dir.path());
        let mem = DaemonEye { socket: mem_socket };
        let pid = mem_agent.0.id();
        let before = rss_kib(pid);
        let mut idle = Vec::new();
        for i in 0..63 {
            let mut c = mem.connect(&format!("idle{i}"));
            c.write_all(&de_frame(Body::Subscribe(pb::Subscribe {
                sub_id: 1,
                filter: "mem.fill".into(),
                overflow: pb::OverflowStrategy::DropNewest as i32,
                ..Default::default()
            })))
            .expect("subscribe");
            idle.push(c);
        }
        let mut filler = mem.connect("filler");
        filler
            .write_all(&de_frame(Body::Subscribe(pb::Subscribe {
                sub_id: 9,
                filter: "probe.reply".into(),
                ..Default::default()
            })))
            .expect("sub");
        let mut d = FrameDecoder::default();
        de_read_until(&mut filler, &mut d, |b| matches!(b, Body::SubAck(_)));
        let mut w = BufWriter::with_capacity(WRITE_BUF, filler.try_clone().expect("clone"));
        // Socket buffers fill first, then each queue up to its capacity; the rest is dropped.
        for _ in 0..5_000 {
            mem.write_publish(&mut w, "mem.fill", &[0x42; SIZE]);
        }
        // A stats request after them on the same connection: its reply means all were routed.
        w.write_all(&de_frame(Body::Publish(pb::Publish {
            topic: "$sys.broker.stats".into(),
            reply_to: "probe.reply".into(),
            ..Default::default()
        })))
        .expect("request");
        w.flush().expect("flush");
        de_read_until(&mut filler, &mut d, |b| matches!(b, Body::Deliver(_)));
        let after = rss_kib(pid);
        println!(
            "memory: 64 connections, 63 stalled subscribers with full default queues of {SIZE} B"
        );
        println!(
            "  daemoneye RSS {:.1} MB (idle {:.1} MB)",
            after as f64 / 1024.0,
            before as f64 / 1024.0
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (agent_proc, socket, ready) = start_agent(&agent, dir.path());
    let de = Arc::new(DaemonEye {
        socket: socket.clone(),
    });
    let de_pid = agent_proc.0.id();

    let nats = which("nats-server").map(|bin| {
        let port = free_port();
        // The subscriber's pending limit raised so that nats does not cut a fast reader.
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!("port: {port}\nmax_pending: 1GB\nwrite_deadline: \"30s\"\n"),
        )
        .expect("conf");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats");
        wait_port(port);
        (Proc(child), Arc::new(Nats { port }))
    });
    let mosq = which("mosquitto").map(|bin| {
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nset_tcp_nodelay true\n")).expect("conf");
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("mosquitto");
        wait_port(port);
        (Proc(child), Arc::new(Mqtt { port }))
    });

    println!("fan-in: 4 publishers -> 1 wildcard subscriber, {SIZE} B, QoS0, {msgs} messages");
    let r = fan(&de, Some(de_pid), 4, 1, None, msgs, None);
    report("daemoneye", &r, true);
    let de_fan = r.rate();
    if let Some((p, n)) = &nats {
        let r = fan(n, Some(p.0.id()), 4, 1, None, msgs, None);
        report("nats-server", &r, true);
        println!(
            "  ratio daemoneye / nats-server: {:.2}",
            de_fan / r.rate().max(1.0)
        );
    } else {
        println!("  nats-server: not installed (apt-get install -y nats-server)");
    }
    if let Some((p, m)) = &mosq {
        let r = fan(m, Some(p.0.id()), 4, 1, None, msgs, None);
        report("mosquitto", &r, true);
        println!(
            "  ratio daemoneye / mosquitto: {:.2}",
            de_fan / r.rate().max(1.0)
        );
    } else {
        println!("  mosquitto: not installed (apt-get install -y mosquitto)");
    }

    let lat_msgs = 20_000;
    println!("latency: 1 publisher at 10k msg/s -> broker -> 1 subscriber, {lat_msgs} messages");
    let floor = relay_floor(lat_msgs, 10_000);
    println!(
        "  relay floor  p50 {} us, p99 {} us",
        floor.pct(0.5),
        floor.pct(0.99)
    );
    let r = fan(&de, None, 1, 1, None, lat_msgs, Some(10_000));
    report("daemoneye", &r, false);
    println!(
        "  ratio p50 daemoneye / relay floor: {:.2}",
        r.pct(0.5) as f64 / floor.pct(0.5).max(1) as f64
    );
    if let Some((_, n)) = &nats {
        report(
            "nats-server",
            &fan(n, None, 1, 1, None, lat_msgs, Some(10_000)),
            false,
        );
    }
    if let Some((_, m)) = &mosq {
        report(
            "mosquitto",
            &fan(m, None, 1, 1, None, lat_msgs, Some(10_000)),
            false,
        );
    }

    println!("queue group: 1 publisher -> 3 members, {SIZE} B, QoS0, {msgs} messages");
    let r = fan(&de, Some(de_pid), 1, 3, Some("workers"), msgs, None);
    report("daemoneye", &r, true);
    if let Some((p, n)) = &nats {
        let rn = fan(n, Some(p.0.id()), 1, 3, Some("workers"), msgs, None);
        report("nats-server", &rn, true);
        println!(
            "  ratio daemoneye / nats-server: {:.2}",
            r.rate() / rn.rate().max(1.0)
        );
    }

    // Start and shutdown.
    let t = Instant::now();
    let pid = nix::unistd::Pid::from_raw(agent_proc.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let mut agent_proc = agent_proc;
    let _ = agent_proc.0.wait();
    println!(
        "agent: start to listening {:.1} ms, SIGTERM to exit {:.1} ms",
        ready.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
