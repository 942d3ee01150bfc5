//! The agent's side of layer 1: its control client (in the agent's process beside the
//! broker, over an in-process link that never fails) and the core's fleet machine, the
//! same one the production agent runs: every client's supervisor (when a crashed or
//! unhealthy client's process comes back), the registry of collectors and their
//! heartbeats, and the identity rule for registrations.
//!
//! Client `cK` runs as pid `100 + K` in every incarnation; the fleet's Spawn brings it
//! back as a new process and its Signal ends the current one.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::broker::{ConnId, PeerCreds};
use daemoneye_core::client::{ClientEvent, ClientSession};
use daemoneye_core::fleet::{FleetConfig, Output as FleetOutput};
use daemoneye_core::registration::{RegState, Registration, RegistrationConfig};
use daemoneye_core::registry::{CollectorHealth, Peer};
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Deliver, Publish, QoS, Role, Subscribe};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

use super::model::sub_model;
use super::workload::client_config;
use super::{UID, World};
use crate::report::Violation;

/// The agent's control client: in the agent's process beside the broker (so it dies with
/// it), over a link that never fails. It answers registrations and tracks heartbeats in
/// the fleet.
#[derive(Debug)]
pub(super) struct AgentCtl {
    /// `agent.<broker epoch>`: each agent process has its own publisher id.
    pub(super) publisher_id: String,
    pub(super) session: ClientSession,
    pub(super) conn: Option<ConnId>,
    pub(super) inbox: VecDeque<Bytes>,
    pub(super) paused: bool,
}

impl AgentCtl {
    pub(super) fn new(broker_epoch: u32) -> Self {
        let publisher_id = format!("agent.{broker_epoch}");
        let mut config = client_config(&publisher_id);
        config.role = Role::Agent;
        let mut session = ClientSession::new(config);
        session.subscribe(Subscribe::new(topics::REGISTRATION));
        session.subscribe(Subscribe::new(format!("{}.+", topics::HEARTBEAT_PREFIX)));
        let mut results = Subscribe::new(topics::TASKS_RESULT);
        results.qos = QoS::AtLeastOnce;
        session.subscribe(results);
        AgentCtl {
            publisher_id,
            session,
            conn: None,
            inbox: VecDeque::new(),
            paused: false,
        }
    }
}

/// The heartbeat interval the agent asks of collectors.
const AGENT_HEARTBEAT: Duration = Duration::from_secs(1);

/// The agent's heartbeat expectations.
pub(super) fn fleet_config() -> FleetConfig {
    FleetConfig {
        heartbeat_interval: AGENT_HEARTBEAT,
        missed_heartbeats: 3,
        ..FleetConfig::default()
    }
}

/// Client `cK`'s process id, in every incarnation.
pub(super) fn pid_of(i: usize) -> u32 {
    100 + i as u32
}

/// The client a fleet name `cK` stands for.
pub(super) fn client_index(collector: &str) -> usize {
    collector
        .strip_prefix('c')
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| unreachable!("the fleet supervises only the clients c0..cN"))
}

/// The OS's word on who sent `d` (the broker's peer credentials of its connection).
pub(super) fn peer_of(d: &Deliver) -> Peer {
    Peer {
        pid: d.publisher_pid,
        uid: d.publisher_uid,
        ancestors: Vec::new(),
    }
}

impl World {
    /// The fleet's decisions: a Spawn brings a client back as a new process (same role
    /// and subscriptions, no memory, a new publisher id); a Signal ends its process (a
    /// collector restarted for missing its heartbeats).
    pub(super) fn supervise(&mut self) -> Result<(), Violation> {
        self.fleet.handle_timeout(self.now);
        self.drive_fleet()
    }

    /// Carries out everything the fleet asked for.
    pub(super) fn drive_fleet(&mut self) -> Result<(), Violation> {
        while let Some(out) = self.fleet.poll_output() {
            match out {
                FleetOutput::Spawn { collector } => self.spawn(&collector)?,
                FleetOutput::Signal {
                    collector, signal, ..
                } => {
                    let i = client_index(&collector);
                    self.log(format!("fleet signals {collector}: {signal:?}"));
                    // Every signal the fleet sends here (SIGTERM of a restart, SIGKILL after
                    // it) ends the process; pause and resume are never asked for.
                    self.crash_client(i);
                }
                // The simulated collectors collect from the start.
                FleetOutput::BeginMonitoring { .. } => {}
                FleetOutput::Task(out) => self.task_output(out)?,
                other => self.log(format!("fleet: {other:?}")),
            }
        }
        Ok(())
    }

    fn spawn(&mut self, collector: &str) -> Result<(), Violation> {
        let now = self.now;
        let i = client_index(collector);
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
        c.session = ClientSession::new(super::workload::session_config(
            i,
            &c.publisher_id,
            c.registration.is_some(),
        ));
        c.held.clear();
        c.subs.clear();
        for spec in c.specs.clone() {
            let id = c.session.subscribe(spec.clone());
            c.subs.insert(id, sub_model(&spec));
        }
        c.process_down = false;
        c.down_until = now;
        c.spawns.push(now);
        if c.registration.is_some() {
            // A new process: its registration starts from nothing.
            c.registration = Some((Registration::new(registration_config(), reg_seed), None));
        }
        self.fleet.handle_spawned(now, collector, pid_of(i));
        self.log(format!("supervisor spawns c{i}"));
        self.check_restart_policy(i)?;
        self.recover_wal(i)
    }

    // ----- the agent's control client and the collectors' registration -----

    /// Connects the agent's (fresh) control client to the broker.
    pub(super) fn agent_connect(&mut self) {
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
    pub(super) fn agent_pump(&mut self) -> Result<(), Violation> {
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
            // What the agent receives counts for the PubAck check like a client's.
            self.received
                .entry((d.publisher_id.clone(), d.sequence))
                .or_default()
                .insert((usize::MAX, self.broker_epoch, d.sub_id));
            if d.topic == topics::REGISTRATION {
                let Ok(r) = pbc::RegisterRequest::decode(d.payload.clone()) else {
                    continue;
                };
                // The identity rule: only the collector's own process may register it.
                let answer = self.fleet.handle_registration(now, &r, &peer_of(&d));
                if !answer.accepted {
                    self.log(format!(
                        "agent refuses registration of {} from pid {:?}: {}",
                        r.collector_id, d.publisher_pid, answer.message
                    ));
                    self.drive_fleet()?;
                    continue;
                }
                self.log(format!("agent registers {}", r.collector_id));
                self.check_identity(&r.collector_id)?;
                self.drive_fleet()?;
                if let Some(to) = d.reply_to.clone() {
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
            } else if d.topic == topics::TASKS_RESULT {
                if d.qos == QoS::AtLeastOnce {
                    self.agent.session.ack(d.delivery_id);
                }
                self.agent_result(&d)?;
                self.drive_fleet()?;
            } else if d.topic.starts_with(topics::HEARTBEAT_PREFIX)
                && let Ok(h) = pbc::Heartbeat::decode(d.payload.clone())
            {
                self.fleet.handle_heartbeat(now, &d.topic, &h, &peer_of(&d));
                self.drive_fleet()?;
            }
        }
        Ok(())
    }

    pub(super) fn agent_timeout(&mut self) -> Result<(), Violation> {
        self.agent.session.handle_timeout(self.now);
        self.supervise()
    }

    /// Live collectors not (yet) registered and healthy in the agent's registry.
    pub(super) fn unregistered(&self) -> Vec<String> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.process_down)
            .filter_map(|(i, c)| {
                let (reg, _) = c.registration.as_ref()?;
                let id = format!("c{i}");
                let healthy = self
                    .fleet
                    .registry()
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
}

pub(super) fn registration_config() -> RegistrationConfig {
    RegistrationConfig {
        heartbeat_interval: AGENT_HEARTBEAT,
        request_timeout: Duration::from_secs(2),
        max_attempts: u32::MAX,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
    }
}
