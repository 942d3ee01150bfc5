//! Layer 2: the real `daemoneye-io` agent (broker server, process manager, lifecycle and
//! registration RPC) and client library over turmoil's simulated network, in virtual time.
//!
//! The agent host runs `server::serve` behind a turmoil listener, a `ProcessManager` whose
//! `Spawner` starts a turmoil host where production forks a process, and the agent's own
//! control client. Supervised collector hosts register and heartbeat with the real
//! collector code; publisher and subscriber hosts run the client library (reconnect, QoS1
//! resend, dedup) through a turmoil connector; a probe host asks the agent for its
//! collectors' status over the lifecycle RPC.
//!
//! The seed drives turmoil (`rng_seed`, a fixed epoch) and the fault schedule: the agent,
//! publishers and subscribers crashed and bounced; collectors killed (their supervisor
//! decides the restart); links held and released, partitioned and repaired. Every
//! `select!` in the io crate is `biased`, and every clock is tokio's (virtual here), so a
//! seed replays exactly.
//!
//! Checked while it runs: a PubAck never claims more deliveries than subscribers have seen
//! (DESIGN.md section 9, invariant 1), per-publisher order on each subscriber connection
//! (2), nothing delivered that the filter does not match (4), restarts after a crash wait
//! at least the initial backoff and stay within the policy's count per window (6). Then
//! faults stop: every publish of every live publisher must be acknowledged, and every
//! collector must be running and registered (or Failed by its policy), within a bounded
//! virtual time (7).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig, PeerCreds};
use daemoneye_core::registration::RegistrationConfig;
use daemoneye_core::registry::SourceCaps;
use daemoneye_core::rng::SeededRng;
use daemoneye_core::supervisor::{RestartPolicy, Signal};
use daemoneye_core::topic::topics;
use daemoneye_io::agent::process::{CollectorSpec, ExitFuture, ProcessManager, Request, Spawner};
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_io::clock::MonotonicClock;
use daemoneye_io::transport::{Connector, Listener};
use daemoneye_proto::frame::{CollectorIdentity, Publish, QoS, Role, Subscribe};
use daemoneye_proto::pb::control as pbc;
use prost::Message;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::world::{EventLog, Violation, naive_match};

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
    /// Collector processes the agent started.
    pub spawned: u64,
}

struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;

    async fn accept(&mut self) -> io::Result<(Self::Read, Self::Write, PeerCreds)> {
        let (stream, from) = self.0.accept().await?;
        let (r, w) = stream.into_split();
        // The simulated network has no peer credentials: every host is the owner, and a
        // collector host has the pid the simulated spawner gave its current process.
        let pid = turmoil::reverse_lookup(from.ip())
            .and_then(|host| HOST_PIDS.with(|p| p.borrow().get(&host).copied()));
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid,
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
    step: u64,
    events: EventLog,
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
    /// The agent's last answer to the probe: (collector, state, registered).
    status: Option<Vec<(String, String, bool)>>,
    faults_stopped: bool,
    /// When each collector was last killed by a fault (for the restart checks).
    crashed_at: BTreeMap<String, (u64, u32)>,
    /// Restarts after a crash, per collector, within the current agent's life.
    restarts: BTreeMap<String, Vec<u64>>,
    spawned: u64,
}

type Shared = Rc<RefCell<Model>>;

impl Model {
    fn log(&mut self, event: String) {
        let stamp = self.step.to_string();
        self.events.record(self.step, &stamp, event);
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant, detail));
        }
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.events.violation(invariant, detail, self.step)
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
    while let Some(mut d) = sub.recv().await {
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
        drop(m);
        // Recorded: now the broker may forget it.
        d.ack();
    }
    Ok(())
}

/// The agent: the broker server, the process manager with the simulated spawner, and the
/// agent's own control client (lifecycle RPC, registration, heartbeats).
async fn agent(model: Shared, seed: u64, canary: bool, ctl: Ctl) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let specs = COLLECTORS
        .iter()
        .map(|name| CollectorSpec {
            name: name.to_string(),
            binary: PathBuf::from("sim-collector"),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            capabilities: Vec::new(),
            policy: collector_policy(),
        })
        .collect();
    let (tx, rx) = mpsc::channel::<Request>(64);
    let manager = ProcessManager::new(
        specs,
        PathBuf::from(format!("broker:{PORT}")),
        SimSpawner(ctl),
        COLLECTOR_HEARTBEAT,
    );
    tokio::task::spawn_local(manager.run(rx));
    tokio::task::spawn_local(async move {
        if let Err(e) = daemoneye_io::agent::serve_control(TurmoilConnector, tx).await {
            eprintln!("control client ended: {e}");
        }
    });
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

/// Collectors the agent supervises.
const COLLECTORS: &[&str] = &["c0", "c1"];
/// The agent's heartbeat interval for collectors.
const COLLECTOR_HEARTBEAT: Duration = Duration::from_millis(500);

fn collector_policy() -> RestartPolicy {
    RestartPolicy {
        auto_restart: true,
        max_restarts: 5,
        window: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        stable_after: Duration::from_secs(10),
        stop_timeout: Duration::from_millis(500),
    }
}

/// What the simulated spawner asks of the driver, and what the driver tells it.
#[derive(Debug, Default)]
struct SpawnCtl {
    next_pid: u32,
    /// Collectors to start (name, pid), in order.
    spawns: VecDeque<(String, u32)>,
    /// Signals to deliver (name, pid, signal).
    signals: VecDeque<(String, u32, Signal)>,
    /// The running process of each collector.
    running: BTreeMap<String, Process>,
    /// Pids that exited on their own (after SIGTERM).
    exited: BTreeSet<u32>,
    /// Pids that were sent SIGTERM: a stop or restart is under way.
    terminating: BTreeSet<u32>,
    /// Collectors the operator has just sent a stop or restart to: the next SIGTERM for
    /// one of them is the operator's (any other is the agent's health-driven restart).
    operator_pending: BTreeSet<String>,
    /// Pids whose SIGTERM came from an operator's command: their restart starts the count
    /// afresh. A health-driven restart counts toward the policy like a crash.
    operator_terms: BTreeSet<u32>,
    /// Collectors frozen by SIGSTOP (their link is held until SIGCONT or their exit).
    frozen: BTreeSet<String>,
}

/// A simulated collector process: pid, its SIGTERM, and where its exit is reported.
type Process = (u32, Rc<Notify>, Option<oneshot::Sender<String>>);

type Ctl = Rc<RefCell<SpawnCtl>>;

thread_local! {
    /// The pid of each collector host's current process, as the broker's peer credentials
    /// report it (the agent accepts a collector's registration only from that pid).
    static HOST_PIDS: RefCell<BTreeMap<String, u32>> = const { RefCell::new(BTreeMap::new()) };
}

/// Starts collectors as turmoil hosts: the driver registers (or bounces) the host.
struct SimSpawner(Ctl);

impl Spawner for SimSpawner {
    fn spawn(
        &mut self,
        spec: &CollectorSpec,
        _socket: &std::path::Path,
    ) -> io::Result<(u32, ExitFuture)> {
        let mut ctl = self.0.borrow_mut();
        ctl.next_pid += 1;
        let pid = 1000 + ctl.next_pid;
        let (tx, rx) = oneshot::channel();
        ctl.running
            .insert(spec.name.clone(), (pid, Rc::new(Notify::new()), Some(tx)));
        ctl.spawns.push_back((spec.name.clone(), pid));
        HOST_PIDS.with(|p| p.borrow_mut().insert(spec.name.clone(), pid));
        let exit = async move { rx.await.unwrap_or_else(|_| "agent gone".to_string()) };
        Ok((pid, Box::pin(exit)))
    }

    fn signal(&mut self, pid: u32, signal: Signal) -> io::Result<()> {
        let mut ctl = self.0.borrow_mut();
        let name = ctl
            .running
            .iter()
            .find(|(_, r)| r.0 == pid)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| io::Error::other(format!("no process {pid}")))?;
        if signal == Signal::Term {
            // A stop or restart is under way from this moment, whenever the signal lands.
            ctl.terminating.insert(pid);
            if ctl.operator_pending.remove(&name) {
                ctl.operator_terms.insert(pid);
            }
        }
        ctl.signals.push_back((name, pid, signal));
        Ok(())
    }

    fn ancestors(&self, _pid: u32) -> Vec<u32> {
        // Simulated processes start nothing of their own.
        Vec::new()
    }
}

/// A supervised collector: registers with the agent and heartbeats until SIGTERM.
async fn collector(model: Shared, ctl: Ctl, name: String) -> turmoil::Result {
    let Some((pid, term)) = ctl.borrow().running.get(&name).map(|r| (r.0, r.1.clone())) else {
        return Ok(());
    };
    model.borrow_mut().log(format!("{name} pid {pid} starts"));
    let caps = SourceCaps::PROCESS;
    let mut o = options(&name, &format!("{name}.{pid}"));
    o.session.role = Role::Collector;
    o.session.collector = Some(CollectorIdentity {
        id: name.clone(),
        kind: "sim".into(),
        capabilities: caps.0,
    });
    let client = loop {
        tokio::select! {
            biased;
            _ = term.notified() => {
                ctl.borrow_mut().exited.insert(pid);
                return Ok(());
            }
            c = Client::connect_via(TurmoilConnector, o.clone()) => match c {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    let identity = pbc::RegisterRequest {
        collector_id: name.clone(),
        collector_type: "sim".into(),
        capabilities: caps.0,
        pid,
        version: "sim".into(),
    };
    let config = RegistrationConfig {
        request_timeout: Duration::from_secs(1),
        max_attempts: 1000,
        backoff_max: Duration::from_secs(1),
        ..RegistrationConfig::default()
    };
    daemoneye_io::collector::keep_registered(
        client.clone(),
        identity,
        config,
        u64::from(pid),
        async move { term.notified().await },
    )
    .await;
    client.close().await;
    model.borrow_mut().log(format!("{name} pid {pid} exits"));
    ctl.borrow_mut().exited.insert(pid);
    Ok(())
}

async fn lifecycle(
    client: &Client,
    op: pbc::LifecycleOp,
    name: &str,
) -> Option<pbc::LifecycleResponse> {
    let req = pbc::LifecycleRequest {
        op: op as i32,
        name: name.to_string(),
    };
    let p = Publish::new(
        topics::LIFECYCLE,
        Bytes::from(req.encode_to_vec()),
        QoS::AtLeastOnce,
    );
    let d = client.request(p, Duration::from_secs(2)).await.ok()?;
    pbc::LifecycleResponse::decode(d.payload).ok()
}

/// An operator at the CLI: now and then restarts, pauses or resumes a collector while
/// faults run (and resumes whatever is paused once they stop), and asks for the status
/// every half second, keeping the last answer.
async fn probe(model: Shared, ctl: Ctl) -> turmoil::Result {
    let client = connect(&model, "probe", "probe").await;
    let mut rng = SeededRng::new(model.borrow().seed ^ 0x6f70);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let faults_on = !model.borrow().faults_stopped;
        if faults_on && rng.below(8) == 0 {
            let name = COLLECTORS[rng.below(COLLECTORS.len() as u64) as usize];
            let op = [
                pbc::LifecycleOp::Restart,
                pbc::LifecycleOp::Pause,
                pbc::LifecycleOp::Resume,
            ][rng.below(3) as usize];
            {
                // An operator's command starts the restart count afresh (a Failed
                // collector restarted by hand gets its whole budget again).
                let mut m = model.borrow_mut();
                m.restarts.remove(name);
                m.crashed_at.remove(name);
                if op == pbc::LifecycleOp::Restart {
                    ctl.borrow_mut().operator_pending.insert(name.to_string());
                }
            }
            let answer = lifecycle(&client, op, name).await;
            // Refused: no SIGTERM comes of this command. Unanswered, it may still be carried
            // out (a QoS1 resend after a broker crash), so the mark stays for its SIGTERM.
            if answer.as_ref().is_some_and(|a| a.error != 0) {
                ctl.borrow_mut().operator_pending.remove(name);
            }
            model.borrow_mut().log(format!(
                "operator {op:?} {name}: {}",
                answer.map_or("no answer".to_string(), |a| format!("error {}", a.error))
            ));
        }
        let Some(r) = lifecycle(&client, pbc::LifecycleOp::Status, "").await else {
            continue;
        };
        let summary: Vec<(String, String, bool)> = r
            .collectors
            .iter()
            .map(|c| (c.name.clone(), c.state.clone(), c.capabilities > 0))
            .collect();
        if !faults_on {
            for (name, state, _) in &summary {
                if state == "paused" {
                    lifecycle(&client, pbc::LifecycleOp::Resume, name).await;
                }
            }
        }
        model.borrow_mut().status = Some(summary);
    }
}

/// A fault and when it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Heal {
    Bounce(usize),
    Repair(usize),
    Release(usize),
}

/// Kills a running collector process; its exit reaches the process manager. Returns
/// whether one was running.
fn kill_collector(sim: &mut turmoil::Sim<'_>, ctl: &Ctl, name: &str, how: &str) -> bool {
    let tx = ctl
        .borrow_mut()
        .running
        .get_mut(name)
        .and_then(|r| r.2.take());
    if ctl.borrow_mut().frozen.remove(name) {
        // The frozen process is gone: its successor is not.
        sim.release(name, "broker");
    }
    match tx {
        Some(tx) => {
            sim.crash(name);
            let _ = tx.send(how.to_string());
            true
        }
        None => false,
    }
}

/// The agent died: its collectors die with it (parent-death signal), and what its process
/// manager asked for is void.
fn agent_died(sim: &mut turmoil::Sim<'_>, ctl: &Ctl, model: &Shared) {
    let names: Vec<String> = ctl.borrow().running.keys().cloned().collect();
    for name in names {
        kill_collector(sim, ctl, &name, "agent gone");
    }
    let next_pid = ctl.borrow().next_pid;
    *ctl.borrow_mut() = SpawnCtl {
        next_pid,
        ..SpawnCtl::default()
    };
    let mut m = model.borrow_mut();
    m.crashed_at.clear();
    m.restarts.clear();
}

/// Carries out the simulated spawner's requests: start (or restart) collector hosts,
/// deliver signals, report exits; and checks every restart against the policy.
fn drive_processes(
    sim: &mut turmoil::Sim<'_>,
    ctl: &Ctl,
    model: &Shared,
    started: &mut BTreeSet<String>,
    step: u64,
) {
    loop {
        let next = ctl.borrow_mut().spawns.pop_front();
        let Some((name, pid)) = next else { break };
        if started.insert(name.clone()) {
            let (m, c, n) = (model.clone(), ctl.clone(), name.clone());
            sim.host(name.as_str(), move || {
                collector(m.clone(), c.clone(), n.clone())
            });
        } else {
            sim.bounce(name.as_str());
        }
        let mut m = model.borrow_mut();
        m.spawned += 1;
        m.log(format!("spawn {name} pid {pid}"));
        let policy = collector_policy();
        let crash = m.crashed_at.remove(&name);
        // An operator's restart may come before the agent learns of the crash: then the
        // crash ends that stop, and the count starts afresh. A health-driven restart (missed
        // heartbeats) counts like a crash.
        let requested = crash.is_some_and(|(_, pid)| ctl.borrow().operator_terms.contains(&pid));
        if requested {
            m.restarts.remove(&name);
        }
        if let Some((at, _)) = crash.filter(|_| !requested) {
            let gap = Duration::from_millis(step - at);
            if gap < policy.backoff_initial {
                m.fail(
                    "restart-backoff",
                    format!(
                        "{name} restarted {gap:?} after its crash (backoff {:?})",
                        policy.backoff_initial
                    ),
                );
            }
            let window = policy.window.as_millis() as u64;
            let list = m.restarts.entry(name.clone()).or_default();
            list.push(step);
            list.retain(|&t| t + window > step);
            let n = list.len();
            if n as u32 > policy.max_restarts {
                m.fail(
                    "restart-policy",
                    format!(
                        "{name}: {n} restarts within {:?} (max {})",
                        policy.window, policy.max_restarts
                    ),
                );
            }
        }
    }
    loop {
        let next = ctl.borrow_mut().signals.pop_front();
        let Some((name, pid, signal)) = next else {
            break;
        };
        let current = ctl.borrow().running.get(&name).map(|r| (r.0, r.1.clone()));
        let Some((running, term)) = current.filter(|(p, _)| *p == pid) else {
            continue;
        };
        model
            .borrow_mut()
            .log(format!("signal {signal:?} to {name} pid {running}"));
        match signal {
            Signal::Term => {
                ctl.borrow_mut().terminating.insert(pid);
                if ctl.borrow().operator_terms.contains(&pid) {
                    // An operator's stop or restart starts the count afresh (the
                    // supervisor's rule for a requested restart).
                    model.borrow_mut().restarts.remove(&name);
                } else {
                    // The agent's health-driven restart: its respawn is a restart that
                    // counts and waits out the backoff (measured from here, before the
                    // exit, so the check is never stricter than the supervisor).
                    model
                        .borrow_mut()
                        .crashed_at
                        .entry(name.clone())
                        .or_insert((step, pid));
                }
                term.notify_one();
            }
            Signal::Kill => {
                kill_collector(sim, ctl, &name, "killed by signal 9");
            }
            Signal::Stop => {
                ctl.borrow_mut().frozen.insert(name.clone());
                sim.hold(name.as_str(), "broker");
            }
            Signal::Cont => {
                ctl.borrow_mut().frozen.remove(&name);
                sim.release(name.as_str(), "broker");
            }
        }
    }
    let exited: Vec<u32> = std::mem::take(&mut ctl.borrow_mut().exited)
        .into_iter()
        .collect();
    for pid in exited {
        let name = ctl
            .borrow()
            .running
            .iter()
            .find(|(_, r)| r.0 == pid)
            .map(|(n, _)| n.clone());
        if let Some(name) = name {
            kill_collector(sim, ctl, &name, "exited with status 0");
        }
    }
}

/// Faults in force and when they are undone.
#[derive(Debug, Default)]
struct Injected {
    healing: BTreeMap<(u64, Heal), ()>,
    /// Hosts crashed by the driver.
    down: BTreeSet<usize>,
    /// Hosts whose link to the agent is held or partitioned.
    cut: BTreeSet<usize>,
}

fn check(model: &Shared) -> Result<(), Violation> {
    let m = model.borrow();
    match &m.violation {
        Some((inv, detail)) => Err(m.violation(inv, detail.clone())),
        None => Ok(()),
    }
}

/// One step of virtual time: the hosts run, due faults heal, the spawner's requests are
/// carried out, and the invariants are checked.
fn advance(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    model: &Shared,
    ctl: &Ctl,
    started: &mut BTreeSet<String>,
    injected: &mut Injected,
    step: u64,
) -> Result<(), Violation> {
    model.borrow_mut().step = step;
    sim.step()
        .map_err(|e| model.borrow().violation("simulation", e.to_string()))?;
    check(model)?;
    heal_due(sim, names, model, injected, step);
    drive_processes(sim, ctl, model, started, step);
    check(model)
}

/// Undoes the faults that are due.
fn heal_due(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    model: &Shared,
    f: &mut Injected,
    step: u64,
) {
    let Injected { healing, down, cut } = f;
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
    HOST_PIDS.with(|p| p.borrow_mut().clear());
    let mut rng = SeededRng::new(cfg.seed ^ 0x7475_726d_6f69_6c32);
    let model: Shared = Rc::new(RefCell::new(Model {
        seed: cfg.seed,
        step: 0,
        events: EventLog::new(cfg.verbose, cfg.seed, " --layer 2"),
        violation: None,
        pub_incarnation: [0; PUBLISHERS],
        sub_incarnation: [0; SUBSCRIBERS],
        received: BTreeMap::new(),
        order: BTreeMap::new(),
        outstanding: BTreeMap::new(),
        published: 0,
        acked: 0,
        delivered: 0,
        status: None,
        faults_stopped: false,
        crashed_at: BTreeMap::new(),
        restarts: BTreeMap::new(),
        spawned: 0,
    }));
    let ctl: Ctl = Rc::new(RefCell::new(SpawnCtl::default()));
    let mut started: BTreeSet<String> = BTreeSet::new();
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
    // Hosts: the agent, publishers and subscribers (crashed and bounced by the driver), then
    // the supervised collectors (started, restarted and killed only through the agent's
    // process manager; the driver may hold or partition their links).
    let names: Vec<String> = std::iter::once("broker".to_string())
        .chain((0..PUBLISHERS).map(|i| format!("p{i}")))
        .chain((0..SUBSCRIBERS).map(|j| format!("s{j}")))
        .chain(COLLECTORS.iter().map(|c| c.to_string()))
        .collect();
    let driver_hosts = 1 + PUBLISHERS + SUBSCRIBERS;
    {
        let m = model.clone();
        let broker_seed = rng.next_u64();
        let canary = cfg.canary;
        let c = ctl.clone();
        sim.host("broker", move || {
            agent(m.clone(), broker_seed, canary, c.clone())
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
    {
        let m = model.clone();
        let c = ctl.clone();
        sim.host("probe", move || probe(m.clone(), c.clone()));
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
    let mut injected = Injected::default();
    let mut faults = 0u64;
    let mut step = 0u64;
    while step < fault_steps {
        step += 1;
        advance(
            &mut sim,
            &names,
            &model,
            &ctl,
            &mut started,
            &mut injected,
            step,
        )?;
        if crash_rate > 0.0 && rng.unit() < crash_rate {
            // A supervised collector dies; its supervisor decides what happens next.
            let name = COLLECTORS[rng.below(COLLECTORS.len() as u64) as usize];
            let pid = ctl.borrow().running.get(name).map(|r| r.0);
            if kill_collector(&mut sim, &ctl, name, "killed by signal 9") {
                faults += 1;
                let stopping = pid.is_some_and(|p| ctl.borrow().terminating.contains(&p));
                let mut m = model.borrow_mut();
                // A crash during a stop or restart the agent asked for is that stop's end,
                // not a crash the restart policy answers.
                if let Some(pid) = pid.filter(|_| !stopping) {
                    m.crashed_at.insert(name.to_string(), (step, pid));
                }
                m.log(format!("crash {name}"));
            }
        }
        if crash_rate > 0.0 && rng.unit() < crash_rate {
            let h = rng.below(driver_hosts as u64) as usize;
            if !injected.down.contains(&h) {
                if h == 0 {
                    agent_died(&mut sim, &ctl, &model);
                }
                sim.crash(names[h].as_str());
                injected.down.insert(h);
                faults += 1;
                let back = step + 50 + rng.below(2000);
                injected.healing.insert((back, Heal::Bounce(h)), ());
                model.borrow_mut().log(format!("crash {}", names[h]));
            }
        }
        if link_rate > 0.0 && rng.unit() < link_rate {
            let h = 1 + rng.below(names.len() as u64 - 1) as usize;
            if !injected.cut.contains(&h) {
                injected.cut.insert(h);
                faults += 1;
                if rng.below(2) == 0 {
                    // turmoil drops the segments of a partitioned TCP stream without
                    // resetting it, a gap inside a connection that a local socket can never
                    // have. A partition therefore lasts past the broker's idle timeout (three
                    // heartbeats), so that both ends have given the connection up by the
                    // time the link heals.
                    let back = step + 4000 + rng.below(4000);
                    sim.partition(names[h].as_str(), "broker");
                    injected.healing.insert((back, Heal::Repair(h)), ());
                    model.borrow_mut().log(format!("partition {}", names[h]));
                } else {
                    let back = step + 10 + rng.below(3000);
                    sim.hold(names[h].as_str(), "broker");
                    injected.healing.insert((back, Heal::Release(h)), ());
                    model.borrow_mut().log(format!("hold {}", names[h]));
                }
            }
        }
    }
    // Liveness: no new faults; the last ones heal on schedule (a partition outlives the
    // idle timeout), then every publish must be acknowledged within a bounded time.
    {
        let mut m = model.borrow_mut();
        m.log("faults stop".into());
        m.status = None;
        m.faults_stopped = true;
    }
    let healed = injected
        .healing
        .last_key_value()
        .map_or(step, |(&(at, _), ())| at.max(step));
    let deadline = healed + liveness.as_millis() as u64;
    loop {
        step += 1;
        advance(
            &mut sim,
            &names,
            &model,
            &ctl,
            &mut started,
            &mut injected,
            step,
        )?;
        let m = model.borrow();
        let current: Vec<String> = (0..PUBLISHERS)
            .map(|i| format!("p{i}.{}", m.pub_incarnation[i]))
            .collect();
        // Every collector runs and is registered (or its supervisor gave up on it).
        let collectors_up = m.status.as_ref().is_some_and(|st| {
            st.len() == COLLECTORS.len()
                && st.iter().all(|(_, state, registered)| {
                    (state == "running" && *registered) || state == "failed"
                })
        });
        let done = injected.healing.is_empty()
            && collectors_up
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
                format!(
                    "after faults stopped: publishers {pending:?}; collectors {:?}",
                    m.status
                ),
            ));
        }
    }
    let m = model.borrow();
    Ok(NetOutcome {
        seed: cfg.seed,
        steps: step,
        trace: m.events.hash,
        published: m.published,
        acked: m.acked,
        delivered: m.delivered,
        faults,
        spawned: m.spawned,
    })
}
