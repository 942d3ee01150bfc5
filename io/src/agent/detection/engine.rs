//! The detection thread's work, free of the bus: decode each process event, evaluate it
//! with the current [`RuleSet`], fold the matches ([`Folder`], the core's fold machine),
//! and turn the folder's raises and updates into `Alert` messages ready to publish.
//!
//! [`Engine`] is driven by one thread ([`spawn`]): the agent's runtime is a single thread
//! shared with the broker, and evaluation (Sigma matching, decoding, encoding) must not
//! take turns with routing. The thread takes [`Job`]s in order and answers on one channel
//! ([`Output`]), so that a batch's alerts and the fold updates that follow them are
//! published in the order they were decided.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::detect::fold::{FoldConfig, FoldOutput, Folder};
use daemoneye_core::topic::topics;
use daemoneye_proto::pb::bus::Correlation;
use daemoneye_proto::pb::control::{DetectionStatus, HealthState, RuleState};
use daemoneye_proto::pb::events::{Alert, ProcessEvent};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::detect::{ENGINE, RuleInfo, RuleSet, RuleSources};

/// Events whose observation is older than this when evaluated mean evaluation falls
/// behind (health Degraded).
pub const BEHIND_AFTER: Duration = Duration::from_secs(5);
/// ... and it has caught up once a batch is evaluated within this.
const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(1);
/// The thread looks at its health at least this often while idle.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// What the health report says of detection: `None` while it works, else why not. Cheap to
/// clone; all clones share the state.
#[derive(Debug, Clone, Default)]
pub struct DetectionHealth(Arc<Mutex<HealthParts>>);

#[derive(Debug, Clone, Default)]
struct HealthParts {
    refused: Option<String>,
    behind: Option<String>,
}

impl DetectionHealth {
    /// Why detection is degraded, if it is.
    pub fn problem(&self) -> Option<String> {
        let parts = self.0.lock().map(|p| p.clone()).unwrap_or_default();
        match (parts.refused, parts.behind) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a),
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        }
    }

    /// The state on the wire.
    pub fn state(&self) -> HealthState {
        if self.problem().is_some() {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        }
    }

    pub(super) fn set_refused(&self, why: Option<String>) {
        if let Ok(mut p) = self.0.lock() {
            p.refused = why;
        }
    }

    fn set_behind(&self, why: Option<String>) {
        if let Ok(mut p) = self.0.lock() {
            p.behind = why;
        }
    }

    fn is_behind(&self) -> bool {
        self.0.lock().is_ok_and(|p| p.behind.is_some())
    }
}

/// One event as the bus delivered it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Its topic.
    pub topic: String,
    /// Its payload (a `ProcessEvent`).
    pub payload: Bytes,
    /// Its correlation metadata.
    pub correlation: Option<Box<Correlation>>,
    /// Its publisher and sequence (QoS1), which make the alert id stable across a
    /// redelivery.
    pub publisher: String,
    /// See `publisher`.
    pub sequence: u64,
}

/// An alert ready to publish.
#[derive(Debug, Clone)]
pub struct AlertMessage {
    /// `alerts.<level>`.
    pub topic: String,
    /// The encoded `Alert`.
    pub payload: Bytes,
    /// The alert id as correlation id, the event's as parent and root.
    pub correlation: Correlation,
    /// The alert id.
    pub alert_id: String,
    /// Its count (1 for a raise).
    pub count: u64,
}

/// A match as the folder keeps it: what an alert is built from.
#[derive(Debug)]
struct Matched {
    rule: Arc<RuleInfo>,
    event: ProcessEvent,
    topic: String,
    correlation_id: String,
    root_id: String,
    alert_id: String,
}

/// Repeats of one rule on one (exe, argv) fold together.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FoldKey {
    rule: String,
    exe: String,
    argv: Vec<String>,
}

/// The detection engine's state: rules, folder, counters.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    sources: RuleSources,
    folder: Folder<Arc<FoldKey>, Arc<Matched>>,
    host: String,
    /// Makes the ids of alerts from unsequenced events unique to this run.
    run_nonce: u64,
    next_unsequenced: u64,
    loaded_ms: u64,
    events_evaluated: u64,
    malformed: u64,
    health: DetectionHealth,
}

impl Engine {
    /// An engine over `rules` (loaded from `sources` at `loaded_ms`), folding with `fold`,
    /// naming `host` in its alerts and reporting to `health`.
    pub fn new(
        rules: Arc<RuleSet>,
        sources: RuleSources,
        loaded_ms: u64,
        fold: FoldConfig,
        host: String,
        health: DetectionHealth,
    ) -> Engine {
        let run_nonce = crate::clock::unix_ms() ^ (u64::from(std::process::id()) << 40);
        let engine = Engine {
            rules,
            sources,
            folder: Folder::new(fold),
            host,
            run_nonce,
            next_unsequenced: 0,
            loaded_ms,
            events_evaluated: 0,
            malformed: 0,
            health,
        };
        engine.report_refused();
        engine
    }

    /// Puts `rules` (loaded at `loaded_ms`) in force for the next events. Open fold
    /// windows go on: a rule kept across the reload keeps folding.
    pub fn swap(&mut self, rules: Arc<RuleSet>, loaded_ms: u64) {
        self.rules = rules;
        self.loaded_ms = loaded_ms;
        self.report_refused();
    }

    /// The rules in force.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Evaluates `batch` at `now` (wall clock `now_ms`); returns the alerts it raised, in
    /// order (fold updates that fell due come first).
    pub fn evaluate(&mut self, batch: &[Incoming], now: Instant, now_ms: u64) -> Vec<AlertMessage> {
        let mut lag_ms = 0;
        for incoming in batch {
            let event = match ProcessEvent::decode(incoming.payload.clone()) {
                Ok(e) => e,
                Err(e) => {
                    self.malformed += 1;
                    tracing::debug!(topic = %incoming.topic, error = %e, "detection: not a process event");
                    continue;
                }
            };
            self.events_evaluated += 1;
            if event.observed_at_ms > 0 {
                lag_ms = lag_ms.max(now_ms.saturating_sub(event.observed_at_ms));
            }
            let matched = self.rules.evaluate(&event);
            if matched.is_empty() {
                continue;
            }
            let time_ms = if event.observed_at_ms > 0 {
                event.observed_at_ms
            } else {
                now_ms
            };
            let (exe, argv) = event
                .process
                .as_ref()
                .map(|p| (p.exe.clone(), p.cmdline.clone()))
                .unwrap_or_default();
            let (correlation_id, root_id) = match &incoming.correlation {
                Some(c) if !c.root_id.is_empty() => (c.correlation_id.clone(), c.root_id.clone()),
                Some(c) => (c.correlation_id.clone(), c.correlation_id.clone()),
                None => (String::new(), String::new()),
            };
            for rule in matched {
                let key = Arc::new(FoldKey {
                    rule: rule.id.clone(),
                    exe: exe.clone(),
                    argv: argv.clone(),
                });
                let alert_id = self.alert_id(incoming, &rule.id);
                let m = Arc::new(Matched {
                    rule,
                    event: event.clone(),
                    topic: incoming.topic.clone(),
                    correlation_id: correlation_id.clone(),
                    root_id: root_id.clone(),
                    alert_id,
                });
                self.folder.handle_match(now, key, m, time_ms);
            }
        }
        let lag = Duration::from_millis(lag_ms);
        if lag > BEHIND_AFTER {
            if !self.health.is_behind() {
                tracing::warn!(lag_ms, "detection falls behind the events");
            }
            self.health.set_behind(Some(format!(
                "detection falls behind: events evaluated {:.1} s after they were observed",
                lag.as_secs_f64()
            )));
        } else if lag <= CAUGHT_UP_WITHIN && self.health.is_behind() {
            tracing::info!("detection caught up");
            self.health.set_behind(None);
        }
        self.drain()
    }

    /// Time passed: the fold updates whose windows ended.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<AlertMessage> {
        self.folder.handle_timeout(now);
        self.drain()
    }

    /// Nothing to do for a while: evaluation is not behind.
    pub fn idle(&mut self) {
        if self.health.is_behind() {
            tracing::info!("detection caught up");
            self.health.set_behind(None);
        }
    }

    /// Closes every fold window now (shutting down): their counts go out.
    pub fn flush(&mut self, now: Instant) -> Vec<AlertMessage> {
        self.folder.flush(now);
        self.drain()
    }

    /// When the next fold window ends.
    pub fn deadline(&self) -> Option<Instant> {
        self.folder.poll_timeout()
    }

    /// The status `detection status` shows.
    pub fn status(&self) -> DetectionStatus {
        let stats = self.folder.stats();
        DetectionStatus {
            enabled: true,
            rules: self.rules.statuses(),
            events_evaluated: self.events_evaluated,
            alerts_raised: stats.raised,
            matches_folded: stats.folded,
            loaded_ms: self.loaded_ms,
            directories: self
                .sources
                .directories
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            health: self.health.state() as i32,
            engine: ENGINE.to_string(),
        }
    }

    fn report_refused(&self) {
        let statuses = self.rules.statuses();
        let refused: Vec<_> = statuses
            .iter()
            .filter(|s| s.state == RuleState::Refused as i32)
            .collect();
        self.health.set_refused(refused.first().map(|first| {
            let more = match refused.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            format!("rule file refused: {}: {}{more}", first.file, first.reason)
        }));
    }

    /// Stable across a redelivery of the same event (publisher, sequence), else unique to
    /// this run.
    fn alert_id(&mut self, incoming: &Incoming, rule_id: &str) -> String {
        let mut h = FNV_OFFSET;
        if incoming.sequence != 0 && !incoming.publisher.is_empty() {
            h = fnv(h, incoming.publisher.as_bytes());
            h = fnv(h, &incoming.sequence.to_be_bytes());
        } else {
            self.next_unsequenced += 1;
            h = fnv(h, &self.run_nonce.to_be_bytes());
            h = fnv(h, &self.next_unsequenced.to_be_bytes());
        }
        h = fnv(h, rule_id.as_bytes());
        format!("{h:016x}")
    }

    fn drain(&mut self) -> Vec<AlertMessage> {
        let mut out = Vec::new();
        while let Some(o) = self.folder.poll_output() {
            out.push(match o {
                FoldOutput::Raise { first, time_ms, .. } => {
                    self.message(&first, 1, time_ms, time_ms, false)
                }
                FoldOutput::Update {
                    first,
                    count,
                    first_ms,
                    last_ms,
                    ..
                } => self.message(&first, count, first_ms, last_ms, true),
            });
        }
        out
    }

    fn message(
        &self,
        m: &Matched,
        count: u64,
        first_ms: u64,
        last_ms: u64,
        update: bool,
    ) -> AlertMessage {
        let rule = &m.rule;
        let alert = Alert {
            alert_id: m.alert_id.clone(),
            rule_id: rule.id.clone(),
            title: rule.title.clone(),
            level: rule.level.as_str().to_string(),
            tags: rule.tags.clone(),
            host: self.host.clone(),
            time_ms: first_ms,
            event: Some(m.event.clone()),
            event_topic: m.topic.clone(),
            event_correlation_id: m.root_id.clone(),
            count,
            last_ms,
            update,
            rule_file: rule.file.clone(),
            description: rule.description.clone(),
            enrichment: Vec::new(),
            enriched: false,
        };
        AlertMessage {
            topic: topics::alert(rule.level.as_str()),
            payload: Bytes::from(alert.encode_to_vec()),
            correlation: Correlation {
                correlation_id: m.alert_id.clone(),
                parent_id: m.correlation_id.clone(),
                root_id: m.root_id.clone(),
                workflow_stage: "detection".into(),
                source_process: "daemoneye-agent".into(),
                ..Default::default()
            },
            alert_id: m.alert_id.clone(),
            count,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the thread is asked to do.
#[derive(Debug)]
pub enum Job {
    /// Evaluate a batch: its alerts come back as one [`Output::Evaluated`].
    Evaluate(Vec<Incoming>),
    /// Put new rules in force; answer with the status.
    Swap {
        /// The rules.
        rules: Arc<RuleSet>,
        /// When they were loaded (Unix ms).
        loaded_ms: u64,
        /// The status after the swap.
        reply: oneshot::Sender<DetectionStatus>,
    },
    /// Answer with the status.
    Status(oneshot::Sender<DetectionStatus>),
    /// Close every fold window; answer once their updates are sent.
    Flush(oneshot::Sender<()>),
}

/// What the thread answers, in the order it decided it.
#[derive(Debug)]
pub enum Output {
    /// One per [`Job::Evaluate`], in order: publish these before acking the batch.
    Evaluated(Vec<AlertMessage>),
    /// Fold updates (windows that ended): publish them.
    Updates(Vec<AlertMessage>),
}

/// Starts the detection thread: it loads the rules `sources` name (refused files are
/// logged, one line each), then serves jobs until `jobs` closes.
pub fn spawn(
    sources: RuleSources,
    fold: FoldConfig,
    health: DetectionHealth,
    outputs: mpsc::UnboundedSender<Output>,
) -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (jobs, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("detection".into())
        .spawn(move || {
            // The loader logs the outcome, and each refused file in one line.
            let rules = Arc::new(RuleSet::load(&sources));
            let loaded_ms = crate::clock::unix_ms();
            let host = crate::host::host().id.clone();
            let mut engine = Engine::new(rules, sources, loaded_ms, fold, host, health);
            run(&mut engine, &rx, &outputs);
        })?;
    Ok(jobs)
}

fn run(
    engine: &mut Engine,
    jobs: &std::sync::mpsc::Receiver<Job>,
    outputs: &mpsc::UnboundedSender<Output>,
) {
    let origin = std::time::Instant::now();
    let now =
        || Instant::from_nanos(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let send_updates = |updates: Vec<AlertMessage>| {
        if !updates.is_empty() {
            let _ = outputs.send(Output::Updates(updates));
        }
    };
    let mut last_job = std::time::Instant::now();
    loop {
        let wait = engine
            .deadline()
            .map_or(IDLE_TICK, |d| d.saturating_since(now()).min(IDLE_TICK));
        let job = jobs.recv_timeout(wait);
        if job.is_ok() {
            last_job = std::time::Instant::now();
        }
        match job {
            Ok(Job::Evaluate(batch)) => {
                let alerts = engine.evaluate(&batch, now(), crate::clock::unix_ms());
                if outputs.send(Output::Evaluated(alerts)).is_err() {
                    return;
                }
            }
            Ok(Job::Swap {
                rules,
                loaded_ms,
                reply,
            }) => {
                engine.swap(rules, loaded_ms);
                let _ = reply.send(engine.status());
            }
            Ok(Job::Status(reply)) => {
                let _ = reply.send(engine.status());
            }
            Ok(Job::Flush(reply)) => {
                send_updates(engine.flush(now()));
                let _ = reply.send(());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if last_job.elapsed() >= IDLE_TICK {
                    engine.idle();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Under a steady load the windows still end on time.
        send_updates(engine.handle_timeout(now()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn engine(dir: &std::path::Path, rule: &str) -> Engine {
        std::fs::write(dir.join("r.yml"), rule).unwrap();
        let sources = RuleSources {
            builtin: false,
            directories: vec![dir.to_path_buf()],
        };
        let rules = Arc::new(RuleSet::load(&sources));
        Engine::new(
            rules,
            sources,
            1,
            FoldConfig::new(Duration::from_secs(60)),
            "host-1".into(),
            DetectionHealth::default(),
        )
    }

    const RULE: &str = "title: Marker\nid: r-1\nlevel: high\ntags: [attack.t1059]\n\
        logsource:\n  product: linux\n  category: process_creation\n\
        detection:\n  sel:\n    CommandLine|contains: MARK\n  condition: sel\n";

    fn incoming(pid: u32, argv: &str, sequence: u64) -> Incoming {
        let event = ProcessEvent {
            kind: daemoneye_proto::pb::events::ProcessEventKind::New as i32,
            process: Some(daemoneye_proto::pb::events::ProcessInfo {
                pid,
                exe: "/usr/bin/dash".into(),
                cmdline: argv.split(' ').map(String::from).collect(),
                ..Default::default()
            }),
            observed_at_ms: 5_000,
            ..Default::default()
        };
        Incoming {
            topic: topics::PROCESS_NEW.into(),
            payload: Bytes::from(event.encode_to_vec()),
            correlation: Some(Box::new(Correlation {
                correlation_id: "procmond/batch/7".into(),
                ..Default::default()
            })),
            publisher: "procmond".into(),
            sequence,
        }
    }

    #[test]
    fn a_match_raises_an_alert_tied_to_its_event_and_repeats_fold_into_its_update() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path(), RULE);
        let t = Instant::from_nanos(1);
        let out = e.evaluate(
            &[
                incoming(10, "sh -c MARK", 1),
                incoming(11, "sh -c benign", 2),
            ],
            t,
            9_000,
        );
        assert_eq!(out.len(), 1);
        let raised = &out[0];
        assert_eq!(raised.topic, "alerts.high");
        let alert = Alert::decode(raised.payload.clone()).unwrap();
        assert_eq!(
            (
                alert.rule_id.as_str(),
                alert.count,
                alert.update,
                alert.time_ms
            ),
            ("r-1", 1, false, 5_000)
        );
        assert_eq!(alert.event.unwrap().process.unwrap().pid, 10);
        assert_eq!(alert.host, "host-1");
        assert_eq!(alert.event_correlation_id, "procmond/batch/7");
        assert_eq!(raised.correlation.correlation_id, alert.alert_id);
        assert_eq!(raised.correlation.parent_id, "procmond/batch/7");
        // The same event again (a redelivery after a crash) gets the same id.
        let mut again = engine(dir.path(), RULE);
        let out2 = again.evaluate(&[incoming(10, "sh -c MARK", 1)], t, 9_000);
        assert_eq!(out2[0].alert_id, raised.alert_id);
        // Repeats only count; the flush publishes the final count under the same id.
        assert!(
            e.evaluate(&[incoming(12, "sh -c MARK", 3)], t, 9_000)
                .is_empty()
        );
        assert!(
            e.evaluate(&[incoming(13, "sh -c MARK", 4)], t, 9_000)
                .is_empty()
        );
        let updates = e.flush(t);
        assert_eq!(updates.len(), 1);
        let update = Alert::decode(updates[0].payload.clone()).unwrap();
        assert_eq!((update.count, update.update), (3, true));
        assert_eq!(update.alert_id, raised.alert_id);
        let status = e.status();
        assert_eq!(
            (
                status.events_evaluated,
                status.alerts_raised,
                status.matches_folded
            ),
            (4, 1, 2)
        );
        assert_eq!(status.health, HealthState::Healthy as i32);
    }

    #[test]
    fn a_refused_rule_file_or_a_lag_degrades_the_health_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = engine(dir.path(), "title: [unclosed\n");
        let problem = e.health.problem().expect("refused");
        assert!(problem.contains("r.yml"), "{problem}");
        let dir2 = tempfile::tempdir().unwrap();
        let mut fine = engine(dir2.path(), RULE);
        assert_eq!(fine.health.problem(), None);
        // Evaluated 10 s after it was observed: behind; then caught up.
        fine.evaluate(&[incoming(1, "x", 1)], Instant::ZERO, 15_000);
        assert!(fine.health.problem().is_some_and(|p| p.contains("behind")));
        fine.evaluate(&[incoming(1, "x", 2)], Instant::ZERO, 5_100);
        assert_eq!(fine.health.problem(), None);
        e.idle();
    }
}
