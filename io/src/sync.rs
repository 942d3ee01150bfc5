//! The synchronization primitives shared across tasks: std's and tokio's normally, loom's
//! models (and a model of tokio's `Notify`) under `--cfg daemoneye_loom`, so that the loom
//! tests explore every interleaving of the code production runs.

#[cfg(not(daemoneye_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(daemoneye_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(daemoneye_loom))]
pub(crate) use tokio::sync::Notify;

#[cfg(daemoneye_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(daemoneye_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(daemoneye_loom)]
pub(crate) use model::Notify;

/// A model of `tokio::sync::Notify` on loom's primitives, with the semantics the client
/// relies on: `notify_one` wakes one polled waiter or, with none, stores one permit that the
/// next waiter consumes; `notify_waiters` wakes every `Notified` created before the call,
/// polled or not, and stores nothing; a dropped `Notified` that had been picked by
/// `notify_one` passes the notification on.
#[cfg(daemoneye_loom)]
mod model {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use loom::sync::Mutex;

    #[derive(Debug, Default)]
    struct State {
        permit: bool,
        epoch: u64,
        next_id: u64,
        waiters: Vec<(u64, Waker, bool)>,
    }

    #[derive(Debug, Default)]
    pub(crate) struct Notify {
        state: Mutex<State>,
    }

    impl State {
        fn notify_one(&mut self) {
            match self.waiters.iter_mut().find(|w| !w.2) {
                Some(w) => {
                    w.2 = true;
                    w.1.wake_by_ref();
                }
                None => self.permit = true,
            }
        }
    }

    impl Notify {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        fn lock(&self) -> loom::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        pub(crate) fn notified(&self) -> Notified<'_> {
            Notified {
                notify: self,
                epoch: self.lock().epoch,
                id: None,
            }
        }

        pub(crate) fn notify_one(&self) {
            self.lock().notify_one();
        }

        pub(crate) fn notify_waiters(&self) {
            let mut s = self.lock();
            s.epoch += 1;
            for w in &s.waiters {
                w.1.wake_by_ref();
            }
        }
    }

    #[derive(Debug)]
    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        epoch: u64,
        id: Option<u64>,
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut s = self.notify.lock();
            let mine = self.id;
            let picked = mine.and_then(|id| s.waiters.iter().position(|w| w.0 == id));
            if s.epoch != self.epoch || picked.is_some_and(|i| s.waiters[i].2) {
                if let Some(i) = picked {
                    s.waiters.remove(i);
                }
                drop(s);
                self.id = None;
                // Resolved: never wait again (and a drop passes nothing on).
                self.epoch = u64::MAX;
                return Poll::Ready(());
            }
            if mine.is_none() && s.permit {
                s.permit = false;
                drop(s);
                self.epoch = u64::MAX;
                return Poll::Ready(());
            }
            match picked {
                Some(i) => s.waiters[i].1 = cx.waker().clone(),
                None => {
                    let id = s.next_id;
                    s.next_id += 1;
                    s.waiters.push((id, cx.waker().clone(), false));
                    drop(s);
                    self.id = Some(id);
                }
            }
            Poll::Pending
        }
    }

    impl Drop for Notified<'_> {
        fn drop(&mut self) {
            let Some(id) = self.id else { return };
            let mut s = self.notify.lock();
            if let Some(i) = s.waiters.iter().position(|w| w.0 == id) {
                let (_, _, picked) = s.waiters.remove(i);
                if picked {
                    s.notify_one();
                }
            }
        }
    }
}
