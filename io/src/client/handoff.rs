//! The handoff between a client's callers and its connection's writer task: callers encode
//! frames into the shared session (under its mutex) and wake the writer; the writer takes
//! what is encoded, writes it, and wakes callers waiting for room; closing lets the writer
//! flush everything encoded before it, and the closer waits until it has.
//!
//! The rules that make it free of lost wake-ups: the writer is woken with `notify_one`,
//! which stores a permit when the writer is busy, so bytes encoded while it writes are
//! seen on its next turn; a caller waiting for room creates its `drained` waiter *before*
//! checking for room, and the writer wakes them all with `notify_waiters` after each
//! write. The loom tests below explore every interleaving of this code.

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::sync::{Mutex, Notify};

/// The writer's next step, decided under the caller's lock.
#[derive(Debug)]
pub(crate) enum Next<I> {
    /// Write these bytes.
    Write(Bytes),
    /// Nothing to write and closing: stop.
    Stop,
    /// Nothing to write: wait for a wake-up or for `I` (a deadline) to fire.
    Idle(I),
}

/// The signals of one client.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// Wakes the writer.
    wake: Notify,
    /// Signalled after every write, for callers waiting for room.
    drained: Notify,
    /// Set once the connection task is over (for good).
    finished: Mutex<bool>,
    finished_signal: Notify,
}

impl Handoff {
    pub(crate) fn new() -> Self {
        Self {
            wake: Notify::new(),
            drained: Notify::new(),
            finished: Mutex::new(false),
            finished_signal: Notify::new(),
        }
    }

    /// Waits until `has_room()` holds, waking the writer while it does not.
    pub(crate) async fn wait_for_room(&self, has_room: impl Fn() -> bool) {
        loop {
            let drained = self.drained.notified();
            if has_room() {
                return;
            }
            self.wake.notify_one();
            drained.await;
        }
    }

    /// Something was encoded: the writer must look.
    pub(crate) fn encoded(&self) {
        self.wake.notify_one();
    }

    /// The writer task: runs until `next` says Stop (Ok) or a write fails (Err).
    pub(crate) async fn run_writer<I, W, S, F>(
        &self,
        mut next: impl FnMut() -> Next<I>,
        wr: &mut W,
        mut idle: S,
    ) -> std::io::Result<()>
    where
        W: AsyncWrite + Unpin,
        S: FnMut(I) -> F,
        F: Future<Output = ()>,
    {
        loop {
            match next() {
                Next::Write(bytes) => {
                    wr.write_all(&bytes).await?;
                    self.drained.notify_waiters();
                }
                Next::Stop => return Ok(()),
                Next::Idle(deadline) => {
                    let timer = idle(deadline);
                    tokio::select! {
                        biased;
                        _ = self.wake.notified() => {}
                        _ = timer => {}
                    }
                }
            }
        }
    }

    /// The connection task is over for good: release whoever waits in
    /// [`wait_finished`](Self::wait_finished).
    pub(crate) fn finish(&self) {
        *self.finished.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.finished_signal.notify_waiters();
        // Callers waiting for room will never get it: let them see the closed state.
        self.drained.notify_waiters();
    }

    /// Waits until [`finish`](Self::finish) has been called.
    pub(crate) async fn wait_finished(&self) {
        let signal = self.finished_signal.notified();
        if *self.finished.lock().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        signal.await;
    }
}

#[cfg(all(test, daemoneye_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, AtomicU64, Ordering};
    use loom::future::block_on;

    /// The shared state a client keeps under its mutex, reduced to what the handoff sees.
    #[derive(Debug, Default)]
    struct Shared {
        encoded: Vec<u8>,
        closing: bool,
    }

    const ROOM: usize = 1;

    fn writer(h: Arc<Handoff>, shared: Arc<Mutex<Shared>>, socket: Arc<Mutex<Vec<u8>>>) {
        let next = || {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            if !s.encoded.is_empty() {
                Next::Write(Bytes::from(std::mem::take(&mut s.encoded)))
            } else if s.closing {
                Next::Stop
            } else {
                Next::Idle(())
            }
        };
        // No timers in the model: idling waits for a wake-up only.
        let idle = |()| std::future::pending::<()>();
        let result = block_on(h.run_writer(next, &mut Socket(socket), idle));
        assert!(result.is_ok());
        h.finish();
    }

    /// A socket that takes everything at once.
    struct Socket(Arc<Mutex<Vec<u8>>>);

    impl AsyncWrite for Socket {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn produce(h: &Handoff, shared: &Mutex<Shared>, bytes: &[u8]) {
        for &b in bytes {
            block_on(h.wait_for_room(|| {
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .encoded
                    .len()
                    < ROOM
            }));
            shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .encoded
                .push(b);
            h.encoded();
        }
    }

    fn close(h: &Handoff, shared: &Mutex<Shared>) {
        shared.lock().unwrap_or_else(|p| p.into_inner()).closing = true;
        h.encoded();
        block_on(h.wait_finished());
    }

    /// A handoff, the shared state, a socket, and the writer running on its own thread.
    struct Client {
        h: Arc<Handoff>,
        shared: Arc<Mutex<Shared>>,
        socket: Arc<Mutex<Vec<u8>>>,
        writer: loom::thread::JoinHandle<()>,
    }

    fn client() -> Client {
        let h = Arc::new(Handoff::new());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let socket = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let (h, shared, socket) = (h.clone(), shared.clone(), socket.clone());
            loom::thread::spawn(move || writer(h, shared, socket))
        };
        Client {
            h,
            shared,
            socket,
            writer,
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.check(f);
    }

    /// Two callers fill a send buffer with room for one byte, then one closes: nobody
    /// waits forever (loom reports a deadlock otherwise), close returns only after the
    /// writer has written everything encoded before it, and each caller's bytes keep their
    /// order.
    #[test]
    fn loom_callers_and_writer_never_lose_a_wakeup_and_close_drains() {
        model(|| {
            let Client {
                h,
                shared,
                socket,
                writer,
            } = client();
            let other = {
                let (h, shared) = (h.clone(), shared.clone());
                loom::thread::spawn(move || produce(&h, &shared, &[10]))
            };
            produce(&h, &shared, &[1, 2]);
            other.join().expect("caller");
            close(&h, &shared);
            let written = socket.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mine: Vec<u8> = written.iter().copied().filter(|b| *b < 10).collect();
            let theirs: Vec<u8> = written.iter().copied().filter(|b| *b >= 10).collect();
            assert_eq!(mine, [1, 2]);
            assert_eq!(theirs, [10]);
            writer.join().expect("writer");
        });
    }

    /// A close racing a caller: whatever the caller encoded before close is written, and
    /// close does not return before the writer has stopped.
    #[test]
    fn loom_close_waits_for_the_writer_to_stop() {
        model(|| {
            let Client {
                h,
                shared,
                socket,
                writer,
            } = client();
            produce(&h, &shared, &[7]);
            close(&h, &shared);
            assert!(*h.finished.lock().unwrap_or_else(|p| p.into_inner()));
            assert_eq!(*socket.lock().unwrap_or_else(|p| p.into_inner()), [7]);
            writer.join().expect("writer");
        });
    }

    /// Reply topics come from a relaxed counter shared by every clone of a client: two
    /// concurrent requests never get the same number.
    #[test]
    fn loom_reply_counter_hands_out_distinct_numbers() {
        model(|| {
            let counter = Arc::new(AtomicU64::new(0));
            let t = {
                let counter = counter.clone();
                loom::thread::spawn(move || counter.fetch_add(1, Ordering::Relaxed))
            };
            let a = counter.fetch_add(1, Ordering::Relaxed);
            let b = t.join().expect("thread");
            assert_ne!(a, b);
            assert_eq!(counter.load(Ordering::Relaxed), 2);
        });
    }
}
