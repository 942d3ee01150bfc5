//! The detection engine: Sigma rules over the agent's process events (DESIGN.md section 12).
//!
//! [`RuleSet::load`] reads the shipped rules and the configured directories and never fails
//! as a whole: each file ends active, inactive (nothing collects its logsource) or refused
//! (with the reason), as [`RuleSet::statuses`] tells. [`RuleSet::evaluate`] presents one
//! process event with Sigma's Linux `process_creation` taxonomy (the mapping table) and
//! returns the active rules it matches. A `RuleSet` is immutable once loaded: a reload
//! builds a new one and swaps it in.
//!
//! API contract (the agent's detection service codes against these signatures).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use daemoneye_proto::pb::control::RuleStatus;
use daemoneye_proto::pb::events::ProcessEvent;

pub mod builtin;
mod load;
pub mod mapping;

pub use load::rule_files;

/// Sigma's levels, lowest first (the order [`crate::config::LEVELS`] names them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `informational`.
    Informational,
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
    /// `critical`.
    Critical,
}

impl Level {
    /// Sigma's name of the level, as in `alerts.<level>`.
    pub fn as_str(self) -> &'static str {
        crate::config::LEVELS[self.index()]
    }

    /// The level's position in [`crate::config::LEVELS`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The level Sigma names `name`.
    pub fn from_name(name: &str) -> Option<Level> {
        const ALL: [Level; 5] = [
            Level::Informational,
            Level::Low,
            Level::Medium,
            Level::High,
            Level::Critical,
        ];
        ALL.into_iter().find(|l| l.as_str() == name)
    }
}

/// What to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSources {
    /// The rules shipped in the agent binary.
    pub builtin: bool,
    /// Directories read recursively (`*.yml`, `*.yaml`), in order, after the shipped rules.
    pub directories: Vec<PathBuf>,
}

/// A rule as an alert names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// The rule's `id` (its title when it has none).
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its level (`medium` when it names none).
    pub level: Level,
    /// Its tags (ATT&CK ids).
    pub tags: Vec<String>,
    /// Its description.
    pub description: String,
    /// Its file (`builtin:<name>` for a shipped rule).
    pub file: String,
}

/// The loaded, compiled rules.
pub struct RuleSet {
    statuses: Vec<RuleStatus>,
    /// The active rules, in the engine's order; the engine knows each by its position here.
    rules: Vec<Active>,
    engine: rsigma_eval::Engine,
}

#[derive(Debug)]
struct Active {
    info: Arc<RuleInfo>,
    status: usize,
    matches: AtomicU64,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("statuses", &self.statuses.len())
            .field("active", &self.rules.len())
            .finish()
    }
}

/// The engine's name and version, as `detection status` shows it.
pub const ENGINE: &str = "rsigma-eval 0.23";

impl RuleSet {
    /// Loads the rules `sources` name. Never fails as a whole: a file that cannot be read
    /// or parsed is refused with its reason, and the others load.
    pub fn load(sources: &RuleSources) -> RuleSet {
        let loaded = load::load(sources);
        let mut rules = Vec::with_capacity(loaded.active.len());
        let mut compiled = Vec::with_capacity(loaded.active.len());
        for (i, mut c) in loaded.active.into_iter().enumerate() {
            // The engine names a match by this id: the rule's position.
            c.rule.id = Some(i.to_string());
            compiled.push(c.rule);
            rules.push(Active {
                info: c.info,
                status: c.status,
                matches: AtomicU64::new(0),
            });
        }
        let mut engine = rsigma_eval::Engine::new();
        engine.extend_compiled_rules(compiled);
        RuleSet {
            statuses: loaded.statuses,
            rules,
            engine,
        }
    }

    /// Every rule file's outcome, in load order, with the match counts so far. A file
    /// holding several rules has one entry per rule; a refused file has one entry.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        let mut out = self.statuses.clone();
        for r in &self.rules {
            if let Some(s) = out.get_mut(r.status) {
                s.matches = r.matches.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// The active rules that `event` matches (a process creation: `NEW` or `MODIFIED`;
    /// other kinds match nothing), counting each match.
    pub fn evaluate(&self, event: &ProcessEvent) -> Vec<Arc<RuleInfo>> {
        if self.rules.is_empty() || !mapping::is_process_creation(event) {
            return Vec::new();
        }
        let Some(process) = event.process.as_ref() else {
            return Vec::new();
        };
        let mapped = mapping::MappedEvent::new(mapping::PROCESS_CREATION, process);
        let mut out: Vec<Arc<RuleInfo>> = Vec::new();
        for result in self.engine.evaluate(&mapped) {
            let index = result
                .header
                .rule_id
                .as_deref()
                .and_then(|id| id.parse::<usize>().ok());
            if let Some(rule) = index.and_then(|i| self.rules.get(i)) {
                rule.matches.fetch_add(1, Ordering::Relaxed);
                out.push(rule.info.clone());
            }
        }
        out
    }

    /// How many rules are active.
    pub fn active(&self) -> usize {
        self.rules.len()
    }
}

#[cfg(test)]
mod tests;
