//! The client's connection task: serves the first transport, then dials the broker again
//! whenever the core session asks to ([`Reconnect::At`]) until it gives up
//! ([`Reconnect::GiveUp`]). Which losses are worth another dial, and how long to wait, is
//! the session's rule; this loop only sleeps and dials.

use daemoneye_core::client::Reconnect;

use super::ClosedReason;
use super::connection::serve_transport;
use super::shared::Shared;
use crate::clock::Clock;
use crate::sync::Arc;
use crate::transport::Connector;

/// Runs the client's connection for its whole life, starting on `first`, then fails
/// whatever still waits and lets `close` return.
pub(super) async fn run_connection<C: Connector>(
    shared: Arc<Shared>,
    connector: C,
    first: (C::Read, C::Write),
) {
    let reason = keep_connected(&shared, &connector, first).await;
    shared.lock().fail_all(reason);
    shared.handoff.finish();
}

/// Serves transports and dials new ones until the session gives up; returns why.
async fn keep_connected<C: Connector>(
    shared: &Arc<Shared>,
    connector: &C,
    first: (C::Read, C::Write),
) -> ClosedReason {
    let mut transport = Some(first);
    loop {
        if let Some(stream) = transport.take() {
            if shared.lock().session.closed_by_owner() {
                return ClosedReason::ClientClosed;
            }
            let reason = serve_transport(shared, stream).await;
            let mut inner = shared.lock();
            let now = inner.now();
            inner.session.handle_disconnect(now, reason);
            inner.dispatch();
            if let (Some(Reconnect::At(_)), Some(reason)) =
                (inner.session.reconnect(), inner.session.last_disconnect())
            {
                tracing::info!(%reason, "connection lost; reconnecting");
            }
        }
        // Until the instant the session names; a close wakes the wait, and the session
        // then gives up.
        loop {
            let at = {
                let inner = shared.lock();
                match inner.session.reconnect() {
                    Some(Reconnect::At(at)) => inner.clock.to_std(*at),
                    Some(Reconnect::GiveUp(why)) => return inner.closed_reason(why),
                    None => return ClosedReason::Stopped,
                }
            };
            tokio::select! {
                biased;
                _ = shared.stop.notified() => {}
                _ = tokio::time::sleep_until(at.into()) => break,
            }
        }
        match connector.connect().await {
            Ok(stream) => transport = Some(stream),
            Err(e) => {
                tracing::debug!(error = %e, "reconnect failed");
                let mut inner = shared.lock();
                let now = inner.now();
                inner.session.handle_dial_failed(now);
            }
        }
    }
}
