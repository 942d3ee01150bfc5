//! The agent's enrichment service (DESIGN.md sections 11 and 12): a bus client of its own
//! that takes alerts, asks a `process` collector about each alert's process through the
//! task coordinator, and publishes the enriched alert.
//!
//! - It subscribes durably at QoS1 to `alerts.+` (so not `alerts.enriched.<level>`): an
//!   alert published while the agent restarts is still enriched. The decisions (which
//!   alerts, what to ask, when to publish, what arrived) are the core's
//!   [`Enricher`](daemoneye_core::detect::enrich::Enricher); this loop only carries them
//!   out.
//! - Each kind is one `control.tasks.submit` request (`TaskSubmit` with capability
//!   `process`, the kind, a `ProcessTaskRequest` from the alert's event, the alert id as
//!   correlation id, `wait = true`), in a task of its own; the answer goes back to the
//!   machine. Each attempt may take half the enrichment timeout, so one retry fits.
//! - The enriched alert (the same `alert_id`, `enriched` and `update` set, one
//!   `Enrichment` per kind) goes out at QoS1 on `alerts.enriched.<level>`. An alert's
//!   delivery is acknowledged once its enriched alert is handed to the bus (or at once
//!   when it is not enriched), so an alert in progress when the agent dies is delivered
//!   again.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::detect::enrich::{Answer, EnrichConfig, Enricher, Output, answer_of};
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_proto::pb::bus::Correlation;
use daemoneye_proto::pb::control as pbc;
use daemoneye_proto::pb::events::{Alert, ProcessTaskRequest};
use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::client::{AckMode, Client, ClientError, ClientOptions, Delivery};
use crate::clock::{Clock, MonotonicClock};
use crate::config::{DetectionSection, DetectionSettings, LEVELS};
use crate::transport::Connector;

/// The durable subscription's name: the broker keeps its queue while the agent is away.
pub const ALERTS_DURABLE: &str = "daemoneye-alert-enricher";
/// The queue the broker keeps for it.
const QUEUE_CAPACITY: u32 = 10_000;
/// Most alerts awaiting their results at once.
const MAX_PENDING: usize = 1000;

/// The machine's configuration for `settings`; `None` when enrichment is off
/// (`enrich_level = "none"` or no kinds).
pub fn enrich_config(settings: &DetectionSettings) -> Option<EnrichConfig> {
    let min = settings.enrich_level?;
    if settings.enrich.is_empty() {
        return None;
    }
    let kinds: Vec<&str> = settings.enrich.iter().map(String::as_str).collect();
    let mut config = EnrichConfig::new(
        LEVELS.get(min..).unwrap_or_default(),
        &kinds,
        settings.enrich_timeout,
    );
    config.max_pending = MAX_PENDING;
    Some(config)
}

/// The options of the service's bus client: role Agent, and a close that fits the agent's
/// shutdown budget.
pub fn client_options() -> ClientOptions {
    let mut options = ClientOptions::new("daemoneye-agent-enrich");
    options.session.role = daemoneye_proto::frame::Role::Agent;
    options.close_timeout = Duration::from_millis(200);
    options
}

/// One kind's answer, from its RPC task to the loop.
struct Answered {
    alert_id: String,
    kind: String,
    answer: Answer,
}

/// Serves enrichment through `connector` until `shutdown` resolves.
pub async fn serve_enrich<C: Connector>(
    connector: C,
    options: ClientOptions,
    config: EnrichConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    let client = Client::connect_via(connector, options).await?;
    let spec = Subscribe {
        qos: QoS::AtLeastOnce,
        capacity: Some(QUEUE_CAPACITY),
        durable_name: Some(ALERTS_DURABLE.into()),
        ..Subscribe::new("alerts.+")
    };
    let mut alerts = client.subscribe_all(vec![spec], AckMode::Manual).await?;
    tracing::info!(
        kinds = ?config.kinds,
        levels = ?config.levels,
        timeout = ?config.timeout,
        "alert enrichment running"
    );
    let attempt = (config.timeout / 2).max(Duration::from_millis(100));
    let request_timeout = config.timeout + Duration::from_millis(500);
    let mut machine = Enricher::new(config);
    let clock = MonotonicClock::default();
    // The submissions in flight; dropped (aborted) when the service stops.
    let mut asking: JoinSet<Answered> = JoinSet::new();
    // The deliveries of each alert in progress, acked once it is published.
    let mut held: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let deadline = machine.poll_timeout().map(|(at, _)| at);
        let wake = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(clock.to_std(at).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(a) = asking.join_next(), if !asking.is_empty() => {
                let Ok(a) = a else { continue };
                machine.handle_answer(clock.now(), &a.alert_id, &a.kind, a.answer);
            }
            () = wake => machine.handle_timeout(clock.now()),
            d = alerts.recv() => {
                let Some(mut d) = d else { break };
                match Alert::decode(d.payload.clone()) {
                    Ok(alert) => {
                        let id = alert.alert_id.clone();
                        machine.handle_alert(clock.now(), alert);
                        match held.get_mut(&id) {
                            Some(list) => list.push(d),
                            None if machine.is_pending(&id) => {
                                held.insert(id, vec![d]);
                            }
                            None => d.ack(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %d.topic, error = %e, "not an alert: ignored");
                        d.ack();
                    }
                }
            }
        }
        while let Some(out) = machine.poll_output() {
            match out {
                Output::Submit {
                    alert_id,
                    kind,
                    request,
                } => {
                    let submit = submission(&alert_id, &kind, &request, attempt);
                    let client = client.clone();
                    asking.spawn(async move {
                        let answer = ask(&client, submit, request_timeout).await;
                        Answered {
                            alert_id,
                            kind,
                            answer,
                        }
                    });
                }
                Output::Enriched(alert) => {
                    publish(&client, &alert).await;
                    for mut d in held.remove(&alert.alert_id).unwrap_or_default() {
                        d.ack();
                    }
                }
            }
        }
    }
    asking.shutdown().await;
    client.close().await;
    Ok(())
}

/// The `TaskSubmit` for one kind of an alert.
fn submission(
    alert_id: &str,
    kind: &str,
    request: &ProcessTaskRequest,
    attempt: Duration,
) -> pbc::TaskSubmit {
    pbc::TaskSubmit {
        capability: "process".into(),
        kind: kind.into(),
        payload: Bytes::from(request.encode_to_vec()),
        timeout_ms: u64::try_from(attempt.as_millis()).unwrap_or(u64::MAX),
        wait: true,
        correlation_id: alert_id.into(),
        ..Default::default()
    }
}

/// Submits and waits for the task's end; what the coordinator said, as an answer.
async fn ask(client: &Client, submit: pbc::TaskSubmit, timeout: Duration) -> Answer {
    let correlation = Correlation {
        correlation_id: submit.correlation_id.clone(),
        workflow_stage: "enrich".into(),
        ..Default::default()
    };
    let p = Publish {
        correlation: Some(Box::new(correlation)),
        ..Publish::new(
            topics::TASKS_SUBMIT,
            Bytes::from(submit.encode_to_vec()),
            QoS::AtLeastOnce,
        )
    };
    match client.request(p, timeout).await {
        Ok(reply) => match pbc::TaskSubmitResponse::decode(reply.payload) {
            Ok(response) => answer_of(&response),
            Err(e) => Answer::NotArrived {
                task_id: String::new(),
                message: format!("malformed answer from the task coordinator: {e}"),
            },
        },
        Err(e) => Answer::NotArrived {
            task_id: String::new(),
            message: format!("the task coordinator did not answer: {e}"),
        },
    }
}

/// Publishes an enriched alert at QoS1 on `alerts.enriched.<level>`; a failure is logged
/// (the alert itself is kept by the store).
async fn publish(client: &Client, alert: &Alert) {
    let correlation = Correlation {
        correlation_id: alert.alert_id.clone(),
        workflow_stage: "enriched".into(),
        ..Default::default()
    };
    let p = Publish {
        correlation: Some(Box::new(correlation)),
        ..Publish::new(
            topics::enriched_alert(&alert.level),
            Bytes::from(alert.encode_to_vec()),
            QoS::AtLeastOnce,
        )
    };
    let arrived = alert.enrichment.iter().filter(|e| e.arrived).count();
    match client.send(p).await {
        Ok(_) => tracing::debug!(
            alert = %alert.alert_id,
            arrived,
            asked = alert.enrichment.len(),
            "enriched alert published"
        ),
        Err(e) => {
            tracing::warn!(alert = %alert.alert_id, error = %e, "enriched alert not published")
        }
    }
}

/// The running service, as the agent holds it.
#[derive(Debug)]
pub struct EnrichTask {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl EnrichTask {
    /// Stops the service (its submissions in flight are abandoned) and closes its client,
    /// before the broker goes; waits at most 300 ms.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_millis(300), self.task).await;
    }
}

/// Starts the service on the current `LocalSet` when `[detection]` is enabled and
/// enrichment is not off; `None` when it is off. A bad `[detection]` value is an error
/// naming its key.
pub fn start<C: Connector + 'static>(
    section: &DetectionSection,
    connector: C,
) -> Result<Option<EnrichTask>, crate::config::ConfigError> {
    let Some(config) = section.resolve()?.as_ref().and_then(enrich_config) else {
        return Ok(None);
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::task::spawn_local(async move {
        let stopped = async move {
            let _ = stopped.await;
        };
        if let Err(e) = serve_enrich(connector, client_options(), config, stopped).await {
            tracing::error!(error = %e, "alert enrichment unavailable");
        }
    });
    Ok(Some(EnrichTask { stop, task }))
}
