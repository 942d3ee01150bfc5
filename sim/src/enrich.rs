//! The enrichment machine's simulation (`daemoneye-sim --enrich`): the real
//! [`Enricher`] fed by a seeded world of alerts and collectors, in virtual time, with its
//! own deadlines, and the invariants checked after every step.
//!
//! The world publishes alerts (some below the level, some updates, some redelivered as
//! QoS1 redelivers them) and answers each task the machine asks for with a seed-chosen
//! fate: a result after a latency that may pass the deadline, a result delivered twice,
//! a failure from the coordinator, or nothing at all; a collector crash loses every task
//! in flight. The seed also chooses the deadline, the pending bound and the rates (swarm
//! style). A run is a safety phase (`steps`), then liveness: no more alerts, time runs
//! past every deadline, and every alert taken must be out.
//!
//! Invariants: `enrich-once` (no alert published twice), `enrich-kinds` (every kind asked
//! present exactly once, in order), `enrich-no-late-arrival` (an entry is arrived only
//! when its first answer was a result delivered before the alert's deadline, and then it
//! is), `enrich-on-time` (published no later than its deadline and no earlier than its
//! last answer or deadline), `enrich-bounded` (the pending bound), `enrich-counted` (every
//! answer not used is counted late, duplicate or unknown) and `enrich-liveness` (every
//! alert taken is published).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::detect::enrich::{Admission, Answer, EnrichConfig, Enricher, Output};
use daemoneye_core::rng::SeededRng;
use daemoneye_proto::pb::events::{Alert, ProcessEvent, ProcessInfo, ProcessTaskResult};

use crate::link::chance;
use crate::report::{EventLog, Violation};

const KINDS: [&str; 3] = ["hash", "ancestry", "open_files"];
const LEVELS: [&str; 5] = ["informational", "low", "medium", "high", "critical"];

/// What to run.
#[derive(Debug, Clone)]
pub struct EnrichSimConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Steps (milliseconds of virtual time) of the safety phase.
    pub steps: u64,
    /// Print every event.
    pub verbose: bool,
}

impl EnrichSimConfig {
    /// Seed `seed`, 5,000 steps, quiet.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: 5000,
            verbose: false,
        }
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone, Default)]
pub struct EnrichOutcome {
    /// Steps taken (both phases).
    pub steps: u64,
    /// Hash of the whole event trace: equal for equal seeds.
    pub trace: u64,
    /// Alerts the world published.
    pub alerts: u64,
    /// Enriched alerts published.
    pub published: u64,
    /// Published with every kind arrived.
    pub complete: u64,
    /// Published at the deadline with a kind missing.
    pub timed_out: u64,
    /// Published at once at the pending bound.
    pub full: u64,
    /// Answers dropped as late.
    pub late: u64,
    /// Answers dropped as duplicates.
    pub duplicates: u64,
    /// Collector crashes.
    pub crashes: u64,
}

/// The seed's choices.
#[derive(Debug, Clone)]
struct Swarm {
    timeout_ms: u64,
    max_pending: usize,
    alert_rate: f64,
    redeliver: f64,
    /// Latency of a result: up to this many ms (may pass the deadline).
    latency_ms: u64,
    lost: f64,
    failed: f64,
    duplicate: f64,
    crash: f64,
    min_level: usize,
}

impl Swarm {
    fn pick(rng: &mut SeededRng) -> Self {
        let timeout_ms = 50 + rng.below(400);
        Self {
            timeout_ms,
            max_pending: 1 + rng.below(40) as usize,
            alert_rate: [0.01, 0.05, 0.2][rng.below(3) as usize],
            redeliver: [0.0, 0.05, 0.2][rng.below(3) as usize],
            latency_ms: timeout_ms / 2 + rng.below(timeout_ms * 2),
            lost: [0.0, 0.05, 0.3][rng.below(3) as usize],
            failed: [0.0, 0.05, 0.2][rng.below(3) as usize],
            duplicate: [0.0, 0.1, 0.3][rng.below(3) as usize],
            crash: [0.0, 0.0005, 0.003][rng.below(3) as usize],
            min_level: 2 + rng.below(3) as usize,
        }
    }
}

/// An answer on its way to the machine.
#[derive(Debug, Clone)]
struct InFlight {
    at: u64,
    alert_id: String,
    kind: String,
    answer: Answer,
}

/// The reference's view of one alert taken.
#[derive(Debug, Default)]
struct Taken {
    deadline: u64,
    /// First answer per kind delivered before the deadline: arrived or not.
    first: BTreeMap<String, bool>,
    published: bool,
}

struct Sim {
    rng: SeededRng,
    swarm: Swarm,
    machine: Enricher,
    events: EventLog,
    now: u64,
    step: u64,
    next_alert: u64,
    sent: Vec<Alert>,
    in_flight: Vec<InFlight>,
    taken: BTreeMap<String, Taken>,
    published_ids: BTreeSet<String>,
    answers: u64,
    used: u64,
    outcome: EnrichOutcome,
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

/// Runs one seed of the enrichment simulation.
pub fn run_enrich(cfg: &EnrichSimConfig) -> Result<EnrichOutcome, Violation> {
    let mut rng = SeededRng::new(cfg.seed ^ 0x656e_7269_6368_0000);
    let swarm = Swarm::pick(&mut rng);
    let mut events = EventLog::new(cfg.verbose, cfg.seed, " --enrich");
    if cfg.verbose {
        println!("seed={} swarm: {swarm:?}", cfg.seed);
    }
    events.record(0, "0", format!("swarm {swarm:?}"));
    let mut config = EnrichConfig::new(
        &LEVELS[swarm.min_level..],
        &KINDS,
        Duration::from_millis(swarm.timeout_ms),
    );
    config.max_pending = swarm.max_pending;
    let mut sim = Sim {
        rng,
        machine: Enricher::new(config),
        swarm,
        events,
        now: 0,
        step: 0,
        next_alert: 0,
        sent: Vec::new(),
        in_flight: Vec::new(),
        taken: BTreeMap::new(),
        published_ids: BTreeSet::new(),
        answers: 0,
        used: 0,
        outcome: EnrichOutcome::default(),
    };
    while sim.step < cfg.steps {
        sim.world_step(true)?;
    }
    // Liveness: no more alerts; answers still come, time passes every deadline.
    let end = sim.now + sim.swarm.timeout_ms * 4 + sim.swarm.latency_ms + 10;
    while sim.now < end {
        sim.world_step(false)?;
    }
    if let Some((id, _)) = sim.taken.iter().find(|(_, t)| !t.published) {
        return Err(sim.violation(
            "enrich-liveness",
            format!("alert {id} was taken and never published"),
        ));
    }
    let s = sim.machine.stats();
    if s.late + s.duplicates + s.unknown + sim.used != sim.answers {
        return Err(sim.violation(
            "enrich-counted",
            format!(
                "{} answers, {} used, counted late {} duplicate {} unknown {}",
                sim.answers, sim.used, s.late, s.duplicates, s.unknown
            ),
        ));
    }
    let mut outcome = sim.outcome;
    outcome.steps = sim.step;
    outcome.trace = sim.events.hash;
    outcome.published = s.published;
    outcome.complete = s.complete;
    outcome.timed_out = s.timed_out;
    outcome.full = s.full;
    outcome.late = s.late;
    outcome.duplicates = s.duplicates;
    Ok(outcome)
}

impl Sim {
    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }

    fn record(&mut self, event: String) {
        let stamp = format!("{}ms", self.now);
        self.events.record(self.step, &stamp, event);
    }

    /// Deadlines due now, in the reference (every machine input applies them first).
    fn due(&mut self) {
        let now = self.now;
        for t in self.taken.values_mut() {
            if !t.published && t.deadline <= now {
                t.published = true;
            }
        }
    }

    fn world_step(&mut self, alerts: bool) -> Result<(), Violation> {
        self.step += 1;
        self.now += 1;
        if alerts && chance(&mut self.rng, self.swarm.alert_rate) {
            self.publish_alert()?;
        }
        if alerts && !self.sent.is_empty() && chance(&mut self.rng, self.swarm.redeliver * 0.1) {
            let i = self.rng.below(self.sent.len() as u64) as usize;
            let again = self.sent[i].clone();
            self.record(format!("redeliver {}", again.alert_id));
            self.take(again)?;
        }
        if chance(&mut self.rng, self.swarm.crash) {
            let lost = self.in_flight.len();
            self.in_flight.clear();
            self.outcome.crashes += 1;
            self.record(format!("collector crash: {lost} answers lost"));
        }
        self.deliver_due()?;
        if let Some((deadline, _)) = self.machine.poll_timeout()
            && deadline <= at(self.now)
        {
            self.due();
            self.machine.handle_timeout(at(self.now));
            self.drain()?;
        }
        self.check()
    }

    fn publish_alert(&mut self) -> Result<(), Violation> {
        let n = self.next_alert;
        self.next_alert += 1;
        self.outcome.alerts += 1;
        let level = LEVELS[self.rng.below(LEVELS.len() as u64) as usize];
        let alert = Alert {
            alert_id: format!("alert-{n}"),
            level: level.into(),
            update: chance(&mut self.rng, 0.05),
            event: Some(ProcessEvent {
                process: Some(ProcessInfo {
                    pid: 100 + n as u32,
                    start_ticks: 1000 + n,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.record(format!(
            "alert {} {level} update={}",
            alert.alert_id, alert.update
        ));
        self.sent.push(alert.clone());
        self.take(alert)
    }

    fn take(&mut self, alert: Alert) -> Result<(), Violation> {
        self.due();
        let id = alert.alert_id.clone();
        let wanted =
            !alert.update && LEVELS[self.swarm.min_level..].contains(&alert.level.as_str());
        let admission = self.machine.handle_alert(at(self.now), alert);
        self.record(format!("{id}: {admission:?}"));
        let expected = match (wanted, self.taken.contains_key(&id)) {
            (false, _) => Admission::Ignored,
            (true, true) => Admission::Repeat,
            (true, false) => {
                let waiting = self.taken.values().filter(|t| !t.published).count();
                let full = waiting >= self.swarm.max_pending;
                self.taken.insert(
                    id.clone(),
                    Taken {
                        deadline: self.now + if full { 0 } else { self.swarm.timeout_ms },
                        published: full,
                        ..Default::default()
                    },
                );
                if full {
                    Admission::Full
                } else {
                    Admission::Waiting
                }
            }
        };
        if admission != expected {
            return Err(self.violation(
                "enrich-once",
                format!("{id}: admitted {admission:?}, expected {expected:?}"),
            ));
        }
        self.drain()
    }

    fn deliver_due(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|f| f.at <= now);
        self.in_flight = later;
        for f in due {
            self.due();
            self.answers += 1;
            let arrived = matches!(f.answer, Answer::Result { .. });
            if let Some(t) = self.taken.get_mut(&f.alert_id)
                && !t.published
                && !t.first.contains_key(&f.kind)
            {
                self.used += 1;
                t.first.insert(f.kind.clone(), arrived);
                if t.first.len() == KINDS.len() {
                    t.published = true;
                }
            }
            self.record(format!(
                "answer {} {} arrived={arrived}",
                f.alert_id, f.kind
            ));
            self.machine
                .handle_answer(at(now), &f.alert_id, &f.kind, f.answer);
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), Violation> {
        while let Some(out) = self.machine.poll_output() {
            match out {
                Output::Submit { alert_id, kind, .. } => self.ask(alert_id, kind),
                Output::Enriched(alert) => self.published(&alert)?,
            }
        }
        Ok(())
    }

    /// Chooses the fate of one task.
    fn ask(&mut self, alert_id: String, kind: String) {
        let task_id = format!("task-{alert_id}-{kind}");
        self.machine
            .handle_submitted(at(self.now), &alert_id, &kind, &task_id);
        if chance(&mut self.rng, self.swarm.lost) {
            self.record(format!("task {task_id}: lost"));
            return;
        }
        let delay = 1 + self.rng.below(self.swarm.latency_ms.max(1));
        let answer = if chance(&mut self.rng, self.swarm.failed) {
            Answer::NotArrived {
                task_id: task_id.clone(),
                message: "failed after 3 attempts".into(),
            }
        } else {
            Answer::Result {
                task_id: task_id.clone(),
                collector_id: "procmond".into(),
                ok: true,
                message: String::new(),
                result: Some(ProcessTaskResult::default()),
            }
        };
        let copies = if chance(&mut self.rng, self.swarm.duplicate) {
            2
        } else {
            1
        };
        for c in 0..copies {
            self.in_flight.push(InFlight {
                at: self.now + delay + c * self.rng.below(self.swarm.timeout_ms),
                alert_id: alert_id.clone(),
                kind: kind.clone(),
                answer: answer.clone(),
            });
        }
        self.record(format!("task {task_id}: answer in {delay}ms x{copies}"));
    }

    fn published(&mut self, alert: &Alert) -> Result<(), Violation> {
        let id = alert.alert_id.clone();
        self.record(format!(
            "published {id}: {}",
            alert
                .enrichment
                .iter()
                .map(|e| format!("{}={}", e.kind, e.arrived))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let Some(t) = self.taken.get(&id) else {
            return Err(self.violation("enrich-once", format!("{id} published, never taken")));
        };
        if !self.published_ids.insert(id.clone()) {
            return Err(self.violation("enrich-once", format!("{id} published twice")));
        }
        if !t.published {
            return Err(self.violation(
                "enrich-on-time",
                format!("{id} published before its deadline with kinds unanswered"),
            ));
        }
        if self.now > t.deadline && t.first.len() < KINDS.len() && self.now - t.deadline > 1 {
            // Published late: the driver runs the timeout in the step the deadline falls.
            return Err(self.violation(
                "enrich-on-time",
                format!(
                    "{id} published {}ms after its deadline",
                    self.now - t.deadline
                ),
            ));
        }
        let kinds: Vec<&str> = alert.enrichment.iter().map(|e| e.kind.as_str()).collect();
        if kinds != KINDS || !alert.enriched || !alert.update {
            return Err(self.violation(
                "enrich-kinds",
                format!("{id}: kinds {kinds:?}, enriched {}", alert.enriched),
            ));
        }
        for e in &alert.enrichment {
            let expected = t.first.get(&e.kind).copied().unwrap_or(false);
            if e.arrived != expected {
                return Err(self.violation(
                    "enrich-no-late-arrival",
                    format!(
                        "{id} {}: arrived={} but the first answer before the deadline says {expected}",
                        e.kind, e.arrived
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), Violation> {
        let pending = self.machine.pending();
        if pending > self.swarm.max_pending {
            return Err(self.violation(
                "enrich-bounded",
                format!(
                    "{pending} pending over the bound {}",
                    self.swarm.max_pending
                ),
            ));
        }
        let waiting = self.taken.values().filter(|t| !t.published).count();
        if pending != waiting {
            return Err(self.violation(
                "enrich-once",
                format!("the machine holds {pending} alerts, the reference {waiting}"),
            ));
        }
        Ok(())
    }
}
