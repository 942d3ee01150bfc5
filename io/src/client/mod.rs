//! The async client library: connect (with reconnect and backoff), publish at QoS0 or QoS1
//! (awaiting the PubAck), subscribe (a stream of messages, optionally in a queue group, or
//! one stream over several subscriptions), request/reply with a timeout, and a clean close
//! that reports what it could not confirm. The protocol itself (handshake, resubscribe and
//! QoS1 resend after a reconnect, deduplication, which deliveries await an ack) is the
//! core's [`ClientSession`]; this module moves its bytes.
//!
//! Each connection has a reader task and a writer task, so a client blocked writing (the
//! broker paused it) still reads and acks its deliveries.
//!
//! **Acknowledgement.** [`Subscription::recv`] returns a [`Delivery`]; a QoS1 one is
//! acknowledged to the broker only by [`Delivery::ack`] (or at hand-over, for a subscription
//! opened with [`AckMode::OnHandOver`]). A delivery dropped without `ack` is *not*
//! acknowledged: the broker redelivers it when its subscription or connection goes away (to
//! another member, for a queue group; to the next resume, for a durable subscription).
//!
//! **Backpressure.** Between the connection and each [`Subscription`] there is a bounded
//! channel ([`ClientOptions::delivery_buffer`]). When the application does not keep up, the
//! connection stops reading from the socket, the broker's queue for the subscription fills,
//! and under the Block overflow strategy the publishers feeding it wait. While it waits, the
//! connection reads nothing else either (PubAcks, replies): keep every subscription of a
//! client read.
//!
//! **Handles.** Dropping a [`Subscription`] closes it at the broker (a durable one is only
//! detached, see [`ClientSession::drop_subscription`]); dropping the last [`Client`] handle
//! (subscriptions hold one each) says Goodbye and closes the connection, like
//! [`Client::close`] without waiting.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::transport::{Connector, UnixConnector};
use std::ops::Deref;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
pub use daemoneye_core::client::AckMode;
use daemoneye_core::client::{ClientConfig, ClientEvent, ClientSession};
use daemoneye_proto::frame::{Deliver, ErrorFrame, Publish, QoS, Subscribe};
use daemoneye_proto::pb::bus::{AnswerKind, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, MonotonicClock};
mod handoff;

use handoff::{Handoff, Next};
use crate::sync::{Arc, AtomicU64, Mutex, MutexGuard, Notify, Ordering};
use tokio::sync::mpsc::error::TrySendError;

/// Why a client call failed. Each message is one line an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket path.
    #[error("no broker at {path}: {reason}")]
    NoBroker {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The broker refused an operation or the connection for lack of permission.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A topic or filter breaks a rule.
    #[error("{0}")]
    InvalidTopic(String),
    /// Any other refusal from the broker.
    #[error("broker error ({code:?}): {message}")]
    Broker {
        /// Stable code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The operation did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A QoS1 request found nobody subscribed to its topic until the deadline.
    #[error("no responders on {topic} within {waited:?} (is the agent still starting?)")]
    NoResponders {
        /// The request topic.
        topic: String,
        /// How long it kept trying.
        waited: Duration,
    },
    /// The connection closed and will not come back.
    #[error("connection closed: {0}")]
    Closed(String),
}

impl From<ErrorFrame> for ClientError {
    fn from(e: ErrorFrame) -> Self {
        match e.code {
            ErrorCode::PermissionDenied => ClientError::PermissionDenied(e.message),
            ErrorCode::InvalidTopic | ErrorCode::InvalidFilter => {
                ClientError::InvalidTopic(e.message)
            }
            code => ClientError::Broker {
                code,
                message: e.message,
            },
        }
    }
}

/// How a client presents itself and behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Protocol-level identity (name, publisher id, role, collector).
    pub session: ClientConfig,
    /// Reconnect with backoff after the connection drops (after a first success).
    pub reconnect: bool,
    /// How long `connect` waits for the broker's Welcome.
    pub connect_timeout: Duration,
    /// How long a clean close waits for the broker's answer to our Goodbye (the broker
    /// first routes what it still holds of ours) before giving the connection up.
    pub close_timeout: Duration,
    /// Messages each subscription buffers between the connection and the application
    /// (at least 1). A full buffer stops the connection reading: backpressure.
    pub delivery_buffer: usize,
}

impl ClientOptions {
    /// A plain client named `name` that reconnects. Its publisher id is unique to this
    /// process (`name.pid.start-time`), so that subscribers' deduplication never mistakes two
    /// processes' messages for each other; a publisher that resends from a WAL across
    /// restarts sets a stable id in `session.publisher_id` instead.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let mut session = ClientConfig::new(name.clone());
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        session.publisher_id = Some(format!("{name}.{}.{started:x}", std::process::id()));
        Self {
            session,
            reconnect: true,
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            delivery_buffer: 256,
        }
    }
}

/// A PubAck as the publisher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// Subscriptions that acknowledged the message.
    pub delivered: u32,
    /// Subscriptions that dropped it.
    pub dropped: u32,
    /// No subscription matched.
    pub no_interest: bool,
}

/// What a [`Client::close`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReport {
    /// QoS1 publishes whose PubAck never came: the broker may or may not have them.
    pub unconfirmed: usize,
    /// The broker did not answer the Goodbye (nor close) within the close timeout.
    pub timed_out: bool,
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A message on its way to a subscription, with the connection it came on.
#[derive(Debug)]
struct Incoming {
    connection: u64,
    deliver: Deliver,
}

struct Inner {
    session: ClientSession,
    clock: MonotonicClock,
    subs: BTreeMap<u64, mpsc::Sender<Incoming>>,
    /// Messages read from the socket and not yet in their subscription's channel.
    inbox: VecDeque<Incoming>,
    sub_waiters: BTreeMap<u64, Reply<()>>,
    puback_waiters: BTreeMap<u64, Reply<PubAck>>,
    connect_waiters: Vec<Reply<()>>,
    /// Refusals of publishes nobody waited for (QoS0), for the caller to collect.
    refused: Vec<ClientError>,
    closed: Option<String>,
    shutting_down: bool,
    close_timeout: Duration,
    close_timed_out: bool,
    delivery_buffer: usize,
}

impl Inner {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn dispatch(&mut self) {
        while let Some(ev) = self.session.poll_output() {
            match ev {
                ClientEvent::Connected { session_id } => {
                    tracing::debug!(session_id, "connected");
                    for w in self.connect_waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                ClientEvent::Subscribed { sub_id, .. } => {
                    if let Some(w) = self.sub_waiters.remove(&sub_id) {
                        let _ = w.send(Ok(()));
                    }
                }
                ClientEvent::Message(deliver) => {
                    let connection = self.session.connection();
                    self.inbox.push_back(Incoming {
                        connection,
                        deliver,
                    });
                }
                ClientEvent::PubAck {
                    sequence,
                    delivered,
                    dropped,
                    no_interest,
                } => {
                    if let Some(w) = self.puback_waiters.remove(&sequence) {
                        let _ = w.send(Ok(PubAck {
                            delivered,
                            dropped,
                            no_interest,
                        }));
                    }
                }
                ClientEvent::Error(e) => match e.answers_kind {
                    AnswerKind::Publish => match self.puback_waiters.remove(&e.answers) {
                        Some(w) => {
                            let _ = w.send(Err(e.into()));
                        }
                        None => {
                            tracing::warn!(code = ?e.code, message = %e.message, "publish refused");
                            self.refused.push(e.into());
                        }
                    },
                    AnswerKind::Subscription => {
                        self.subs.remove(&e.answers);
                        if let Some(w) = self.sub_waiters.remove(&e.answers) {
                            let _ = w.send(Err(e.into()));
                        }
                    }
                    _ => {
                        tracing::warn!(code = ?e.code, message = %e.message, "broker error");
                        // A broker going away, or one that dropped us as idle or slow, is
                        // worth reconnecting to once the client is up; during the first
                        // handshake, and for refusals, the error is the answer.
                        let retry = self.connect_waiters.is_empty()
                            && matches!(
                                e.code,
                                ErrorCode::IdleTimeout
                                    | ErrorCode::ShuttingDown
                                    | ErrorCode::SlowConsumer
                                    | ErrorCode::MemoryLimit
                                    | ErrorCode::HandshakeTimeout
                                    | ErrorCode::TooManyConnections
                            );
                        let err: ClientError = e.into();
                        for w in self.connect_waiters.drain(..) {
                            let _ = w.send(Err(err.clone()));
                        }
                        if !retry {
                            self.closed.get_or_insert_with(|| err.to_string());
                        }
                    }
                },
                ClientEvent::Backpressure { level, reason } => {
                    tracing::debug!(?level, %reason, "backpressure from broker");
                }
                ClientEvent::Dropped {
                    sub_id,
                    count,
                    total,
                } => {
                    tracing::warn!(
                        sub_id,
                        count,
                        total,
                        "subscription lost messages to its overflow strategy"
                    );
                }
                ClientEvent::Closed { reason } => {
                    tracing::debug!(%reason, "connection closed");
                }
            }
        }
    }

    /// The connection will not come back: fail everything that waits.
    fn fail_all(&mut self, reason: &str) {
        let err = ClientError::Closed(reason.to_string());
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
        for (_, w) in std::mem::take(&mut self.sub_waiters) {
            let _ = w.send(Err(err.clone()));
        }
        for (_, w) in std::mem::take(&mut self.puback_waiters) {
            let _ = w.send(Err(err.clone()));
        }
        self.subs.clear();
        self.inbox.clear();
        self.closed.get_or_insert_with(|| reason.to_string());
    }
}

/// What a client's handles and its connection task share.
struct Shared {
    inner: Mutex<Inner>,
    /// Callers and the connection's writer: wake-ups, room in the send buffer, the end.
    handoff: Handoff,
    /// Wakes the reconnect loop's backoff when the client closes.
    stop: Notify,
    /// Signalled (to all) when a close begins.
    closing: Notify,
    reply_counter: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere already; keep serving what we can.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says Goodbye and lets the connection task wind down (bounded by the close
    /// timeout). Never blocks: called from `Drop`.
    fn begin_close(&self, reason: &str) {
        {
            let mut inner = self.lock();
            if inner.shutting_down {
                return;
            }
            inner.shutting_down = true;
            inner.session.close(reason);
        }
        self.handoff.encoded();
        self.stop.notify_one();
        self.closing.notify_waiters();
    }

    /// Resolves once a close has begun.
    async fn wait_closing(&self) {
        loop {
            let signal = self.closing.notified();
            if self.lock().shutting_down {
                return;
            }
            signal.await;
        }
    }

    fn ack_on(&self, connection: u64, delivery_id: u64) {
        let sent = self.lock().session.ack_on(connection, delivery_id);
        if sent {
            self.handoff.encoded();
        }
    }

    /// Forgets subscription `id` on this side and, per the core's rule, closes or detaches
    /// it at the broker.
    fn drop_subscription(&self, id: u64, delete: bool) {
        {
            let mut inner = self.lock();
            inner.subs.remove(&id);
            inner.sub_waiters.remove(&id);
            let _ = if delete {
                inner.session.unsubscribe(id)
            } else {
                inner.session.drop_subscription(id)
            };
        }
        self.handoff.encoded();
    }
}

/// Closes the connection when the last [`Client`] handle goes.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close("client dropped");
    }
}

/// A connection to the broker. Cheap to clone; all clones share the connection, which
/// closes (Goodbye) when the last clone and the last [`Subscription`] are dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _handle: Arc<Handle>,
}

/// Bytes a client may have encoded and unsent before `publish` waits for the socket.
const SEND_BUFFER_LIMIT: usize = 1 << 20;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// The outcome of one sent publish: `None` at once for QoS0, the PubAck for QoS1.
#[derive(Debug)]
pub struct PendingAck {
    sequence: u64,
    rx: Option<oneshot::Receiver<Result<PubAck, ClientError>>>,
}

impl PendingAck {
    /// The publish's sequence under this client's publisher id.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Waits for the PubAck (QoS1) or returns at once (QoS0).
    pub async fn wait(self) -> Result<Option<PubAck>, ClientError> {
        match self.rx {
            None => Ok(None),
            Some(rx) => match rx.await {
                Ok(r) => r.map(Some),
                Err(_) => Err(ClientError::Closed("client stopped".into())),
            },
        }
    }
}

/// One message from a subscription. Its fields are the [`Deliver`]'s (through `Deref`, or
/// [`into_inner`](Self::into_inner)). A QoS1 delivery is acknowledged only by
/// [`ack`](Self::ack) (unless the subscription acks on hand-over): dropped without it, it is
/// not acknowledged, and the broker redelivers it once the subscription or the connection
/// goes away.
pub struct Delivery {
    deliver: Deliver,
    ack: Option<Acker>,
}

struct Acker {
    shared: Arc<Shared>,
    connection: u64,
}

impl Delivery {
    /// Acknowledges the message to the broker (QoS1; a no-op for QoS0, for one already
    /// acknowledged, and for one whose connection has since been replaced: the broker
    /// redelivers that one).
    pub fn ack(&mut self) {
        if let Some(a) = self.ack.take() {
            a.shared.ack_on(a.connection, self.deliver.delivery_id);
        }
    }

    /// Whether the message still waits for [`ack`](Self::ack).
    pub fn needs_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// The message itself. An unacknowledged QoS1 message stays unacknowledged.
    pub fn into_inner(self) -> Deliver {
        self.deliver
    }
}

impl Deref for Delivery {
    type Target = Deliver;

    fn deref(&self) -> &Deliver {
        &self.deliver
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("deliver", &self.deliver)
            .field("needs_ack", &self.needs_ack())
            .finish()
    }
}

/// The messages of one or more subscriptions, as one stream. Dropping it closes them at
/// the broker (a durable one is detached and keeps its queue); unacknowledged QoS1
/// messages are then redelivered.
pub struct Subscription {
    /// The client's id for it (the first, for a merged subscription).
    pub id: u64,
    ids: Vec<u64>,
    rx: mpsc::Receiver<Incoming>,
    client: Client,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message, or `None` once the connection is gone for good. A QoS1 message
    /// waits for [`Delivery::ack`] unless the subscription acks on hand-over.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let m = self.rx.recv().await?;
        let shared = &self.client.shared;
        let needs_ack = if m.deliver.delivery_id == 0 {
            false
        } else {
            let needs = shared
                .lock()
                .session
                .handed_over(m.connection, m.deliver.delivery_id);
            shared.handoff.encoded();
            needs
        };
        Some(Delivery {
            ack: needs_ack.then(|| Acker {
                shared: shared.clone(),
                connection: m.connection,
            }),
            deliver: m.deliver,
        })
    }

    /// The client's ids of the subscriptions this stream merges.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Closes the subscriptions at the broker, durable ones included (their queues are
    /// deleted). Dropping the handle instead only detaches a durable subscription.
    pub fn unsubscribe(mut self) {
        for id in std::mem::take(&mut self.ids) {
            self.client.shared.drop_subscription(id, true);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.ids) {
            self.client.shared.drop_subscription(id, false);
        }
    }
}

impl Client {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Connects to the broker at `path` and completes the handshake.
    pub async fn connect(path: &Path, options: ClientOptions) -> Result<Client, ClientError> {
        Self::connect_via(UnixConnector(path.to_path_buf()), options).await
    }

    /// Connects through `connector` (the simulation's network, for one) and completes the
    /// handshake; reconnects go through it too.
    pub async fn connect_via<C: Connector>(
        connector: C,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let stream = connector
            .connect()
            .await
            .map_err(|e| ClientError::NoBroker {
                path: connector.address(),
                reason: e.to_string(),
            })?;
        let inner = Inner {
            session: ClientSession::new(options.session.clone()),
            clock: MonotonicClock::default(),
            subs: BTreeMap::new(),
            inbox: VecDeque::new(),
            sub_waiters: BTreeMap::new(),
            puback_waiters: BTreeMap::new(),
            connect_waiters: Vec::new(),
            refused: Vec::new(),
            closed: None,
            shutting_down: false,
            close_timeout: options.close_timeout,
            close_timed_out: false,
            delivery_buffer: options.delivery_buffer.max(1),
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            handoff: Handoff::new(),
            stop: Notify::new(),
            closing: Notify::new(),
            reply_counter: AtomicU64::new(0),
        });
        // On failure below the handle drops, and with it the connection task.
        let client = Client {
            _handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
            shared,
        };
        let (tx, rx) = oneshot::channel();
        client.lock().connect_waiters.push(tx);
        tokio::spawn(supervise(
            client.shared.clone(),
            connector,
            options.reconnect,
            Some(stream),
        ));
        match tokio::time::timeout(options.connect_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Closed(
                "connection ended during the handshake".into(),
            )),
            Err(_) => Err(ClientError::Timeout(options.connect_timeout)),
        }
    }

    fn check_open(&self, inner: &Inner) -> Result<(), ClientError> {
        if inner.shutting_down {
            return Err(ClientError::Closed("client closing".into()));
        }
        match &inner.closed {
            Some(reason) if !inner.session.is_connected() => {
                Err(ClientError::Closed(reason.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Publishes; a QoS1 publish waits for its PubAck. Waits first while more than 1 MiB
    /// is encoded and unsent, so a fast publisher is held back by the socket (and by the
    /// broker's backpressure) instead of buffering without bound.
    pub async fn publish(&self, p: Publish) -> Result<Option<PubAck>, ClientError> {
        self.send(p).await?.wait().await
    }

    /// Sends a publish (waiting only for room in the send buffer) and returns a handle for
    /// its PubAck, so that many QoS1 publishes can be in flight at once.
    pub async fn send(&self, p: Publish) -> Result<PendingAck, ClientError> {
        self.send_with(p, false).await
    }

    /// Sends a QoS1 publish under the sequence the caller assigned (a WAL record's),
    /// keeping `p.resent` as given; otherwise like [`send`](Self::send). The publisher id
    /// must be stable across restarts (`ClientOptions::session.publisher_id`) for a
    /// subscriber to recognise a resend.
    pub async fn send_sequenced(&self, p: Publish) -> Result<PendingAck, ClientError> {
        self.send_with(p, true).await
    }

    async fn send_with(&self, p: Publish, sequenced: bool) -> Result<PendingAck, ClientError> {
        self.shared
            .handoff
            .wait_for_room(|| {
                let inner = self.lock();
                // A connection gone for good has no room, but check_open says so below.
                inner.session.buffered_bytes() < SEND_BUFFER_LIMIT
                    || inner.shutting_down
                    || (inner.closed.is_some() && !inner.session.is_connected())
            })
            .await;
        let qos = p.qos;
        let (sequence, rx) = {
            let mut inner = self.lock();
            self.check_open(&inner)?;
            let seq = if sequenced {
                inner.session.publish_sequenced(p)
            } else {
                inner.session.publish(p)
            }
            .map_err(|e| ClientError::Closed(e.to_string()))?;
            if qos == QoS::AtLeastOnce {
                let (tx, rx) = oneshot::channel();
                inner.puback_waiters.insert(seq, tx);
                (seq, Some(rx))
            } else {
                (seq, None)
            }
        };
        self.shared.handoff.encoded();
        Ok(PendingAck { sequence, rx })
    }

    /// Opens a subscription and waits until the broker has accepted it. Its QoS1 messages
    /// wait for [`Delivery::ack`].
    pub async fn subscribe(&self, spec: Subscribe) -> Result<Subscription, ClientError> {
        self.subscribe_all([spec], AckMode::Manual).await
    }

    /// Opens a subscription with the given acknowledgement mode ([`AckMode::OnHandOver`]
    /// acks each QoS1 message as [`Subscription::recv`] returns it).
    pub async fn subscribe_with(
        &self,
        spec: Subscribe,
        ack: AckMode,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_all([spec], ack).await
    }

    /// Opens several subscriptions read as one stream (one bounded channel, one receive
    /// path), and waits until the broker has accepted them all. Each message still says
    /// which subscription it came from (`sub_id`).
    pub async fn subscribe_all(
        &self,
        specs: impl IntoIterator<Item = Subscribe>,
        ack: AckMode,
    ) -> Result<Subscription, ClientError> {
        let buffer = self.lock().delivery_buffer;
        let (tx, rx) = mpsc::channel(buffer);
        let mut waiters = Vec::new();
        let mut sub = Subscription {
            id: 0,
            ids: Vec::new(),
            rx,
            client: self.clone(),
        };
        {
            let mut inner = self.lock();
            self.check_open(&inner)?;
            for spec in specs {
                let id = inner.session.subscribe_with(spec, ack);
                inner.subs.insert(id, tx.clone());
                let (ack_tx, ack_rx) = oneshot::channel();
                inner.sub_waiters.insert(id, ack_tx);
                sub.ids.push(id);
                waiters.push(ack_rx);
            }
        }
        sub.id = sub.ids.first().copied().unwrap_or(0);
        self.shared.handoff.encoded();
        for w in waiters {
            // On an error, dropping `sub` closes the ones already accepted.
            match w.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ClientError::Closed("client stopped".into())),
            }
        }
        Ok(sub)
    }

    /// Closes a subscription by id (durable ones included, deleting their queues). Its
    /// handle then ends once the messages already buffered are read.
    pub fn unsubscribe(&self, id: u64) {
        self.shared.drop_subscription(id, true);
    }

    /// Sends `p` with a fresh reply topic and waits for the first reply.
    ///
    /// A QoS1 request learns from its PubAck whether anyone is subscribed: while nobody is
    /// (a responder still starting, or reconnecting), it is sent again every 50 ms until the
    /// deadline, then fails with [`ClientError::NoResponders`] instead of a bare timeout.
    pub async fn request(&self, mut p: Publish, timeout: Duration) -> Result<Deliver, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let session = self.lock().session.session_id().unwrap_or(0);
        let n = self.shared.reply_counter.fetch_add(1, Ordering::Relaxed);
        let reply_to = format!("_reply.s{session}.r{n}");
        // Dropped at the end, which unsubscribes.
        let mut sub = self
            .subscribe_with(plain_subscribe(&reply_to), AckMode::OnHandOver)
            .await?;
        p.reply_to = Some(reply_to);
        loop {
            let ack = tokio::time::timeout_at(deadline, self.publish(p.clone()))
                .await
                .map_err(|_| ClientError::Timeout(timeout))??;
            if !ack.is_some_and(|a| a.no_interest) {
                break;
            }
            let retry = tokio::time::Instant::now() + Duration::from_millis(50);
            if retry >= deadline {
                return Err(ClientError::NoResponders {
                    topic: p.topic.clone(),
                    waited: timeout,
                });
            }
            tokio::time::sleep_until(retry).await;
        }
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(d)) => Ok(d.into_inner()),
            Ok(None) => Err(ClientError::Closed(
                "connection closed while waiting for the reply".into(),
            )),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Takes the refusals of QoS0 publishes received so far (a QoS1 publish gets its own
    /// error from [`publish`](Self::publish)).
    pub fn take_refusals(&self) -> Vec<ClientError> {
        std::mem::take(&mut self.lock().refused)
    }

    /// The broker's session id of the current connection (it changes on reconnect).
    pub fn session_id(&self) -> Option<u64> {
        self.lock().session.session_id()
    }

    /// QoS1 publishes still waiting for their PubAck.
    pub fn pending_publishes(&self) -> usize {
        self.lock().session.pending_publishes()
    }

    /// Says Goodbye and waits, at most [`ClientOptions::close_timeout`], for the broker to
    /// answer it (it first routes every publish it still holds of ours) or close; then
    /// reports the QoS1 publishes it could not confirm. Closes the connection for every
    /// clone of this client and its subscriptions.
    pub async fn close(self) -> CloseReport {
        self.shared.begin_close("client closing");
        let timeout = self.lock().close_timeout;
        // The connection task enforces the timeout itself; the margin covers its last steps.
        let finished = tokio::time::timeout(
            timeout + Duration::from_millis(250),
            self.shared.handoff.wait_finished(),
        )
        .await
        .is_ok();
        let inner = self.lock();
        let report = CloseReport {
            unconfirmed: inner.session.pending_publishes(),
            timed_out: !finished || inner.close_timed_out,
        };
        if report.unconfirmed > 0 || report.timed_out {
            tracing::warn!(
                unconfirmed = report.unconfirmed,
                timed_out = report.timed_out,
                "close could not confirm everything"
            );
        }
        report
    }
}

/// A QoS0 plain subscription spec for `filter`.
pub fn plain_subscribe(filter: &str) -> Subscribe {
    Subscribe::new(filter)
}

/// A publish of `payload` to `topic` at `qos`.
pub fn simple_publish(topic: &str, payload: Bytes, qos: QoS) -> Publish {
    Publish::new(topic, payload, qos)
}

async fn supervise<C: Connector>(
    shared: Arc<Shared>,
    connector: C,
    reconnect: bool,
    first: Option<(C::Read, C::Write)>,
) {
    connect_loop(&shared, &connector, reconnect, first).await;
    shared.handoff.finish();
}

async fn connect_loop<C: Connector>(
    shared: &Arc<Shared>,
    connector: &C,
    reconnect: bool,
    mut first: Option<(C::Read, C::Write)>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let stream = match first.take() {
            Some(s) => Ok(s),
            None => connector.connect().await,
        };
        match stream {
            Ok(_) if shared.lock().shutting_down => {
                shared.lock().fail_all("client closed");
                return;
            }
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                let reason = run_connection(shared, stream).await;
                let mut inner = shared.lock();
                let now = inner.clock.now();
                inner.session.handle_disconnect(now, reason.clone());
                inner.dispatch();
                if !reconnect || inner.shutting_down || inner.closed.is_some() {
                    inner.fail_all(&reason);
                    return;
                }
                tracing::info!(%reason, "connection lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "reconnect failed");
                if shared.lock().shutting_down {
                    shared.lock().fail_all("client closed");
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = shared.stop.notified() => { shared.lock().fail_all("client closed"); return; }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Moves what the reader decoded into the subscriptions' bounded channels. A full channel
/// holds the reader (and so the socket: backpressure) until the application takes a
/// message, the subscription goes, or a close begins (then the rest is discarded,
/// unacknowledged, for the broker to redeliver).
async fn forward(shared: &Arc<Shared>) {
    loop {
        let (tx, item, closing) = {
            let mut inner = shared.lock();
            let Some(item) = inner.inbox.pop_front() else {
                return;
            };
            let Some(tx) = inner.subs.get(&item.deliver.sub_id).cloned() else {
                continue;
            };
            (tx, item, inner.shutting_down)
        };
        let item = match tx.try_send(item) {
            Ok(()) | Err(TrySendError::Closed(_)) => continue,
            Err(TrySendError::Full(_)) if closing => continue,
            Err(TrySendError::Full(item)) => item,
        };
        shared.lock().session.pause_receive();
        // The writer's next deadline changed (pings continue while we wait).
        shared.handoff.encoded();
        tokio::select! {
            biased;
            _ = tx.send(item) => {}
            _ = shared.wait_closing() => {}
        }
        let mut inner = shared.lock();
        let now = inner.now();
        inner.session.resume_receive(now);
    }
}

/// Runs one connection until it ends; returns why.
async fn run_connection<R, W>(shared: &Arc<Shared>, (mut rd, mut wr): (R, W)) -> String
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    {
        let mut inner = shared.lock();
        let now = inner.now();
        inner.session.connect(now);
    }
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        // Messages left over from a previous connection go first.
        forward(shared).await;
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return "broker closed the connection".to_string(),
                Err(e) => return format!("read failed: {e}"),
                Ok(n) => {
                    {
                        let mut inner = shared.lock();
                        let now = inner.now();
                        inner.session.handle_bytes(now, &buf[..n]);
                        inner.dispatch();
                    }
                    shared.handoff.encoded();
                    forward(shared).await;
                    if shared.lock().session.is_closed() {
                        return "closed by the broker".to_string();
                    }
                }
            }
        }
    };
    let writer = async {
        let next = || {
            let mut inner = shared.lock();
            let now = inner.now();
            inner.session.handle_timeout(now);
            if let Some(bytes) = inner.session.poll_transmit() {
                return Next::Write(bytes);
            }
            if inner.shutting_down || inner.session.is_closed() {
                return Next::Stop;
            }
            Next::Idle(
                inner
                    .session
                    .poll_timeout()
                    .map(|(at, _)| inner.clock.to_std(at)),
            )
        };
        let idle = |deadline: Option<std::time::Instant>| async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let result = shared.handoff.run_writer(next, &mut wr, idle).await;
        // Closing, our side stays open until the broker answers the Goodbye.
        if result.is_ok() && !shared.lock().shutting_down {
            let _ = wr.shutdown().await;
        }
        result
    };
    let connection = async {
        tokio::pin!(reader);
        tokio::pin!(writer);
        tokio::select! {
            biased;
            r = &mut reader => r,
            w = &mut writer => {
                let closing = shared.lock().shutting_down;
                match w {
                    // Goodbye written: the broker routes what it holds of ours, answers
                    // and closes. Our side stays open until then (the close deadline
                    // below bounds the wait).
                    Ok(()) if closing => (&mut reader).await,
                    Ok(()) => {
                        // A refusing broker says why (an Error frame) and closes; let the
                        // reader take the reason from the receive buffer.
                        match tokio::time::timeout(Duration::from_millis(500), &mut reader).await {
                            Ok(r) => r,
                            Err(_) => "no traffic from the broker for three heartbeat intervals".to_string(),
                        }
                    }
                    Err(e) => match tokio::time::timeout(Duration::from_millis(500), &mut reader).await {
                        Ok(r) => r,
                        Err(_) => format!("write failed: {e}"),
                    },
                }
            }
        }
    };
    let deadline = async {
        shared.wait_closing().await;
        let timeout = shared.lock().close_timeout;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        biased;
        r = connection => r,
        () = deadline => {
            shared.lock().close_timed_out = true;
            "the broker did not answer our Goodbye within the close timeout".to_string()
        }
    }
}
