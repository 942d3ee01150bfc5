//! What the clients do, and the seed's choices of it: the world's construction (how many
//! clients, their subscriptions, rates, restart policies, which are WAL-backed or
//! registering collectors), publishing, acknowledging, clean closes, impostors, WAL
//! appends and commits, and the collectors' side of registration.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig};
use daemoneye_core::client::{ClientConfig, ClientSession};
use daemoneye_core::fleet::{Fleet, Output as FleetOutput};
use daemoneye_core::registration::{RegAction, Registration};
use daemoneye_core::registry::SourceCaps;
use daemoneye_core::rng::SeededRng;
use daemoneye_core::supervisor::RestartPolicy;
use daemoneye_core::topic::topics;
use daemoneye_core::wal::{Wal, WalConfig};
use daemoneye_proto::frame::{
    CollectorIdentity, GroupSpec, Overflow, Publish, QoS, QueueStrategy, Subscribe,
};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

use super::agent::{AgentCtl, registration_config};
use super::disk::SimWal;
use super::model::sub_model;
use super::shadow::Shadow;
use super::{Canary, Client, LINK_STREAM, MAX_FRAME, SimConfig, UID, World};
use crate::fault::FaultRates;
use crate::link::Link;
use crate::report::{EventLog, Violation};

pub(super) const TOPICS: &[&str] = &[
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

impl World {
    pub(crate) fn new(cfg: &SimConfig) -> World {
        let mut rng = SeededRng::new(cfg.seed);
        let faults = FaultRates::swarm(&mut rng);
        let mut link_seeds = SeededRng::new(cfg.seed ^ LINK_STREAM);
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
            // About a third of the clients are WAL-backed collectors.
            let wal = (rng.below(3) == 0).then(|| {
                let mut config = WalConfig::new(format!("c{i}"));
                config.max_pending = [8, 64, 1000][rng.below(3) as usize];
                config.compact_after = [1, 512, 1 << 20][rng.below(3) as usize];
                config.idle_compact_delay =
                    Duration::from_millis([0, 100, 1000][rng.below(3) as usize]);
                // Half publish after the sync, half before it under reservations.
                config.reserve_block = [0, 0, 0, 1, 8, 256][rng.below(6) as usize];
                SimWal {
                    machine: Wal::new(config.clone()),
                    config,
                    disk: Vec::new(),
                    synced: 0,
                    syncing: VecDeque::new(),
                    must_survive: BTreeSet::new(),
                    sent_early: BTreeSet::new(),
                    batch: 0,
                }
            });
            let publisher_id = if wal.is_some() {
                format!("c{i}")
            } else {
                format!("c{i}.0")
            };
            let mut session = ClientSession::new(session_config(i, &publisher_id, wal.is_none()));
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
                link: Link::new(faults.link_config(), link_seeds.next_u64()),
                incarnation: 0,
                link_epoch: 0,
                down_until: Instant::ZERO,
                unacked: Vec::new(),
                publish_rate,
                ack_rate,
                publisher_id,
                policy,
                process_down: false,
                spawns: Vec::new(),
                wal,
                produced: 0,
                registration: None,
                acked_subs: BTreeSet::new(),
                closing: false,
                blocked: false,
                watch: Vec::new(),
                held: Vec::new(),
            });
        }
        // Clients without a WAL register with the agent as collectors and heartbeat.
        for (i, c) in clients.iter_mut().enumerate() {
            if c.wal.is_none() {
                // The reply inbox, subscribed again by every incarnation like the others.
                // The reply inbox and the task subscription (a `process` collector), subscribed
                // again by every incarnation like the others.
                for spec in [
                    Subscribe::new(format!("_reply.c{i}")),
                    super::tasks::task_subscription(),
                ] {
                    let id = c.session.subscribe(spec.clone());
                    c.subs.insert(id, sub_model(&spec));
                    c.specs.push(spec);
                }
                c.registration = Some((
                    Registration::new(registration_config(), rng.next_u64()),
                    None,
                ));
            }
        }
        let mut fleet = Fleet::new(super::agent::fleet_config());
        fleet
            .coordinator_mut()
            .canary_accept_duplicates(cfg.canary == Canary::DuplicateCompletion);
        for (i, c) in clients.iter().enumerate() {
            fleet.supervise(format!("c{i}"), c.policy.clone());
        }
        fleet.start_all(Instant::ZERO);
        while let Some(out) = fleet.poll_output() {
            // Every client's process is already running at the start.
            if let FleetOutput::Spawn { collector } = out {
                let i = super::agent::client_index(&collector);
                fleet.handle_spawned(Instant::ZERO, &collector, super::agent::pid_of(i));
            }
        }
        World {
            fleet,
            agent: AgentCtl::new(0),
            canary: cfg.canary,
            rng,
            link_seeds,
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
            tasks: Default::default(),
        }
    }

    pub(super) fn client_act(&mut self, i: usize) -> Result<(), Violation> {
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
                    capabilities: SourceCaps::PROCESS.bits(),
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
        self.answer_tasks(i)?;
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

    pub(super) fn maybe_ack(&mut self, i: usize) {
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

    /// A registering collector: (re-)registers in every new broker session, heartbeats
    /// once registered.
    pub(super) fn drive_registration(&mut self, i: usize) -> Result<(), Violation> {
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
                        capabilities: SourceCaps::PROCESS.bits(),
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
}

/// Client `i`'s session: a registering collector (`collector`) says its collector id in
/// its Hello, so that the agent's tasks can be addressed to it.
pub(super) fn session_config(i: usize, publisher_id: &str, collector: bool) -> ClientConfig {
    let mut c = client_config(publisher_id);
    if collector {
        c.role = daemoneye_proto::frame::Role::Collector;
        c.collector = Some(CollectorIdentity {
            id: format!("c{i}"),
            kind: "sim".into(),
            capabilities: SourceCaps::PROCESS.bits(),
        });
    }
    c
}

pub(super) fn client_config(publisher_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new(publisher_id);
    c.max_frame = MAX_FRAME;
    c
}
