//! The simulated world: one broker, several clients, fake links, virtual time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::stats::Counters;
use daemoneye_core::broker::{Broker, BrokerConfig, CloseReason, ConnId, Output, PeerCreds};
use daemoneye_core::client::{ClientConfig, ClientEvent, ClientSession};
use daemoneye_core::registration::{RegAction, RegState, Registration, RegistrationConfig};
use daemoneye_core::registry::{self, CollectorHealth, Expected, Peer, Registry, SourceCaps};
use daemoneye_core::rng::SeededRng;
use daemoneye_core::supervisor::{Action as SupAction, RestartPolicy, Supervisor};
use daemoneye_core::topic::topics;
use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_core::wal::{self, Wal, WalAction, WalConfig};
use daemoneye_proto::frame::{
    Deliver, GroupSpec, Overflow, Publish, QoS, QueueStrategy, Role, Subscribe,
};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

const UID: u32 = 1000;
const MAX_FRAME: u32 = 64 * 1024;
const TOPICS: &[&str] = &[
    "events.process.new",
    "events.process.exit",
    "events.network.tcp",
    "control.collector.task.scan",
    "control.health.status",
];
const FILTERS: &[&str] = &[
    "events.#",
    "events.process.+",
    "#",
    "control.collector.task.+",
    "events.network.tcp",
    "control.#",
];
const GROUPS: &[&str] = &["workers", "scanners"];

/// What to run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Steps of the safety phase (with faults).
    pub steps: u64,
    /// Print every event.
    pub verbose: bool,
    /// Run a deliberately broken variant, which must be caught.
    pub canary: Canary,
}

/// Deliberately broken variants the simulation must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Canary {
    /// Nothing broken.
    #[default]
    None,
    /// A broker that sends PubAck before delivering.
    EarlyPubAck,
    /// A storage device whose sync reports success without making anything durable.
    LyingSync,
}

impl std::str::FromStr for Canary {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "early-puback" => Ok(Canary::EarlyPubAck),
            "lying-sync" => Ok(Canary::LyingSync),
            other => Err(format!(
                "unknown canary {other:?} (expected early-puback or lying-sync)"
            )),
        }
    }
}

/// Fault rates, chosen per seed (swarm testing): each run stresses a different mix.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Probability that a transfer delivers only part of what is buffered.
    pub partial: f64,
    /// Per-step probability that a link's reader stalls for a while.
    pub stall: f64,
    /// Per-step probability that a link resets.
    pub reset: f64,
    /// Probability that a chunk sent to the broker has one byte flipped. Only that
    /// direction: the broker's decoder faces hostile clients, while a flipped byte inside a
    /// valid frame towards a client is indistinguishable from a real message (a local socket
    /// has no checksum, and never flips bytes). The corrupting client is then dropped.
    pub corrupt: f64,
    /// Per-step probability that the broker crashes.
    pub broker_crash: f64,
    /// Per-step probability that a client crashes.
    pub client_crash: f64,
    /// Probability that a crash leaves garbage after the surviving part of a WAL.
    pub wal_garbage: f64,
    /// Bytes a link buffers towards a client.
    pub link_capacity: usize,
}

impl Faults {
    fn swarm(rng: &mut SeededRng) -> Self {
        let pick = |rng: &mut SeededRng, options: &[f64]| {
            options[rng.below(options.len() as u64) as usize]
        };
        Faults {
            partial: pick(rng, &[0.0, 0.3, 0.9]),
            stall: pick(rng, &[0.0, 0.005, 0.02]),
            reset: pick(rng, &[0.0, 0.001, 0.005]),
            corrupt: pick(rng, &[0.0, 0.0, 0.001]),
            broker_crash: pick(rng, &[0.0, 0.0, 0.0005]),
            client_crash: pick(rng, &[0.0, 0.0005, 0.002]),
            wal_garbage: pick(rng, &[0.0, 0.3]),
            link_capacity: [512, 4096, 65536][rng.below(3) as usize],
        }
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partial={} stall={} reset={} corrupt={} broker_crash={} client_crash={} wal_garbage={} link_capacity={}",
            self.partial,
            self.stall,
            self.reset,
            self.corrupt,
            self.broker_crash,
            self.client_crash,
            self.wal_garbage,
            self.link_capacity
        )
    }
}

/// An invariant that failed.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed that replays it.
    pub seed: u64,
    /// Which invariant.
    pub invariant: &'static str,
    /// What exactly.
    pub detail: String,
    /// At which step.
    pub step: u64,
    /// The events just before.
    pub last_events: Vec<String>,
    /// The command that replays the run.
    pub replay: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant violated: {} at step {}: {}",
            self.invariant, self.step, self.detail
        )?;
        writeln!(f, "last events:")?;
        for e in &self.last_events {
            writeln!(f, "  {e}")?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Steps taken (both phases).
    pub steps: u64,
    /// Hash of the whole event trace: equal for equal seeds.
    pub trace: u64,
    /// The fault mix.
    pub faults: Faults,
    /// Messages published, delivered to clients, PubAcks seen.
    pub published: u64,
    /// Deliveries the applications saw.
    pub delivered: u64,
    /// PubAcks received.
    pub pubacks: u64,
}

#[derive(Debug, Default)]
struct Link {
    to_broker: VecDeque<u8>,
    to_client: VecDeque<u8>,
    /// Broker Transmits not yet in the link (the driver's write queue).
    unsent: VecDeque<Bytes>,
    stalled_until: Instant,
    read_paused: bool,
    /// The broker closed the connection: deliver what is buffered, then EOF.
    closing: bool,
}

/// A WAL-backed collector's log: the machine (lost in a crash) and its file (which
/// survives: the synced prefix for sure, and a torn piece of the rest).
#[derive(Debug)]
struct SimWal {
    machine: Wal,
    config: WalConfig,
    disk: Vec<u8>,
    synced: usize,
    /// A sync in progress: (length it covers, when the device finishes it).
    syncing: VecDeque<(u64, Instant)>,
    /// Records accepted and not yet acknowledged: the reference the replay is held to.
    must_survive: BTreeSet<u64>,
    /// Events appended since the last commit.
    batch: u32,
}

#[derive(Debug, Clone)]
struct SubModel {
    filter: TopicFilter,
    group: Option<String>,
    /// Overflow Block.
    block: bool,
}

/// A live subscription that must receive a message: (client, incarnation, link epoch,
/// sub id).
type Watcher = (usize, u32, u32, u64);

/// Invariant 9: a QoS0 message of a publisher that closed cleanly, and a subscription that
/// must get it while it stays connected.
#[derive(Debug, Clone)]
struct CleanCloseExpect {
    publisher: String,
    sequence: u64,
    watcher: Watcher,
    broker_epoch: u32,
}

#[derive(Debug)]
struct Client {
    session: ClientSession,
    specs: Vec<Subscribe>,
    subs: BTreeMap<u64, SubModel>,
    conn: Option<ConnId>,
    link: Link,
    incarnation: u32,
    link_epoch: u32,
    down_until: Instant,
    unacked: Vec<u64>,
    publish_rate: f64,
    ack_rate: f64,
    publisher_id: String,
    /// The agent-side supervisor of this client's process: after a crash, the client
    /// comes back only when it says Spawn.
    supervisor: Supervisor,
    /// The process is down (crashed, waiting for the supervisor, or Failed).
    process_down: bool,
    /// When the supervisor spawned this client, for the restart-policy invariant.
    spawns: Vec<Instant>,
    /// A WAL-backed collector: publishes through its log, under one publisher id for life.
    wal: Option<SimWal>,
    /// A registering collector: its registration machine and the broker session it
    /// registered in.
    registration: Option<(Registration, Option<u64>)>,
    /// Events this client produced (makes each payload unique).
    produced: u64,
    /// Subscriptions the broker confirmed on the current link.
    acked_subs: BTreeSet<u64>,
    /// Said Goodbye on the current link: publishes nothing more on it.
    closing: bool,
    /// The broker said it holds this client's publishes behind a full queue.
    blocked: bool,
    /// QoS0 publishes on the current link, with the live Block subscriptions (plain, not in
    /// a group) that matched when each was published.
    watch: Vec<(u64, Vec<Watcher>)>,
}

/// (publisher id, sequence).
type MessageId = (String, u64);
/// (client, incarnation, sub id).
type SubscriptionId = (usize, u32, u64);
/// (client, incarnation, sub id, link epoch, broker epoch, publisher id, priority).
type OrderKey = (usize, u32, u64, u32, u32, String, u8);

/// The agent's control client: in the agent's process beside the broker (so it dies with
/// it), over a link that never fails. It answers registrations and tracks heartbeats in
/// the registry.
#[derive(Debug)]
struct AgentCtl {
    /// `agent.<broker epoch>`: each agent process has its own publisher id.
    publisher_id: String,
    session: ClientSession,
    conn: Option<ConnId>,
    inbox: VecDeque<Bytes>,
    paused: bool,
    registry: Registry,
}

impl AgentCtl {
    fn new(broker_epoch: u32) -> Self {
        let publisher_id = format!("agent.{broker_epoch}");
        let mut config = client_config(&publisher_id);
        config.role = Role::Agent;
        let mut session = ClientSession::new(config);
        session.subscribe(Subscribe::new(topics::REGISTRATION));
        session.subscribe(Subscribe::new(format!("{}.+", topics::HEARTBEAT_PREFIX)));
        AgentCtl {
            publisher_id,
            session,
            conn: None,
            inbox: VecDeque::new(),
            paused: false,
            registry: Registry::new(AGENT_HEARTBEAT, 3),
        }
    }
}

/// The heartbeat interval the agent asks of collectors.
const AGENT_HEARTBEAT: Duration = Duration::from_secs(1);

/// DESIGN.md section 9, invariant 8: any split of the same input bytes gives the broker the
/// same outputs. A second broker (same configuration and seed) gets every input the first
/// one gets, with each chunk of bytes cut again at random points; after every drain both
/// must have transmitted the same bytes to every connection, closed the same connections
/// and counted the same.
#[derive(Debug)]
struct Shadow {
    broker: Broker,
    /// Cut points (its own stream: the world's draws stay as they were).
    rng: SeededRng,
    /// Per connection: bytes transmitted and a hash of them and of the closes, for the
    /// first broker and for this one.
    primary: BTreeMap<ConnId, (usize, u64)>,
    mirror: BTreeMap<ConnId, (usize, u64)>,
}

impl Shadow {
    fn new(config: BrokerConfig, broker_seed: u64, cut_seed: u64) -> Self {
        Shadow {
            broker: Broker::new(config, Acl::owner_only(UID), broker_seed),
            rng: SeededRng::new(cut_seed),
            primary: BTreeMap::new(),
            mirror: BTreeMap::new(),
        }
    }

    /// The same bytes, in other reads.
    fn handle_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let n = 1 + self.rng.below(rest.len().min(97) as u64) as usize;
            self.broker.handle_bytes(now, conn, &rest[..n]);
            rest = &rest[n..];
        }
    }

    fn note(map: &mut BTreeMap<ConnId, (usize, u64)>, out: &Output) {
        match out {
            Output::Transmit { conn, data } => {
                let e = map.entry(*conn).or_insert((0, 0xcbf2_9ce4_8422_2325));
                e.0 += data.len();
                e.1 = fnv(e.1, data);
            }
            Output::Close { conn, reason } => {
                let e = map.entry(*conn).or_insert((0, 0xcbf2_9ce4_8422_2325));
                e.1 = fnv(e.1, format!("close {reason:?}").as_bytes());
            }
            Output::PauseRead { .. } | Output::ResumeRead { .. } => {}
        }
    }

    /// Drains the shadow and compares.
    fn check(&mut self, primary_totals: Counters) -> Result<(), String> {
        while let Some(out) = self.broker.poll_output() {
            Self::note(&mut self.mirror, &out);
        }
        if self.primary != self.mirror {
            let diff: Vec<_> = self
                .primary
                .iter()
                .filter(|(c, v)| self.mirror.get(c) != Some(v))
                .map(|(c, v)| format!("{c:?}: {v:?} vs {:?}", self.mirror.get(c)))
                .collect();
            return Err(format!(
                "the same bytes in other reads gave other outputs (bytes, hash): {diff:?}"
            ));
        }
        if self.broker.totals() != primary_totals {
            return Err(format!(
                "the same bytes in other reads gave other counters: {primary_totals:?} vs {:?}",
                self.broker.totals()
            ));
        }
        Ok(())
    }
}

struct World {
    agent: AgentCtl,
    canary: Canary,
    rng: SeededRng,
    faults: Faults,
    now: Instant,
    broker: Broker,
    shadow: Shadow,
    broker_config: BrokerConfig,
    broker_epoch: u32,
    clients: Vec<Client>,
    step: u64,
    events: EventLog,
    /// (publisher id, sequence) -> subscriptions (client, incarnation, sub id) that saw it.
    received: BTreeMap<MessageId, BTreeSet<SubscriptionId>>,
    /// Last first-delivery sequence per (client, incarnation, sub, link epoch, broker
    /// epoch, publisher, priority): a higher priority may overtake, so order is per priority.
    order: BTreeMap<OrderKey, u64>,
    /// Publishers whose byte stream was corrupted: their frames may have been altered.
    tainted: BTreeSet<String>,
    /// QoS of each publish, by (publisher id, sequence).
    publish_qos: BTreeMap<(String, u64), QoS>,
    /// First deliveries per (group, publisher, sequence, broker epoch).
    group_firsts: BTreeMap<(String, String, u64, u32), usize>,
    /// The payload of every (publisher id, sequence) published: a sequence never names two
    /// different messages.
    contents: BTreeMap<MessageId, Bytes>,
    published: u64,
    delivered: u64,
    pubacks: u64,
    /// Invariant 9's expectations, from every clean close the broker answered.
    clean_closes: Vec<CleanCloseExpect>,
}

/// The event trace of a run: its hash (equal for equal seeds, in any process), the last
/// events (printed with a failure) and, when verbose, every event as it happens.
#[derive(Debug)]
pub(crate) struct EventLog {
    pub(crate) hash: u64,
    recent: VecDeque<String>,
    verbose: bool,
    seed: u64,
    /// The command line options that select the layer (empty for layer 1).
    layer_args: &'static str,
}

impl EventLog {
    pub(crate) fn new(verbose: bool, seed: u64, layer_args: &'static str) -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            recent: VecDeque::new(),
            verbose,
            seed,
            layer_args,
        }
    }

    pub(crate) fn record(&mut self, step: u64, stamp: &str, event: String) {
        self.hash = fnv(self.hash, event.as_bytes());
        if self.verbose {
            println!("[{stamp}] {event}");
        }
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("step {step}: {event}"));
    }

    /// A failed invariant, with the last events and the command that replays the run.
    pub(crate) fn violation(
        &self,
        invariant: &'static str,
        detail: String,
        step: u64,
    ) -> Violation {
        Violation {
            seed: self.seed,
            invariant,
            detail,
            step,
            last_events: self.recent.iter().cloned().collect(),
            replay: format!(
                "cargo run -p daemoneye-sim --release --{} --seed {} --verbose",
                self.layer_args, self.seed
            ),
        }
    }
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl World {
    fn new(cfg: &SimConfig) -> World {
        let mut rng = SeededRng::new(cfg.seed);
        let faults = Faults::swarm(&mut rng);
        let broker_config = BrokerConfig {
            owner_uid: UID,
            max_frame: MAX_FRAME,
            default_capacity: [4, 16, 100][rng.below(3) as usize],
            write_window: [256, 4096, 65536][rng.below(3) as usize],
            heartbeat_interval: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(2),
            durable_expiry: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
            canary_early_puback: cfg.canary == Canary::EarlyPubAck,
            ..BrokerConfig::default()
        };
        let broker_seed = rng.next_u64();
        let broker = Broker::new(broker_config.clone(), Acl::owner_only(UID), broker_seed);
        let shadow = Shadow::new(broker_config.clone(), broker_seed, cfg.seed ^ 0x5917_5917);
        let n = 3 + rng.below(4) as usize;
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let mut specs = Vec::new();
            for _ in 0..rng.below(3) {
                let group = (rng.below(3) == 0).then(|| GroupSpec {
                    name: GROUPS[rng.below(GROUPS.len() as u64) as usize].to_string(),
                    strategy: [
                        QueueStrategy::RoundRobin,
                        QueueStrategy::LeastLoaded,
                        QueueStrategy::Random,
                    ][rng.below(3) as usize],
                });
                let qos = if rng.below(2) == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                let durable = (qos == QoS::AtLeastOnce && group.is_none() && rng.below(3) == 0)
                    .then(|| format!("durable-{i}"));
                specs.push(Subscribe {
                    sub_id: 0,
                    filter: FILTERS[rng.below(FILTERS.len() as u64) as usize].into(),
                    group,
                    qos,
                    capacity: None,
                    overflow: Some(
                        [
                            Overflow::Block,
                            Overflow::Block,
                            Overflow::DropOldest,
                            Overflow::DropNewest,
                        ][rng.below(4) as usize],
                    ),
                    durable_name: durable,
                });
            }
            let publish_rate = [0.0, 0.05, 0.2][rng.below(3) as usize];
            let ack_rate = [0.05, 0.3, 0.9][rng.below(3) as usize];
            let policy = RestartPolicy {
                auto_restart: true,
                max_restarts: 2 + rng.below(4) as u32,
                window: Duration::from_secs(10),
                backoff_initial: Duration::from_millis([50, 200, 1000][rng.below(3) as usize]),
                backoff_max: Duration::from_secs(4),
                // At least the window: then a stable run's reset and the window bound agree.
                stable_after: Duration::from_secs(10),
                stop_timeout: Duration::from_secs(1),
            };
            let mut supervisor = Supervisor::new(format!("c{i}"), policy);
            let _ = supervisor.start(Instant::ZERO);
            while supervisor.poll_output().is_some() {}
            supervisor.handle_spawned(Instant::ZERO, 0);
            // About a third of the clients are WAL-backed collectors.
            let wal = (rng.below(3) == 0).then(|| {
                let mut config = WalConfig::new(format!("c{i}"));
                config.max_pending = [8, 64, 1000][rng.below(3) as usize];
                config.compact_after = [1, 512, 1 << 20][rng.below(3) as usize];
                SimWal {
                    machine: Wal::new(config.clone()),
                    config,
                    disk: Vec::new(),
                    synced: 0,
                    syncing: VecDeque::new(),
                    must_survive: BTreeSet::new(),
                    batch: 0,
                }
            });
            let publisher_id = if wal.is_some() {
                format!("c{i}")
            } else {
                format!("c{i}.0")
            };
            let mut session = ClientSession::new(client_config(&publisher_id));
            let mut subs = BTreeMap::new();
            for spec in &specs {
                let id = session.subscribe(spec.clone());
                subs.insert(id, sub_model(spec));
            }
            clients.push(Client {
                session,
                specs,
                subs,
                conn: None,
                link: Link::default(),
                incarnation: 0,
                link_epoch: 0,
                down_until: Instant::ZERO,
                unacked: Vec::new(),
                publish_rate,
                ack_rate,
                publisher_id,
                supervisor,
                process_down: false,
                spawns: Vec::new(),
                wal,
                produced: 0,
                registration: None,
                acked_subs: BTreeSet::new(),
                closing: false,
                blocked: false,
                watch: Vec::new(),
            });
        }
        // Clients without a WAL register with the agent as collectors and heartbeat.
        for (i, c) in clients.iter_mut().enumerate() {
            if c.wal.is_none() {
                // The reply inbox, subscribed again by every incarnation like the others.
                let spec = Subscribe::new(format!("_reply.c{i}"));
                let id = c.session.subscribe(spec.clone());
                c.subs.insert(id, sub_model(&spec));
                c.specs.push(spec);
                c.registration = Some((
                    Registration::new(registration_config(), rng.next_u64()),
                    None,
                ));
            }
        }
        World {
            agent: AgentCtl::new(0),
            canary: cfg.canary,
            rng,
            faults,
            now: Instant::from_nanos(1_000_000_000),
            broker,
            shadow,
            broker_config,
            broker_epoch: 0,
            clients,
            step: 0,
            events: EventLog::new(cfg.verbose, cfg.seed, ""),
            received: BTreeMap::new(),
            order: BTreeMap::new(),
            group_firsts: BTreeMap::new(),
            contents: BTreeMap::new(),
            publish_qos: BTreeMap::new(),
            tainted: BTreeSet::new(),
            published: 0,
            delivered: 0,
            pubacks: 0,
            clean_closes: Vec::new(),
        }
    }

    fn log(&mut self, event: String) {
        let stamp = format!("{} {:?}", self.step, self.now);
        self.events.record(self.step, &stamp, event);
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.unit() < p
    }

    fn client_of(&self, conn: ConnId) -> Option<usize> {
        self.clients.iter().position(|c| c.conn == Some(conn))
    }

    // ----- connections -----

    fn connect(&mut self, i: usize) {
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid: Some(100 + i as u32),
        };
        let conn = self.broker.handle_connect(self.now, peer);
        self.shadow.broker.handle_connect(self.now, peer);
        let now = self.now;
        let c = &mut self.clients[i];
        c.conn = Some(conn);
        c.link = Link::default();
        c.link_epoch += 1;
        c.unacked.clear();
        c.acked_subs.clear();
        c.closing = false;
        c.blocked = false;
        c.watch.clear();
        c.session.connect(now);
        self.log(format!("connect c{i} as {conn:?}"));
    }

    /// Both ends see the connection die.
    fn reset(&mut self, i: usize, why: &str) {
        let Some(conn) = self.clients[i].conn.take() else {
            return;
        };
        self.broker.handle_disconnect(self.now, conn);
        self.shadow.broker.handle_disconnect(self.now, conn);
        let delay = Duration::from_millis(self.rng.below(3000));
        let c = &mut self.clients[i];
        c.session.handle_disconnect(self.now, why.to_string());
        c.link = Link::default();
        c.unacked.clear();
        c.down_until = self.now + delay;
        self.log(format!("reset c{i} ({why})"));
    }

    fn crash_client(&mut self, i: usize) {
        if self.clients[i].process_down {
            return;
        }
        self.reset(i, "client crash");
        self.crash_wal(i);
        let now = self.now;
        let c = &mut self.clients[i];
        c.process_down = true;
        c.supervisor.handle_exited(now, "crash");
        let state = c.supervisor.state();
        self.log(format!("crash c{i}; supervisor {state}"));
    }

    /// A crash loses the WAL machine and whatever the device had not synced, except for a
    /// random prefix of it (a torn tail), maybe followed by garbage.
    fn crash_wal(&mut self, i: usize) {
        let garbage = self.chance(self.faults.wal_garbage);
        let keep = self.rng.unit();
        let junk = self.rng.next_u64().to_le_bytes();
        let Some(w) = self.clients[i].wal.as_mut() else {
            return;
        };
        let unsynced = w.disk.len() - w.synced;
        w.disk
            .truncate(w.synced + (unsynced as f64 * keep) as usize);
        if garbage {
            w.disk
                .extend_from_slice(&junk[..1 + (junk[0] % 7) as usize]);
        }
        w.syncing.clear();
        w.batch = 0;
        let (len, synced) = (w.disk.len(), w.synced);
        self.log(format!("c{i} WAL after crash: {len}B ({synced}B synced)"));
    }

    /// A restarted WAL-backed collector replays its log: every record accepted and not
    /// acknowledged must come back (invariant 1), and is re-sent.
    fn recover_wal(&mut self, i: usize) -> Result<(), Violation> {
        let Some(w) = self.clients[i].wal.as_mut() else {
            return Ok(());
        };
        let (records, end) = wal::replay(&w.disk, w.config.max_record);
        let back: BTreeSet<u64> = records.iter().map(|r| r.sequence).collect();
        let lost: Vec<u64> = w.must_survive.difference(&back).copied().collect();
        w.machine = Wal::recover(w.config.clone(), records, &end);
        self.log(format!("c{i} WAL replay: {end}"));
        if !lost.is_empty() {
            return Err(self.violation(
                "wal-accepted-lost",
                format!("c{i}: accepted records {lost:?} are not in the replayed log"),
            ));
        }
        self.drive_wal(i)
    }

    /// The WAL driver: runs the machine's actions against the simulated file.
    fn drive_wal(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            let now = self.now;
            let sync_delay = Duration::from_millis(self.rng.below(30));
            let c = &mut self.clients[i];
            let Some(w) = c.wal.as_mut() else {
                return Ok(());
            };
            let Some(action) = w.machine.poll_output() else {
                return Ok(());
            };
            match action {
                WalAction::Truncate { len } => {
                    w.disk.truncate(len as usize);
                    w.synced = w.synced.min(w.disk.len());
                }
                WalAction::Append(bytes) => w.disk.extend_from_slice(&bytes),
                WalAction::Sync { len } => w.syncing.push_back((len, now + sync_delay)),
                WalAction::Rewrite(bytes) => {
                    // Temporary file, sync, rename: atomic.
                    w.disk = bytes.to_vec();
                    w.synced = w.disk.len();
                    self.log(format!("c{i} WAL compacted to {}B", bytes.len()));
                }
                WalAction::Publish { record, replayed } => {
                    if !replayed {
                        w.must_survive.insert(record.sequence);
                    }
                    let p = Publish {
                        sequence: record.sequence,
                        resent: replayed,
                        ..Publish::new(
                            record.topic.clone(),
                            record.payload.clone(),
                            QoS::AtLeastOnce,
                        )
                    };
                    let id = (c.publisher_id.clone(), record.sequence);
                    if let Err(e) = c.session.publish_sequenced(p) {
                        return Err(self.violation("wal-publish", format!("c{i}: {e}")));
                    }
                    self.note_publish(id.clone(), record.payload, QoS::AtLeastOnce)?;
                    self.log(format!(
                        "c{i} publish #{} {} from WAL{}",
                        id.1,
                        record.topic,
                        if replayed { " (replayed)" } else { "" }
                    ));
                }
            }
        }
    }

    /// Completes the device's syncs that are due.
    fn complete_syncs(&mut self, i: usize) -> Result<(), Violation> {
        if self.clients[i].process_down {
            return Ok(());
        }
        let now = self.now;
        let Some(w) = self.clients[i].wal.as_mut() else {
            return Ok(());
        };
        while let Some(&(len, at)) = w.syncing.front() {
            if at > now {
                break;
            }
            w.syncing.pop_front();
            if self.canary != Canary::LyingSync {
                w.synced = w.synced.max(len as usize);
            }
            w.machine.handle_synced(self.now, len);
        }
        self.drive_wal(i)
    }

    /// Records what a (publisher, sequence) carries; a sequence never names two messages.
    fn note_publish(&mut self, id: MessageId, payload: Bytes, qos: QoS) -> Result<(), Violation> {
        if let Some(prev) = self.contents.insert(id.clone(), payload.clone())
            && prev != payload
        {
            return Err(self.violation(
                "sequence-reuse",
                format!("{}#{} published with two different payloads", id.0, id.1),
            ));
        }
        self.publish_qos.insert(id, qos);
        self.published += 1;
        Ok(())
    }

    /// The supervisor's decisions for crashed clients: a Spawn brings the client back as a
    /// new process (same role and subscriptions, no memory, a new publisher id).
    fn supervise(&mut self) -> Result<(), Violation> {
        for i in 0..self.clients.len() {
            let now = self.now;
            self.clients[i].supervisor.handle_timeout(now);
            while let Some(action) = self.clients[i].supervisor.poll_output() {
                if action != SupAction::Spawn {
                    continue;
                }
                if !self.clients[i].process_down {
                    return Err(self.violation(
                        "restart-policy",
                        format!("c{i} spawned while its process runs"),
                    ));
                }
                let reg_seed = self.rng.next_u64();
                let c = &mut self.clients[i];
                c.incarnation += 1;
                if c.wal.is_none() {
                    c.publisher_id = format!("c{i}.{}", c.incarnation);
                }
                c.session = ClientSession::new(client_config(&c.publisher_id));
                c.subs.clear();
                for spec in c.specs.clone() {
                    let id = c.session.subscribe(spec.clone());
                    c.subs.insert(id, sub_model(&spec));
                }
                c.process_down = false;
                c.down_until = now;
                c.spawns.push(now);
                c.supervisor.handle_spawned(now, c.incarnation);
                if c.registration.is_some() {
                    // A new process: its registration starts from nothing.
                    c.registration =
                        Some((Registration::new(registration_config(), reg_seed), None));
                }
                self.log(format!("supervisor spawns c{i}"));
                self.check_restart_policy(i)?;
                self.recover_wal(i)?;
            }
        }
        Ok(())
    }

    /// DESIGN.md section 9, invariant 6: restarts never exceed the policy's count within
    /// its window.
    fn check_restart_policy(&self, i: usize) -> Result<(), Violation> {
        let c = &self.clients[i];
        let policy = c.supervisor.policy();
        for (k, &a) in c.spawns.iter().enumerate() {
            let within = c.spawns[k..]
                .iter()
                .take_while(|&&b| b.saturating_since(a) < policy.window)
                .count();
            if within as u32 > policy.max_restarts {
                return Err(self.violation(
                    "restart-policy",
                    format!(
                        "c{i}: {within} restarts within {:?} (max {})",
                        policy.window, policy.max_restarts
                    ),
                ));
            }
        }
        Ok(())
    }

    fn crash_broker(&mut self) {
        for i in 0..self.clients.len() {
            if self.clients[i].conn.is_some() {
                let c = &mut self.clients[i];
                c.conn = None;
                c.session.handle_disconnect(self.now, "broker crash");
                c.link = Link::default();
                c.unacked.clear();
                c.down_until = self.now + Duration::from_millis(self.rng.below(2000));
            }
        }
        self.broker_epoch += 1;
        // The agent writes durable subscriptions' definitions to disk whenever they change
        // (before the SubAck leaves), so the restarted broker has every one of them back.
        let durables = self.broker.durable_definitions();
        let broker_seed = self.rng.next_u64();
        self.broker = Broker::new(
            self.broker_config.clone(),
            Acl::owner_only(UID),
            broker_seed,
        );
        let cut_seed = self.shadow.rng.next_u64();
        self.shadow = Shadow::new(self.broker_config.clone(), broker_seed, cut_seed);
        for def in durables {
            for broker in [&mut self.broker, &mut self.shadow.broker] {
                // The broker's own definitions always restore: a refusal is a broker bug.
                broker
                    .restore_durable(self.now, def.clone())
                    .expect("a durable definition the broker gave back restores");
            }
        }
        // The agent embeds the broker: its registry and control client start over.
        self.agent = AgentCtl::new(self.broker_epoch);
        self.log("crash broker".into());
        self.agent_connect();
    }

    // ----- moving bytes -----

    fn drain_broker(&mut self) -> Result<(), Violation> {
        let result = self.drain_primary();
        if let Err(detail) = self.shadow.check(self.broker.totals()) {
            return Err(self.violation("byte-split", detail));
        }
        result
    }

    fn drain_primary(&mut self) -> Result<(), Violation> {
        while let Some(out) = self.broker.poll_output() {
            Shadow::note(&mut self.shadow.primary, &out);
            match out {
                Output::Transmit { conn, data } if Some(conn) == self.agent.conn => {
                    self.agent.inbox.push_back(data);
                }
                Output::PauseRead { conn } if Some(conn) == self.agent.conn => {
                    self.agent.paused = true;
                }
                Output::ResumeRead { conn } if Some(conn) == self.agent.conn => {
                    self.agent.paused = false;
                }
                Output::Close { conn, reason } if Some(conn) == self.agent.conn => {
                    return Err(self.violation(
                        "agent-connection",
                        format!("the broker closed the agent's own connection: {reason:?}"),
                    ));
                }
                Output::Transmit { conn, data } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.unsent.push_back(data);
                    }
                }
                Output::PauseRead { conn } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.read_paused = true;
                    }
                }
                Output::ResumeRead { conn } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.read_paused = false;
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.closing = true;
                        self.log(format!("broker closes c{i}: {reason:?}"));
                        if reason == CloseReason::Goodbye {
                            self.note_clean_close(i);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The broker answered a client's Goodbye: every QoS0 message it published on that link
    /// must reach every Block subscription that was live when it was published and stays
    /// connected (invariant 9, checked once the run has drained).
    fn note_clean_close(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let watch = std::mem::take(&mut c.watch);
        if !c.closing || self.tainted.contains(&c.publisher_id) {
            return;
        }
        let publisher = c.publisher_id.clone();
        for (sequence, watchers) in watch {
            for watcher in watchers {
                self.clean_closes.push(CleanCloseExpect {
                    publisher: publisher.clone(),
                    sequence,
                    watcher,
                    broker_epoch: self.broker_epoch,
                });
            }
        }
    }

    /// The live Block subscriptions (plain, confirmed on their current link) of other
    /// clients that match `topic`.
    fn live_block_watchers(&self, i: usize, topic: &str) -> Vec<Watcher> {
        let mut out = Vec::new();
        for (j, c) in self.clients.iter().enumerate() {
            if j == i || c.conn.is_none() || c.process_down {
                continue;
            }
            for sub_id in &c.acked_subs {
                if let Some(m) = c.subs.get(sub_id)
                    && m.block
                    && m.group.is_none()
                    && naive_match(m.filter.as_str(), topic)
                {
                    out.push((j, c.incarnation, c.link_epoch, *sub_id));
                }
            }
        }
        out
    }

    /// Invariant 9, once everything else has drained: what a cleanly closed publisher sent
    /// at QoS0 reaches every Block subscription that was live then and still is.
    fn check_clean_closes(&mut self) -> Result<(), Violation> {
        let deadline = self.now + Duration::from_secs(60);
        loop {
            let missing: Vec<&CleanCloseExpect> = self
                .clean_closes
                .iter()
                .filter(|e| {
                    let (j, inc, epoch, sub_id) = e.watcher;
                    let c = &self.clients[j];
                    let live = e.broker_epoch == self.broker_epoch
                        && c.conn.is_some()
                        && c.incarnation == inc
                        && c.link_epoch == epoch;
                    live && !self
                        .received
                        .get(&(e.publisher.clone(), e.sequence))
                        .is_some_and(|r| r.contains(&(j, inc, sub_id)))
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if self.now >= deadline {
                let detail = format!(
                    "{} QoS0 message(s) of cleanly closed publishers never reached a live Block subscriber, e.g. {:?}",
                    missing.len(),
                    missing[0]
                );
                return Err(self.violation("clean-close-delivery", detail));
            }
            for _ in 0..200 {
                self.step_once(false)?;
            }
        }
    }

    /// The driver's writer: moves queued Transmits into the link while it has room.
    fn write_to_links(&mut self) {
        for i in 0..self.clients.len() {
            let Some(conn) = self.clients[i].conn else {
                continue;
            };
            let cap = self.faults.link_capacity;
            let mut written = 0;
            let link = &mut self.clients[i].link;
            while let Some(front) = link.unsent.front() {
                if !link.closing
                    && link.to_client.len() + front.len() > cap
                    && !link.to_client.is_empty()
                {
                    break;
                }
                let data = link.unsent.pop_front().unwrap_or_default();
                written += data.len();
                link.to_client.extend(data.iter());
            }
            if written > 0 {
                self.broker.handle_written(self.now, conn, written);
                self.shadow.broker.handle_written(self.now, conn, written);
            }
        }
    }

    fn take_chunk(&mut self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        if self.chance(self.faults.partial) {
            1 + self.rng.below(len as u64) as usize
        } else {
            len.min(16 * 1024)
        }
    }

    fn maybe_corrupt(&mut self, chunk: &mut [u8]) -> bool {
        if !chunk.is_empty() && self.chance(self.faults.corrupt) {
            let at = self.rng.below(chunk.len() as u64) as usize;
            chunk[at] ^= 1 << self.rng.below(8);
            return true;
        }
        false
    }

    fn deliver_to_client(&mut self, i: usize) -> Result<(), Violation> {
        if self.clients[i].conn.is_none() || self.clients[i].link.stalled_until > self.now {
            return Ok(());
        }
        let len = self.clients[i].link.to_client.len();
        let n = self.take_chunk(len);
        if n == 0 {
            if self.clients[i].link.closing && self.clients[i].link.unsent.is_empty() {
                let c = &mut self.clients[i];
                c.conn = None;
                c.session.handle_disconnect(self.now, "closed by broker");
                c.link = Link::default();
                c.unacked.clear();
                c.down_until = self.now + Duration::from_millis(500);
                self.log(format!("c{i} sees EOF"));
            }
            return Ok(());
        }
        let chunk: Vec<u8> = self.clients[i].link.to_client.drain(..n).collect();
        self.log(format!("broker->c{i} {n}B"));
        let now = self.now;
        let dups = self.clients[i].session.duplicates_dropped();
        self.clients[i].session.handle_bytes(now, &chunk);
        let dropped = self.clients[i].session.duplicates_dropped() - dups;
        if dropped > 0 {
            self.log(format!("c{i} dropped {dropped} duplicate(s)"));
        }
        self.client_events(i)
    }

    fn deliver_to_broker(&mut self, i: usize) -> Result<(), Violation> {
        let Some(conn) = self.clients[i].conn else {
            return Ok(());
        };
        if self.clients[i].link.read_paused {
            return Ok(());
        }
        let len = self.clients[i].link.to_broker.len();
        let n = self.take_chunk(len);
        if n == 0 {
            return Ok(());
        }
        let mut chunk: Vec<u8> = self.clients[i].link.to_broker.drain(..n).collect();
        let corrupted = self.maybe_corrupt(&mut chunk);
        self.log(format!(
            "c{i}->broker {n}B{}",
            if corrupted { " corrupted" } else { "" }
        ));
        self.broker.handle_bytes(self.now, conn, &chunk);
        self.shadow.handle_bytes(self.now, conn, &chunk);
        self.drain_broker()?;
        if corrupted {
            // Whatever the broker made of the flipped byte (a refused stream, or a valid but
            // different frame), this client's frames can no longer be trusted: it goes away,
            // and what it published is exempt from the ordering checks.
            self.tainted.insert(self.clients[i].publisher_id.clone());
            self.crash_client(i);
        }
        Ok(())
    }

    fn client_transmit(&mut self, i: usize) {
        if self.clients[i].conn.is_none() {
            return;
        }
        if let Some(bytes) = self.clients[i].session.poll_transmit() {
            self.clients[i].link.to_broker.extend(bytes.iter());
        }
    }

    // ----- client behaviour and invariants on what clients see -----

    fn client_events(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(ev) = self.clients[i].session.poll_output() {
            match ev {
                ClientEvent::Message(d) => {
                    self.delivered += 1;
                    let inc = self.clients[i].incarnation;
                    let Some(sub) = self.clients[i].subs.get(&d.sub_id).cloned() else {
                        return Err(self.violation(
                            "delivery-to-live-subscription",
                            format!("c{i} got sub {} it does not hold", d.sub_id),
                        ));
                    };
                    let name = TopicName::parse(&d.topic)
                        .map_err(|e| self.violation("valid-topic", format!("{}: {e}", d.topic)))?;
                    if !naive_match(sub.filter.as_str(), name.as_str()) {
                        return Err(self.violation(
                            "filter-match",
                            format!("{} delivered to c{i} for filter {}", d.topic, sub.filter),
                        ));
                    }
                    if d.qos == QoS::AtLeastOnce {
                        self.clients[i].unacked.push(d.delivery_id);
                    }
                    self.received
                        .entry((d.publisher_id.clone(), d.sequence))
                        .or_default()
                        .insert((i, inc, d.sub_id));
                    if !d.redelivered && !self.tainted.contains(&d.publisher_id) {
                        let key = (
                            i,
                            inc,
                            d.sub_id,
                            self.clients[i].link_epoch,
                            self.broker_epoch,
                            d.publisher_id.clone(),
                            d.priority,
                        );
                        if let Some(prev) = self.order.insert(key, d.sequence)
                            && prev >= d.sequence
                        {
                            return Err(self.violation(
                                "per-publisher-order",
                                format!(
                                    "c{i} sub {} got {}#{} after #{prev}",
                                    d.sub_id, d.publisher_id, d.sequence
                                ),
                            ));
                        }
                        // A QoS1 publish may be re-sent after its publisher reconnects, and a
                        // group may then hand the copy to another member: at least once. Only
                        // QoS0 is held to exactly one member.
                        let qos0 = self.publish_qos.get(&(d.publisher_id.clone(), d.sequence))
                            == Some(&QoS::AtMostOnce);
                        if let Some(g) = sub.group.as_ref().filter(|_| qos0) {
                            let n = self
                                .group_firsts
                                .entry((
                                    g.clone(),
                                    d.publisher_id.clone(),
                                    d.sequence,
                                    self.broker_epoch,
                                ))
                                .or_default();
                            *n += 1;
                            if *n > 1 {
                                return Err(self.violation(
                                    "group-exactly-once",
                                    format!(
                                        "group {g} delivered {}#{} to a second member",
                                        d.publisher_id, d.sequence
                                    ),
                                ));
                            }
                        }
                    }
                    self.log(format!(
                        "c{i} got {}#{} on sub {} prio {}",
                        d.publisher_id, d.sequence, d.sub_id, d.priority
                    ));
                    if d.topic == format!("_reply.c{i}")
                        && let Some((reg, _)) = self.clients[i].registration.as_mut()
                        && let Ok(a) = pbc::RegisterResponse::decode(d.payload.clone())
                    {
                        let hb = Duration::from_millis(a.heartbeat_interval_ms);
                        reg.handle_answer(self.now, a.accepted, Some(hb));
                    }
                }
                ClientEvent::PubAck {
                    sequence,
                    delivered,
                    dropped,
                    no_interest,
                } => {
                    self.pubacks += 1;
                    let seen = self
                        .received
                        .get(&(self.clients[i].publisher_id.clone(), sequence))
                        .map_or(0, BTreeSet::len);
                    if (delivered as usize) > seen {
                        return Err(self.violation(
                            "puback-after-delivery",
                            format!(
                                "c{i} got PubAck #{sequence} delivered={delivered} but only {seen} subscription(s) have received it"
                            ),
                        ));
                    }
                    self.log(format!(
                        "c{i} puback #{sequence} d={delivered} x={dropped} none={no_interest}"
                    ));
                    if let Some(w) = self.clients[i].wal.as_mut() {
                        w.must_survive.remove(&sequence);
                        w.machine.handle_puback(self.now, sequence);
                        self.drive_wal(i)?;
                    }
                }
                ClientEvent::Backpressure { level, reason } => {
                    self.clients[i].blocked =
                        level == daemoneye_proto::pb::bus::BackpressureLevel::Blocked;
                    self.log(format!("c{i} backpressure {level:?} {reason}"));
                }
                ClientEvent::Subscribed { sub_id, backlog } => {
                    self.clients[i].acked_subs.insert(sub_id);
                    self.log(format!("c{i} subscribed {sub_id} backlog {backlog}"));
                }
                other => self.log(format!("c{i} event {other:?}")),
            }
        }
        Ok(())
    }

    fn client_act(&mut self, i: usize) -> Result<(), Violation> {
        if self.clients[i].process_down {
            return Ok(());
        }
        if self.clients[i].wal.is_some() {
            // A collector appends to its WAL whether or not the broker is reachable.
            return self.collector_act(i);
        }
        if !self.clients[i].session.is_connected() || self.clients[i].closing {
            self.maybe_ack(i);
            return Ok(());
        }
        // Most interesting while the broker holds its publishes behind a full queue.
        let close_chance = if self.clients[i].blocked { 0.02 } else { 0.002 };
        if self.clients[i].publish_rate > 0.0 && self.chance(close_chance) {
            // A clean close: Goodbye after everything it published (invariant 9).
            self.clients[i].session.close("done");
            self.clients[i].closing = true;
            self.log(format!("c{i} says Goodbye"));
            return Ok(());
        }
        if self.chance(0.002) {
            // An impostor: registers as another collector from its own process.
            let victims: Vec<usize> = (0..self.clients.len())
                .filter(|&k| k != i && self.clients[k].registration.is_some())
                .collect();
            if !victims.is_empty() {
                let k = victims[self.rng.below(victims.len() as u64) as usize];
                let r = pbc::RegisterRequest {
                    collector_id: format!("c{k}"),
                    collector_type: "sim".into(),
                    capabilities: SourceCaps::PROCESS.0,
                    pid: 100 + k as u32,
                    version: "impostor".into(),
                };
                let payload = Bytes::from(r.encode_to_vec());
                let p = Publish::new(topics::REGISTRATION, payload.clone(), QoS::AtMostOnce);
                if let Ok(seq) = self.clients[i].session.publish(p) {
                    self.note_publish(
                        (self.clients[i].publisher_id.clone(), seq),
                        payload,
                        QoS::AtMostOnce,
                    )?;
                    self.log(format!(
                        "c{i} publish #{seq} registration as c{k} (impostor)"
                    ));
                }
            }
        }
        if self.chance(self.clients[i].publish_rate) {
            let topic = TOPICS[self.rng.below(TOPICS.len() as u64) as usize];
            let qos = if self.rng.below(2) == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let priority = if self.rng.below(10) == 0 { 5 } else { 0 };
            let payload = self.next_payload(i);
            let p = Publish {
                priority,
                ..Publish::new(topic, payload.clone(), qos)
            };
            if let Ok(seq) = self.clients[i].session.publish(p) {
                if qos == QoS::AtMostOnce {
                    let watchers = self.live_block_watchers(i, topic);
                    self.clients[i].watch.push((seq, watchers));
                }
                self.note_publish((self.clients[i].publisher_id.clone(), seq), payload, qos)?;
                self.log(format!(
                    "c{i} publish #{seq} {topic} {qos:?} prio {priority}"
                ));
            }
        }
        self.maybe_ack(i);
        Ok(())
    }

    /// A unique payload of random length.
    fn next_payload(&mut self, i: usize) -> Bytes {
        let c = &mut self.clients[i];
        c.produced += 1;
        let mut p = format!("c{i}.{}#{}", c.incarnation, c.produced).into_bytes();
        p.resize(p.len() + self.rng.below(64) as usize, 0xAB);
        Bytes::from(p)
    }

    fn maybe_ack(&mut self, i: usize) {
        if !self.clients[i].unacked.is_empty() && self.chance(self.clients[i].ack_rate) {
            let all = std::mem::take(&mut self.clients[i].unacked);
            for did in all {
                self.clients[i].session.ack(did);
            }
            self.log(format!("c{i} acks"));
        }
    }

    /// A WAL-backed collector: events go to the log, a batch is committed now and then
    /// (group commit), and records are published once their sync completes.
    fn collector_act(&mut self, i: usize) -> Result<(), Violation> {
        if self.chance(self.clients[i].publish_rate) {
            let topic = TOPICS[self.rng.below(2) as usize];
            let payload = self.next_payload(i);
            let at = self.now.as_nanos() / 1_000_000;
            let w = self.clients[i]
                .wal
                .as_mut()
                .unwrap_or_else(|| unreachable!());
            match w.machine.append(at, topic, payload) {
                Ok(seq) => {
                    w.batch += 1;
                    self.log(format!("c{i} WAL append #{seq} {topic}"));
                }
                Err(e) => self.log(format!("c{i} WAL refuses: {e}")),
            }
        }
        let batch = self.clients[i].wal.as_ref().map_or(0, |w| w.batch);
        if batch > 0 && (batch >= 4 || self.chance(0.3)) {
            if let Some(w) = self.clients[i].wal.as_mut() {
                w.machine.commit();
                w.batch = 0;
            }
            self.log(format!("c{i} WAL commit"));
        }
        self.drive_wal(i)?;
        self.maybe_ack(i);
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), Violation> {
        for s in self.broker.subscriptions() {
            if s.queued + s.unacked > s.capacity as usize {
                return Err(self.violation("queue-capacity", format!("{s:?}")));
            }
        }
        // Decoder: at most a frame plus the deferred-publish backlog plus one read; output:
        // the write window plus one reserve.
        let bound =
            2 * MAX_FRAME as usize + (1 << 20) + 64 * 1024 + self.broker_config.write_window;
        for c in &self.clients {
            if let Some(conn) = c.conn
                && let Some(mem) = self.broker.connection_memory(conn)
                && mem > bound
            {
                return Err(self.violation(
                    "connection-memory",
                    format!("{conn:?} holds {mem} bytes > {bound}"),
                ));
            }
        }
        Ok(())
    }

    // ----- the agent's control client and the collectors' registration -----

    /// Connects the agent's (fresh) control client to the broker.
    fn agent_connect(&mut self) {
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid: Some(1),
        };
        let conn = self.broker.handle_connect(self.now, peer);
        self.shadow.broker.handle_connect(self.now, peer);
        self.agent.session.connect(self.now);
        self.agent.conn = Some(conn);
    }

    /// Moves bytes between the agent's control client and the broker (an in-process link:
    /// no faults) and answers what arrived.
    fn agent_pump(&mut self) -> Result<(), Violation> {
        for _ in 0..16 {
            let Some(conn) = self.agent.conn else {
                return Ok(());
            };
            let now = self.now;
            let mut moved = false;
            while let Some(b) = self.agent.inbox.pop_front() {
                self.broker.handle_written(now, conn, b.len());
                self.shadow.broker.handle_written(now, conn, b.len());
                self.agent.session.handle_bytes(now, &b);
                moved = true;
            }
            self.agent_events()?;
            if !self.agent.paused
                && let Some(out) = self.agent.session.poll_transmit()
            {
                self.broker.handle_bytes(now, conn, &out);
                self.shadow.handle_bytes(now, conn, &out);
                moved = true;
            }
            self.drain_broker()?;
            if !moved {
                break;
            }
        }
        Ok(())
    }

    fn agent_events(&mut self) -> Result<(), Violation> {
        let now = self.now;
        while let Some(ev) = self.agent.session.poll_output() {
            let ClientEvent::Message(d) = ev else {
                continue;
            };
            if d.topic == topics::REGISTRATION {
                let Ok(r) = pbc::RegisterRequest::decode(d.payload.clone()) else {
                    continue;
                };
                // The identity rule: only the collector's own process may register it.
                if let Err(why) = self.admit(&r.collector_id, &d) {
                    self.log(format!(
                        "agent refuses registration of {} from pid {:?}: {why}",
                        r.collector_id, d.publisher_pid
                    ));
                    continue;
                }
                self.agent.registry.register(
                    now,
                    &r.collector_id,
                    &r.collector_type,
                    SourceCaps(r.capabilities),
                    d.publisher_pid.unwrap_or(0),
                );
                self.log(format!("agent registers {}", r.collector_id));
                self.check_identity(&r.collector_id)?;
                if let Some(to) = d.reply_to.clone() {
                    let answer = pbc::RegisterResponse {
                        accepted: true,
                        message: String::new(),
                        heartbeat_interval_ms: AGENT_HEARTBEAT.as_millis() as u64,
                    };
                    let payload = Bytes::from(answer.encode_to_vec());
                    let p = Publish {
                        correlation: d.correlation.clone(),
                        ..Publish::new(to, payload.clone(), QoS::AtMostOnce)
                    };
                    if let Ok(seq) = self.agent.session.publish(p) {
                        let id = (self.agent.publisher_id.clone(), seq);
                        self.note_publish(id, payload, QoS::AtMostOnce)?;
                    }
                }
            } else if d.topic.starts_with(topics::HEARTBEAT_PREFIX)
                && let Ok(h) = pbc::Heartbeat::decode(d.payload.clone())
                && self.admit(&h.collector_id, &d).is_ok()
            {
                self.agent.registry.heartbeat(now, &h.collector_id);
            }
        }
        Ok(())
    }

    /// The agent's facts about collector `id` (client `cK` runs as pid 100 + K) and the
    /// core's identity rule on the broker's peer credentials of `d`.
    fn admit(&self, id: &str, d: &Deliver) -> Result<(), registry::Refusal> {
        let k = id
            .strip_prefix('c')
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|&k| {
                self.clients
                    .get(k)
                    .is_some_and(|c| c.registration.is_some())
            });
        let expected = match k {
            Some(k) if self.clients[k].process_down => Expected::Managed { pid: None },
            Some(k) => Expected::Managed {
                pid: Some(100 + k as u32),
            },
            None => Expected::Unknown,
        };
        let peer = Peer {
            pid: d.publisher_pid,
            uid: d.publisher_uid,
            ancestors: Vec::new(),
        };
        registry::admit(&expected, &peer)
    }

    /// The identity invariant: a registered collector's entry is its own process's.
    fn check_identity(&self, id: &str) -> Result<(), Violation> {
        let Some(entry) = self.agent.registry.get(id) else {
            return Ok(());
        };
        let own = id
            .strip_prefix('c')
            .and_then(|k| k.parse::<u32>().ok())
            .map(|k| 100 + k);
        if own != Some(entry.pid) {
            return Err(self.violation(
                "identity",
                format!(
                    "{id} registered by pid {} (its process is {own:?})",
                    entry.pid
                ),
            ));
        }
        Ok(())
    }

    fn agent_timeout(&mut self) {
        self.agent.session.handle_timeout(self.now);
        self.agent.registry.handle_timeout(self.now);
        while let Some(ev) = self.agent.registry.poll_output() {
            self.log(format!("registry: {ev:?}"));
        }
    }

    /// A registering collector: (re-)registers in every new broker session, heartbeats
    /// once registered.
    fn drive_registration(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let c = &mut self.clients[i];
        if c.process_down {
            return Ok(());
        }
        let current = c.session.session_id();
        let connected = c.session.is_connected();
        let Some((reg, session)) = c.registration.as_mut() else {
            return Ok(());
        };
        if current.is_some() && current != *session {
            *session = current;
            reg.handle_disconnect(now);
            reg.start(now);
        } else {
            reg.handle_timeout(now);
        }
        let actions: Vec<RegAction> = std::iter::from_fn(|| reg.poll_output()).collect();
        for action in actions {
            let (topic, payload, qos, reply_to) = match action {
                RegAction::Register => {
                    let r = pbc::RegisterRequest {
                        collector_id: format!("c{i}"),
                        collector_type: "sim".into(),
                        capabilities: SourceCaps::PROCESS.0,
                        pid: 100 + i as u32,
                        version: "sim".into(),
                    };
                    (
                        topics::REGISTRATION.to_string(),
                        r.encode_to_vec(),
                        QoS::AtLeastOnce,
                        Some(format!("_reply.c{i}")),
                    )
                }
                RegAction::Heartbeat { sequence } if connected => {
                    let h = pbc::Heartbeat {
                        collector_id: format!("c{i}"),
                        sequence,
                        ..Default::default()
                    };
                    (
                        topics::heartbeat(&format!("c{i}")),
                        h.encode_to_vec(),
                        QoS::AtMostOnce,
                        None,
                    )
                }
                _ => continue,
            };
            let payload = Bytes::from(payload);
            let p = Publish {
                reply_to,
                ..Publish::new(topic.clone(), payload.clone(), qos)
            };
            if let Ok(seq) = self.clients[i].session.publish(p) {
                let id = (self.clients[i].publisher_id.clone(), seq);
                self.note_publish(id, payload, qos)?;
                self.log(format!("c{i} publish #{seq} {topic}"));
            }
        }
        Ok(())
    }

    /// Live collectors not (yet) registered and healthy in the agent's registry.
    fn unregistered(&self) -> Vec<String> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.process_down)
            .filter_map(|(i, c)| {
                let (reg, _) = c.registration.as_ref()?;
                let id = format!("c{i}");
                let healthy = self
                    .agent
                    .registry
                    .get(&id)
                    .is_some_and(|r| r.health == CollectorHealth::Healthy);
                (reg.state() != RegState::Registered || !healthy).then(|| {
                    format!(
                        "{id}: {:?}, healthy in the registry: {healthy}",
                        reg.state()
                    )
                })
            })
            .collect()
    }

    // ----- the step -----

    fn step_once(&mut self, faults_on: bool) -> Result<(), Violation> {
        self.step += 1;
        let n = self.clients.len();
        let i = self.rng.below(n as u64) as usize;
        match self.rng.below(10) {
            0..=2 => self.deliver_to_client(i)?,
            3..=5 => self.deliver_to_broker(i)?,
            6..=7 => self.client_act(i)?,
            _ => {
                let dt = Duration::from_millis(self.rng.below(50));
                self.now = self.now + dt;
                self.broker.handle_timeout(self.now);
                self.shadow.broker.handle_timeout(self.now);
                self.drain_broker()?;
                self.agent_timeout();
                for i in 0..n {
                    self.clients[i].session.handle_timeout(self.now);
                    if self.clients[i].conn.is_some() && self.clients[i].session.is_closed() {
                        // The client gave a silent broker up: it drops the connection.
                        self.reset(i, "broker silent");
                    }
                }
            }
        }
        if faults_on {
            if self.chance(self.faults.stall) {
                let until = self.now + Duration::from_millis(self.rng.below(2000));
                self.clients[i].link.stalled_until = until;
                self.log(format!("stall c{i}"));
            }
            if self.chance(self.faults.reset) {
                self.reset(i, "link reset");
            }
            if self.chance(self.faults.client_crash) {
                self.crash_client(i);
            }
            if self.chance(self.faults.broker_crash) {
                self.crash_broker();
            }
        }
        self.supervise()?;
        for j in 0..n {
            if self.clients[j].conn.is_none()
                && !self.clients[j].process_down
                && self.clients[j].down_until <= self.now
            {
                self.connect(j);
            }
            self.complete_syncs(j)?;
            self.drive_registration(j)?;
            self.client_transmit(j);
            self.client_events(j)?;
        }
        self.drain_broker()?;
        self.agent_pump()?;
        self.write_to_links();
        self.drain_broker()?;
        self.check_bounds()
    }

    /// Faults off, everyone acks: everything pending must drain within a bounded time.
    fn liveness(&mut self) -> Result<(), Violation> {
        for c in &mut self.clients {
            c.link.stalled_until = Instant::ZERO;
            c.ack_rate = 1.0;
            c.publish_rate = 0.0;
        }
        self.faults.partial = 0.0;
        let deadline = self.now + Duration::from_secs(120);
        while self.now < deadline {
            for _ in 0..200 {
                self.step_once(false)?;
            }
            // Collectors commit what they have batched.
            for c in &mut self.clients {
                if let Some(w) = c.wal.as_mut() {
                    w.machine.commit();
                    w.batch = 0;
                }
            }
            for i in 0..self.clients.len() {
                self.drive_wal(i)?;
            }
            // A client whose supervisor gave up is gone for good, and so are its unacknowledged
            // publishes (never acknowledged, so nothing acknowledged is lost).
            let pending: usize = self
                .clients
                .iter()
                .filter(|c| !c.process_down)
                .map(|c| {
                    c.session.pending_publishes()
                        + c.wal.as_ref().map_or(0, |w| {
                            w.machine.pending() + w.machine.unsynced() + w.syncing.len()
                        })
                })
                .sum();
            if pending == 0 && self.broker.pending_pubacks() == 0 && self.unregistered().is_empty()
            {
                return Ok(());
            }
        }
        let pending: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.process_down)
            .map(|(i, c)| {
                format!(
                    "c{i}: {} pending, WAL {:?}, connected={}",
                    c.session.pending_publishes(),
                    c.wal
                        .as_ref()
                        .map(|w| (w.machine.pending(), w.machine.unsynced())),
                    c.session.is_connected()
                )
            })
            .collect();
        Err(self.violation(
            "liveness",
            format!(
                "after faults stopped, still pending: {pending:?}; broker pending PubAcks {}; not registered: {:?}",
                self.broker.pending_pubacks(),
                self.unregistered()
            ),
        ))
    }
}

fn registration_config() -> RegistrationConfig {
    RegistrationConfig {
        heartbeat_interval: AGENT_HEARTBEAT,
        request_timeout: Duration::from_secs(2),
        max_attempts: u32::MAX,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
    }
}

fn client_config(publisher_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new(publisher_id);
    c.max_frame = MAX_FRAME;
    c
}

fn sub_model(spec: &Subscribe) -> SubModel {
    SubModel {
        filter: TopicFilter::parse(&spec.filter)
            .unwrap_or_else(|_| unreachable!("specs come from a fixed valid list")),
        group: spec.group.as_ref().map(|g| g.name.clone()),
        block: matches!(spec.overflow, None | Some(Overflow::Block)),
    }
}

/// MQTT matching written independently of the core, on raw strings.
pub fn naive_match(filter: &str, name: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    if name.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    fn go(f: &[&str], n: &[&str]) -> bool {
        match (f.first(), n.first()) {
            (Some(&"#"), _) => true,
            (None, None) => true,
            (Some(&"+"), Some(_)) => go(&f[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&f[1..], &n[1..]),
            _ => false,
        }
    }
    go(&f, &n)
}

/// Runs one seed: a safety phase with faults, then a liveness phase without.
pub fn run(cfg: &SimConfig) -> Result<Outcome, Violation> {
    let mut w = World::new(cfg);
    w.agent_connect();
    let faults = w.faults.clone();
    if cfg.verbose {
        println!("seed={} faults: {faults}", cfg.seed);
    }
    for _ in 0..cfg.steps {
        w.step_once(true)?;
    }
    w.liveness()?;
    w.check_clean_closes()?;
    Ok(Outcome {
        seed: cfg.seed,
        steps: w.step,
        trace: w.events.hash,
        faults,
        published: w.published,
        delivered: w.delivered,
        pubacks: w.pubacks,
    })
}
