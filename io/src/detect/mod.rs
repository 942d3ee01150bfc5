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

use daemoneye_proto::pb::control::RuleStatus;
use daemoneye_proto::pb::events::ProcessEvent;

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
#[derive(Debug)]
pub struct RuleSet {
    statuses: Vec<RuleStatus>,
}

impl RuleSet {
    /// Loads the rules `sources` name. Never fails as a whole: a file that cannot be read
    /// or parsed is refused with its reason, and the others load.
    pub fn load(sources: &RuleSources) -> RuleSet {
        let _ = sources;
        RuleSet {
            statuses: Vec::new(),
        }
    }

    /// Every rule file's outcome, in load order, with the match counts so far.
    pub fn statuses(&self) -> Vec<RuleStatus> {
        self.statuses.clone()
    }

    /// The active rules that `event` matches (a process creation: `NEW` or `MODIFIED`;
    /// other kinds match nothing), counting each match.
    pub fn evaluate(&self, event: &ProcessEvent) -> Vec<Arc<RuleInfo>> {
        let _ = event;
        Vec::new()
    }

    /// How many rules are active.
    pub fn active(&self) -> usize {
        0
    }
}
