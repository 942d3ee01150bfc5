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

mod protocols;
mod results;

use protocols::*;
use results::*;

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
