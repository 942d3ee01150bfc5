//! A running collector's loop: events into batches, the WAL and the broker; PubAcks;
//! backpressure into the pacing machine; control messages; tasks; the sources' ends; and
//! the shutdown within its budget. Built by [`super::runtime::Collector::run`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::collector::{Batcher, Pacing, Pressure};
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::{bus as pbb, control as pbc};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::config::CollectorSettings;
use super::control::{self, ControlEffect};
use super::metrics::Metrics;
use super::publisher::publish_batches;
use super::runtime::{RunReport, RuntimeError};
use super::source::{
    EventSender, EventSource, ShutdownSignal, SourceConfig, SourceContext, SourceError,
    SourceEvent, SourceStatus,
};
use super::tasks;
use super::wal::{SyncDone, WalFile, WalFileError};
use crate::client::{Client, Delivery};
use crate::clock::unix_ms;
use crate::clock::{Clock, MonotonicClock};

/// A collector while it runs.
pub(super) struct Running {
    pub(super) id: String,
    pub(super) settings: CollectorSettings,
    pub(super) sources: Arc<Vec<Arc<dyn EventSource>>>,
    pub(super) client: Client,
    pub(super) events: Client,
    pub(super) wal: Option<WalFile>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) batcher: Batcher<SourceEvent>,
    pub(super) pacing: Pacing,
    pub(super) clock: MonotonicClock,
    pub(super) events_tx: Option<mpsc::Sender<SourceEvent>>,
    /// The backpressure threshold's permits (see `super::source`).
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    pub(super) events_rx: mpsc::Receiver<SourceEvent>,
    pub(super) config_tx: watch::Sender<SourceConfig>,
    pub(super) shutdown_tx: watch::Sender<bool>,
    pub(super) heartbeat_now: mpsc::UnboundedSender<()>,
    /// A source's detail line changed: its health is asked again and a heartbeat sent.
    pub(super) detail_rx: mpsc::UnboundedReceiver<()>,
    pub(super) ack_tx: mpsc::UnboundedSender<u64>,
    pub(super) ack_rx: mpsc::UnboundedReceiver<u64>,
    /// The WAL's background syncs, as they finish.
    pub(super) sync_rx: mpsc::UnboundedReceiver<SyncDone>,
    /// Backpressure permits of logged events, each batch's until its commit (the ticket)
    /// is durable.
    pub(super) unsynced_permits: VecDeque<(u64, Vec<OwnedSemaphorePermit>)>,
    pub(super) done_tx: mpsc::UnboundedSender<(usize, Result<(), SourceError>)>,
    pub(super) done_rx: mpsc::UnboundedReceiver<(usize, Result<(), SourceError>)>,
    pub(super) results_tx: mpsc::UnboundedSender<(Publish, Delivery)>,
    pub(super) results_rx: mpsc::UnboundedReceiver<(Publish, Delivery)>,
    pub(super) started: Vec<tokio::task::JoinHandle<()>>,
    pub(super) running: usize,
    /// The shutdown budget a GracefulShutdown asked for.
    pub(super) budget: Option<Duration>,
}

impl Running {
    pub(super) fn start_sources(&mut self) {
        if !self.started.is_empty() {
            return;
        }
        let Some(tx) = self.events_tx.clone() else {
            return;
        };
        tracing::info!(sources = self.sources.len(), "starting sources");
        for (index, source) in self.sources.iter().enumerate() {
            let ctx = SourceContext {
                events: EventSender {
                    tx: tx.clone(),
                    permits: self.permits.clone(),
                    metrics: self.metrics.clone(),
                    send_timeout: Duration::from_millis(self.settings.send_timeout_ms),
                    handle: tokio::runtime::Handle::current(),
                },
                shutdown: ShutdownSignal(self.shutdown_tx.subscribe()),
                config: self.config_tx.subscribe(),
                status: SourceStatus {
                    metrics: self.metrics.clone(),
                    index,
                },
            };
            let source = source.clone();
            let done = self.done_tx.clone();
            self.running += 1;
            self.started.push(tokio::spawn(async move {
                let r = source.start(ctx).await;
                let _ = done.send((index, r));
            }));
        }
    }

    pub(super) fn publish_config(&self) {
        self.config_tx.send_modify(|c| {
            c.interval = self.pacing.interval();
            c.configured_interval = self.pacing.configured();
            c.pressure = self.pacing.pressure();
        });
    }

    fn drain_pacing(&mut self) {
        let mut changed = false;
        while let Some(interval) = self.pacing.poll_output() {
            tracing::info!(?interval, pressure = ?self.pacing.pressure(), "collection interval");
            changed = true;
        }
        if changed {
            self.publish_config();
        }
    }

    fn queue_depth(&self) -> u64 {
        let queued = self
            .events_tx
            .as_ref()
            .map_or(0, |t| t.max_capacity() - t.capacity());
        let held = self.wal.as_ref().map_or(0, WalFile::unsettled);
        (queued + self.batcher.pending() + held) as u64
    }

    /// Sends every batch the batcher cut.
    async fn send_batches(&mut self) -> Result<(), RuntimeError> {
        while let Some(batch) = self.batcher.poll_output() {
            match self.wal.as_mut() {
                Some(wal) => {
                    let now_ms = unix_ms();
                    let mut refused = 0u64;
                    // Each event's permit goes back once it is synced.
                    let mut permits = Vec::with_capacity(batch.items.len());
                    for ev in batch.items {
                        permits.push(ev.permit);
                        match wal.append(now_ms, ev.topic.as_str(), ev.payload) {
                            Ok(_) => {}
                            Err(WalFileError::Refused(_)) => refused += 1,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if refused > 0 {
                        self.metrics.count_dropped(refused);
                        tracing::warn!(
                            dropped = refused,
                            held = wal.pending(),
                            "WAL full: events dropped until the broker acknowledges what is held"
                        );
                    }
                    // The sync starts in the background; logged events go out now (under
                    // the WAL's reserved sequences), not after it.
                    let ticket = wal.commit()?;
                    self.unsynced_permits.push_back((ticket, permits));
                    self.release_synced().await;
                }
                None => {
                    let first = self.metrics.snapshot().events_published;
                    let correlation_id = format!("{}/batch/{first}", self.id);
                    for (place, ev) in batch.items.into_iter().enumerate() {
                        let p = Publish {
                            correlation: Some(Box::new(pbb::Correlation {
                                correlation_id: correlation_id.clone(),
                                sequence: place as u64 + 1,
                                source_process: self.id.clone(),
                                ..Default::default()
                            })),
                            ..Publish::new(ev.topic.as_str(), ev.payload, QoS::AtLeastOnce)
                        };
                        match self.events.send(p).await {
                            Ok(_) => self.metrics.count_published(1),
                            Err(e) => {
                                self.metrics.count_dropped(1);
                                self.metrics.set_last_error(format!("publish: {e}"));
                            }
                        }
                    }
                }
            }
        }
        self.metrics.set_queue_depth(self.queue_depth());
        Ok(())
    }

    /// Publishes what the WAL hands out (events just logged under a synced reservation;
    /// after a sync, those that waited for it and replayed ones) and gives back the permits
    /// of the batches made durable.
    async fn release_synced(&mut self) {
        let Some(wal) = self.wal.as_mut() else {
            return;
        };
        let max = self.batcher.config().max_events;
        let sent = publish_batches(&self.events, wal, &self.ack_tx, &self.id, max).await;
        self.metrics.count_published(sent);
        let done = wal.commits_done();
        while self
            .unsynced_permits
            .front()
            .is_some_and(|(ticket, _)| *ticket <= done)
        {
            self.unsynced_permits.pop_front();
        }
    }

    /// A background sync finished.
    async fn handle_sync_done(&mut self, done: SyncDone) -> Result<(), RuntimeError> {
        if let Some(wal) = self.wal.as_mut() {
            wal.handle_sync_done(done)?;
        }
        self.release_synced().await;
        self.metrics.set_queue_depth(self.queue_depth());
        Ok(())
    }

    fn take_event(&mut self, ev: SourceEvent) {
        let now = self.clock.now();
        self.batcher.handle_event(now, ev);
    }

    pub(super) async fn serve(
        &mut self,
        mut control: crate::client::Subscription,
        mut tasks: Option<crate::client::Subscription>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        tokio::pin!(stop);
        let mut pressure = self.events.backpressure();
        let mut signals_seen = pressure.borrow().signals;
        let mut health =
            tokio::time::interval(Duration::from_secs(self.settings.health_check_secs));
        let telemetry_every = Duration::from_secs(self.settings.telemetry_secs.max(1));
        let mut telemetry = tokio::time::interval_at(
            tokio::time::Instant::now() + telemetry_every,
            telemetry_every,
        );
        loop {
            let batch_due = self.batcher.poll_timeout().map(|(at, _)| at);
            let lapse_due = self.pacing.poll_timeout().map(|(at, _)| at);
            let next = [batch_due, lapse_due]
                .into_iter()
                .flatten()
                .min()
                .map(|at| self.clock.to_std(at));
            let wal_due = self.wal.as_ref().and_then(WalFile::poll_timeout);
            let sleep = match [next, wal_due].into_iter().flatten().min() {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                Some(ev) = self.events_rx.recv() => {
                    self.take_event(ev);
                    // Take what is already queued before syncing: one sync for all of it.
                    let mut more = self.batcher.config().max_events * 4;
                    while more > 0 && let Ok(ev) = self.events_rx.try_recv() {
                        self.take_event(ev);
                        more -= 1;
                    }
                }
                _ = sleep => {
                    let now = self.clock.now();
                    self.batcher.handle_timeout(now);
                    self.pacing.handle_timeout(now);
                    self.drain_pacing();
                    if let Some(wal) = self.wal.as_mut() {
                        wal.handle_timeout()?;
                    }
                }
                Some(sequence) = self.ack_rx.recv() => {
                    if let Some(wal) = self.wal.as_mut() {
                        wal.handle_puback(sequence)?;
                    }
                }
                Some(done) = self.sync_rx.recv() => self.handle_sync_done(done).await?,
                Ok(()) = pressure.changed() => {
                    let signal = *pressure.borrow_and_update();
                    let level = Pressure::from(signal.level);
                    // A watch keeps only the last signal; each one missed in between
                    // still counts (SlowDown is the only level the broker repeats).
                    let n = signal.signals.saturating_sub(signals_seen).clamp(1, 8);
                    signals_seen = signal.signals;
                    let now = self.clock.now();
                    for _ in 0..n {
                        self.pacing.handle_pressure(now, level);
                    }
                    self.drain_pacing();
                }
                d = control.recv() => {
                    let Some(d) = d else { return Ok(()) };
                    match self.handle_control(d).await {
                        ControlEffect::Shutdown => return Ok(()),
                        ControlEffect::Begin => self.start_sources(),
                        ControlEffect::None => {}
                    }
                }
                Some(d) = async { tasks.as_mut()?.recv().await }, if tasks.is_some() => {
                    let sources = self.sources.clone();
                    let (id, metrics, results) = (self.id.clone(), self.metrics.clone(), self.results_tx.clone());
                    tokio::spawn(async move {
                        let result = tasks::serve(sources, id, metrics, &d, unix_ms()).await;
                        let _ = results.send((result, d));
                    });
                }
                Some((result, mut delivery)) = self.results_rx.recv() => {
                    match self.client.publish(result).await {
                        Ok(_) => delivery.ack(),
                        Err(e) => tracing::warn!(error = %e, "could not publish a task result"),
                    }
                }
                Some((index, r)) = self.done_rx.recv() => {
                    self.running = self.running.saturating_sub(1);
                    let name = self.sources[index].name().to_string();
                    match r {
                        Ok(()) => tracing::info!(source = %name, "source finished"),
                        Err(e) => {
                            tracing::error!(source = %name, error = %e, "source failed");
                            self.metrics.set_last_error(format!("{name}: {e}"));
                        }
                    }
                }
                _ = health.tick() => self.check_health(Duration::from_secs(1)).await,
                Some(()) = self.detail_rx.recv() => {
                    // A change of mode (scanning instead of real time) shows in the next
                    // heartbeat with the health it implies, not a health check later.
                    while self.detail_rx.try_recv().is_ok() {}
                    self.check_health(Duration::from_millis(200)).await;
                    let _ = self.heartbeat_now.send(());
                }
                _ = telemetry.tick(), if self.settings.telemetry_secs > 0 => {
                    let s = self.metrics.snapshot();
                    tracing::info!(published = s.events_published, dropped = s.events_dropped, backpressure_waits = s.backpressure_waits, queue = s.queue_depth, tasks = s.tasks_in_flight, "collector numbers");
                }
            }
            self.send_batches().await?;
        }
    }

    /// Asks every source for its health, each within `budget`.
    async fn check_health(&self, budget: Duration) {
        for (i, s) in self.sources.iter().enumerate() {
            let h = tokio::time::timeout(budget, s.health_check())
                .await
                .unwrap_or_else(|_| {
                    super::SourceHealth::Degraded(format!("{}: health check timed out", s.name()))
                });
            self.metrics.set_health(i, h);
        }
    }

    async fn handle_control(&mut self, d: Delivery) -> ControlEffect {
        let command = match pbc::CollectorControl::decode(d.payload.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "malformed control message");
                return ControlEffect::None;
            }
        };
        let now = self.clock.now();
        let outcome = control::apply(&command, now, &mut self.pacing, &self.settings);
        if let Some(update) = &outcome.update {
            if let Some(n) = update.max_events_in_flight {
                self.settings.max_events_in_flight = n;
                if let Some(wal) = self.wal.as_mut() {
                    wal.set_max_pending(usize::try_from(n).unwrap_or(usize::MAX));
                }
                self.config_tx.send_modify(|c| c.max_events_in_flight = n);
            }
            if let Some(h) = update.compute_hashes {
                self.settings.compute_hashes = h;
                self.config_tx.send_modify(|c| c.compute_hashes = h);
            }
        }
        self.drain_pacing();
        if outcome.health_check {
            self.check_health(Duration::from_millis(200)).await;
            let _ = self.heartbeat_now.send(());
        }
        if let ControlEffect::Shutdown = outcome.effect
            && let Some(ms) = outcome.shutdown_budget_ms
        {
            self.budget = Some(Duration::from_millis(ms));
        }
        tracing::info!(ok = outcome.ok, message = %outcome.message, "control message");
        if let Some(to) = &d.reply_to {
            self.metrics.set_queue_depth(self.queue_depth());
            let heartbeat = pbc::Heartbeat {
                collector_id: self.id.clone(),
                ..self.metrics.heartbeat()
            };
            let answer = pbc::TaskResult {
                task_id: String::new(),
                collector_id: self.id.clone(),
                ok: outcome.ok,
                message: outcome.message.clone(),
                payload: Bytes::from(heartbeat.encode_to_vec()),
            };
            let p = Publish {
                correlation: d.correlation.clone(),
                ..Publish::new(
                    to.clone(),
                    Bytes::from(answer.encode_to_vec()),
                    QoS::AtMostOnce,
                )
            };
            if let Err(e) = self.client.publish(p).await {
                tracing::warn!(error = %e, "could not answer a control request");
            }
        }
        outcome.effect
    }

    /// Stops the sources, sends what they produced, deregisters and closes, within the
    /// budget.
    pub(super) async fn shut_down(
        mut self,
        registration: tokio::task::JoinHandle<()>,
        reg_stop: tokio::sync::oneshot::Sender<()>,
    ) -> RunReport {
        let budget = self
            .budget
            .unwrap_or(Duration::from_millis(self.settings.shutdown_timeout_ms));
        let started = tokio::time::Instant::now();
        let deadline = started + budget;
        tracing::debug!(?budget, "shutting down");
        // Sources: the signal, then `stop`, then their end, in 40% of the budget.
        let sources_by = started + budget.mul_f64(0.4);
        let _ = self.shutdown_tx.send(true);
        let mut stops = tokio::task::JoinSet::new();
        for s in self.sources.iter() {
            let s = s.clone();
            stops.spawn(async move { s.stop().await });
        }
        let _ = tokio::time::timeout_at(sources_by, stops.join_all()).await;
        while self.running > 0 {
            match tokio::time::timeout_at(sources_by, self.done_rx.recv()).await {
                Ok(Some(_)) => self.running -= 1,
                _ => break,
            }
        }
        for h in &self.started {
            h.abort();
        }
        // No source can send any more: take what they sent, and send it all.
        self.events_tx = None;
        while let Ok(ev) = self.events_rx.try_recv() {
            self.take_event(ev);
        }
        self.batcher.flush(self.clock.now());
        if let Err(e) = self.send_batches().await {
            tracing::error!(error = %e, "events could not be logged at shutdown");
        }
        // The last syncs and the PubAcks of what was sent, then the log shrinks to a
        // checkpoint: the next start re-sends only what is still unacknowledged.
        let acks_by = started + budget.mul_f64(0.6);
        while self.wal.as_ref().is_some_and(|w| w.unsettled() > 0) {
            let settled = tokio::time::timeout_at(acks_by, async {
                tokio::select! {
                    Some(sequence) = self.ack_rx.recv() => Some(match self.wal.as_mut() {
                        Some(wal) => wal.handle_puback(sequence).map_err(RuntimeError::from),
                        None => Ok(()),
                    }),
                    Some(done) = self.sync_rx.recv() => Some(self.handle_sync_done(done).await),
                    // Neither PubAcks nor syncs can come any more.
                    else => None,
                }
            })
            .await;
            match settled {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => {
                    tracing::error!(error = %e, "the WAL failed at shutdown");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Everything settled: a settled checkpoint (one append and a data sync on the
        // log's thread) tells the next start to re-send nothing.
        if let Some(wal) = self.wal.as_mut()
            && let Err(e) = wal.handle_stop()
        {
            tracing::error!(error = %e, "the WAL could not be settled at shutdown");
        }
        let settled_by = started + budget.mul_f64(0.7);
        while self.wal.as_ref().is_some_and(|w| w.syncs_outstanding() > 0) {
            match tokio::time::timeout_at(settled_by, self.sync_rx.recv()).await {
                Ok(Some(done)) => {
                    if let Err(e) = self.handle_sync_done(done).await {
                        tracing::error!(error = %e, "the WAL failed at shutdown");
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Deregister, then say Goodbye on both connections.
        let _ = reg_stop.send(());
        let _ = tokio::time::timeout_at(deadline - budget.mul_f64(0.3), registration).await;
        let events = self.events.clone();
        let client = self.client.clone();
        let closing = async move {
            let report = events.close().await;
            client.close().await;
            report
        };
        let _ = tokio::time::timeout_at(deadline, closing).await;
        let took = started.elapsed();
        if took > budget {
            tracing::warn!(?took, ?budget, "shutdown took longer than its budget");
        } else {
            tracing::debug!(?took, "shut down");
        }
        self.metrics.set_queue_depth(self.queue_depth());
        RunReport {
            metrics: self.metrics.snapshot(),
            shutdown_overran: took > budget,
        }
    }
}
