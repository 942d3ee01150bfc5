//! The agent's event store service: it keeps what crosses the bus and answers queries.
//!
//! - A **store thread** owns the [`EventStore`] (redb's commits block on the disk, and
//!   the agent's runtime is one thread shared with the broker): it takes jobs (append a
//!   batch, answer a query, apply retention) one at a time.
//! - A **bus client** of its own subscribes to `events.#` and `alerts.#` as durable QoS1
//!   subscriptions (DESIGN.md section 5): a publisher's PubAck waits for the store's ack,
//!   so procmond's WAL holds what the store has not committed, across crashes of the
//!   agent. Each turn it takes one delivery, drains what is already queued (up to
//!   [`MAX_BATCH`]), commits the batch once, then acks every delivery in it. A failed
//!   commit acks nothing: the batch is retried every second (the queue fills and Block
//!   holds the publishers back, the WAL keeps their events), and the agent's health is
//!   Degraded, with the reason, until a commit succeeds.
//! - It answers `control.events.query` (an `EventQuery`; the reply an
//!   `EventQueryResponse` that fits a frame, marked truncated when more matched: the CLI
//!   asks for the next page).
//! - Every minute it applies retention, so that an idle store still forgets old events.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Deliver, Publish, QoS, Subscribe};
use daemoneye_proto::pb::store::{EventQuery, EventQueryResponse};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::client::{AckMode, Client, ClientError, ClientOptions, Delivery, Subscription};
use crate::store::{Appended, EventStore, Evicted, NewEvent, StoreConfig, StoreError};
use crate::transport::Connector;
use std::sync::{Arc, Mutex};

/// The durable subscriptions' names: the broker keeps their queues while the agent is
/// away (restored from its state directory after a crash).
pub const EVENTS_DURABLE: &str = "daemoneye-event-store";
/// See [`EVENTS_DURABLE`].
pub const ALERTS_DURABLE: &str = "daemoneye-alert-store";

/// Most deliveries committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// The queue the broker keeps for each of the store's subscriptions: room for bursts
/// while a commit is on the disk.
const QUEUE_CAPACITY: u32 = 20_000;
/// A failed commit is tried again after this.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Retention runs at least this often.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// What the agent's health report says of its store: `None` while it works, else why it
/// does not. Cheap to clone; all clones share the state.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth(Arc<Mutex<Option<String>>>);

impl StoreHealth {
    /// Why the store is not working, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn set(&self, problem: Option<String>) {
        if let Ok(mut p) = self.0.lock() {
            *p = problem;
        }
    }
}

/// Unix milliseconds now.
enum Job {
    Append(Vec<NewEvent>, oneshot::Sender<Result<Appended, StoreError>>),
    Query(
        EventQuery,
        usize,
        oneshot::Sender<Result<EventQueryResponse, StoreError>>,
    ),
    Retain(oneshot::Sender<Result<Evicted, StoreError>>),
}

/// The store thread, as the async side sees it.
#[derive(Debug)]
pub struct StoreThread {
    jobs: mpsc::Sender<Job>,
    done: oneshot::Receiver<()>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Append(..) => "Append",
            Job::Query(..) => "Query",
            Job::Retain(..) => "Retain",
        })
    }
}

impl StoreThread {
    /// Opens the store at `path` on a thread of its own (a repair after a crash runs
    /// there) and waits for the result.
    pub async fn start(path: PathBuf, config: StoreConfig) -> Result<StoreThread, StoreError> {
        let (jobs, mut rx) = mpsc::channel::<Job>(16);
        let (opened_tx, opened) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("event-store".into())
            .spawn(move || {
                let mut store = match EventStore::open(&path, config) {
                    Ok(store) => {
                        let _ = opened_tx.send(Ok(()));
                        store
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Append(events, reply) => {
                            let _ =
                                reply.send(store.append_batch(crate::clock::unix_ms(), &events));
                        }
                        Job::Query(query, max_bytes, reply) => {
                            let _ = reply.send(store.query_within(&query, max_bytes));
                        }
                        Job::Retain(reply) => {
                            let _ = reply.send(store.enforce_retention(crate::clock::unix_ms()));
                        }
                    }
                }
                // Closed cleanly: the next open needs no repair.
                drop(store);
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            return Err(StoreError::Io {
                what: "starting its thread",
                path: PathBuf::new(),
                source: e,
            });
        }
        match opened.await {
            Ok(Ok(())) => Ok(StoreThread { jobs, done }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Database {
                what: "opening",
                path: PathBuf::new(),
                why: "the store thread ended".into(),
            }),
        }
    }

    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Database {
            what: "working",
            path: PathBuf::new(),
            why: "the store thread ended".into(),
        };
        self.jobs.send(job(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Commits `events` (received now).
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Appended, StoreError> {
        self.ask(|tx| Job::Append(events, tx)).await
    }

    /// Answers `query` within `max_bytes` of events.
    pub async fn query(
        &self,
        query: EventQuery,
        max_bytes: usize,
    ) -> Result<EventQueryResponse, StoreError> {
        self.ask(|tx| Job::Query(query, max_bytes, tx)).await
    }

    /// Applies retention now.
    pub async fn retain(&self) -> Result<Evicted, StoreError> {
        self.ask(Job::Retain).await
    }

    /// Lets the thread finish its job and close the file; waits at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        drop(self.jobs);
        let _ = tokio::time::timeout(timeout, self.done).await;
    }
}

/// A delivery as the store keeps it: sequenced when it came at QoS1 (so a resend is kept
/// once), else with no publisher and sequence.
pub fn new_event(d: &Deliver) -> NewEvent {
    let sequenced = d.qos == QoS::AtLeastOnce && !d.publisher_id.is_empty() && d.sequence != 0;
    NewEvent {
        topic: d.topic.clone(),
        publisher: if sequenced {
            d.publisher_id.clone()
        } else {
            String::new()
        },
        sequence: if sequenced { d.sequence } else { 0 },
        payload: d.payload.clone(),
    }
}

/// The options of the store's bus client: role Agent, and a close that fits the agent's
/// shutdown budget.
pub fn client_options() -> ClientOptions {
    let mut options = ClientOptions::new("daemoneye-agent-store");
    options.session.role = daemoneye_proto::frame::Role::Agent;
    options.close_timeout = Duration::from_millis(200);
    options.delivery_buffer = 1024;
    options
}

/// How the store service runs.
#[derive(Debug, Clone)]
pub struct StoreService {
    /// The file.
    pub path: PathBuf,
    /// Its bounds.
    pub config: StoreConfig,
    /// The events a query reply may carry, in bytes (under the broker's frame size).
    pub reply_budget: usize,
    /// Shared with the health report.
    pub health: StoreHealth,
}

/// The bytes of events a reply may carry when frames are `max_frame` bytes: the rest is
/// the envelope's (topic, correlation).
pub fn reply_budget(max_frame: u32) -> usize {
    let max_frame = max_frame as usize;
    max_frame.saturating_sub(64 * 1024).max(max_frame / 2)
}

/// Subscribes (then says so on `ready`: the agent starts its collectors after that, so
/// that their first events are kept), opens the store, and serves it on the bus through
/// `connector` until `shutdown` resolves; then closes the file. A store that cannot be
/// opened is logged and reported in the health, its event subscriptions are deleted (so
/// that no publisher waits for it), and its queries are answered with the reason.
pub async fn serve_store<C: Connector>(
    connector: C,
    options: ClientOptions,
    service: StoreService,
    ready: oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    let client = Client::connect_via(connector, options).await?;
    let queries = client
        .subscribe(Subscribe::new(topics::EVENTS_QUERY))
        .await?;
    let durable = |filter: &str, name: &str| Subscribe {
        qos: QoS::AtLeastOnce,
        capacity: Some(QUEUE_CAPACITY),
        durable_name: Some(name.into()),
        ..Subscribe::new(filter)
    };
    let events = client
        .subscribe_all(
            vec![
                durable("events.#", EVENTS_DURABLE),
                durable("alerts.#", ALERTS_DURABLE),
            ],
            AckMode::Manual,
        )
        .await?;
    let _ = ready.send(());
    let (store, events) = match StoreThread::start(service.path.clone(), service.config).await {
        Ok(store) => {
            tracing::info!(store = %service.path.display(), "event store open");
            (Some(store), Some(events))
        }
        Err(e) => {
            tracing::error!(error = %e, "event store unavailable: events are not kept");
            service
                .health
                .set(Some(format!("event store unavailable: {e}")));
            events.unsubscribe();
            (None, None)
        }
    };
    let result = serve(&client, store.as_ref(), &service, queries, events, shutdown).await;
    if let Some(store) = store {
        store.close(Duration::from_millis(300)).await;
    }
    client.close().await;
    result
}

async fn serve(
    client: &Client,
    store: Option<&StoreThread>,
    service: &StoreService,
    mut queries: Subscription,
    mut events: Option<Subscription>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    let mut pending: Vec<Delivery> = Vec::new();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            d = async { events.as_mut()?.recv().await }, if events.is_some() && pending.is_empty() => {
                let Some(first) = d else { return Ok(()) };
                pending.push(first);
                let Some(sub) = events.as_mut() else { continue };
                // Everything already queued joins this commit.
                while pending.len() < MAX_BATCH {
                    tokio::select! {
                        biased;
                        d = sub.recv() => match d {
                            Some(d) => pending.push(d),
                            None => break,
                        },
                        () = std::future::ready(()) => break,
                    }
                }
                retry_at = commit(store, &service.health, &mut pending).await;
            }
            () = retry => {
                retry_at = commit(store, &service.health, &mut pending).await;
            }
            q = queries.recv() => {
                let Some(q) = q else { return Ok(()) };
                answer(client, store, service, &q).await;
            }
            _ = retention.tick() => {
                if let Some(store) = store {
                    match store.retain().await {
                        Ok(e) if e.total() > 0 => tracing::debug!(by_age = e.by_age, by_size = e.by_size, "event store retention"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "event store retention failed"),
                    }
                }
            }
        }
    }
}

/// Commits `pending` and acks it; on failure keeps it and says when to try again.
async fn commit(
    store: Option<&StoreThread>,
    health: &StoreHealth,
    pending: &mut Vec<Delivery>,
) -> Option<tokio::time::Instant> {
    let store = store?;
    let batch: Vec<NewEvent> = pending.iter().map(|d| new_event(d)).collect();
    match store.append(batch).await {
        Ok(done) => {
            if health.problem().is_some() {
                tracing::info!("event store writes work again");
                health.set(None);
            }
            if done.evicted.total() > 0 {
                tracing::debug!(
                    by_age = done.evicted.by_age,
                    by_size = done.evicted.by_size,
                    "event store retention"
                );
            }
            for mut d in pending.drain(..) {
                d.ack();
            }
            None
        }
        Err(e) => {
            tracing::error!(error = %e, held = pending.len(), "event store write failed; retrying");
            health.set(Some(format!("event store writes fail: {e}")));
            Some(tokio::time::Instant::now() + RETRY_EVERY)
        }
    }
}

/// Answers one `control.events.query` request.
async fn answer(
    client: &Client,
    store: Option<&StoreThread>,
    service: &StoreService,
    req: &Deliver,
) {
    let Some(to) = &req.reply_to else { return };
    let response = match (EventQuery::decode(req.payload.clone()), store) {
        (Err(e), _) => EventQueryResponse {
            error: format!("malformed event query: {e}"),
            ..Default::default()
        },
        (Ok(_), None) => EventQueryResponse {
            error: service
                .health
                .problem()
                .unwrap_or_else(|| "the event store is not open".into()),
            ..Default::default()
        },
        (Ok(q), Some(store)) => match store.query(q, service.reply_budget).await {
            Ok(r) => r,
            Err(e) => EventQueryResponse {
                error: e.to_string(),
                ..Default::default()
            },
        },
    };
    let p = Publish {
        correlation: req.correlation.clone(),
        ..Publish::new(
            to.clone(),
            Bytes::from(response.encode_to_vec()),
            QoS::AtMostOnce,
        )
    };
    if let Err(e) = client.publish(p).await {
        tracing::warn!(error = %e, "could not answer an event query");
    }
}
