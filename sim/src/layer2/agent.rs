//! The agent's side of layer 2: the agent host (the real broker server, process manager
//! and control client), the simulated spawner that starts collectors as turmoil hosts, the
//! collector processes themselves, and the driver's side of processes: carrying out spawns
//! and signals, and checking every restart against the policy.
//!
//! All of the agent's glue is here, so that driving a single fleet machine instead of
//! these parts touches this file alone.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig};
use daemoneye_core::registration::RegistrationConfig;
use daemoneye_core::registry::SourceCaps;
use daemoneye_core::supervisor::{RestartPolicy, Signal};
use daemoneye_io::agent::process::{CollectorSpec, ExitFuture, ProcessManager, Request, Spawner};
use daemoneye_io::client::{Client, ReconnectPolicy};
use daemoneye_io::clock::MonotonicClock;
use daemoneye_proto::frame::{CollectorIdentity, Role};
use daemoneye_proto::pb::control as pbc;
use tokio::sync::{Notify, mpsc, oneshot};

use super::model::Shared;
use super::transport::{HOST_PIDS, TurmoilConnector, TurmoilListener};
use super::workload::options;
use super::{PORT, UID};

/// The agent: the broker server, the process manager with the simulated spawner, and the
/// agent's own control client (lifecycle RPC, registration, heartbeats).
pub(super) async fn agent(model: Shared, seed: u64, canary: bool, ctl: Ctl) -> turmoil::Result {
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
        // Reconnect waits from a fixed seed, without jitter: the run replays.
        let mut options = daemoneye_io::agent::control_options();
        options.session.reconnect = Some(ReconnectPolicy::default());
        if let Err(e) = daemoneye_io::agent::serve_control(TurmoilConnector, options, tx).await {
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
pub(crate) const COLLECTORS: &[&str] = &["c0", "c1"];
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
pub(super) struct SpawnCtl {
    pub(super) next_pid: u32,
    /// Collectors to start (name, pid), in order.
    pub(super) spawns: VecDeque<(String, u32)>,
    /// Signals to deliver (name, pid, signal).
    pub(super) signals: VecDeque<(String, u32, Signal)>,
    /// The running process of each collector.
    pub(super) running: BTreeMap<String, Process>,
    /// Pids that exited on their own (after SIGTERM).
    pub(super) exited: BTreeSet<u32>,
    /// Pids that were sent SIGTERM: a stop or restart is under way.
    pub(super) terminating: BTreeSet<u32>,
    /// Collectors the operator has just sent a stop or restart to: the next SIGTERM for
    /// one of them is the operator's (any other is the agent's health-driven restart).
    pub(super) operator_pending: BTreeSet<String>,
    /// Pids whose SIGTERM came from an operator's command: their restart starts the count
    /// afresh. A health-driven restart counts toward the policy like a crash.
    pub(super) operator_terms: BTreeSet<u32>,
    /// Collectors frozen by SIGSTOP (their link is held until SIGCONT or their exit).
    pub(super) frozen: BTreeSet<String>,
}

/// A simulated collector process: pid, its SIGTERM, and where its exit is reported.
type Process = (u32, Rc<Notify>, Option<oneshot::Sender<String>>);

pub(super) type Ctl = Rc<RefCell<SpawnCtl>>;

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
        capabilities: caps.bits(),
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
        capabilities: caps.bits(),
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

/// Kills a running collector process; its exit reaches the process manager. Returns
/// whether one was running.
pub(super) fn kill_collector(sim: &mut turmoil::Sim<'_>, ctl: &Ctl, name: &str, how: &str) -> bool {
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
pub(super) fn agent_died(sim: &mut turmoil::Sim<'_>, ctl: &Ctl, model: &Shared) {
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
pub(super) fn drive_processes(
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
