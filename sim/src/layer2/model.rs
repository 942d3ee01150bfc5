//! What layer 2's hosts report, and the invariants over it: PubAck after delivery,
//! per-publisher order, filter match (checked as reports arrive, by the hosts), restart
//! backoff and policy (by the process driver), liveness (by the scheduler).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::{NetConfig, PUBLISHERS, SUBSCRIBERS};
use crate::report::{EventLog, Violation};

/// What the hosts report, and the invariants over it.
#[derive(Debug)]
pub(super) struct Model {
    pub(super) seed: u64,
    pub(super) step: u64,
    pub(super) events: EventLog,
    pub(super) violation: Option<(&'static str, String)>,
    pub(super) pub_incarnation: [u32; PUBLISHERS],
    pub(super) sub_incarnation: [u32; SUBSCRIBERS],
    /// (publisher id, sequence) -> subscribers (host, incarnation) that saw it.
    pub(super) received: BTreeMap<(String, u64), BTreeSet<(usize, u32)>>,
    /// Last first-delivery per (subscriber, incarnation, broker session, publisher).
    pub(super) order: BTreeMap<(usize, u32, u64, String), u64>,
    /// Per publisher incarnation: publishes still waiting for their PubAck, and whether
    /// every publish has been sent.
    pub(super) outstanding: BTreeMap<String, (u32, bool)>,
    pub(super) published: u64,
    pub(super) acked: u64,
    pub(super) delivered: u64,
    /// The agent's last answer to the probe: (collector, state, registered).
    pub(super) status: Option<Vec<(String, String, bool)>>,
    pub(super) faults_stopped: bool,
    /// When each collector was last killed by a fault (for the restart checks).
    pub(super) crashed_at: BTreeMap<String, (u64, u32)>,
    /// Restarts after a crash, per collector, within the current agent's life.
    pub(super) restarts: BTreeMap<String, Vec<u64>>,
    pub(super) spawned: u64,
}

pub(super) type Shared = Rc<RefCell<Model>>;

impl Model {
    pub(super) fn log(&mut self, event: String) {
        let stamp = self.step.to_string();
        self.events.record(self.step, &stamp, event);
    }

    pub(super) fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some((invariant, detail));
        }
    }

    pub(super) fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }
}

impl Model {
    pub(super) fn new(cfg: &NetConfig) -> Self {
        Model {
            seed: cfg.seed,
            step: 0,
            events: EventLog::new(cfg.verbose, cfg.seed, " --layer 2"),
            violation: None,
            pub_incarnation: [0; PUBLISHERS],
            sub_incarnation: [0; SUBSCRIBERS],
            received: BTreeMap::new(),
            order: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            published: 0,
            acked: 0,
            delivered: 0,
            status: None,
            faults_stopped: false,
            crashed_at: BTreeMap::new(),
            restarts: BTreeMap::new(),
            spawned: 0,
        }
    }
}

pub(super) fn check(model: &Shared) -> Result<(), Violation> {
    let m = model.borrow();
    match &m.violation {
        Some((inv, detail)) => Err(m.violation(inv, detail.clone())),
        None => Ok(()),
    }
}
