//! One transport to the broker, from the handshake to its end: a reader that feeds the
//! session and hands messages to the subscriptions' bounded channels, and a writer that
//! writes what the session encodes and keeps its keepalive deadline. Each runs on its own,
//! so a client blocked writing (the broker paused it) still reads and acks its deliveries.

use std::time::Duration;

use daemoneye_core::client::Disconnect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::error::TrySendError;

use super::handoff::Next;
use super::shared::Shared;
use crate::clock::Clock;
use crate::sync::Arc;

/// How long a finished writer waits for the reader to learn why the broker went (its last
/// Error frame, or EOF) before giving its own reason.
const READER_GRACE: Duration = Duration::from_millis(500);

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

/// Serves one transport until it ends; returns why.
pub(super) async fn serve_transport<R, W>(
    shared: &Arc<Shared>,
    (mut rd, mut wr): (R, W),
) -> Disconnect
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
                Ok(0) => return Disconnect::BrokerClosed,
                Err(e) => return Disconnect::ReadFailed(e.to_string()),
                Ok(n) => {
                    {
                        let mut inner = shared.lock();
                        let now = inner.now();
                        inner.session.handle_bytes(now, &buf[..n]);
                        inner.dispatch();
                    }
                    shared.handoff.encoded();
                    forward(shared).await;
                    let inner = shared.lock();
                    if inner.session.is_closed() {
                        // The session ended the connection itself, and knows why.
                        return inner
                            .session
                            .last_disconnect()
                            .cloned()
                            .unwrap_or(Disconnect::BrokerClosed);
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
                    // A refusing broker says why (an Error frame) and closes; let the
                    // reader take the reason from the receive buffer.
                    Ok(()) => tokio::time::timeout(READER_GRACE, &mut reader)
                        .await
                        .unwrap_or(Disconnect::BrokerSilent),
                    Err(e) => tokio::time::timeout(READER_GRACE, &mut reader)
                        .await
                        .unwrap_or_else(|_| Disconnect::WriteFailed(e.to_string())),
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
            Disconnect::GoodbyeUnanswered
        }
    }
}
