//! What a client's handles and its connection task share: the core session under one
//! mutex, the callers waiting for its answers, and the signals between them. The session's
//! events are turned into answers here ([`Inner::dispatch`]); no rule is decided here.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::client::{ClientEvent, ClientSession, GiveUp};
use daemoneye_proto::frame::Deliver;
use daemoneye_proto::pb::bus::AnswerKind;
use tokio::sync::{mpsc, oneshot};

use super::handoff::Handoff;
use super::{ClientError, ClosedReason, Notice, PubAck};
use crate::clock::{Clock, MonotonicClock};
use crate::sync::{AtomicU64, Mutex, MutexGuard, Notify};

pub(super) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A message on its way to a subscription, with the connection it came on.
#[derive(Debug)]
pub(super) struct Incoming {
    pub(super) connection: u64,
    pub(super) deliver: Deliver,
}

pub(super) struct Inner {
    pub(super) session: ClientSession,
    pub(super) clock: MonotonicClock,
    pub(super) subs: BTreeMap<u64, mpsc::Sender<Incoming>>,
    /// Messages read from the socket and not yet in their subscription's channel.
    pub(super) inbox: VecDeque<Incoming>,
    pub(super) sub_waiters: BTreeMap<u64, Reply<()>>,
    pub(super) puback_waiters: BTreeMap<u64, Reply<PubAck>>,
    pub(super) connect_waiters: Vec<Reply<()>>,
    /// Refusals of publishes nobody waited for (QoS0), for the caller to collect.
    pub(super) refused: Vec<ClientError>,
    /// Why the connection is gone for good, once it is.
    pub(super) ended: Option<ClosedReason>,
    pub(super) shutting_down: bool,
    pub(super) close_timeout: Duration,
    pub(super) close_timed_out: bool,
    pub(super) delivery_buffer: usize,
    /// Where [`Notice`]s go, once the application asked for them.
    pub(super) notices: Option<mpsc::UnboundedSender<Notice>>,
    /// The broker's last Backpressure signal, for [`Client::backpressure`](super::Client::backpressure).
    pub(super) backpressure: tokio::sync::watch::Sender<super::BackpressureSignal>,
}

impl Inner {
    pub(super) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Why new operations are refused, if they are: a close has begun, or the connection is
    /// down and will not come back (the broker refused us for good, or the session gave up).
    pub(super) fn check_open(&self) -> Result<(), ClientError> {
        if self.shutting_down {
            return Err(ClosedReason::Closing.into());
        }
        if self.session.is_connected() {
            return Ok(());
        }
        if let Some(refusal) = self.session.refusal() {
            return Err(ClosedReason::Refused(refusal.clone()).into());
        }
        match &self.ended {
            Some(reason) => Err(reason.clone().into()),
            None => Ok(()),
        }
    }

    /// Why the session gave up, as the application sees it.
    pub(super) fn closed_reason(&self, why: &GiveUp) -> ClosedReason {
        match why {
            GiveUp::Closed => ClosedReason::ClientClosed,
            GiveUp::Refused(e) => ClosedReason::Refused(e.clone()),
            GiveUp::Disabled => self
                .session
                .last_disconnect()
                .cloned()
                .map_or(ClosedReason::Stopped, ClosedReason::Lost),
        }
    }

    fn notify(&self, notice: Notice) {
        if let Some(tx) = &self.notices {
            let _ = tx.send(notice);
        }
    }

    pub(super) fn dispatch(&mut self) {
        while let Some(ev) = self.session.poll_output() {
            match ev {
                ClientEvent::Connected { session_id } => {
                    tracing::debug!(session_id, "connected");
                    self.notify(Notice::Connected { session_id });
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
                        // During the first handshake the refusal is connect's answer. Whether
                        // another connection follows is the session's decision.
                        let err: ClientError = e.into();
                        for w in self.connect_waiters.drain(..) {
                            let _ = w.send(Err(err.clone()));
                        }
                    }
                },
                ClientEvent::Backpressure { level, reason } => {
                    tracing::debug!(?level, %reason, "backpressure from broker");
                    self.backpressure.send_modify(|s| {
                        s.level = level;
                        s.signals += 1;
                    });
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
                    self.notify(Notice::Dropped {
                        sub_id,
                        count,
                        total,
                    });
                }
                ClientEvent::Closed { reason } => {
                    tracing::debug!(%reason, "connection closed");
                    self.notify(Notice::Disconnected {
                        reason: reason.to_string(),
                    });
                }
            }
        }
    }

    /// The connection will not come back: fail everything that waits.
    pub(super) fn fail_all(&mut self, reason: ClosedReason) {
        let err = ClientError::Closed(reason.clone());
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
        self.ended.get_or_insert(reason);
    }
}

/// What a client's handles and its connection task share.
pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    /// Callers and the connection's writer: wake-ups, room in the send buffer, the end.
    pub(super) handoff: Handoff,
    /// Wakes the reconnect loop's backoff when the client closes.
    pub(super) stop: Notify,
    /// Signalled (to all) when a close begins.
    pub(super) closing: Notify,
    pub(super) reply_counter: AtomicU64,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere already; keep serving what we can.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says Goodbye and lets the connection task wind down (bounded by the close
    /// timeout). Never blocks: called from `Drop`.
    pub(super) fn begin_close(&self, reason: &str) {
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
    pub(super) async fn wait_closing(&self) {
        loop {
            let signal = self.closing.notified();
            if self.lock().shutting_down {
                return;
            }
            signal.await;
        }
    }

    pub(super) fn ack_on(&self, connection: u64, delivery_id: u64) {
        let sent = self.lock().session.ack_on(connection, delivery_id);
        if sent {
            self.handoff.encoded();
        }
    }

    /// Forgets subscription `id` on this side and, per the core's rule, closes or detaches
    /// it at the broker.
    pub(super) fn drop_subscription(&self, id: u64, delete: bool) {
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

/// Closes the connection when the last [`Client`](super::Client) handle goes.
pub(super) struct Handle {
    pub(super) shared: crate::sync::Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close("client dropped");
    }
}
