//! The async client library: connect (with reconnect and backoff), publish at QoS0 or QoS1
//! (awaiting the PubAck), subscribe (a stream of messages, optionally in a queue group),
//! request/reply with a timeout. The protocol itself (handshake, resubscribe and QoS1
//! resend after a reconnect, deduplication, acks) is the core's
//! [`ClientSession`]; this module moves its bytes.
//!
//! Each connection has a reader task and a writer task, so a client blocked writing (the
//! broker paused it) still reads and acks its deliveries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::transport::{Connector, UnixConnector};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::client::{ClientConfig, ClientEvent, ClientSession};
use daemoneye_proto::frame::{Deliver, ErrorFrame, Publish, QoS, Subscribe};
use daemoneye_proto::pb::bus::{AnswerKind, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, MonotonicClock};
use crate::handoff::{Handoff, Next};
use crate::sync::{Arc, AtomicU64, Mutex, MutexGuard, Notify, Ordering};

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

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

struct Inner {
    session: ClientSession,
    clock: MonotonicClock,
    subs: BTreeMap<u64, mpsc::UnboundedSender<Deliver>>,
    sub_waiters: BTreeMap<u64, Reply<()>>,
    puback_waiters: BTreeMap<u64, Reply<PubAck>>,
    connect_waiters: Vec<Reply<()>>,
    /// Refusals of publishes nobody waited for (QoS0), for the caller to collect.
    refused: Vec<ClientError>,
    closed: Option<String>,
    shutting_down: bool,
}

impl Inner {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn dispatch(&mut self) {
        while let Some(ev) = self.session.poll_event() {
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
                ClientEvent::Message(d) => {
                    let delivery_id = d.delivery_id;
                    let delivered = self
                        .subs
                        .get(&d.sub_id)
                        .is_some_and(|tx| tx.send(d).is_ok());
                    if !delivered && delivery_id != 0 {
                        // Nobody will read it: ack so the broker does not hold it forever.
                        self.session.ack(delivery_id);
                    }
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
        self.closed.get_or_insert_with(|| reason.to_string());
    }
}

/// A connection to the broker. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Mutex<Inner>>,
    /// Callers and the connection's writer: wake-ups, room in the send buffer, the end.
    handoff: Arc<Handoff>,
    stop: Arc<Notify>,
    reply_counter: Arc<AtomicU64>,
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

/// Messages of one subscription. QoS1 messages are acknowledged as `recv` hands them over.
#[derive(Debug)]
pub struct Subscription {
    /// The client's id for it.
    pub id: u64,
    rx: mpsc::UnboundedReceiver<Deliver>,
    client: Client,
}

impl Subscription {
    /// The next message, or `None` once the connection is gone for good.
    pub async fn recv(&mut self) -> Option<Deliver> {
        let d = self.rx.recv().await?;
        if d.delivery_id != 0 {
            self.client.ack(d.delivery_id);
        }
        Some(d)
    }
}

impl Client {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere already; keep serving what we can.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
            sub_waiters: BTreeMap::new(),
            puback_waiters: BTreeMap::new(),
            connect_waiters: Vec::new(),
            refused: Vec::new(),
            closed: None,
            shutting_down: false,
        };
        let client = Client {
            inner: Arc::new(Mutex::new(inner)),
            handoff: Arc::new(Handoff::new()),
            stop: Arc::new(Notify::new()),
            reply_counter: Arc::new(AtomicU64::new(0)),
        };
        let (tx, rx) = oneshot::channel();
        client.lock().connect_waiters.push(tx);
        tokio::spawn(supervise(
            client.clone(),
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
        self.handoff
            .wait_for_room(|| {
                let inner = self.lock();
                // A connection gone for good has no room, but check_open says so below.
                inner.session.buffered_bytes() < SEND_BUFFER_LIMIT
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
        self.handoff.encoded();
        Ok(PendingAck { sequence, rx })
    }

    /// Opens a subscription and waits until the broker has accepted it.
    pub async fn subscribe(&self, spec: Subscribe) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = oneshot::channel();
        let id = {
            let mut inner = self.lock();
            self.check_open(&inner)?;
            let id = inner.session.subscribe(spec);
            inner.subs.insert(id, tx);
            inner.sub_waiters.insert(id, ack_tx);
            id
        };
        self.handoff.encoded();
        match ack_rx.await {
            Ok(Ok(())) => Ok(Subscription {
                id,
                rx,
                client: self.clone(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed("client stopped".into())),
        }
    }

    /// Closes a subscription.
    pub fn unsubscribe(&self, id: u64) {
        let mut inner = self.lock();
        inner.subs.remove(&id);
        let _ = inner.session.unsubscribe(id);
        drop(inner);
        self.handoff.encoded();
    }

    /// Acknowledges a QoS1 delivery.
    pub fn ack(&self, delivery_id: u64) {
        self.lock().session.ack(delivery_id);
        self.handoff.encoded();
    }

    /// Sends `p` with a fresh reply topic and waits for the first reply.
    ///
    /// A QoS1 request learns from its PubAck whether anyone is subscribed: while nobody is
    /// (a responder still starting, or reconnecting), it is sent again every 50 ms until the
    /// deadline, then fails with [`ClientError::NoResponders`] instead of a bare timeout.
    pub async fn request(&self, mut p: Publish, timeout: Duration) -> Result<Deliver, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let session = self.lock().session.session_id().unwrap_or(0);
        let n = self.reply_counter.fetch_add(1, Ordering::Relaxed);
        let reply_to = format!("_reply.s{session}.r{n}");
        let mut sub = self.subscribe(plain_subscribe(&reply_to)).await?;
        p.reply_to = Some(reply_to);
        let result = async {
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
                Ok(Some(d)) => Ok(d),
                Ok(None) => Err(ClientError::Closed(
                    "connection closed while waiting for the reply".into(),
                )),
                Err(_) => Err(ClientError::Timeout(timeout)),
            }
        }
        .await;
        self.unsubscribe(sub.id);
        result
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

    /// Says Goodbye, flushes and stops.
    pub async fn close(self) {
        {
            let mut inner = self.lock();
            inner.shutting_down = true;
            inner.session.close("client closing");
        }
        self.handoff.encoded();
        self.stop.notify_one();
        // The writer flushes the Goodbye and everything before it, then the connection
        // task ends; a broker that stopped reading gets two seconds.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.handoff.wait_finished()).await;
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
    client: Client,
    connector: C,
    reconnect: bool,
    first: Option<(C::Read, C::Write)>,
) {
    connect_loop(&client, &connector, reconnect, first).await;
    client.handoff.finish();
}

async fn connect_loop<C: Connector>(
    client: &Client,
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
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                let reason = run_connection(client, stream).await;
                let mut inner = client.lock();
                inner.session.handle_disconnect(reason.clone());
                inner.dispatch();
                if !reconnect || inner.shutting_down || inner.closed.is_some() {
                    inner.fail_all(&reason);
                    return;
                }
                tracing::info!(%reason, "connection lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "reconnect failed");
                if client.lock().shutting_down {
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            _ = client.stop.notified() => { client.lock().fail_all("client closed"); return; }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Runs one connection until it ends; returns why.
async fn run_connection<R, W>(client: &Client, (mut rd, mut wr): (R, W)) -> String
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    {
        let mut inner = client.lock();
        let now = inner.now();
        inner.session.connect(now);
    }
    let reader = {
        let client = client.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return "broker closed the connection".to_string(),
                    Err(e) => return format!("read failed: {e}"),
                    Ok(n) => {
                        let mut inner = client.lock();
                        let now = inner.now();
                        inner.session.handle_bytes(now, &buf[..n]);
                        inner.dispatch();
                        let closed = !inner.session.is_connected() && inner.closed.is_some();
                        drop(inner);
                        client.handoff.encoded();
                        if closed {
                            return "closed by the broker".to_string();
                        }
                    }
                }
            }
        }
    };
    let writer = async {
        let next = || {
            let mut inner = client.lock();
            let now = inner.now();
            inner.session.handle_timeout(now);
            if let Some(bytes) = inner.session.poll_transmit() {
                return Next::Write(bytes);
            }
            if inner.shutting_down || inner.session.is_closed() {
                return Next::Stop;
            }
            Next::Idle(inner.session.poll_timeout().map(|t| inner.clock.to_std(t)))
        };
        let idle = |deadline: Option<std::time::Instant>| async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        match client.handoff.run_writer(next, &mut wr, idle).await {
            Ok(()) => {
                let _ = wr.shutdown().await;
                if client.lock().shutting_down {
                    "client closed".to_string()
                } else {
                    "no traffic from the broker for three heartbeat intervals".to_string()
                }
            }
            Err(e) => format!("write failed: {e}"),
        }
    };
    tokio::pin!(reader);
    tokio::pin!(writer);
    tokio::select! {
        biased;
        r = &mut reader => r,
        w = &mut writer => {
            // A refusing broker says why (an Error frame) and closes; our write then fails.
            // The reason is already in our receive buffer: let the reader take it.
            match tokio::time::timeout(Duration::from_millis(500), &mut reader).await {
                Ok(r) => r,
                Err(_) => w,
            }
        }
    }
}
