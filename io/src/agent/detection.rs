//! The agent's detection service: Sigma rules over the process events, alerts on the bus
//! (DESIGN.md section 12).
//!
//! - A **bus client** of its own takes `events.process.new` and `events.process.modified`
//!   through durable QoS1 subscriptions ([`EVENTS_DURABLE`]): the broker keeps them
//!   while the agent is away, and procmond's WAL holds what was not acked.
//! - The **detection thread** ([`engine`]) evaluates them with the rules in force and folds
//!   repeats (the core's fold machine), off the runtime that routes the bus. Batches are
//!   what was queued when the thread was free (up to [`MAX_BATCH`]), at most
//!   [`MAX_IN_FLIGHT`] of them between receipt and ack; beyond that the subscription's
//!   bounded queue holds the rest (Block: nothing dropped).
//! - Each alert goes out at QoS1 on `alerts.<level>`; a batch's events are acked only once
//!   every alert it raised has its PubAck (the event store has committed it), so an agent
//!   killed in between gets the events again and raises the alerts again, under the same
//!   alert ids (derived from the event's publisher and sequence, so readers merge them). A
//!   fold window's count is in memory until its update: a clean shutdown publishes every
//!   open window's update, a crash loses the counts of the windows open then (their raised
//!   alerts stay).
//! - `control.detection.status` answers a `DetectionStatus`; `control.detection.reload`
//!   (and SIGHUP, through the `reloads` channel) loads the rules again on a blocking
//!   thread and swaps them in between two batches: no event is dropped or evaluated
//!   twice, and open fold windows go on.
//! - The health report's `detection` part ([`DetectionHealth`]): Degraded while rule
//!   files are refused or evaluation falls behind the events.

pub mod engine;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::detect::fold::FoldConfig;
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Deliver, Publish, QoS, Role, Subscribe};
use daemoneye_proto::pb::control::{DetectionReloadResponse, DetectionStatus};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::client::{AckMode, Client, ClientError, ClientOptions, Delivery, PendingAck};
use crate::config::DetectionSettings;
use crate::detect::{RuleSet, RuleSources};
use crate::transport::Connector;
pub use engine::DetectionHealth;
use engine::{AlertMessage, Incoming, Job, Output};

/// The durable subscriptions' names (one per topic): the broker keeps their queues while
/// the agent is away.
pub const EVENTS_DURABLE: [(&str, &str); 2] = [
    (topics::PROCESS_NEW, "daemoneye-detection-new"),
    (topics::PROCESS_MODIFIED, "daemoneye-detection-modified"),
];
/// Most events in one batch.
pub const MAX_BATCH: usize = 1024;
/// Most batches between receipt and ack.
pub const MAX_IN_FLIGHT: usize = 8;
/// The broker's queue for the subscription: room for a storm while the thread works.
const QUEUE_CAPACITY: u32 = 20_000;
/// How long a status or reload request may wait for the detection thread.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// What a clean shutdown gives the last fold updates to be confirmed.
const FLUSH_BUDGET: Duration = Duration::from_millis(250);

/// How the detection service runs.
#[derive(Debug, Clone)]
pub struct DetectionService {
    /// `[detection]`, checked; `None` when disabled (the service then only answers that).
    pub settings: Option<DetectionSettings>,
    /// Shared with the health report.
    pub health: DetectionHealth,
}

/// The options of the detection service's bus client: role Agent, and a close that fits
/// the agent's shutdown budget.
pub fn client_options() -> ClientOptions {
    let mut options = ClientOptions::new("daemoneye-agent-detection");
    options.session.role = Role::Agent;
    options.close_timeout = Duration::from_millis(200);
    options.delivery_buffer = 1024;
    options
}

/// What the rules are loaded from.
pub fn sources(settings: &DetectionSettings) -> RuleSources {
    RuleSources {
        builtin: settings.builtin_rules,
        directories: settings.rules.clone(),
    }
}

/// Subscribes (then says so on `ready`: the agent starts its collectors after that),
/// loads the rules and serves detection through `connector` until `shutdown` resolves;
/// then publishes the open fold windows' counts. A message on `reloads` (SIGHUP) loads the
/// rules again.
pub async fn serve_detection<C: Connector>(
    connector: C,
    options: ClientOptions,
    service: DetectionService,
    ready: oneshot::Sender<()>,
    reloads: mpsc::Receiver<()>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    let client = Client::connect_via(connector, options).await?;
    let status = client
        .subscribe(Subscribe::new(topics::DETECTION_STATUS))
        .await?;
    let reload = client
        .subscribe(Subscribe::new(topics::DETECTION_RELOAD))
        .await?;
    let Some(settings) = service.settings.clone() else {
        let _ = ready.send(());
        serve_disabled(&client, status, reload, shutdown).await;
        client.close().await;
        return Ok(());
    };
    let durable = |(filter, name): (&str, &str)| Subscribe {
        qos: QoS::AtLeastOnce,
        capacity: Some(QUEUE_CAPACITY),
        durable_name: Some(name.into()),
        ..Subscribe::new(filter)
    };
    let events = client
        .subscribe_all(EVENTS_DURABLE.map(durable), AckMode::Manual)
        .await?;
    let _ = ready.send(());
    let (out_tx, outputs) = mpsc::unbounded_channel();
    let fold = FoldConfig::new(settings.fold_window);
    let jobs = match engine::spawn(sources(&settings), fold, service.health.clone(), out_tx) {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::error!(error = %e, "the detection thread could not start: no detection");
            service
                .health
                .set_refused(Some(format!("the detection thread could not start: {e}")));
            serve_disabled(&client, status, reload, shutdown).await;
            client.close().await;
            return Ok(());
        }
    };
    let mut service = Service {
        client: client.clone(),
        settings,
        jobs,
        outputs,
        waiting: VecDeque::new(),
        acking: JoinSet::new(),
        updates: JoinSet::new(),
        answers: JoinSet::new(),
    };
    let result = service
        .serve(events, status, reload, reloads, shutdown)
        .await;
    service.finish().await;
    client.close().await;
    result
}

struct Service {
    client: Client,
    settings: DetectionSettings,
    jobs: std::sync::mpsc::Sender<Job>,
    outputs: mpsc::UnboundedReceiver<Output>,
    /// Batches sent to the thread, oldest first, waiting for their alerts.
    waiting: VecDeque<Vec<Delivery>>,
    /// Batches whose alerts are published, waiting for their PubAcks before the ack.
    acking: JoinSet<()>,
    /// Fold updates waiting for their PubAcks.
    updates: JoinSet<()>,
    /// Status and reload answers in progress.
    answers: JoinSet<()>,
}

impl Service {
    fn in_flight(&self) -> usize {
        self.waiting.len() + self.acking.len()
    }

    async fn serve(
        &mut self,
        mut events: crate::client::Subscription,
        mut status: crate::client::Subscription,
        mut reload: crate::client::Subscription,
        mut reloads: mpsc::Receiver<()>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ClientError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                out = self.outputs.recv() => {
                    let Some(out) = out else {
                        tracing::error!("the detection thread ended");
                        return Ok(());
                    };
                    self.published(out).await?;
                }
                Some(_) = self.acking.join_next(), if !self.acking.is_empty() => {}
                Some(_) = self.updates.join_next(), if !self.updates.is_empty() => {}
                Some(_) = self.answers.join_next(), if !self.answers.is_empty() => {}
                d = events.recv(), if self.in_flight() < MAX_IN_FLIGHT => {
                    let Some(first) = d else { return Ok(()) };
                    let mut batch = vec![first];
                    // Everything already queued joins the batch.
                    while batch.len() < MAX_BATCH {
                        tokio::select! {
                            biased;
                            d = events.recv() => match d {
                                Some(d) => batch.push(d),
                                None => break,
                            },
                            () = std::future::ready(()) => break,
                        }
                    }
                    let incoming = batch.iter().map(|d| incoming(d)).collect();
                    if self.jobs.send(Job::Evaluate(incoming)).is_err() {
                        tracing::error!("the detection thread ended");
                        return Ok(());
                    }
                    self.waiting.push_back(batch);
                }
                req = status.recv() => {
                    let Some(req) = req else { return Ok(()) };
                    self.answer_status(req.into_inner());
                }
                req = reload.recv() => {
                    let Some(req) = req else { return Ok(()) };
                    self.reload(Some(req.into_inner()));
                }
                Some(()) = reloads.recv() => {
                    tracing::info!("SIGHUP: reloading the detection rules");
                    self.reload(None);
                }
            }
        }
    }

    /// Publishes what the thread decided: a batch's alerts (its events are acked once
    /// they are confirmed) or fold updates.
    async fn published(&mut self, out: Output) -> Result<(), ClientError> {
        match out {
            Output::Evaluated(alerts) => {
                let pending = self.publish_all(&alerts).await?;
                let mut batch = self.waiting.pop_front().unwrap_or_default();
                self.acking.spawn(async move {
                    if confirmed(pending).await {
                        for d in &mut batch {
                            d.ack();
                        }
                    }
                });
            }
            Output::Updates(alerts) => {
                let pending = self.publish_all(&alerts).await?;
                self.updates.spawn(async move {
                    confirmed(pending).await;
                });
            }
        }
        Ok(())
    }

    async fn publish_all(
        &self,
        alerts: &[AlertMessage],
    ) -> Result<Vec<(String, PendingAck)>, ClientError> {
        let mut pending = Vec::with_capacity(alerts.len());
        for a in alerts {
            if a.count == 1 {
                tracing::info!(alert = %a.alert_id, topic = %a.topic, "alert");
            } else {
                tracing::info!(alert = %a.alert_id, topic = %a.topic, count = a.count, "alert folded");
            }
            let p = Publish {
                correlation: Some(Box::new(a.correlation.clone())),
                ..Publish::new(a.topic.clone(), a.payload.clone(), QoS::AtLeastOnce)
            };
            pending.push((a.alert_id.clone(), self.client.send(p).await?));
        }
        Ok(pending)
    }

    fn answer_status(&mut self, req: Deliver) {
        let jobs = self.jobs.clone();
        let client = self.client.clone();
        self.answers.spawn(async move {
            let (tx, rx) = oneshot::channel();
            let status = match jobs.send(Job::Status(tx)) {
                Ok(()) => tokio::time::timeout(ANSWER_WITHIN, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            let status = status.unwrap_or_else(|| DetectionStatus {
                enabled: true,
                ..Default::default()
            });
            reply(&client, &req, status.encode_to_vec()).await;
        });
    }

    /// Loads the rules on a blocking thread, swaps them in, and answers `req` if any.
    fn reload(&mut self, req: Option<Deliver>) {
        let jobs = self.jobs.clone();
        let client = self.client.clone();
        let sources = sources(&self.settings);
        self.answers.spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || RuleSet::load(&sources)).await;
            let response = match loaded {
                Err(e) => DetectionReloadResponse {
                    error: format!("loading the rules failed: {e}"),
                    status: None,
                },
                Ok(rules) => {
                    let (tx, rx) = oneshot::channel();
                    let swap = Job::Swap {
                        rules: Arc::new(rules),
                        loaded_ms: crate::clock::unix_ms(),
                        reply: tx,
                    };
                    let status = match jobs.send(swap) {
                        Ok(()) => tokio::time::timeout(ANSWER_WITHIN, rx)
                            .await
                            .ok()
                            .and_then(Result::ok),
                        Err(_) => None,
                    };
                    match status {
                        Some(status) => DetectionReloadResponse {
                            error: String::new(),
                            status: Some(status),
                        },
                        None => DetectionReloadResponse {
                            error: "the detection thread did not take the new rules".into(),
                            status: None,
                        },
                    }
                }
            };
            if let Some(req) = req {
                reply(&client, &req, response.encode_to_vec()).await;
            }
        });
    }

    /// Shutting down: the open fold windows' counts go out, and what is in flight gets a
    /// short while to be confirmed (what is not is redelivered to the next agent).
    async fn finish(&mut self) {
        let deadline = tokio::time::Instant::now() + FLUSH_BUDGET;
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout_at(deadline, rx).await;
        }
        while let Ok(out) = self.outputs.try_recv() {
            if self.published(out).await.is_err() {
                break;
            }
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while self.acking.join_next().await.is_some() {}
            while self.updates.join_next().await.is_some() {}
        })
        .await;
        self.answers.abort_all();
    }
}

/// Waits for every PubAck; says whether the batch may be acked. A refused publish (too
/// large, not allowed) is logged and not retried: holding its event would stop the
/// pipeline for good. A lost connection acks nothing: the events come again.
async fn confirmed(pending: Vec<(String, PendingAck)>) -> bool {
    let mut ok = true;
    for (alert, p) in pending {
        match p.wait().await {
            Ok(Some(ack)) if ack.dropped > 0 => {
                tracing::warn!(%alert, dropped = ack.dropped, "an alert was dropped by a subscriber's queue");
            }
            Ok(_) => {}
            Err(ClientError::Closed(_) | ClientError::NotConnected) => ok = false,
            Err(e) => tracing::error!(%alert, error = %e, "an alert could not be published"),
        }
    }
    ok
}

fn incoming(d: &Deliver) -> Incoming {
    Incoming {
        topic: d.topic.clone(),
        payload: d.payload.clone(),
        correlation: d.correlation.clone(),
        publisher: d.publisher_id.clone(),
        sequence: d.sequence,
    }
}

async fn reply(client: &Client, req: &Deliver, payload: Vec<u8>) {
    let Some(to) = &req.reply_to else { return };
    let p = Publish {
        correlation: req.correlation.clone(),
        ..Publish::new(to.clone(), Bytes::from(payload), QoS::AtMostOnce)
    };
    if let Err(e) = client.publish(p).await {
        tracing::warn!(error = %e, "could not answer a detection request");
    }
}

/// Detection disabled in config: say so to whoever asks.
async fn serve_disabled(
    client: &Client,
    mut status: crate::client::Subscription,
    mut reload: crate::client::Subscription,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let disabled = DetectionStatus {
        enabled: false,
        ..Default::default()
    };
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            req = status.recv() => {
                let Some(req) = req else { return };
                reply(client, &req, disabled.encode_to_vec()).await;
            }
            req = reload.recv() => {
                let Some(req) = req else { return };
                let response = DetectionReloadResponse {
                    error: "detection is disabled in the agent's config ([detection] enabled = false)".into(),
                    status: Some(disabled.clone()),
                };
                reply(client, &req, response.encode_to_vec()).await;
            }
        }
    }
}
