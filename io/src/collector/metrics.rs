//! A collector's numbers, shared by its sources (drops, detail lines, errors) and the
//! runtime (published, queue depth, tasks), and read into every heartbeat and HealthCheck
//! answer. Counters only: nothing here decides anything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use daemoneye_proto::pb::control as pbc;

use super::source::SourceHealth;

/// The collector's counters and lines.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    published: AtomicU64,
    dropped: AtomicU64,
    backpressure_waits: AtomicU64,
    queue_depth: AtomicU64,
    tasks_in_flight: AtomicU64,
    text: Mutex<Text>,
    /// Told when a detail line changes, so a heartbeat shows it at once.
    detail_changed: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
}

#[derive(Debug, Default)]
struct Text {
    last_error: String,
    /// Per source, by index: (name, detail, health).
    sources: Vec<(String, String, SourceHealth)>,
}

/// What the heartbeats say, at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Events published since start.
    pub events_published: u64,
    /// Events dropped since start.
    pub events_dropped: u64,
    /// Times a source's send waited at the backpressure threshold.
    pub backpressure_waits: u64,
    /// Events queued, batched or waiting for their PubAck.
    pub queue_depth: u64,
    /// Tasks being served.
    pub tasks_in_flight: u64,
    /// The last error reported, empty when none.
    pub last_error: String,
    /// The sources' detail lines, joined.
    pub detail: String,
    /// The worst of the sources' health.
    pub state: pbc::HealthState,
}

impl Metrics {
    pub(crate) fn new(source_names: impl IntoIterator<Item = String>) -> Self {
        let sources = source_names
            .into_iter()
            .map(|n| (n, String::new(), SourceHealth::Healthy))
            .collect();
        Self {
            text: Mutex::new(Text {
                last_error: String::new(),
                sources,
            }),
            ..Self::default()
        }
    }

    fn text(&self) -> std::sync::MutexGuard<'_, Text> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_backpressure_wait(&self) {
        self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_queue_depth(&self, n: u64) {
        self.queue_depth.store(n, Ordering::Relaxed);
    }

    pub(crate) fn task_started(&self) {
        self.tasks_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn task_ended(&self) {
        self.tasks_in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn set_last_error(&self, e: String) {
        self.text().last_error = e;
    }

    pub(crate) fn set_detail(&self, index: usize, detail: String) {
        let changed = match self.text().sources.get_mut(index) {
            Some(s) if s.1 != detail => {
                s.1 = detail;
                true
            }
            _ => false,
        };
        if changed
            && let Some(tx) = &*self
                .detail_changed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        {
            let _ = tx.send(());
        }
    }

    pub(crate) fn set_detail_notifier(&self, tx: tokio::sync::mpsc::UnboundedSender<()>) {
        *self
            .detail_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    pub(crate) fn set_health(&self, index: usize, health: SourceHealth) {
        let mut text = self.text();
        if let SourceHealth::Degraded(why) | SourceHealth::Unhealthy(why) = &health {
            text.last_error.clone_from(why);
        }
        if let Some(s) = text.sources.get_mut(index) {
            s.2 = health;
        }
    }

    /// The numbers now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let text = self.text();
        let named = text.sources.len() > 1;
        let detail = text
            .sources
            .iter()
            .filter(|(_, d, _)| !d.is_empty())
            .map(|(n, d, _)| {
                if named {
                    format!("{n}: {d}")
                } else {
                    d.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let state = text
            .sources
            .iter()
            .map(|(_, _, h)| match h {
                SourceHealth::Healthy => pbc::HealthState::Healthy,
                SourceHealth::Degraded(_) => pbc::HealthState::Degraded,
                SourceHealth::Unhealthy(_) => pbc::HealthState::Unhealthy,
            })
            .max_by_key(|s| *s as i32)
            .unwrap_or(pbc::HealthState::Healthy);
        MetricsSnapshot {
            events_published: self.published.load(Ordering::Relaxed),
            events_dropped: self.dropped.load(Ordering::Relaxed),
            backpressure_waits: self.backpressure_waits.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            tasks_in_flight: self.tasks_in_flight.load(Ordering::Relaxed),
            last_error: text.last_error.clone(),
            detail,
            state,
        }
    }

    /// A heartbeat with the numbers now (the registration fills in id and sequence).
    pub(crate) fn heartbeat(&self) -> pbc::Heartbeat {
        let s = self.snapshot();
        pbc::Heartbeat {
            state: s.state as i32,
            events_published: s.events_published,
            tasks_in_flight: s.tasks_in_flight,
            events_dropped: s.events_dropped,
            queue_depth: s.queue_depth,
            last_error: s.last_error,
            detail: s.detail,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_carries_the_counts_the_worst_health_and_every_detail() {
        let m = Metrics::new(["a".to_string(), "b".to_string()]);
        m.count_published(7);
        m.count_dropped(2);
        m.set_detail(0, "realtime (netlink)".into());
        m.set_detail(1, "scanning every 30s".into());
        m.set_health(1, SourceHealth::Degraded("netlink refused".into()));
        let hb = m.heartbeat();
        assert_eq!((hb.events_published, hb.events_dropped), (7, 2));
        assert_eq!(hb.state, pbc::HealthState::Degraded as i32);
        assert_eq!(hb.detail, "a: realtime (netlink); b: scanning every 30s");
        assert_eq!(hb.last_error, "netlink refused");
    }
}
