//! The async client library: connect (with reconnect and backoff), publish at QoS0 or QoS1
//! (awaiting the PubAck), subscribe (a stream of messages, optionally in a queue group, or
//! one stream over several subscriptions), request/reply with a timeout, and a clean close
//! that reports what it could not confirm. The protocol itself (handshake, resubscribe and
//! QoS1 resend after a reconnect, deduplication, which deliveries await an ack, when to
//! reconnect and when to give up) is the core's [`ClientSession`]; this module moves its
//! bytes and sleeps until its deadlines.
//!
//! The parts: [`Client`] here; [`options`](ClientOptions) and the results of a publish or a
//! close; [`Subscription`] and [`Delivery`]; typed errors ([`ClientError`]); the connection
//! task (`reconnect`: dial, serve, dial again) and one transport (`connection`: a reader and
//! a writer task, so a client blocked writing still reads and acks its deliveries).
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

mod connection;
mod error;
mod handoff;
mod options;
mod reconnect;
mod shared;
mod subscription;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::client::ClientSession;
pub use daemoneye_core::client::{AckMode, Disconnect, ReconnectPolicy};
use daemoneye_proto::frame::{Deliver, Publish, QoS, Subscribe};
use tokio::sync::{mpsc, oneshot};

pub use error::{ClientError, ClosedReason};
pub use options::{ClientOptions, CloseReport, Notice, PendingAck, PubAck};
pub use subscription::{Delivery, Subscription};

use crate::clock::MonotonicClock;
use crate::sync::{Arc, AtomicU64, Mutex, MutexGuard, Notify, Ordering};
use crate::transport::{Connector, UnixConnector};
use handoff::Handoff;
use shared::{Handle, Inner, Shared};

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
                source: std::sync::Arc::new(e),
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
            ended: None,
            shutting_down: false,
            close_timeout: options.close_timeout,
            close_timed_out: false,
            delivery_buffer: options.delivery_buffer.max(1),
            notices: None,
            backpressure: tokio::sync::watch::channel(BackpressureSignal::default()).0,
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
        tokio::spawn(reconnect::run_connection(
            client.shared.clone(),
            connector,
            stream,
        ));
        match tokio::time::timeout(options.connect_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClosedReason::HandshakeEnded.into()),
            Err(_) => Err(ClientError::Timeout(options.connect_timeout)),
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
                    || inner.check_open().is_err()
            })
            .await;
        let qos = p.qos;
        let (sequence, rx) = {
            let mut inner = self.lock();
            inner.check_open()?;
            let seq = if sequenced {
                inner.session.publish_sequenced(p)
            } else {
                inner.session.publish(p)
            }?;
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
            inner.check_open()?;
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
                Err(_) => return Err(ClosedReason::Stopped.into()),
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
        // Whether the broker said nobody was subscribed: a deadline that passes while the
        // next try's PubAck is on its way (a loaded host) is still "no responders".
        let mut unheard = false;
        let no_responders = |topic: &str| ClientError::NoResponders {
            topic: topic.to_string(),
            waited: timeout,
        };
        loop {
            let ack = match tokio::time::timeout_at(deadline, self.publish(p.clone())).await {
                Ok(ack) => ack?,
                Err(_) if unheard => return Err(no_responders(&p.topic)),
                Err(_) => return Err(ClientError::Timeout(timeout)),
            };
            if !ack.is_some_and(|a| a.no_interest) {
                break;
            }
            unheard = true;
            let retry = tokio::time::Instant::now() + Duration::from_millis(50);
            if retry >= deadline {
                return Err(no_responders(&p.topic));
            }
            tokio::time::sleep_until(retry).await;
        }
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(d)) => Ok(d.into_inner()),
            Ok(None) => Err(ClosedReason::ReplyLost.into()),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// From now on, what happens to the connection and to this client's subscriptions
    /// (connected, disconnected, messages dropped by overflow), in order. A second call
    /// takes the stream over from the first.
    pub fn notices(&self) -> tokio::sync::mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().notices = Some(tx);
        rx
    }

    /// Takes the refusals of QoS0 publishes received so far (a QoS1 publish gets its own
    /// error from [`publish`](Self::publish)).
    pub fn take_refusals(&self) -> Vec<ClientError> {
        std::mem::take(&mut self.lock().refused)
    }

    /// The broker's Backpressure signals to this connection: the last level and how many
    /// signals came so far (the broker repeats SlowDown while it lasts, so each one counts).
    pub fn backpressure(&self) -> tokio::sync::watch::Receiver<BackpressureSignal> {
        self.lock().backpressure.subscribe()
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

/// The broker's last Backpressure signal to a client ([`Client::backpressure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackpressureSignal {
    /// The level it gave.
    pub level: daemoneye_proto::pb::bus::BackpressureLevel,
    /// Signals received since the client connected (0: none yet).
    pub signals: u64,
}

/// A QoS0 plain subscription spec for `filter`.
pub fn plain_subscribe(filter: &str) -> Subscribe {
    Subscribe::new(filter)
}

/// A publish of `payload` to `topic` at `qos`.
pub fn simple_publish(topic: &str, payload: Bytes, qos: QoS) -> Publish {
    Publish::new(topic, payload, qos)
}
