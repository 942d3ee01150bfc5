//! What a collector's author writes: an [`EventSource`], and what the runtime hands it when
//! it starts ([`SourceContext`]): where its events go ([`EventSender`]), when to stop
//! ([`ShutdownSignal`]), the settings it reads while it runs ([`SourceConfig`], a `watch`
//! the runtime updates on UpdateConfig, AdjustInterval and the broker's backpressure), and
//! how it reports how it is doing ([`SourceStatus`]).
//!
//! **Why boxed futures.** The runtime holds its sources as `Box<dyn EventSource>` (up to 16
//! of different types in one collector), so the trait must be dyn-compatible, which an
//! `async fn` in a trait is not. Each async method returns a [`BoxFuture`] instead: the
//! same thing the `async-trait` macro generates, without a proc-macro dependency; an
//! implementation writes `Box::pin(async move { ... })`.
//!
//! **Events.** A source hands the runtime `(topic, payload)` and nothing else: the runtime
//! owns the publisher id, the write-ahead log and its sequences, batching and publishing, so
//! no source can publish around it.
//!
//! **Backpressure.** Each event holds one permit of a semaphore from the moment a source
//! hands it over until the runtime has made it durable (appended to the WAL and synced) or,
//! without a WAL, published it: `backpressure_threshold` (default 800) permits, so at most
//! that many events are held between the sources and the disk, whatever the sources' pace.
//! [`EventSender::send`] waits for a permit at most `send_timeout` (the most a source is held
//! back, default 500 ms), then drops the event and counts it (`events_dropped` in the
//! heartbeats; each wait is counted too, `backpressure_waits`); [`EventSender::try_send`]
//! never waits; [`EventSender::blocking_send`] is `send` for a source's own thread (a
//! netlink reader, a scanner). The queue behind the semaphore holds `event_buffer` (default
//! 1,000, at least the threshold), so a source with a permit never waits for room.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::collector::Pressure;
pub use daemoneye_core::registry::SourceCaps;
use daemoneye_core::topic::TopicName;
use daemoneye_proto::pb::control as pbc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};

use super::metrics::Metrics;

/// A boxed, sendable future: what the async methods of [`EventSource`] return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a source stopped or could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    /// An error with this message.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// A source's health, as its [`EventSource::health_check`] says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceHealth {
    /// Working as designed.
    #[default]
    Healthy,
    /// Working, with less than it should (a fallback, lost events).
    Degraded(String),
    /// Not working.
    Unhealthy(String),
}

/// What a task's handler returns; published as the `TaskResult`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskOutcome {
    /// It did what was asked.
    pub ok: bool,
    /// One line for people.
    pub message: String,
    /// The result (the task kind's own encoding).
    pub payload: Bytes,
}

impl TaskOutcome {
    /// A failure with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            payload: Bytes::new(),
        }
    }
}

/// A source of events: what a collector's author implements.
///
/// The runtime calls [`start`](Self::start) once, in its own task, and keeps it running
/// until the collector shuts down; [`health_check`](Self::health_check) and
/// [`handle_task`](Self::handle_task) are called meanwhile from other tasks (hence `&self`;
/// keep mutable state inside `start`'s future, or behind a lock).
pub trait EventSource: Send + Sync + 'static {
    /// A short name, unique in the collector (logs, the detail line).
    fn name(&self) -> &str;

    /// What it collects; the collector registers the union of its sources'.
    fn capabilities(&self) -> SourceCaps;

    /// Collects until `ctx.shutdown` fires, sending events through `ctx.events`. Returning
    /// early with an error is reported (the heartbeat's `last_error`); the collector goes
    /// on with its other sources.
    fn start(&self, ctx: SourceContext) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Called once when the collector stops, after the shutdown signal fired; release what
    /// `start` cannot (a thread blocked in a read). Bounded by the shutdown budget.
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// How it is doing (asked every `health_check_secs` and on a HealthCheck).
    fn health_check(&self) -> BoxFuture<'_, SourceHealth> {
        Box::pin(async { SourceHealth::Healthy })
    }

    /// The capabilities for which it serves tasks (`control.collector.task.<capability>`);
    /// none by default.
    fn task_capabilities(&self) -> SourceCaps {
        SourceCaps::empty()
    }

    /// Serves one task of a capability in [`task_capabilities`](Self::task_capabilities).
    fn handle_task(&self, task: pbc::Task) -> BoxFuture<'_, TaskOutcome> {
        let kind = task.kind;
        Box::pin(async move { TaskOutcome::failed(format!("task kind {kind:?} not served")) })
    }
}

/// The settings a running source reads; the runtime replaces them on UpdateConfig,
/// AdjustInterval and the broker's backpressure (see [`SourceContext::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceConfig {
    /// The interval in force between two rounds of collection: the configured one,
    /// stretched x1.5 per backpressure signal up to its cap, back when the pressure clears.
    pub interval: Duration,
    /// The interval the operator configured.
    pub configured_interval: Duration,
    /// Most events held waiting for the broker (the WAL's bound).
    pub max_events_in_flight: u64,
    /// Hash executables (or whatever the source hashes).
    pub compute_hashes: bool,
    /// The broker's pressure in force.
    pub pressure: Pressure,
}

/// What a source gets when it starts.
#[derive(Debug)]
pub struct SourceContext {
    /// Where its events go.
    pub events: EventSender,
    /// Fires when the collector stops.
    pub shutdown: ShutdownSignal,
    /// Its settings; `changed().await` wakes on every change.
    pub config: watch::Receiver<SourceConfig>,
    /// Its detail line and errors, for the heartbeats.
    pub status: SourceStatus,
}

/// Fires once, when the collector stops. Cheap to clone; usable from threads.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(pub(crate) watch::Receiver<bool>);

impl ShutdownSignal {
    /// Resolves once the collector stops (at once if it already has).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the collector is stopping (for a thread's loop).
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}

/// One event on its way to the runtime.
#[derive(Debug)]
pub(crate) struct SourceEvent {
    pub(crate) topic: TopicName,
    pub(crate) payload: Bytes,
    /// Its place under the backpressure threshold, given back once it is durable.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Why an event was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The backpressure threshold stayed reached past the send timeout (or, for `try_send`,
    /// was reached): the event is dropped and counted.
    #[error("event queue full: event dropped")]
    Dropped,
    /// The topic is not a valid topic name.
    #[error("invalid topic {topic:?}: {reason}")]
    BadTopic {
        /// What was given.
        topic: String,
        /// Why it is refused.
        reason: String,
    },
    /// The collector has stopped.
    #[error("the collector has stopped")]
    Closed,
}

/// A source's way to hand events to the runtime. Cheap to clone; usable from threads.
#[derive(Debug, Clone)]
pub struct EventSender {
    pub(crate) tx: mpsc::Sender<SourceEvent>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) send_timeout: Duration,
    pub(crate) handle: tokio::runtime::Handle,
}

impl EventSender {
    fn topic(&self, topic: &str) -> Result<TopicName, SendError> {
        TopicName::parse(topic).map_err(|e| {
            self.metrics.count_dropped(1);
            SendError::BadTopic {
                topic: topic.to_string(),
                reason: e.to_string(),
            }
        })
    }

    fn dropped(&self) -> SendError {
        self.metrics.count_dropped(1);
        SendError::Dropped
    }

    /// Hands over an event, waiting at most the send timeout while the backpressure
    /// threshold is reached; past it the event is dropped and counted.
    pub async fn send(&self, topic: &str, payload: Bytes) -> Result<(), SendError> {
        let topic = self.topic(topic)?;
        let deadline = tokio::time::Instant::now() + self.send_timeout;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(SendError::Closed),
            Err(TryAcquireError::NoPermits) => {
                self.metrics.count_backpressure_wait();
                match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(SendError::Closed),
                    Err(_) => return Err(self.dropped()),
                }
            }
        };
        let event = SourceEvent {
            topic,
            payload,
            permit,
        };
        // The queue holds at least as many events as there are permits: no wait here
        // unless the collector is stopping.
        match tokio::time::timeout_at(deadline, self.tx.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::Closed),
            Err(_) => Err(self.dropped()),
        }
    }

    /// Hands over an event if the backpressure threshold is not reached; otherwise drops
    /// and counts it.
    pub fn try_send(&self, topic: &str, payload: Bytes) -> Result<(), SendError> {
        let topic = self.topic(topic)?;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(SendError::Closed),
            Err(TryAcquireError::NoPermits) => return Err(self.dropped()),
        };
        let event = SourceEvent {
            topic,
            payload,
            permit,
        };
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.dropped()),
        }
    }

    /// [`send`](Self::send) from a source's own (non-async) thread. Must not be called
    /// from inside the async runtime.
    pub fn blocking_send(&self, topic: &str, payload: Bytes) -> Result<(), SendError> {
        self.handle.block_on(self.send(topic, payload))
    }

    /// Events it can hand over now without waiting (permits left under the backpressure
    /// threshold).
    pub fn room(&self) -> usize {
        self.permits.available_permits().min(self.tx.capacity())
    }
}

/// A source's report for the heartbeats: its one-line detail and its errors.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) index: usize,
}

impl SourceStatus {
    /// How it collects now, one line ("realtime (netlink)", "scanning every 30s: netlink
    /// refused: EPERM"); shown by `daemoneye-cli collectors list`.
    pub fn set_detail(&self, detail: impl Into<String>) {
        self.metrics.set_detail(self.index, detail.into());
    }

    /// An error worth the operator's attention (the heartbeat's `last_error`).
    pub fn report_error(&self, error: impl std::fmt::Display) {
        self.metrics.set_last_error(error.to_string());
    }

    /// Events the source itself could not produce or lost (a kernel buffer overrun).
    pub fn count_dropped(&self, n: u64) {
        self.metrics.count_dropped(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(threshold: usize, timeout: Duration) -> (EventSender, mpsc::Receiver<SourceEvent>) {
        let (tx, rx) = mpsc::channel(threshold + 2);
        let sender = EventSender {
            tx,
            permits: Arc::new(Semaphore::new(threshold)),
            metrics: Arc::new(Metrics::new(Vec::<String>::new())),
            send_timeout: timeout,
            handle: tokio::runtime::Handle::current(),
        };
        (sender, rx)
    }

    fn payload(i: u8) -> Bytes {
        Bytes::from(vec![i])
    }

    #[tokio::test]
    async fn at_the_threshold_a_send_waits_its_timeout_then_drops_and_counts() {
        let (tx, _rx) = sender(3, Duration::from_millis(30));
        for i in 0..3 {
            tx.send("events.x", payload(i))
                .await
                .expect("under the threshold");
        }
        assert_eq!(tx.room(), 0);
        let started = tokio::time::Instant::now();
        assert_eq!(
            tx.send("events.x", payload(3)).await,
            Err(SendError::Dropped)
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(tx.try_send("events.x", payload(4)), Err(SendError::Dropped));
        let s = tx.metrics.snapshot();
        assert_eq!((s.events_dropped, s.backpressure_waits), (2, 1));
        assert!(matches!(
            tx.try_send("events.+", payload(5)),
            Err(SendError::BadTopic { .. })
        ));
        assert_eq!(tx.metrics.snapshot().events_dropped, 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_event_holds_its_place_until_the_runtime_is_done_with_it_not_when_dequeued() {
        let (tx, mut rx) = sender(2, Duration::from_secs(30));
        tx.send("events.x", payload(0)).await.expect("first");
        tx.send("events.x", payload(1)).await.expect("second");
        // Out of the queue but not yet durable: still counted against the threshold.
        let first = rx.recv().await.expect("queued");
        assert_eq!(first.payload, payload(0));
        assert_eq!(tx.room(), 0);
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send("events.x", payload(2)).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "sent past the threshold");
        assert_eq!(tx.metrics.snapshot().backpressure_waits, 1);
        // Durable: the place is given back and the waiting send goes through.
        drop(first);
        let sent = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting send ends once a place is free")
            .expect("task");
        assert_eq!(sent, Ok(()));
        assert_eq!(rx.recv().await.expect("second").payload, payload(1));
        assert_eq!(rx.recv().await.expect("third").payload, payload(2));
        assert_eq!(tx.metrics.snapshot().events_dropped, 0);
    }

    #[tokio::test]
    async fn a_stopped_collector_refuses_sends_without_counting_drops() {
        let (tx, rx) = sender(2, Duration::from_secs(30));
        drop(rx);
        assert_eq!(
            tx.send("events.x", payload(0)).await,
            Err(SendError::Closed)
        );
        assert_eq!(tx.try_send("events.x", payload(1)), Err(SendError::Closed));
        assert_eq!(tx.metrics.snapshot().events_dropped, 0);
    }
}
