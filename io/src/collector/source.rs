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
//! no source can publish around it. The queue between them is bounded (`event_buffer`,
//! default 1,000): [`EventSender::send`] waits for room at most `send_timeout` (default 500
//! ms), then drops the event and counts it (`events_dropped` in the heartbeats);
//! [`EventSender::try_send`] never waits; [`EventSender::blocking_send`] is `send` for a
//! source's own thread (a netlink reader, a scanner).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::collector::Pressure;
pub use daemoneye_core::registry::SourceCaps;
use daemoneye_core::topic::TopicName;
use daemoneye_proto::pb::control as pbc;
use tokio::sync::{mpsc, watch};

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
}

/// Why an event was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue stayed full past the send timeout (or, for `try_send`, was full): the
    /// event is dropped and counted.
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
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) send_timeout: Duration,
    pub(crate) handle: tokio::runtime::Handle,
}

impl EventSender {
    fn event(&self, topic: &str, payload: Bytes) -> Result<SourceEvent, SendError> {
        match TopicName::parse(topic) {
            Ok(topic) => Ok(SourceEvent { topic, payload }),
            Err(e) => {
                self.metrics.count_dropped(1);
                Err(SendError::BadTopic {
                    topic: topic.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Hands over an event, waiting at most the send timeout for room in the queue; past
    /// it the event is dropped and counted.
    pub async fn send(&self, topic: &str, payload: Bytes) -> Result<(), SendError> {
        let event = self.event(topic, payload)?;
        match tokio::time::timeout(self.send_timeout, self.tx.send(event)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::Closed),
            Err(_) => {
                self.metrics.count_dropped(1);
                Err(SendError::Dropped)
            }
        }
    }

    /// Hands over an event if there is room now; otherwise drops and counts it.
    pub fn try_send(&self, topic: &str, payload: Bytes) -> Result<(), SendError> {
        let event = self.event(topic, payload)?;
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.count_dropped(1);
                Err(SendError::Dropped)
            }
        }
    }

    /// [`send`](Self::send) from a source's own (non-async) thread. Must not be called
    /// from inside the async runtime.
    pub fn blocking_send(&self, topic: &str, payload: Bytes) -> Result<(), SendError> {
        self.handle.block_on(self.send(topic, payload))
    }

    /// Events the queue can take now.
    pub fn room(&self) -> usize {
        self.tx.capacity()
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
