//! The broker server: feeds the core broker with bytes, writes what it returns.
//!
//! Everything runs on one thread (a current-thread runtime and a `LocalSet`): on two cores a
//! wake-up across CPUs costs more than routing a message, so the core is shared by the
//! connection tasks through a `RefCell`, never across threads. Each connection has a reader
//! task (reads fed to the core; paused while the core says so) and a writer task.
//!
//! Writes: whatever the core returns while handling an input is queued on its connection,
//! and once the core is done with that input every connection that received something and
//! has no write in flight is written at once, from the task that handled the input, with
//! everything queued for it in one call. That is the whole path of an idle connection: a
//! message read is routed and written before the reader reads again, with no hop to another
//! task. Only when the socket takes less than was offered does the connection's writer task
//! take the rest, and the write half with it, and wait until the socket drains; what is
//! queued meanwhile goes out with its next write. After each write the bytes are reported to
//! the core, which refills the connection's window. A timer task sleeps until the core's
//! next deadline. The server decides nothing itself.
//!
//! Memory: a connection's read buffer starts small and doubles while reads fill it, up to
//! 64 KiB, and goes back to its first size once reads stay small; the buffer used to
//! coalesce writes is one for the whole server.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use daemoneye_core::broker::{Broker, ConnId, Output};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::durables::DurableStore;
use crate::clock::Clock;
use crate::transport::Listener;

/// A connection's read buffer when it starts and after its reads stay small.
const READ_MIN: usize = 1024;
/// The most a connection's read buffer grows to.
const READ_MAX: usize = 64 * 1024;
/// Consecutive reads under a quarter of the buffer after which it shrinks to [`READ_MIN`].
const SHRINK_AFTER: u32 = 16;
/// The most one write offers the socket (what is queued beyond it waits for the next).
const WRITE_MAX: usize = 256 * 1024;
/// Capacity the coalescing buffers keep between writes.
const COALESCE_KEEP: usize = 16 * 1024;
/// How long shutdown waits for writers to flush their Goodbyes.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(300);

#[derive(Debug)]
struct ConnIo<W> {
    outbound: VecDeque<Bytes>,
    /// The write half, here while no write waits on the socket; the writer task holds it
    /// while one does.
    wr: Option<W>,
    /// Queued for the next flush already (in [`Shared::dirty`]).
    dirty: bool,
    writer: Rc<Notify>,
    reader: Rc<Notify>,
    paused: bool,
    closing: bool,
}

struct Shared<C, W> {
    broker: Broker,
    clock: C,
    conns: BTreeMap<ConnId, ConnIo<W>>,
    /// Connections with output queued since the last flush.
    dirty: Vec<ConnId>,
    /// The coalescing buffer of direct writes, shared by every connection.
    scratch: Vec<u8>,
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

/// Copies the front of `queue` into `scratch` up to [`WRITE_MAX`] (at least one buffer)
/// and returns what to write: the front buffer itself when it is alone.
fn gather<'a>(queue: &'a VecDeque<Bytes>, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if queue.len() == 1 {
        return &queue[0];
    }
    fill(queue, scratch);
    scratch
}

/// Copies the front of `queue` into `out` up to [`WRITE_MAX`] (at least one buffer).
fn fill(queue: &VecDeque<Bytes>, out: &mut Vec<u8>) {
    out.clear();
    for b in queue {
        if !out.is_empty() && out.len() + b.len() > WRITE_MAX {
            break;
        }
        out.extend_from_slice(b);
    }
}

/// Drops the first `n` bytes of `queue`.
fn consume(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// One write attempt that never waits: how much the socket took (0 when it is full).
fn try_write<W: AsyncWrite + Unpin>(wr: &mut W, data: &[u8]) -> io::Result<usize> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(wr).poll_write(&mut cx, data) {
        Poll::Ready(r) => r,
        Poll::Pending => Ok(0),
    }
}

impl<C: Clock, W: AsyncWrite + Unpin> Shared<C, W> {
    /// Carries out everything the core asked for, saves changed durable definitions, writes
    /// what the core queued, then re-arms the timer if the core's next deadline moved earlier
    /// than the one the timer sleeps until.
    fn dispatch(&mut self) {
        loop {
            self.take_outputs();
            // A changed durable definition is on disk before any answer leaves: the SubAck
            // of a durable subscription promises that it survives a crash of the agent.
            if let Some(store) = &mut self.durables
                && let Err(e) = store.save_if_changed(&self.broker)
            {
                tracing::error!(error = %e, "durable subscriptions not saved: they will not survive a crash");
            }
            if !self.flush() {
                break;
            }
        }
        if let Some((at, _)) = self.broker.poll_timeout()
            && self.armed.is_none_or(|armed| at < armed)
        {
            self.armed = Some(at);
            self.timer.notify_one();
        }
    }

    fn take_outputs(&mut self) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, data } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.outbound.push_back(data);
                        if !c.dirty {
                            c.dirty = true;
                            self.dirty.push(conn);
                        }
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
    }

    /// Writes what was queued since the last flush on every connection with no write
    /// waiting, leaving what the socket did not take to the connection's writer task.
    /// Returns whether the core was told of bytes written (it may have more to send).
    fn flush(&mut self) -> bool {
        let mut reported = false;
        let mut failed = Vec::new();
        for conn in std::mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            c.dirty = false;
            if c.outbound.is_empty() {
                continue;
            }
            let Some(wr) = c.wr.as_mut().filter(|_| !c.closing) else {
                // A write is waiting on the socket (these go out with the writer's next),
                // or the connection is closing (its writer flushes, then shuts it down).
                c.writer.notify_one();
                continue;
            };
            let data = gather(&c.outbound, &mut self.scratch);
            match try_write(wr, data) {
                Ok(n) => {
                    consume(&mut c.outbound, n);
                    if !c.outbound.is_empty() {
                        c.writer.notify_one();
                    }
                    if n > 0 {
                        let now = self.clock.now();
                        self.broker.handle_written(now, conn, n);
                        reported = true;
                    }
                }
                Err(_) => {
                    c.outbound.clear();
                    failed.push(conn);
                }
            }
        }
        if self.scratch.capacity() > WRITE_MAX + COALESCE_KEEP {
            self.scratch = Vec::new();
        }
        for conn in failed {
            self.lost(conn);
        }
        reported
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
    let shared: Rc<RefCell<Shared<C, L::Write>>> = Rc::new(RefCell::new(Shared {
        broker,
        clock,
        conns: BTreeMap::new(),
        dirty: Vec::new(),
        scratch: Vec::new(),
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
                            wr: Some(wr),
                            dirty: false,
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
                    tokio::task::spawn_local(write_loop(shared.clone(), conn, writer));
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

async fn timer_loop<C: Clock, W: AsyncWrite + Unpin>(
    shared: Rc<RefCell<Shared<C, W>>>,
    timer: Rc<Notify>,
) {
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

/// A read buffer that grows while reads fill it and shrinks once they stay small.
#[derive(Debug)]
struct ReadBuf {
    buf: Vec<u8>,
    small: u32,
}

impl ReadBuf {
    fn new() -> Self {
        Self {
            buf: vec![0; READ_MIN],
            small: 0,
        }
    }

    /// Adapts the size to a read of `n` bytes.
    fn fit(&mut self, n: usize) {
        let len = self.buf.len();
        if n == len && len < READ_MAX {
            self.buf = vec![0; (len * 2).min(READ_MAX)];
            self.small = 0;
        } else if len > READ_MIN && n < len / 4 {
            self.small += 1;
            if self.small >= SHRINK_AFTER {
                self.buf = vec![0; READ_MIN];
                self.small = 0;
            }
        } else {
            self.small = 0;
        }
    }
}

async fn read_loop<C: Clock, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: Rc<RefCell<Shared<C, W>>>,
    conn: ConnId,
    mut rd: R,
    wake: Rc<Notify>,
) {
    let mut buf = ReadBuf::new();
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
            r = rd.read(&mut buf.buf) => r,
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
                s.broker.handle_bytes(now, conn, &buf.buf[..n]);
                s.dispatch();
                drop(s);
                buf.fit(n);
            }
        }
    }
}

/// Takes over a connection's writes when the socket did not take all that was offered:
/// waits until it drains, then writes everything queued, until nothing is left, and hands
/// the write half back. Shuts the connection down once it is closing and flushed.
async fn write_loop<C: Clock, W: AsyncWrite + Unpin>(
    shared: Rc<RefCell<Shared<C, W>>>,
    conn: ConnId,
    wake: Rc<Notify>,
) {
    let mut coalesced: Vec<u8> = Vec::new();
    loop {
        let taken = {
            let mut s = shared.borrow_mut();
            let Some(c) = s.conns.get_mut(&conn) else {
                return;
            };
            (!c.outbound.is_empty() || c.closing).then(|| (c.wr.take(), c.closing))
        };
        let Some((wr, closing)) = taken else {
            wake.notified().await;
            continue;
        };
        let Some(mut wr) = wr else {
            // Only this task takes the write half: it is never missing here.
            return;
        };
        loop {
            // The front buffer as it is when it is alone; else a copy of the front of the
            // queue (the queue may grow while the write waits).
            let single = {
                let s = shared.borrow();
                let Some(c) = s.conns.get(&conn) else {
                    return;
                };
                match c.outbound.len() {
                    0 => break,
                    1 => Some(c.outbound[0].clone()),
                    _ => {
                        fill(&c.outbound, &mut coalesced);
                        None
                    }
                }
            };
            let result = match &single {
                Some(b) => wr.write(b).await,
                None => wr.write(&coalesced).await,
            };
            let mut s = shared.borrow_mut();
            match result {
                Ok(n) if n > 0 => {
                    if let Some(c) = s.conns.get_mut(&conn) {
                        consume(&mut c.outbound, n);
                    }
                    let now = s.clock.now();
                    s.broker.handle_written(now, conn, n);
                    s.dispatch();
                }
                _ => {
                    s.lost(conn);
                    if let Some(c) = s.conns.get_mut(&conn) {
                        c.outbound.clear();
                    }
                    break;
                }
            }
        }
        coalesced.clear();
        coalesced.shrink_to(COALESCE_KEEP);
        // Handed back unless the connection is closing.
        let mut keep = Some(wr);
        {
            let mut s = shared.borrow_mut();
            let Some(c) = s.conns.get_mut(&conn) else {
                return;
            };
            if !(c.closing || closing) {
                c.wr = keep.take();
            }
        }
        if let Some(mut wr) = keep {
            let _ = wr.shutdown().await;
            if let Some(c) = shared.borrow_mut().conns.remove(&conn) {
                c.reader.notify_one();
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(parts: &[&'static [u8]]) -> VecDeque<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[test]
    fn consume_drops_whole_buffers_then_the_front_of_a_partly_written_one() {
        let mut q = queue(&[b"abc", b"defg", b"h"]);
        consume(&mut q, 5);
        assert_eq!(q, queue(&[b"fg", b"h"]));
        consume(&mut q, 2);
        assert_eq!(q, queue(&[b"h"]));
        consume(&mut q, 10);
        assert!(q.is_empty());
    }

    #[test]
    fn gather_writes_a_lone_buffer_as_it_is_and_coalesces_up_to_the_write_limit() {
        let mut scratch = Vec::new();
        let q = queue(&[b"only"]);
        assert_eq!(gather(&q, &mut scratch), b"only");
        assert!(scratch.is_empty(), "a lone buffer is not copied");
        let q = queue(&[b"ab", b"cd", b"e"]);
        assert_eq!(gather(&q, &mut scratch), b"abcde");

        let big = Bytes::from(vec![7u8; WRITE_MAX - 10]);
        let q: VecDeque<Bytes> = [big.clone(), Bytes::from(vec![8u8; 20]), big.clone()]
            .into_iter()
            .collect();
        assert_eq!(
            gather(&q, &mut scratch).len(),
            WRITE_MAX - 10,
            "stops before the limit"
        );
        let huge: VecDeque<Bytes> = [Bytes::from(vec![1u8; WRITE_MAX * 2]), big]
            .into_iter()
            .collect();
        assert_eq!(
            gather(&huge, &mut scratch).len(),
            WRITE_MAX * 2,
            "a buffer above the limit still goes whole"
        );
    }

    #[test]
    fn the_read_buffer_doubles_while_reads_fill_it_and_shrinks_once_they_stay_small() {
        let mut b = ReadBuf::new();
        assert_eq!(b.buf.len(), READ_MIN);
        let mut len = READ_MIN;
        while len < READ_MAX {
            b.fit(len);
            len *= 2;
            assert_eq!(b.buf.len(), len.min(READ_MAX));
        }
        b.fit(READ_MAX);
        assert_eq!(b.buf.len(), READ_MAX, "never above the maximum");
        // Small reads, interrupted by one that is not: the count starts again.
        for _ in 0..SHRINK_AFTER - 1 {
            b.fit(10);
        }
        b.fit(READ_MAX / 2);
        for _ in 0..SHRINK_AFTER - 1 {
            b.fit(10);
        }
        assert_eq!(b.buf.len(), READ_MAX);
        b.fit(10);
        assert_eq!(b.buf.len(), READ_MIN);
    }
}
