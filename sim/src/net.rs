//! Layer 2: the real `daemoneye-io` broker server and client library over turmoil's
//! simulated network, in virtual time.
//!
//! One broker host runs `server::serve` behind a turmoil listener; publisher hosts and
//! subscriber hosts run the client library (reconnect, QoS1 resend, dedup) through a turmoil
//! connector. The seed drives turmoil (`rng_seed`, a fixed epoch) and the fault schedule:
//! the broker crashed and bounced, publishers and subscribers crashed and bounced, links
//! partitioned and repaired, held and released. Every `select!` in the io crate is
//! `biased`, and every clock is tokio's (virtual here), so a seed replays exactly.
//!
//! Checked while it runs: a PubAck never claims more deliveries than subscribers have
//! seen (DESIGN.md section 9, invariant 1), per-publisher order on each subscriber
//! connection (2), nothing delivered that the filter does not match (4). Then faults stop
//! and every publisher's every publish must be acknowledged within a bounded virtual time
//! (7).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig, PeerCreds};
use daemoneye_core::rng::SeededRng;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_io::clock::MonotonicClock;
use daemoneye_io::transport::{Connector, Listener};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};

use crate::world::{Violation, naive_match};

const UID: u32 = 1000;
const PORT: u16 = 7100;
const PUBLISHERS: usize = 2;
const SUBSCRIBERS: usize = 2;
/// Publishes per publisher incarnation.
const MESSAGES: u32 = 40;
const FILTER: &str = "events.#";

/// What to run.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Virtual time of the fault phase.
    pub fault_time: Duration,
    /// Print every event.
    pub verbose: bool,
    /// Run the broker that sends PubAck before delivering, which must be caught.
    pub canary: bool,
}

impl NetConfig {
    /// Defaults for `seed`: 20 s of faults.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            fault_time: Duration::from_secs(20),
            verbose: false,
            canary: false,
        }
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone)]
pub struct NetOutcome {
    /// The seed.
    pub seed: u64,
    /// Turmoil steps (1 ms of virtual time each).
    pub steps: u64,
    /// Hash of the event trace: equal for equal seeds.
    pub trace: u64,
    /// Publishes sent.
    pub published: u64,
    /// PubAcks received.
    pub acked: u64,
    /// Messages subscribers saw.
    pub delivered: u64,
    /// Faults injected.
    pub faults: u64,
}

struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;

    async fn accept(&mut self) -> io::Result<(Self::Read, Self::Write, PeerCreds)> {
        let (stream, _) = self.0.accept().await?;
        let (r, w) = stream.into_split();
        // The simulated network has no peer credentials: every host is the owner.
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid: None,
        };
        Ok((r, w, peer))
    }
}

struct TurmoilConnector;

impl Connector for TurmoilConnector {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;

    async fn connect(&self) -> io::Result<(Self::Read, Self::Write)> {
        Ok(turmoil::net::TcpStream::connect(("broker", PORT))
            .await?
            .into_split())
    }

    fn address(&self) -> PathBuf {
        PathBuf::from(format!("broker:{PORT}"))
    }
}

/// What the hosts report, and the invariants over it.
#[derive(Debug)]
struct Model {
    seed: u64,
    verbose: bool,
    step: u64,
    trace: u64,
    recent: VecDeque<String>,
    violation: Option<(&'static str, String)>,
    pub_incarnation: [u32; PUBLISHERS],
    sub_incarnation: [u32; SUBSCRIBERS],
    /// (publisher id, sequence) -> subscribers (host, incarnation) that saw it.
    received: BTreeMap<(String, u64), BTreeSet<(usize, u32)>>,
    /// Last first-delivery per (subscriber, incarnation, broker session, publisher).
    order: BTreeMap<(usize, u32, u64, String), u64>,
    /// Per publisher incarnation: publishes still waiting for their PubAck, and whether
    /// every publish has been sent.
    outstanding: BTreeMap<String, (u32, bool)>,
    published: u64,
    acked: u64,
    delivered: u64,
}

type Shared = Rc<RefCell<Model>>;

impl Model {
    fn log(&mut self, event: String) {
        self.trace = crate::world::fnv(self.trace, event.as_bytes());
        if self.verbose {
            println!("[{}] {event}", self.step);
        }
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent
            .push_back(format!("step {}: {event}", self.step));
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant, detail));
        }
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.seed,
            invariant,
            detail,
            step: self.step,
            last_events: self.recent.iter().cloned().collect(),
            replay: format!(
                "cargo run -p daemoneye-sim --release -- --layer 2 --seed {} --verbose",
                self.seed
            ),
        }
    }
}

fn options(name: &str, publisher_id: &str) -> ClientOptions {
    let mut o = ClientOptions::new(name);
    o.session.publisher_id = Some(publisher_id.to_string());
    o.reconnect = true;
    o
}

/// Connects, retrying while the broker is unreachable.
async fn connect(model: &Shared, name: &str, publisher_id: &str) -> Client {
    loop {
        match Client::connect_via(TurmoilConnector, options(name, publisher_id)).await {
            Ok(c) => return c,
            Err(e) => {
                model
                    .borrow_mut()
                    .log(format!("{name} cannot connect: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn publisher(model: Shared, i: usize) -> turmoil::Result {
    let (id, seed) = {
        let mut m = model.borrow_mut();
        m.pub_incarnation[i] += 1;
        let id = format!("p{i}.{}", m.pub_incarnation[i]);
        m.outstanding.insert(id.clone(), (0, false));
        m.log(format!("{id} starts"));
        (
            id,
            m.seed ^ ((i as u64 + 1) << 32) ^ u64::from(m.pub_incarnation[i]),
        )
    };
    let mut rng = SeededRng::new(seed);
    let client = connect(&model, &format!("p{i}"), &id).await;
    for n in 0..MESSAGES {
        let topic = if rng.below(5) == 0 {
            "other.noise"
        } else {
            "events.process.new"
        };
        let payload = Bytes::from(format!("{id}#{n}"));
        match client
            .send(Publish::new(topic, payload, QoS::AtLeastOnce))
            .await
        {
            Ok(pending) => {
                let seq = pending.sequence();
                {
                    let mut m = model.borrow_mut();
                    m.published += 1;
                    if let Some(o) = m.outstanding.get_mut(&id) {
                        o.0 += 1;
                    }
                    m.log(format!("{id} sends #{seq} on {topic}"));
                }
                let (model, id) = (model.clone(), id.clone());
                tokio::task::spawn_local(async move {
                    let result = pending.wait().await;
                    let mut m = model.borrow_mut();
                    match result {
                        Ok(Some(ack)) => {
                            m.acked += 1;
                            if let Some(o) = m.outstanding.get_mut(&id) {
                                o.0 -= 1;
                            }
                            let seen = m.received.get(&(id.clone(), seq)).map_or(0, BTreeSet::len);
                            m.log(format!(
                                "{id} PubAck #{seq} delivered={} none={}",
                                ack.delivered, ack.no_interest
                            ));
                            if ack.delivered as usize > seen {
                                m.fail(
                                    "puback-after-delivery",
                                    format!(
                                        "{id}#{seq}: PubAck says {} delivered, {seen} subscriber(s) saw it",
                                        ack.delivered
                                    ),
                                );
                            }
                        }
                        Ok(None) => {}
                        Err(e) => m.log(format!("{id} #{seq} failed: {e}")),
                    }
                });
            }
            Err(e) => model.borrow_mut().log(format!("{id} send refused: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
    }
    {
        let mut m = model.borrow_mut();
        if let Some(o) = m.outstanding.get_mut(&id) {
            o.1 = true;
        }
        m.log(format!("{id} has sent everything"));
    }
    // Stay up: PubAcks arrive on this host's runtime.
    std::future::pending::<()>().await;
    Ok(())
}

async fn subscriber(model: Shared, j: usize) -> turmoil::Result {
    let inc = {
        let mut m = model.borrow_mut();
        m.sub_incarnation[j] += 1;
        let inc = m.sub_incarnation[j];
        m.log(format!("s{j}.{inc} starts"));
        inc
    };
    let name = format!("s{j}");
    let client = connect(&model, &name, &format!("{name}.{inc}")).await;
    let mut sub = loop {
        let spec = Subscribe {
            qos: QoS::AtLeastOnce,
            ..Subscribe::new(FILTER)
        };
        match client.subscribe(spec).await {
            Ok(s) => break s,
            Err(e) => {
                model
                    .borrow_mut()
                    .log(format!("{name} cannot subscribe: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    while let Some(d) = sub.recv().await {
        let session = client.session_id().unwrap_or(0);
        let mut m = model.borrow_mut();
        m.delivered += 1;
        m.log(format!(
            "s{j}.{inc} got {}#{}{}",
            d.publisher_id,
            d.sequence,
            if d.redelivered { " (redelivered)" } else { "" }
        ));
        if !naive_match(FILTER, &d.topic) {
            m.fail(
                "filter-match",
                format!("s{j} got {} for filter {FILTER}", d.topic),
            );
        }
        m.received
            .entry((d.publisher_id.clone(), d.sequence))
            .or_default()
            .insert((j, inc));
        if !d.redelivered {
            let key = (j, inc, session, d.publisher_id.clone());
            if let Some(prev) = m.order.insert(key, d.sequence)
                && prev >= d.sequence
            {
                m.fail(
                    "per-publisher-order",
                    format!("s{j} got {}#{} after #{prev}", d.publisher_id, d.sequence),
                );
            }
        }
    }
    Ok(())
}

async fn broker(model: Shared, seed: u64, canary: bool) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let config = BrokerConfig {
        owner_uid: UID,
        heartbeat_interval: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(2),
        canary_early_puback: canary,
        ..BrokerConfig::default()
    };
    let broker = Broker::new(config, Acl::owner_only(UID), seed);
    model.borrow_mut().log("broker starts".into());
    daemoneye_io::server::serve(
        TurmoilListener(listener),
        broker,
        MonotonicClock::default(),
        std::future::pending::<()>(),
    )
    .await;
    Ok(())
}

/// A fault and when it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Heal {
    Bounce(usize),
    Repair(usize),
    Release(usize),
}

/// Undoes the faults that are due.
fn heal_due(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    model: &Shared,
    healing: &mut BTreeMap<(u64, Heal), ()>,
    step: u64,
    down: &mut BTreeSet<usize>,
    cut: &mut BTreeSet<usize>,
) {
    while let Some((&(at, heal), ())) = healing.first_key_value() {
        if at > step {
            break;
        }
        healing.pop_first();
        match heal {
            Heal::Bounce(h) => {
                sim.bounce(names[h].as_str());
                down.remove(&h);
                model.borrow_mut().log(format!("bounce {}", names[h]));
            }
            Heal::Repair(h) => {
                sim.repair(names[h].as_str(), "broker");
                cut.remove(&h);
                model.borrow_mut().log(format!("repair {}", names[h]));
            }
            Heal::Release(h) => {
                sim.release(names[h].as_str(), "broker");
                cut.remove(&h);
                model.borrow_mut().log(format!("release {}", names[h]));
            }
        }
    }
}

/// Runs one seed of layer 2: a fault phase, then a liveness phase without faults.
pub fn run_net(cfg: &NetConfig) -> Result<NetOutcome, Violation> {
    let mut rng = SeededRng::new(cfg.seed ^ 0x7475_726d_6f69_6c32);
    let model: Shared = Rc::new(RefCell::new(Model {
        seed: cfg.seed,
        verbose: cfg.verbose,
        step: 0,
        trace: 0xcbf2_9ce4_8422_2325,
        recent: VecDeque::new(),
        violation: None,
        pub_incarnation: [0; PUBLISHERS],
        sub_incarnation: [0; SUBSCRIBERS],
        received: BTreeMap::new(),
        order: BTreeMap::new(),
        outstanding: BTreeMap::new(),
        published: 0,
        acked: 0,
        delivered: 0,
    }));
    let liveness = Duration::from_secs(60);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(cfg.fault_time + liveness + Duration::from_secs(10))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(50))
        .max_message_latency(Duration::from_millis(5))
        .build();
    // Hosts: 0 is the broker, then publishers, then subscribers.
    let names: Vec<String> = std::iter::once("broker".to_string())
        .chain((0..PUBLISHERS).map(|i| format!("p{i}")))
        .chain((0..SUBSCRIBERS).map(|j| format!("s{j}")))
        .collect();
    {
        let m = model.clone();
        let broker_seed = rng.next_u64();
        let canary = cfg.canary;
        sim.host("broker", move || {
            let m = m.clone();
            broker(m, broker_seed, canary)
        });
    }
    for i in 0..PUBLISHERS {
        let m = model.clone();
        sim.host(names[1 + i].as_str(), move || publisher(m.clone(), i));
    }
    for j in 0..SUBSCRIBERS {
        let m = model.clone();
        sim.host(names[1 + PUBLISHERS + j].as_str(), move || {
            subscriber(m.clone(), j)
        });
    }
    let crash_rate = [0.0, 0.0002, 0.001][rng.below(3) as usize];
    let link_rate = [0.0, 0.0005, 0.002][rng.below(3) as usize];
    if cfg.verbose {
        println!(
            "seed={} layer=2 crash_rate={crash_rate} link_rate={link_rate}",
            cfg.seed
        );
    }
    let fault_steps = cfg.fault_time.as_millis() as u64;
    let mut healing: BTreeMap<(u64, Heal), ()> = BTreeMap::new();
    let mut down: BTreeSet<usize> = BTreeSet::new();
    let mut cut: BTreeSet<usize> = BTreeSet::new();
    let mut faults = 0u64;
    let mut step = 0u64;
    let check = |model: &Shared| -> Result<(), Violation> {
        let m = model.borrow();
        match &m.violation {
            Some((inv, detail)) => Err(m.violation(inv, detail.clone())),
            None => Ok(()),
        }
    };
    let sim_err = |model: &Shared, e: Box<dyn std::error::Error>| {
        model.borrow().violation("simulation", e.to_string())
    };
    while step < fault_steps {
        step += 1;
        model.borrow_mut().step = step;
        sim.step().map_err(|e| sim_err(&model, e))?;
        check(&model)?;
        heal_due(
            &mut sim,
            &names,
            &model,
            &mut healing,
            step,
            &mut down,
            &mut cut,
        );
        if crash_rate > 0.0 && rng.unit() < crash_rate {
            let h = rng.below(names.len() as u64) as usize;
            if !down.contains(&h) {
                sim.crash(names[h].as_str());
                down.insert(h);
                faults += 1;
                let back = step + 50 + rng.below(2000);
                healing.insert((back, Heal::Bounce(h)), ());
                model.borrow_mut().log(format!("crash {}", names[h]));
            }
        }
        if link_rate > 0.0 && rng.unit() < link_rate {
            let h = 1 + rng.below(names.len() as u64 - 1) as usize;
            if !cut.contains(&h) {
                cut.insert(h);
                faults += 1;
                if rng.below(2) == 0 {
                    // turmoil drops the segments of a partitioned TCP stream without
                    // resetting it, a gap inside a connection that a local socket can never
                    // have. A partition therefore lasts past the broker's idle timeout (three
                    // heartbeats), so that both ends have given the connection up by the
                    // time the link heals.
                    let back = step + 4000 + rng.below(4000);
                    sim.partition(names[h].as_str(), "broker");
                    healing.insert((back, Heal::Repair(h)), ());
                    model.borrow_mut().log(format!("partition {}", names[h]));
                } else {
                    let back = step + 10 + rng.below(3000);
                    sim.hold(names[h].as_str(), "broker");
                    healing.insert((back, Heal::Release(h)), ());
                    model.borrow_mut().log(format!("hold {}", names[h]));
                }
            }
        }
    }
    // Liveness: no new faults; the last ones heal on schedule (a partition outlives the
    // idle timeout), then every publish must be acknowledged within a bounded time.
    model.borrow_mut().log("faults stop".into());
    let healed = healing
        .last_key_value()
        .map_or(step, |(&(at, _), ())| at.max(step));
    let deadline = healed + liveness.as_millis() as u64;
    loop {
        step += 1;
        model.borrow_mut().step = step;
        sim.step().map_err(|e| sim_err(&model, e))?;
        check(&model)?;
        heal_due(
            &mut sim,
            &names,
            &model,
            &mut healing,
            step,
            &mut down,
            &mut cut,
        );
        let m = model.borrow();
        let current: Vec<String> = (0..PUBLISHERS)
            .map(|i| format!("p{i}.{}", m.pub_incarnation[i]))
            .collect();
        let done = healing.is_empty()
            && current
                .iter()
                .all(|id| m.outstanding.get(id).is_some_and(|o| o.1 && o.0 == 0));
        if done {
            break;
        }
        if step >= deadline {
            let pending: Vec<String> = current
                .iter()
                .map(|id| format!("{id}: {:?}", m.outstanding.get(id)))
                .collect();
            return Err(m.violation(
                "liveness",
                format!("after faults stopped, publishers still waiting: {pending:?}"),
            ));
        }
    }
    let m = model.borrow();
    Ok(NetOutcome {
        seed: cfg.seed,
        steps: step,
        trace: m.trace,
        published: m.published,
        acked: m.acked,
        delivered: m.delivered,
        faults,
    })
}
