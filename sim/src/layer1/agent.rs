//! The agent's side of layer 1: its control client (in the agent's process beside the
//! broker, over an in-process link that never fails), the registry it keeps of collectors
//! and their heartbeats, its identity rule for registrations, and the per-client
//! supervisors that decide when a crashed client's process comes back.
//!
//! All of the agent's glue is here, so that driving a single fleet machine instead of
//! these parts touches this file alone.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::broker::{ConnId, PeerCreds};
use daemoneye_core::client::{ClientEvent, ClientSession};
use daemoneye_core::registration::{RegState, Registration, RegistrationConfig};
use daemoneye_core::registry::{self, CollectorHealth, Expected, Peer, Registry, SourceCaps};
use daemoneye_core::supervisor::Action as SupAction;
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
/// the registry.
#[derive(Debug)]
pub(super) struct AgentCtl {
    /// `agent.<broker epoch>`: each agent process has its own publisher id.
    pub(super) publisher_id: String,
    pub(super) session: ClientSession,
    pub(super) conn: Option<ConnId>,
    pub(super) inbox: VecDeque<Bytes>,
    pub(super) paused: bool,
    pub(super) registry: Registry,
}

impl AgentCtl {
    pub(super) fn new(broker_epoch: u32) -> Self {
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

impl World {
    /// The supervisor's decisions for crashed clients: a Spawn brings the client back as a
    /// new process (same role and subscriptions, no memory, a new publisher id).
    pub(super) fn supervise(&mut self) -> Result<(), Violation> {
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

    pub(super) fn agent_timeout(&mut self) {
        self.agent.session.handle_timeout(self.now);
        self.agent.registry.handle_timeout(self.now);
        while let Some(ev) = self.agent.registry.poll_output() {
            self.log(format!("registry: {ev:?}"));
        }
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
