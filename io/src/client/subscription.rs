//! The application's side of subscriptions: [`Subscription`] (one stream over one or more
//! subscriptions, as `subscribe_all` opens them) and [`Delivery`] (one message, acknowledged
//! to the broker only by [`Delivery::ack`] unless its subscription acks on hand-over).

use std::ops::Deref;

use daemoneye_proto::frame::Deliver;
use tokio::sync::mpsc;

use super::Client;
use super::shared::{Incoming, Shared};
use crate::sync::Arc;

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
    pub(super) ids: Vec<u64>,
    pub(super) rx: mpsc::Receiver<Incoming>,
    pub(super) client: Client,
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
