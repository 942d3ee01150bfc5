//! The agent's NATS bridge (DESIGN.md section 14): the driver of the core's
//! [`Bridge`](daemoneye_core::bridge::Bridge) machine.
//!
//! - **Its own thread and runtime** ([`BridgeThread`]): nothing it does (a slow server,
//!   DNS, TLS, a disk sync, an outage) can hold up the broker's loop. It reaches the local
//!   bus as a client of its own, like the store and detection.
//! - **Export**: one local subscription (QoS1, Block, a deep queue) over the `export`
//!   filters. Each delivery goes to the machine. QoS0 ones are published to NATS at once
//!   (plain publish). QoS1 ones are appended to the disk queue (the project's WAL file,
//!   [`crate::wal::WalFile`], at `<state dir>/bridge/export.wal`), committed once per
//!   batch, and only then acknowledged locally: the local publisher's PubAck means the
//!   export is on disk. The machine sends them in order through JetStream (an acknowledged
//!   publish with `Nats-Msg-Id` = `host.publisher.sequence`, so a resend after a
//!   reconnect is stored once), or plain publishes when the server has no JetStream. An
//!   export leaves the disk queue when the server acknowledged it, or when the queue was
//!   full and it was the oldest (counted). Because the disk queue always takes a message
//!   (dropping its oldest when full), the local bus never waits for NATS.
//! - **Stream**: on each connection, a JetStream stream that covers all the export
//!   subjects is used; with none, one named `DAEMONEYE_<host>` is created (logged). A
//!   stream that overlaps the subjects without covering them all is an error (health
//!   Degraded, exports wait on disk) rather than a guess.
//! - **Import**: NATS subscriptions for the import filters; each message the machine
//!   accepts is published locally (QoS0), tagged with its origin host
//!   ([`IMPORTED_TAG`](daemoneye_core::bridge::IMPORTED_TAG)) so that it is never
//!   exported back.
//! - **Health**: a snapshot ([`BridgeHealth`]) refreshed after every turn of the loop and
//!   every 100 ms, read by the agent's health report and `control.bridge.status`.

mod nats;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Subject, jetstream};
use bytes::Bytes;
use daemoneye_core::bridge::{
    Bridge, BridgeState, Export, HEADER_ORIGIN, IMPORTED_TAG, LocalMessage, Offer, Output,
};
use daemoneye_core::topic::TopicName;
use daemoneye_core::wal::WalConfig;
use daemoneye_proto::frame::{Publish, QoS, Role, Subscribe};
use daemoneye_proto::pb::bus::{Correlation, Tags};
use daemoneye_proto::pb::control as pbc;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use self::nats::{Mode, NatsEvent, connect_nats, ensure_stream};
use self::wire::{decode_envelope, encode_envelope, headers, headers_of, imported_from};
use crate::client::{AckMode, Client, ClientOptions, Delivery};
use crate::clock::{Clock, MonotonicClock};
use crate::config::NatsSettings;
use crate::transport::Connector;
use crate::wal::WalFile;

/// Most local deliveries taken (and committed to disk) in one turn.
const MAX_BATCH: usize = 1024;
/// The local export subscription's queue in the broker.
const QUEUE_CAPACITY: u32 = 20_000;
/// How often the health snapshot is refreshed while nothing happens (the lag grows).
const HEALTH_EVERY: Duration = Duration::from_millis(100);
/// A publish handed to the NATS client must be taken within this.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream conflict is looked at again this often.
const STREAM_RETRY: Duration = Duration::from_secs(5);

/// What the health report and `bridge status` see of the bridge. Cheap to clone; all
/// clones share the state.
#[derive(Debug, Clone, Default)]
pub struct BridgeHealth(Arc<Mutex<pbc::BridgeStatus>>);

impl BridgeHealth {
    /// The latest snapshot.
    pub fn status(&self) -> pbc::BridgeStatus {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Healthy when connected and publishing, else Degraded.
    pub fn state(&self) -> pbc::HealthState {
        pbc::HealthState::try_from(self.status().state).unwrap_or(pbc::HealthState::Degraded)
    }

    /// Why the bridge is Degraded, if it is.
    pub fn problem(&self) -> Option<String> {
        let s = self.status();
        (s.state != pbc::HealthState::Healthy as i32).then(|| {
            let why = if s.last_error.is_empty() {
                "not connected"
            } else {
                &s.last_error
            };
            format!("bridge: {why}")
        })
    }

    fn set(&self, status: pbc::BridgeStatus) {
        if let Ok(mut s) = self.0.lock() {
            *s = status;
        }
    }
}

/// The options of the bridge's bus client: role Agent, a deep delivery buffer.
pub fn client_options() -> ClientOptions {
    let mut options = ClientOptions::new("daemoneye-agent-bridge");
    options.session.role = Role::Agent;
    options.close_timeout = Duration::from_millis(200);
    options.delivery_buffer = 8192;
    options
}

/// The bridge running on its own thread.
#[derive(Debug)]
pub struct BridgeThread {
    stop: Option<oneshot::Sender<()>>,
    done: Option<std::thread::JoinHandle<()>>,
}

impl BridgeThread {
    /// Starts the bridge on a thread of its own, reaching the local bus through
    /// `connector`, keeping its disk queue at `queue`.
    pub fn start<C: Connector + Send + 'static>(
        connector: C,
        settings: NatsSettings,
        queue: PathBuf,
        health: BridgeHealth,
    ) -> std::io::Result<BridgeThread> {
        let (stop, stopped) = oneshot::channel();
        let done = std::thread::Builder::new()
            .name("nats-bridge".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "bridge: cannot start its runtime");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let stopped = async move {
                        let _ = stopped.await;
                    };
                    if let Err(e) =
                        serve_bridge(connector, settings, queue, health.clone(), stopped).await
                    {
                        tracing::error!("bridge stopped: {e}");
                        let mut s = health.status();
                        s.enabled = true;
                        s.state = pbc::HealthState::Degraded as i32;
                        s.last_error = format!("stopped: {e}");
                        health.set(s);
                    }
                });
            })?;
        Ok(BridgeThread {
            stop: Some(stop),
            done: Some(done),
        })
    }

    /// Stops the bridge (what is on disk stays there for the next start) and waits up to
    /// `budget` for its thread.
    pub async fn stop(mut self, budget: Duration) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(done) = self.done.take() {
            let waited = tokio::task::spawn_blocking(move || {
                let _ = done.join();
            });
            let _ = tokio::time::timeout(budget, waited).await;
        }
    }
}

/// Why the bridge could not run.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The disk queue could not be opened or written.
    #[error("disk queue: {0}")]
    Queue(#[from] crate::wal::WalFileError),
    /// The local bus refused or lost the bridge's client.
    #[error("local bus: {0}")]
    Local(#[from] crate::client::ClientError),
    /// The NATS options are unusable (a .creds file that does not parse).
    #[error("NATS: {0}")]
    Nats(String),
}

/// The bridge's state in its loop.
struct Driver {
    machine: Bridge,
    clock: MonotonicClock,
    wal: WalFile,
    /// Bridge sequence -> the disk queue's sequence.
    on_disk: BTreeMap<u64, u64>,
    nats: async_nats::Client,
    js: jetstream::Context,
    mode: Mode,
    server: String,
    acks: mpsc::UnboundedSender<(u64, Result<(), String>)>,
    health: BridgeHealth,
    last_logged: Option<String>,
    /// When a stream conflict is looked at again.
    retry_stream_at: Option<std::time::Instant>,
    /// The deduplication window of a stream the bridge creates.
    duplicate_window: Duration,
    /// When the NATS client last did not take a publish in time.
    stalled_at: Option<std::time::Instant>,
}

impl Driver {
    fn snapshot(&self) {
        let now = self.clock.now();
        let s = self.machine.status(now);
        let mut last_error = s.last_error.clone().unwrap_or_default();
        if let Mode::Conflict(why) = &self.mode {
            last_error = why.clone();
        }
        let state = if s.state == BridgeState::Connected && last_error.is_empty() {
            pbc::HealthState::Healthy
        } else {
            pbc::HealthState::Degraded
        };
        self.health.set(pbc::BridgeStatus {
            enabled: true,
            state: state as i32,
            server: s.server.unwrap_or_default(),
            last_error,
            queued: s.queued,
            in_flight: s.in_flight,
            dropped: s.dropped,
            dropped_qos0: s.dropped_qos0,
            exported: s.exported,
            imported: s.imported,
            lag_ms: s.lag.as_millis() as u64,
            host_id: self.machine.config().host_id.clone(),
            prefix: self.machine.config().prefix.clone(),
            mode: match &self.mode {
                Mode::JetStream(name) => format!("jetstream {name}"),
                Mode::Plain => "plain".into(),
                Mode::Unknown | Mode::Conflict(_) => String::new(),
            },
            loops_prevented: s.loops_prevented,
            unmappable: s.unmappable,
        });
    }

    /// Logs an error once (not again until it changes).
    fn log_error(&mut self, why: &str) {
        if self.last_logged.as_deref() != Some(why) {
            tracing::error!("bridge: {why}");
            self.last_logged = Some(why.to_string());
        }
    }

    async fn on_connected(&mut self) {
        let subjects = self.machine.config().export_subjects();
        let host = self.machine.config().host_id.clone();
        self.mode = self.decide_mode(&host, &subjects).await;
        let info = self.nats.server_info();
        self.server = format!("nats://{}:{}", info.host, info.port);
        if self.server.starts_with("nats://0.0.0.0") || info.host.is_empty() {
            self.server = self.server_hint();
        }
        let now = self.clock.now();
        if let Mode::Conflict(why) = &self.mode {
            let why = why.clone();
            self.machine.handle_disconnected(now, &why);
        } else {
            tracing::info!(server = %self.server, mode = ?self.mode, "bridge: connected to NATS");
            self.last_logged = None;
            self.machine.handle_connected(now, &self.server);
        }
    }

    /// How QoS1 exports go: JetStream (the account's API answers; a leaf node without
    /// JetStream of its own may still reach a hub's), plain publishes (nobody answers it, or
    /// it says JetStream is not enabled), or a conflict to report.
    async fn decide_mode(&mut self, host: &str, subjects: &[String]) -> Mode {
        if let Err(e) = self.js.query_account().await {
            use async_nats::jetstream::ErrorCode;
            use async_nats::jetstream::context::AccountErrorKind;
            let unavailable = match e.kind() {
                AccountErrorKind::JetStreamUnavailable => true,
                AccountErrorKind::JetStream(err) => matches!(
                    err.error_code(),
                    ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
                ),
                _ => false,
            };
            if unavailable {
                if self.mode != Mode::Plain {
                    tracing::warn!(error = %e, "bridge: no JetStream on this NATS server or account: QoS1 exports use plain publishes (looked at again every {}s)", STREAM_RETRY.as_secs());
                }
                return Mode::Plain;
            }
        }
        match ensure_stream(&self.js, host, subjects, self.duplicate_window).await {
            Ok(mode) => mode,
            Err(why) => {
                self.log_error(&why);
                Mode::Conflict(why)
            }
        }
    }

    /// In plain mode, whether JetStream answers now: then QoS1 exports go through it.
    async fn recheck_plain(&mut self) {
        let subjects = self.machine.config().export_subjects();
        let host = self.machine.config().host_id.clone();
        match self.decide_mode(&host, &subjects).await {
            Mode::Plain => {}
            Mode::Conflict(why) => {
                self.mode = Mode::Conflict(why.clone());
                let now = self.clock.now();
                self.machine.handle_disconnected(now, &why);
            }
            mode => {
                tracing::info!(
                    ?mode,
                    "bridge: JetStream answers now: QoS1 exports go through it"
                );
                self.mode = mode;
            }
        }
    }

    fn server_hint(&self) -> String {
        let port = self.nats.server_info().port;
        format!("nats://127.0.0.1:{port}")
    }

    /// Carries out what the machine decided.
    async fn run_outputs(&mut self) -> Result<(), BridgeError> {
        while let Some(o) = self.machine.poll_output() {
            match o {
                Output::Release(seq) => {
                    if let Some(wal_seq) = self.on_disk.remove(&seq) {
                        self.wal.handle_puback(wal_seq)?;
                    }
                }
                Output::Publish(e) => self.publish_qos1(e).await,
            }
        }
        Ok(())
    }

    async fn publish_qos1(&mut self, e: Export) {
        let seq = e.seq;
        let acks = self.acks.clone();
        // A client that is not connected, or that just did not take a publish in time
        // (a stalled connection), fails the rest at once: waiting the hand-over timeout
        // for each of up to max_in_flight would keep the bridge from the local bus.
        let stalled = self
            .stalled_at
            .is_some_and(|t| t.elapsed() < HAND_OVER_TIMEOUT);
        if stalled || self.nats.connection_state() != async_nats::connection::State::Connected {
            let _ = acks.send((seq, Err("not connected to NATS".into())));
            return;
        }
        let host = self.machine.config().host_id.clone();
        let headers = headers_of(&host, &e);
        match &self.mode {
            Mode::JetStream(_) => {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(e.payload.clone())
                    .headers(headers)
                    .message_id(&e.msg_id);
                let sent = tokio::time::timeout(
                    HAND_OVER_TIMEOUT,
                    self.js.send_publish(e.subject.clone(), publish),
                )
                .await;
                match sent {
                    Ok(Ok(ack)) => {
                        tokio::task::spawn_local(async move {
                            let r = ack.await.map(|_| ()).map_err(|e| e.to_string());
                            let _ = acks.send((seq, r));
                        });
                    }
                    Ok(Err(err)) => {
                        let _ = acks.send((seq, Err(err.to_string())));
                    }
                    Err(_) => {
                        self.stalled_at = Some(std::time::Instant::now());
                        let _ = acks.send((
                            seq,
                            Err("the NATS client did not take the publish in time".into()),
                        ));
                    }
                }
            }
            _ => {
                let sent = tokio::time::timeout(
                    HAND_OVER_TIMEOUT,
                    self.nats
                        .publish_with_headers(e.subject.clone(), headers, e.payload.clone()),
                )
                .await;
                let r = match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => {
                        self.stalled_at = Some(std::time::Instant::now());
                        Err("the NATS client did not take the publish in time".into())
                    }
                };
                let _ = acks.send((seq, r));
            }
        }
    }

    /// Plain publishes of a batch's QoS0 exports, all within one hand-over timeout (a
    /// server that stalls while connected costs the batch, never the local bus for long).
    async fn publish_qos0(&mut self, exports: Vec<Export>) {
        if exports.is_empty() {
            return;
        }
        let host = self.machine.config().host_id.clone();
        let total = exports.len();
        let mut sent = 0;
        let mut error = None;
        // Consecutive exports mostly share a subject: its NATS form is made once and then
        // shared (a `Subject` from a `String` is a copy).
        let mut subject: Option<(String, Subject)> = None;
        let all = async {
            for e in exports {
                let to = match &subject {
                    Some((s, to)) if *s == e.subject => to.clone(),
                    _ => {
                        let to = Subject::from(e.subject.as_str());
                        subject = Some((e.subject, to.clone()));
                        to
                    }
                };
                let headers = headers(&host, e.topic, e.publisher, e.sequence, e.msg_id);
                if let Err(err) = self.nats.publish_with_headers(to, headers, e.payload).await {
                    error = Some(err.to_string());
                    break;
                }
                sent += 1;
            }
        };
        if tokio::time::timeout(HAND_OVER_TIMEOUT, all).await.is_err() {
            error = Some("the NATS client did not take the publishes in time".into());
        }
        if let Some(why) = error {
            for _ in sent..total {
                self.machine.handle_qos0_failed(&why);
            }
        }
    }

    /// One batch of local deliveries: QoS0 exports published, QoS1 ones on disk (one
    /// commit), then every delivery acknowledged locally.
    async fn take_batch(&mut self, batch: Vec<Delivery>) -> Result<(), BridgeError> {
        let now = self.clock.now();
        let mut done = Vec::with_capacity(batch.len());
        let mut appended = false;
        let mut qos0 = Vec::new();
        // Consecutive deliveries mostly share a topic: parsed once.
        let mut last: Option<TopicName> = None;
        for d in batch {
            let topic = match &last {
                Some(t) if t.as_str() == d.topic => t.clone(),
                _ => match TopicName::parse(&d.topic) {
                    Ok(t) => {
                        last = Some(t.clone());
                        t
                    }
                    Err(_) => {
                        done.push(d);
                        continue;
                    }
                },
            };
            let m = LocalMessage {
                topic,
                payload: d.payload.clone(),
                at_least_once: d.qos == QoS::AtLeastOnce,
                publisher: d.publisher_id.clone(),
                sequence: d.sequence,
                imported_from: imported_from(d.correlation.as_deref()),
            };
            match self.machine.offer(now, m) {
                Offer::Publish(e) => qos0.push(e),
                Offer::Queued(seq) => {
                    // The oldest dropped for it are released after the commit: the disk
                    // queue has room for a batch beyond the machine's bound.
                    let envelope = encode_envelope(&Export {
                        seq,
                        subject: String::new(),
                        topic: d.topic.clone(),
                        publisher: d.publisher_id.clone(),
                        sequence: d.sequence,
                        msg_id: String::new(),
                        payload: d.payload.clone(),
                        since: now,
                    });
                    let wal_seq = self
                        .wal
                        .append(crate::clock::unix_ms(), &d.topic, envelope)?;
                    self.on_disk.insert(seq, wal_seq);
                    appended = true;
                }
                Offer::Skipped(_) => {}
            }
            done.push(d);
        }
        self.publish_qos0(qos0).await;
        if appended {
            self.wal.commit()?;
            // The WAL's own publish list is not ours: the machine sends.
            let _ = self.wal.take_publishes();
        }
        for mut d in done {
            d.ack();
        }
        self.run_outputs().await
    }
}

/// Runs the bridge until `shutdown` resolves: opens the disk queue (what an earlier run
/// left is sent first, in order), connects to NATS (retrying in the background) and to the
/// local bus through `connector`, then carries messages both ways.
pub async fn serve_bridge<C: Connector>(
    connector: C,
    settings: NatsSettings,
    queue: PathBuf,
    health: BridgeHealth,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BridgeError> {
    let clock = MonotonicClock::default();
    let mut machine = Bridge::new(settings.bridge.clone());
    let mut wal_config = WalConfig::new("bridge");
    wal_config.max_pending = settings.bridge.max_queued + 2 * MAX_BATCH;
    // Any message the broker carries fits (its max_frame is at most 64 MiB).
    wal_config.max_record = 65 * 1024 * 1024;
    let (mut wal, replayed) = WalFile::open(&queue, wal_config)?;
    let mut on_disk = BTreeMap::new();
    let now = clock.now();
    let host = settings.bridge.host_id.clone();
    for r in wal.take_publishes() {
        let Some((publisher, sequence, payload)) = decode_envelope(r.record.payload.clone()) else {
            wal.handle_puback(r.record.sequence)?;
            continue;
        };
        let Ok(topic) = TopicName::parse(&r.record.topic) else {
            wal.handle_puback(r.record.sequence)?;
            continue;
        };
        let Some(subject) =
            daemoneye_core::bridge::subject::subject_for(&settings.bridge.prefix, &topic)
        else {
            wal.handle_puback(r.record.sequence)?;
            continue;
        };
        let seq = machine.next_sequence();
        machine.restore(
            now,
            Export {
                seq,
                subject,
                topic: r.record.topic.clone(),
                msg_id: daemoneye_core::bridge::msg_id(&host, &publisher, sequence),
                publisher,
                sequence,
                payload,
                since: now,
            },
        );
        on_disk.insert(seq, r.record.sequence);
    }
    if !on_disk.is_empty() {
        tracing::info!(queued = on_disk.len(), %replayed, "bridge: exports waiting on disk from the last run");
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let nats = connect_nats(&settings, events_tx).await?;
    let js = jetstream::new(nats.clone());
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let mut driver = Driver {
        machine,
        clock,
        wal,
        on_disk,
        nats: nats.clone(),
        js,
        mode: Mode::Unknown,
        server: String::new(),
        acks: acks_tx,
        health,
        last_logged: None,
        retry_stream_at: None,
        duplicate_window: settings.duplicate_window,
        stalled_at: None,
    };
    driver.snapshot();
    // Imports: one task per NATS subscription, all into one channel.
    let (imports_tx, mut imports) = mpsc::channel::<(String, async_nats::Message)>(4096);
    for (prefix, subject) in settings.bridge.import_subscriptions() {
        let mut sub = nats
            .subscribe(subject.clone())
            .await
            .map_err(|e| BridgeError::Nats(format!("subscribing to {subject}: {e}")))?;
        let tx = imports_tx.clone();
        tokio::task::spawn_local(async move {
            while let Some(m) = sub.next().await {
                if tx.send((prefix.clone(), m)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(imports_tx);
    let client = Client::connect_via(connector, client_options()).await?;
    let specs = settings.bridge.export.iter().map(|f| Subscribe {
        qos: QoS::AtLeastOnce,
        capacity: Some(QUEUE_CAPACITY),
        ..Subscribe::new(f.as_str())
    });
    let mut exports = client.subscribe_all(specs, AckMode::Manual).await?;
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tokio::pin!(shutdown);
    loop {
        // What `bridge status` and the health report read: current after every turn.
        driver.snapshot();
        let deadline = driver
            .machine
            .poll_timeout()
            .map(|(at, _)| tokio::time::Instant::from_std(driver.clock.to_std(at)));
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                let now = driver.clock.now();
                match event {
                    NatsEvent::Connected => driver.on_connected().await,
                    NatsEvent::Disconnected => {
                        tracing::warn!("bridge: disconnected from NATS; QoS1 exports wait on disk");
                        driver.machine.handle_disconnected(now, "disconnected from NATS");
                    }
                    NatsEvent::Error(why) => {
                        driver.log_error(&why);
                        if driver.nats.connection_state() != async_nats::connection::State::Connected {
                            driver.machine.handle_disconnected(now, &why);
                        }
                    }
                }
                driver.run_outputs().await?;
                driver.snapshot();
            }
            ack = acks.recv() => {
                let Some((seq, result)) = ack else { break };
                let now = driver.clock.now();
                match result {
                    Ok(()) => driver.machine.handle_ack(now, seq),
                    Err(why) => {
                        driver.log_error(&format!("publishing an export failed: {why}"));
                        driver.machine.handle_publish_failed(now, seq, &why);
                    }
                }
                driver.run_outputs().await?;
            }
            d = exports.recv() => {
                let Some(first) = d else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match exports.recv().now_or_never() {
                        Some(Some(d)) => batch.push(d),
                        _ => break,
                    }
                }
                driver.take_batch(batch).await?;
            }
            m = imports.recv(), if !imports.is_closed() => {
                let Some((prefix, m)) = m else { continue };
                let origin = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(HEADER_ORIGIN))
                    .map(|v| v.as_str().to_string());
                match driver.machine.import(&prefix, m.subject.as_str(), origin.as_deref()) {
                    Ok(topic) => {
                        let tags = Tags {
                            entries: [(IMPORTED_TAG.to_string(), origin.unwrap_or_else(|| "nats".into()))]
                                .into_iter()
                                .collect(),
                        };
                        let p = Publish {
                            correlation: Some(Box::new(Correlation {
                                tags: Bytes::from(tags.encode_to_vec()),
                                ..Default::default()
                            })),
                            ..Publish::new(topic.as_str(), m.payload.clone(), QoS::AtMostOnce)
                        };
                        if let Err(e) = client.publish(p).await {
                            tracing::warn!(error = %e, topic = %topic, "bridge: could not publish an import locally");
                        }
                    }
                    Err(why) => tracing::debug!(subject = %m.subject, ?why, "bridge: not imported"),
                }
            }
            _ = timer => {
                let now = driver.clock.now();
                driver.machine.handle_timeout(now);
                driver.run_outputs().await?;
            }
            _ = tick.tick() => {
                // Plain publishes are looked at again now and then: JetStream may have
                // been busy (a leader election) or enabled since.
                if driver.mode == Mode::Plain
                    && driver.retry_stream_at.is_none_or(|t| t <= std::time::Instant::now())
                    && driver.nats.connection_state() == async_nats::connection::State::Connected
                {
                    driver.retry_stream_at = Some(std::time::Instant::now() + STREAM_RETRY);
                    driver.recheck_plain().await;
                    driver.run_outputs().await?;
                }
                // A stream conflict is looked at again now and then: an operator may fix it.
                if matches!(driver.mode, Mode::Conflict(_))
                    && driver.retry_stream_at.is_none_or(|t| t <= std::time::Instant::now())
                    && driver.nats.connection_state() == async_nats::connection::State::Connected
                {
                    driver.retry_stream_at = Some(std::time::Instant::now() + STREAM_RETRY);
                    driver.on_connected().await;
                    driver.run_outputs().await?;
                }
                if let Some(at) = driver.wal.poll_timeout()
                    && at <= std::time::Instant::now()
                {
                    driver.wal.handle_timeout()?;
                }
                driver.snapshot();
            }
        }
    }
    driver.snapshot();
    let _ = client.close().await;
    let _ = tokio::time::timeout(Duration::from_millis(100), nats.flush()).await;
    Ok(())
}
