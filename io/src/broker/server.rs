//! The broker server: feeds the core broker with bytes, writes what it returns.
//!
//! Everything runs on one thread (a current-thread runtime and a `LocalSet`): on two cores a
//! wake-up across CPUs costs more than routing a message, so the core is shared by the
//! connection tasks through a `RefCell`, never across threads. Each connection has a reader
//! task (64 KiB reads, fed to the core; paused while the core says so) and a writer task
//! (writes every Transmit queued since its last write in one call, then reports the bytes
//! to the core, which refills the connection's window). A timer task sleeps until the core's
//! next deadline. The server decides nothing itself.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::broker::{Broker, ConnId, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::durables::DurableStore;
use crate::clock::Clock;
use crate::transport::Listener;

/// Bytes read from a socket per call.
const READ_CHUNK: usize = 64 * 1024;
/// Capacity the writer's coalescing buffer keeps between writes.
const COALESCE_KEEP: usize = 16 * 1024;
/// How long shutdown waits for writers to flush their Goodbyes.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(300);

#[derive(Debug)]
struct ConnIo {
    outbound: VecDeque<Bytes>,
    writer: Rc<Notify>,
    reader: Rc<Notify>,
    paused: bool,
    closing: bool,
}

struct Shared<C> {
    broker: Broker,
    clock: C,
    conns: BTreeMap<ConnId, ConnIo>,
    timer: Rc<Notify>,
    /// The deadline the timer task sleeps until (`None`: it waits to be woken).
    armed: Option<daemoneye_core::Instant>,
    durables: Option<DurableStore>,
}

/// What the server keeps besides the broker's memory.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Where durable subscription definitions are written whenever they change (restore
    /// them into the broker with [`DurableStore::restore_into`] before serving).
    pub durables: Option<DurableStore>,
}

impl<C: Clock> Shared<C> {
    /// Carries out everything the core asked for, then re-arms the timer if the core's next
    /// deadline moved earlier than the one the timer sleeps until.
    fn dispatch(&mut self) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, data } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.outbound.push_back(data);
                        c.writer.notify_one();
                    }
                }
                Output::PauseRead { conn } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.paused = true;
                    }
                }
                Output::ResumeRead { conn } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.paused = false;
                        c.reader.notify_one();
                    }
                }
                Output::Close { conn, reason } => {
                    tracing::debug!(conn = conn.0, ?reason, "closing connection");
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.closing = true;
                        c.writer.notify_one();
                        c.reader.notify_one();
                    }
                }
            }
        }
        if let Some(store) = &mut self.durables
            && let Err(e) = store.save_if_changed(&self.broker)
        {
            tracing::error!(error = %e, "durable subscriptions not saved: they will not survive a crash");
        }
        if let Some((at, _)) = self.broker.poll_timeout()
            && self.armed.is_none_or(|armed| at < armed)
        {
            self.armed = Some(at);
            self.timer.notify_one();
        }
    }

    /// A read returned end of stream: the peer closed its sending side (it may still be
    /// reading). The core decides: a frame cut short is answered with an Error and closed;
    /// a clean end closes; after a Goodbye the connection stays until the core has routed
    /// what it holds and answered.
    fn eof(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            if c.closing {
                return;
            }
            let now = self.clock.now();
            let truncated = self.broker.totals().truncated;
            self.broker.handle_eof(now, conn);
            if self.broker.totals().truncated > truncated {
                tracing::debug!(conn = conn.0, "connection ended inside a frame");
            }
            self.dispatch();
            if !self.broker.has_connection(conn)
                && let Some(c) = self.conns.get_mut(&conn)
                && !c.closing
            {
                c.closing = true;
                c.writer.notify_one();
            }
        }
    }

    /// The peer went away: tell the core unless it already forgot the connection.
    fn lost(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.closing {
                c.closing = true;
                let now = self.clock.now();
                self.broker.handle_disconnect(now, conn);
                self.dispatch();
            }
            if let Some(c) = self.conns.get(&conn) {
                c.writer.notify_one();
                c.reader.notify_one();
            }
        }
    }
}

/// Runs the broker on `listener` until `shutdown` resolves, then says Goodbye to every
/// client, flushes within a bounded time and returns. Must run inside a `LocalSet`.
pub async fn serve<L, C>(listener: L, broker: Broker, clock: C, shutdown: impl Future<Output = ()>)
where
    L: Listener + 'static,
    C: Clock + 'static,
{
    serve_with(listener, broker, clock, shutdown, ServeOptions::default()).await;
}

/// [`serve`] with the state the server keeps on disk.
pub async fn serve_with<L, C>(
    mut listener: L,
    broker: Broker,
    clock: C,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    L: Listener + 'static,
    C: Clock + 'static,
{
    let timer = Rc::new(Notify::new());
    let shared = Rc::new(RefCell::new(Shared {
        broker,
        clock,
        conns: BTreeMap::new(),
        timer: timer.clone(),
        armed: None,
        durables: options.durables,
    }));
    let timer_task = tokio::task::spawn_local(timer_loop(shared.clone(), timer));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((rd, wr, peer)) => {
                    let (conn, reader, writer) = {
                        let mut s = shared.borrow_mut();
                        let now = s.clock.now();
                        let conn = s.broker.handle_connect(now, peer);
                        let reader = Rc::new(Notify::new());
                        let writer = Rc::new(Notify::new());
                        s.conns.insert(conn, ConnIo {
                            outbound: VecDeque::new(),
                            writer: writer.clone(),
                            reader: reader.clone(),
                            paused: false,
                            closing: false,
                        });
                        s.dispatch();
                        tracing::debug!(conn = conn.0, uid = peer.uid, pid = ?peer.pid, "accepted");
                        (conn, reader, writer)
                    };
                    tokio::task::spawn_local(read_loop(shared.clone(), conn, rd, reader));
                    tokio::task::spawn_local(write_loop(shared.clone(), conn, wr, writer));
                }
                Err(err) => {
                    // Out of descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    {
        let mut s = shared.borrow_mut();
        let now = s.clock.now();
        s.broker.shutdown(now);
        s.dispatch();
    }
    let deadline = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
    while !shared.borrow().conns.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    timer_task.abort();
}

async fn timer_loop<C: Clock>(shared: Rc<RefCell<Shared<C>>>, timer: Rc<Notify>) {
    loop {
        let deadline = {
            let mut s = shared.borrow_mut();
            let next = s.broker.poll_timeout().map(|(at, _)| at);
            s.armed = next;
            next.map(|at| s.clock.to_std(at))
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = timer.notified() => continue,
            _ = sleep => {}
        }
        let mut s = shared.borrow_mut();
        let now = s.clock.now();
        s.broker.handle_timeout(now);
        s.dispatch();
    }
}

async fn read_loop<C: Clock, R: tokio::io::AsyncRead + Unpin>(
    shared: Rc<RefCell<Shared<C>>>,
    conn: ConnId,
    mut rd: R,
    wake: Rc<Notify>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let (paused, closing) = match shared.borrow().conns.get(&conn) {
            Some(c) => (c.paused, c.closing),
            None => return,
        };
        if closing {
            return;
        }
        if paused {
            wake.notified().await;
            continue;
        }
        let n = tokio::select! {
            biased;
            _ = wake.notified() => continue,
            r = rd.read(&mut buf) => r,
        };
        let mut s = shared.borrow_mut();
        match n {
            Ok(0) => {
                s.eof(conn);
                return;
            }
            Err(_) => {
                s.lost(conn);
                return;
            }
            Ok(n) => {
                let now = s.clock.now();
                s.broker.handle_bytes(now, conn, &buf[..n]);
                s.dispatch();
            }
        }
    }
}

async fn write_loop<C: Clock, W: tokio::io::AsyncWrite + Unpin>(
    shared: Rc<RefCell<Shared<C>>>,
    conn: ConnId,
    mut wr: W,
    wake: Rc<Notify>,
) {
    let mut coalesced: Vec<u8> = Vec::new();
    loop {
        let (batch, closing) = {
            let mut s = shared.borrow_mut();
            match s.conns.get_mut(&conn) {
                Some(c) => (std::mem::take(&mut c.outbound), c.closing),
                None => return,
            }
        };
        if batch.is_empty() {
            if closing {
                let _ = wr.shutdown().await;
                let mut s = shared.borrow_mut();
                if let Some(c) = s.conns.remove(&conn) {
                    c.reader.notify_one();
                }
                return;
            }
            wake.notified().await;
            continue;
        }
        let total: usize = batch.iter().map(Bytes::len).sum();
        let result = if batch.len() == 1 {
            wr.write_all(&batch[0]).await
        } else {
            // Several Transmits piled up while the last write was in flight: one syscall.
            coalesced.clear();
            for b in &batch {
                coalesced.extend_from_slice(b);
            }
            let r = wr.write_all(&coalesced).await;
            // Idle connections keep no large buffer (memory per connection stays bounded).
            coalesced.clear();
            coalesced.shrink_to(COALESCE_KEEP);
            r
        };
        let mut s = shared.borrow_mut();
        match result {
            Ok(()) => {
                let now = s.clock.now();
                s.broker.handle_written(now, conn, total);
                s.dispatch();
            }
            Err(_) => {
                s.lost(conn);
                if let Some(c) = s.conns.get_mut(&conn) {
                    c.outbound.clear();
                }
            }
        }
    }
}
