//! Layer 1: the real broker and client state machines from `daemoneye-core`, connected by
//! seeded fake byte-stream links ([`crate::link::Link`]), in virtual time, with faults and
//! crashes injected ([`crate::fault`]) and DESIGN.md section 9's invariants checked after
//! every step.
//!
//! This file holds the world's state and [`run`]; the rest of the world's behaviour is
//! split by concern: `workload` (what the clients do, and the seed's choices of them),
//! `wire` (connections and moving bytes), `disk` (the collectors' WAL files), `agent`
//! (the agent's fleet machine of supervisors, registry and task coordinator, and its
//! control client), `tasks` (tasks submitted, served by the collectors, and invariant 10),
//! `model` (the reference model
//! and the invariants on what clients see), `shadow` (invariant 8, byte splits) and
//! `scheduler` (the step, and the liveness phase).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::broker::{Broker, BrokerConfig, ConnId};
use daemoneye_core::client::ClientSession;
use daemoneye_core::fleet::Fleet;
use daemoneye_core::registration::Registration;
use daemoneye_core::rng::SeededRng;
use daemoneye_core::supervisor::RestartPolicy;
use daemoneye_proto::frame::{QoS, Subscribe};

use crate::fault::FaultRates;
use crate::link::{Link, chance};
use crate::report::{EventLog, Violation};

mod agent;
mod crash;
mod disk;
mod model;
mod scheduler;
mod shadow;
mod tasks;
mod wire;
mod workload;

use agent::AgentCtl;
use disk::SimWal;
use model::{CleanCloseExpect, MessageId, OrderKey, SubModel, SubscriptionId, Watcher};
use shadow::Shadow;

const UID: u32 = 1000;
const MAX_FRAME: u32 = 64 * 1024;
/// Mixed into the run's seed for the stream the links' seeds come from.
const LINK_STREAM: u64 = 0x6c69_6e6b_7365_6564;

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
    /// A process table that takes a reused pid's exec for a re-exec (`--procmon` only).
    ReuseAsModified,
    /// A task coordinator that completes a task again on a late duplicate result.
    DuplicateCompletion,
}

impl std::str::FromStr for Canary {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "early-puback" => Ok(Canary::EarlyPubAck),
            "lying-sync" => Ok(Canary::LyingSync),
            "reuse-as-modified" => Ok(Canary::ReuseAsModified),
            "duplicate-completion" => Ok(Canary::DuplicateCompletion),
            other => Err(format!(
                "unknown canary {other:?} (expected early-puback, lying-sync, duplicate-completion or reuse-as-modified)"
            )),
        }
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
    pub faults: FaultRates,
    /// Messages published, delivered to clients, PubAcks seen.
    pub published: u64,
    /// Deliveries the applications saw.
    pub delivered: u64,
    /// PubAcks received.
    pub pubacks: u64,
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
    /// The agent's policy for this client's process (its supervisor is in the agent's
    /// [`Fleet`](daemoneye_core::fleet::Fleet), under the name `c<i>`).
    policy: RestartPolicy,
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
    /// Tasks this collector's process took and has not answered yet.
    held: Vec<tasks::Held>,
}

/// The simulated world: one broker (and its shadow), the agent, several clients, their
/// links, virtual time, and the reference model the invariants check against.
pub(crate) struct World {
    /// The agent's collectors: every client's supervisor and the registry, one machine
    /// (the agent's process manager, which outlives the broker's crashes here).
    fleet: Fleet,
    agent: AgentCtl,
    canary: Canary,
    /// The stream the scheduler, the workload and the faults draw from.
    rng: SeededRng,
    /// The seed of each new link (every link then draws from its own stream).
    link_seeds: SeededRng,
    faults: FaultRates,
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
    /// Invariant 10's model: every task submitted, and how each ended.
    tasks: tasks::TaskModel,
}

impl World {
    pub(crate) fn log(&mut self, event: String) {
        let stamp = format!("{} {:?}", self.step, self.now);
        self.events.record(self.step, &stamp, event);
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }

    fn chance(&mut self, p: f64) -> bool {
        chance(&mut self.rng, p)
    }

    /// The run's one random stream.
    pub(crate) fn rng(&mut self) -> &mut SeededRng {
        &mut self.rng
    }

    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// Client `i`'s link (a disconnected client's link carries nothing).
    pub(crate) fn link_mut(&mut self, i: usize) -> &mut Link {
        &mut self.clients[i].link
    }

    /// A new link, misbehaving as the run's fault rates say, with its own stream.
    fn new_link(&mut self) -> Link {
        Link::new(self.faults.link_config(), self.link_seeds.next_u64())
    }

    fn client_of(&self, conn: ConnId) -> Option<usize> {
        self.clients.iter().position(|c| c.conn == Some(conn))
    }
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
