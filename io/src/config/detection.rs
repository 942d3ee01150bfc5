//! `[detection]` (the agent's Sigma engine, DESIGN.md section 12) and `[tasks]` (its task
//! coordinator, section 11).
//!
//! ```toml
//! [detection]
//! enabled = true
//! # Directories of Sigma rules (*.yml, *.yaml), read recursively, after the shipped set.
//! rules = ["/etc/daemoneye/rules"]
//! # The rules shipped in the agent binary (the project's `rules/`).
//! builtin_rules = true
//! # Repeats of one rule on the same (exe, argv) within this window fold into one alert.
//! fold_window = "60s"
//! # Alerts at or above this level get enrichment tasks ("none" turns enrichment off).
//! enrich_level = "high"
//! # What to ask a `process` collector for, and how long to wait for it.
//! enrich = ["hash", "ancestry", "open_files"]
//! enrich_timeout = "5s"
//!
//! [tasks]
//! # How long one attempt of a task may take before it is retried elsewhere.
//! timeout = "10s"
//! # Attempts before a task fails.
//! max_attempts = 3
//! # Ended tasks kept for `tasks list`.
//! history = 1000
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HumaneDuration};

/// Sigma's levels, lowest first.
pub const LEVELS: [&str; 5] = ["informational", "low", "medium", "high", "critical"];

/// The enrichment kinds a `process` collector serves.
pub const ENRICHMENT_KINDS: [&str; 3] = ["hash", "ancestry", "open_files"];

/// `[detection]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSection {
    /// Run the engine (default true).
    pub enabled: bool,
    /// Rule directories, read recursively in order after the shipped rules.
    pub rules: Vec<PathBuf>,
    /// Load the rules shipped in the agent (default true).
    pub builtin_rules: bool,
    /// Repeats of one rule on one (exe, argv) within this window fold into one alert.
    pub fold_window: HumaneDuration,
    /// Alerts at or above this level get enrichment tasks; `none` turns enrichment off.
    pub enrich_level: String,
    /// The enrichment kinds asked for.
    pub enrich: Vec<String>,
    /// How long the enrichment of one alert may take before what arrived is published.
    pub enrich_timeout: HumaneDuration,
}

impl Default for DetectionSection {
    fn default() -> Self {
        DetectionSection {
            enabled: true,
            rules: Vec::new(),
            builtin_rules: true,
            fold_window: HumaneDuration::new(Duration::from_secs(60), "60s"),
            enrich_level: "high".into(),
            enrich: ENRICHMENT_KINDS.iter().map(|k| k.to_string()).collect(),
            enrich_timeout: HumaneDuration::new(Duration::from_secs(5), "5s"),
        }
    }
}

/// `[detection]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionSettings {
    /// Rule directories, in order.
    pub rules: Vec<PathBuf>,
    /// Load the shipped rules.
    pub builtin_rules: bool,
    /// The fold window.
    pub fold_window: Duration,
    /// The lowest level enriched (an index into [`LEVELS`]), `None` for no enrichment.
    pub enrich_level: Option<usize>,
    /// The enrichment kinds.
    pub enrich: Vec<String>,
    /// The enrichment deadline.
    pub enrich_timeout: Duration,
}

fn invalid(key: &str, value: String, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value,
        why: why.into(),
    }
}

impl DetectionSection {
    /// Checks the values; `None` when detection is disabled.
    pub fn resolve(&self) -> Result<Option<DetectionSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let window = self.fold_window.duration;
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&window) {
            return Err(invalid(
                "detection.fold_window",
                self.fold_window.to_string(),
                "must be between 1 second and 1 day",
            ));
        }
        let enrich_level = match self.enrich_level.as_str() {
            "none" => None,
            l => Some(LEVELS.iter().position(|x| *x == l).ok_or_else(|| {
                invalid(
                    "detection.enrich_level",
                    l.to_string(),
                    format!("must be one of {} or none", LEVELS.join(", ")),
                )
            })?),
        };
        for kind in &self.enrich {
            if !ENRICHMENT_KINDS.contains(&kind.as_str()) {
                return Err(invalid(
                    "detection.enrich",
                    kind.clone(),
                    format!("must be among {}", ENRICHMENT_KINDS.join(", ")),
                ));
            }
        }
        let timeout = self.enrich_timeout.duration;
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&timeout) {
            return Err(invalid(
                "detection.enrich_timeout",
                self.enrich_timeout.to_string(),
                "must be between 100ms and 10 minutes",
            ));
        }
        for dir in &self.rules {
            if dir.as_os_str().is_empty() {
                return Err(invalid(
                    "detection.rules",
                    String::new(),
                    "a directory must not be empty",
                ));
            }
        }
        Ok(Some(DetectionSettings {
            rules: self.rules.clone(),
            builtin_rules: self.builtin_rules,
            fold_window: window,
            enrich_level,
            enrich: self.enrich.clone(),
            enrich_timeout: timeout,
        }))
    }
}

/// `[tasks]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TasksSection {
    /// How long one attempt may take.
    pub timeout: HumaneDuration,
    /// Attempts before a task fails.
    pub max_attempts: u32,
    /// Ended tasks kept for `tasks list`.
    pub history: usize,
}

impl Default for TasksSection {
    fn default() -> Self {
        TasksSection {
            timeout: HumaneDuration::new(Duration::from_secs(10), "10s"),
            max_attempts: 3,
            history: 1000,
        }
    }
}

/// `[tasks]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TasksSettings {
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Attempts before a task fails.
    pub max_attempts: u32,
    /// Ended tasks kept.
    pub history: usize,
}

impl TasksSection {
    /// Checks the values.
    pub fn resolve(&self) -> Result<TasksSettings, ConfigError> {
        let timeout = self.timeout.duration;
        if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&timeout) {
            return Err(invalid(
                "tasks.timeout",
                self.timeout.to_string(),
                "must be between 100ms and 1 day",
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid(
                "tasks.max_attempts",
                self.max_attempts.to_string(),
                "must be between 1 and 100",
            ));
        }
        if !(1..=1_000_000).contains(&self.history) {
            return Err(invalid(
                "tasks.history",
                self.history.to_string(),
                "must be between 1 and 1000000",
            ));
        }
        Ok(TasksSettings {
            timeout,
            max_attempts: self.max_attempts,
            history: self.history,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use std::path::Path;

    #[test]
    fn defaults_resolve_and_bad_values_name_their_key() {
        let c = AgentConfig::parse(Path::new("t.toml"), "").unwrap();
        let d = c.detection.resolve().unwrap().unwrap();
        assert_eq!(d.enrich_level, Some(3));
        assert_eq!(d.fold_window, Duration::from_secs(60));
        assert_eq!(c.tasks.resolve().unwrap().max_attempts, 3);
        let c = AgentConfig::parse(
            Path::new("t.toml"),
            "[detection]\nenrich_level = \"severe\"\n",
        )
        .unwrap();
        let e = c.detection.resolve().unwrap_err().to_string();
        assert!(e.contains("detection.enrich_level"), "{e}");
        let c = AgentConfig::parse(Path::new("t.toml"), "[tasks]\nmax_attempts = 0\n").unwrap();
        let e = c.tasks.resolve().unwrap_err().to_string();
        assert!(e.contains("tasks.max_attempts"), "{e}");
        let c = AgentConfig::parse(
            Path::new("t.toml"),
            "[detection]\nenabled = false\nenrich = [\"hash\"]\n",
        )
        .unwrap();
        assert_eq!(c.detection.resolve().unwrap(), None);
    }
}
