//! The agent's own bus client: lifecycle RPC on `control.collector.lifecycle`, collectors'
//! registrations, heartbeats and deregistrations, the task RPC on `control.tasks.*` and the
//! tasks sent to collectors, and the health report on
//! `control.health.status`, all answered by the process manager ([`process`]) from the
//! core fleet's state.
//!
//! - [`process`]: the process manager, which runs the fleet and carries out its actions;
//! - [`shim`]: real collector processes, started through the `exec-collector` shim;
//! - [`store`]: the event store service (what crosses the bus, kept and queried);
//! - [`tasks`]: the task RPC and the collectors' results, for the fleet's coordinator;
//! - [`enrich`]: the enrichment service (alerts enriched by `process` tasks);
//! - [`detection`]: the detection service (Sigma rules over the process events, alerts);
//! - [`bridge`]: the NATS bridge (exports, imports, its disk queue), on its own thread.

pub mod bridge;
pub mod detection;
pub mod enrich;
pub mod process;
pub mod shim;
pub mod store;
pub mod tasks;

use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Deliver, Publish, QoS, Role, Subscribe};
use daemoneye_proto::pb::control as pbc;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, ClientError, ClientOptions};
use crate::transport::Connector;
use process::{PeerCreds, Request};

/// How often the agent publishes its health report.
const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// The broker's word on who published `d` (its connection's peer credentials).
fn peer(d: &Deliver) -> PeerCreds {
    PeerCreds {
        pid: d.publisher_pid,
        uid: d.publisher_uid,
    }
}

/// The agent's health: the broker's own report, rolled up with the collectors' by the
/// process manager. A failing event store counts as the bus's (the broker's part is
/// Degraded, with the reason), since it is the bus's record that suffers. Detection's part
/// is its own, and rolls into the overall state.
async fn health_report(
    client: &Client,
    manager: &mpsc::Sender<Request>,
    store: Option<&store::StoreHealth>,
    detection: Option<&detection::DetectionHealth>,
    bridge: Option<&bridge::BridgeHealth>,
) -> pbc::HealthReport {
    let mut broker = client
        .request(
            Publish::new(topics::BROKER_HEALTH, Bytes::new(), QoS::AtMostOnce),
            Duration::from_secs(2),
        )
        .await
        .ok()
        .and_then(|d| pbc::HealthReport::decode(d.payload).ok())
        .unwrap_or_default();
    if let Some(problem) = store.and_then(store::StoreHealth::problem) {
        broker.broker = broker.broker.max(pbc::HealthState::Degraded as i32);
        broker.reasons.push(problem);
    }
    let (reply, rx) = oneshot::channel();
    // Without the process manager the coordinator's state is unknown.
    let fallback = pbc::HealthReport {
        overall: broker.broker,
        coordinator: pbc::HealthState::Unspecified as i32,
        ..broker.clone()
    };
    let mut report = if manager
        .send(Request::Health { broker, reply })
        .await
        .is_err()
    {
        fallback
    } else {
        rx.await.unwrap_or(fallback)
    };
    if let Some(d) = detection {
        report.detection = d.state() as i32;
        report.overall = report.overall.max(report.detection);
        report.reasons.extend(d.problem());
    }
    if let Some(b) = bridge {
        report.bridge = b.state() as i32;
        report.overall = report.overall.max(report.bridge);
        report.reasons.extend(b.problem());
    }
    report
}

async fn reply(client: &Client, req: &Deliver, payload: Vec<u8>) {
    let Some(to) = &req.reply_to else { return };
    let p = Publish {
        correlation: req.correlation.clone(),
        ..Publish::new(to.clone(), Bytes::from(payload), QoS::AtMostOnce)
    };
    if let Err(e) = client.publish(p).await {
        tracing::warn!(error = %e, "could not answer a request");
    }
}

/// Tells collector `id`, whose registration was just accepted, to begin monitoring.
async fn begin_monitoring(client: &Client, response: &pbc::RegisterResponse, id: &str) {
    if !response.accepted {
        return;
    }
    let command = pbc::CollectorControl {
        command: Some(pbc::collector_control::Command::BeginMonitoring(
            pbc::BeginMonitoring {},
        )),
    };
    let p = Publish::new(
        topics::config(id),
        Bytes::from(command.encode_to_vec()),
        QoS::AtMostOnce,
    );
    if let Err(e) = client.publish(p).await {
        tracing::warn!(collector = %id, error = %e, "could not send BeginMonitoring");
    }
}

/// The options of the agent's own control client: role Agent, and a close that fits the
/// agent's 500 ms shutdown budget.
pub fn control_options() -> ClientOptions {
    let mut options = ClientOptions::new("daemoneye-agent");
    options.session.role = Role::Agent;
    options.close_timeout = std::time::Duration::from_millis(200);
    options
}

/// Connects to the broker through `connector` (a [`crate::transport::UnixConnector`] in
/// production, the simulation's network in a simulation) as the agent, with `options`
/// (normally [`control_options`]; a simulation replaces its reconnect seed), and serves
/// lifecycle, registration, task and health requests until the connection ends for good.
pub async fn serve_control<C: Connector>(
    connector: C,
    options: ClientOptions,
    manager: mpsc::Sender<Request>,
) -> Result<(), ClientError> {
    serve_control_with(connector, options, manager, None, None, None).await
}

/// [`serve_control`], with the event store's, detection's and the bridge's health in the
/// health report; it also answers `control.bridge.status` (not enabled without a bridge).
pub async fn serve_control_with<C: Connector>(
    connector: C,
    options: ClientOptions,
    manager: mpsc::Sender<Request>,
    store: Option<store::StoreHealth>,
    detection: Option<detection::DetectionHealth>,
    bridge: Option<bridge::BridgeHealth>,
) -> Result<(), ClientError> {
    let client = Client::connect_via(connector, options).await?;
    let mut lifecycle = client.subscribe(Subscribe::new(topics::LIFECYCLE)).await?;
    let mut health = client
        .subscribe(Subscribe::new(topics::HEALTH_STATUS))
        .await?;
    let mut registration = client
        .subscribe(Subscribe::new(topics::REGISTRATION))
        .await?;
    let mut deregistration = client
        .subscribe(Subscribe::new(topics::DEREGISTRATION))
        .await?;
    let heartbeat_filter = format!("{}.+", topics::HEARTBEAT_PREFIX);
    let mut heartbeats = client.subscribe(Subscribe::new(heartbeat_filter)).await?;
    let mut tasks = tasks::TaskTopics::subscribe(&client, &manager).await?;
    let mut bridge_status = client
        .subscribe(Subscribe::new(topics::BRIDGE_STATUS))
        .await?;
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tokio::select! {
            biased;
            req = lifecycle.recv() => {
                let Some(req) = req else { return Ok(()) };
                if req.reply_to.is_none() {
                    continue;
                }
                let response = match pbc::LifecycleRequest::decode(req.payload.clone()) {
                    Ok(r) => {
                        let op = pbc::LifecycleOp::try_from(r.op).unwrap_or(pbc::LifecycleOp::Unspecified);
                        let (tx, rx) = oneshot::channel();
                        if manager.send(Request::Lifecycle { op, name: r.name, reply: tx }).await.is_err() {
                            continue;
                        }
                        rx.await.unwrap_or_default()
                    }
                    Err(e) => pbc::LifecycleResponse {
                        error: pbc::LifecycleErrorCode::InvalidState as i32,
                        message: format!("malformed lifecycle request: {e}"),
                        collectors: Vec::new(),
                    },
                };
                reply(&client, &req, response.encode_to_vec()).await;
            }
            req = health.recv() => {
                let Some(req) = req else { return Ok(()) };
                // Our own periodic reports arrive here too; only requests carry reply_to.
                if req.reply_to.is_some() {
                    let report = health_report(&client, &manager, store.as_ref(), detection.as_ref(), bridge.as_ref()).await;
                    reply(&client, &req, report.encode_to_vec()).await;
                }
            }
            req = registration.recv() => {
                let Some(req) = req else { return Ok(()) };
                if let Ok(r) = pbc::RegisterRequest::decode(req.payload.clone()) {
                    let (tx, rx) = oneshot::channel();
                    let peer = peer(&req);
                    let id = r.collector_id.clone();
                    if manager.send(Request::Register { request: r, peer, reply: tx }).await.is_ok()
                        && let Ok(answer) = rx.await
                    {
                        reply(&client, &req, answer.response.encode_to_vec()).await;
                        if answer.begin_monitoring {
                            begin_monitoring(&client, &answer.response, &id).await;
                        }
                    }
                }
            }
            hb = heartbeats.recv() => {
                let Some(hb) = hb else { return Ok(()) };
                let peer = peer(&hb);
                if let Ok(heartbeat) = pbc::Heartbeat::decode(hb.payload.clone()) {
                    let _ = manager.send(Request::Heartbeat { topic: hb.topic.clone(), heartbeat, peer }).await;
                }
            }
            d = deregistration.recv() => {
                let Some(d) = d else { return Ok(()) };
                let peer = peer(&d);
                if let Ok(m) = pbc::Deregister::decode(d.payload.clone()) {
                    let _ = manager.send(Request::Deregister { id: m.collector_id, peer }).await;
                }
            }
            req = bridge_status.recv() => {
                let Some(req) = req else { return Ok(()) };
                let status = bridge.as_ref().map(bridge::BridgeHealth::status).unwrap_or_default();
                reply(&client, &req, status.encode_to_vec()).await;
            }
            incoming = tasks.next() => {
                let Some(incoming) = incoming else { return Ok(()) };
                incoming.serve(&client, &manager).await;
            }
            _ = tick.tick() => {
                let report = health_report(&client, &manager, store.as_ref(), detection.as_ref(), bridge.as_ref()).await;
                let p = Publish::new(topics::HEALTH_STATUS, Bytes::from(report.encode_to_vec()), QoS::AtMostOnce);
                let _ = client.publish(p).await;
            }
        }
    }
}
