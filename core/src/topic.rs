//! Topic names and filters (DESIGN.md section 4).
//!
//! MQTT 3.1.1/5 section 4.7 with `.` as the level separator: `+` matches exactly one level
//! and must be a whole level; `#` matches zero or more trailing levels and must be the whole
//! last level (`events.#` matches `events`); no level is empty; no NUL; at most 65,535 bytes
//! and 64 levels. A name whose first level starts with `$` is reserved for the broker and is
//! not matched by a filter whose first level is a wildcard. A filter level that is exactly
//! `*` or `>` (NATS's wildcards) is refused with a hint to use `+` or `#`.
//!
//! This module owns the grammar and the single-filter match; the routing index is
//! [`crate::index`].

use std::fmt;
use std::sync::Arc;

/// Longest topic name or filter, in bytes.
pub const MAX_TOPIC_LEN: usize = 65_535;
/// Most levels in a topic name or filter.
pub const MAX_LEVELS: usize = 64;
/// Level separator.
pub const SEPARATOR: char = '.';

/// Why a topic name or filter is invalid. The message names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The text is empty.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is {0} bytes long; the limit is 65535")]
    TooLong(usize),
    /// More than [`MAX_LEVELS`] levels.
    #[error("topic has {0} levels; the limit is 64")]
    TooManyLevels(usize),
    /// Two separators in a row, or one at either end.
    #[error("level {0} is empty (levels are separated by single '.')")]
    EmptyLevel(usize),
    /// Contains U+0000.
    #[error("topic contains a NUL character")]
    Nul,
    /// A name (not a filter) contains `+` or `#`.
    #[error("topic names may not contain wildcards ('+' or '#'); found one in level {0}")]
    WildcardInName(usize),
    /// A `+` or `#` shares its level with other characters.
    #[error("wildcard in level {0} must occupy the whole level")]
    WildcardNotWholeLevel(usize),
    /// `#` is not the last level.
    #[error("'#' must be the last level (found at level {0})")]
    MultiLevelNotLast(usize),
    /// A filter level is exactly `*` or `>`, NATS's wildcards: here they would match only
    /// that literal text, which is never what was meant.
    #[error(
        "level {level} is '{found}', a NATS wildcard; DaemonEye filters use '{instead}' ('+' matches one level, '#' all remaining levels)"
    )]
    NatsWildcard {
        /// The level's index.
        level: usize,
        /// `*` or `>`.
        found: char,
        /// The wildcard meant: `+` for `*`, `#` for `>`.
        instead: char,
    },
}

/// Checks the rules shared by names and filters; returns the level count.
fn check_common(s: &str) -> Result<usize, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::Nul);
    }
    let mut levels = 0;
    for (i, level) in s.split(SEPARATOR).enumerate() {
        if level.is_empty() {
            return Err(TopicError::EmptyLevel(i));
        }
        levels += 1;
    }
    if levels > MAX_LEVELS {
        return Err(TopicError::TooManyLevels(levels));
    }
    Ok(levels)
}

/// A validated topic name: where a message is published.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Parses and validates a topic name.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        for (i, level) in s.split(SEPARATOR).enumerate() {
            if level.contains(['+', '#']) {
                return Err(TopicError::WildcardInName(i));
            }
        }
        Ok(TopicName(Arc::from(s)))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text (cheap to clone into every delivery).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The levels, in order.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split(SEPARATOR)
    }

    /// Whether the first level starts with `$` (reserved for the broker).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({:?})", &*self.0)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterLevel {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `+`: any one level.
    Single,
    /// `#`: zero or more trailing levels.
    Multi,
}

/// A validated topic filter: what a subscription asks for.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter {
    text: Arc<str>,
    levels: Box<[FilterLevel]>,
}

impl TopicFilter {
    /// Parses and validates a topic filter.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        let count = check_common(s)?;
        let mut levels = Vec::with_capacity(count);
        for (i, level) in s.split(SEPARATOR).enumerate() {
            let parsed = match level {
                "+" => FilterLevel::Single,
                "#" if i + 1 == count => FilterLevel::Multi,
                "#" => return Err(TopicError::MultiLevelNotLast(i)),
                "*" | ">" => return Err(nats_wildcard(i, level)),
                l if l.contains(['+', '#']) => return Err(TopicError::WildcardNotWholeLevel(i)),
                l => FilterLevel::Literal(l.into()),
            };
            levels.push(parsed);
        }
        Ok(TopicFilter {
            text: Arc::from(s),
            levels: levels.into_boxed_slice(),
        })
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed levels.
    pub fn levels(&self) -> &[FilterLevel] {
        &self.levels
    }

    /// Whether the filter has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.levels
            .iter()
            .all(|l| matches!(l, FilterLevel::Literal(_)))
    }

    /// Whether `name` matches this filter.
    pub fn matches(&self, name: &TopicName) -> bool {
        let mut names = name.levels();
        for (i, level) in self.levels.iter().enumerate() {
            let reserved_guard = i == 0 && name.is_reserved();
            match level {
                FilterLevel::Multi => return !reserved_guard,
                FilterLevel::Single => {
                    if reserved_guard || names.next().is_none() {
                        return false;
                    }
                }
                FilterLevel::Literal(lit) => {
                    if names.next() != Some(&**lit) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// Whether every topic this filter matches is also matched by `outer` (used by the ACL
    /// to decide whether a subscription stays within what a principal may read).
    pub fn is_covered_by(&self, outer: &TopicFilter) -> bool {
        let inner = &self.levels;
        for (i, o) in outer.levels.iter().enumerate() {
            match o {
                FilterLevel::Multi => {
                    // A leading `#` does not reach `$` topics; a literal `$...` first level
                    // in the inner filter is therefore not covered.
                    return !(i == 0 && starts_reserved(inner.first()));
                }
                FilterLevel::Single => match inner.get(i) {
                    None | Some(FilterLevel::Multi) => return false,
                    Some(FilterLevel::Literal(l)) if i == 0 && l.starts_with('$') => return false,
                    Some(_) => {}
                },
                FilterLevel::Literal(lit) => match inner.get(i) {
                    Some(FilterLevel::Literal(l)) if l == lit => {}
                    _ => return false,
                },
            }
        }
        inner.len() == outer.levels.len()
    }
}

fn nats_wildcard(level: usize, text: &str) -> TopicError {
    let (found, instead) = if text == "*" { ('*', '+') } else { ('>', '#') };
    TopicError::NatsWildcard {
        level,
        found,
        instead,
    }
}

fn starts_reserved(level: Option<&FilterLevel>) -> bool {
    matches!(level, Some(FilterLevel::Literal(l)) if l.starts_with('$'))
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", &*self.text)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// DaemonEye's topic hierarchy.
pub mod topics {
    /// A new process appeared.
    pub const PROCESS_NEW: &str = "events.process.new";
    /// A process exited.
    pub const PROCESS_EXIT: &str = "events.process.exit";
    /// A process changed.
    pub const PROCESS_MODIFIED: &str = "events.process.modified";
    /// A full process snapshot.
    pub const PROCESS_SNAPSHOT: &str = "events.process.snapshot";
    /// Prefix of network events.
    pub const NETWORK_PREFIX: &str = "events.network";
    /// Prefix of filesystem events.
    pub const FILESYSTEM_PREFIX: &str = "events.filesystem";
    /// Prefix of performance events.
    pub const PERFORMANCE_PREFIX: &str = "events.performance";
    /// Prefix of capability task topics: `control.collector.task.<capability>`.
    pub const TASK_PREFIX: &str = "control.collector.task";
    /// Collector lifecycle RPC.
    pub const LIFECYCLE: &str = "control.collector.lifecycle";
    /// Collector registration requests (RegisterRequest) to the agent.
    pub const REGISTRATION: &str = "control.collector.registration";
    /// A collector that stops cleanly deregisters here (a `Deregister`).
    pub const DEREGISTRATION: &str = "control.collector.deregistration";
    /// Prefix of per-collector config topics: `control.collector.config.<collector_id>`.
    pub const CONFIG_PREFIX: &str = "control.collector.config";
    /// Prefix of heartbeat topics: `control.health.heartbeat.<collector_id>`.
    pub const HEARTBEAT_PREFIX: &str = "control.health.heartbeat";
    /// The agent's health report.
    pub const HEALTH_STATUS: &str = "control.health.status";
    /// Event store queries to the agent (request/reply: `EventQuery`, `EventQueryResponse`).
    pub const EVENTS_QUERY: &str = "control.events.query";
    /// Task submission to the agent's coordinator (request/reply: `TaskSubmit`,
    /// `TaskSubmitResponse`).
    pub const TASKS_SUBMIT: &str = "control.tasks.submit";
    /// The coordinator's tasks (request/reply: `TaskListRequest`, `TaskListResponse`).
    pub const TASKS_LIST: &str = "control.tasks.list";
    /// Cancels a task (request/reply: `TaskCancel`, `TaskCancelResponse`).
    pub const TASKS_CANCEL: &str = "control.tasks.cancel";
    /// Where collectors send the results of the coordinator's tasks (its tasks' reply topic).
    pub const TASKS_RESULT: &str = "control.tasks.result";
    /// The detection engine's state (request/reply: `DetectionStatusRequest`,
    /// `DetectionStatus`).
    pub const DETECTION_STATUS: &str = "control.detection.status";
    /// Reloads the rules (request/reply: `DetectionReload`, `DetectionReloadResponse`).
    pub const DETECTION_RELOAD: &str = "control.detection.reload";
    /// The NATS bridge's status (request/reply, served by the agent).
    pub const BRIDGE_STATUS: &str = "control.bridge.status";
    /// Prefix of alerts: `alerts.<level>`.
    pub const ALERTS_PREFIX: &str = "alerts";
    /// Prefix of enriched alerts: `alerts.enriched.<level>`.
    pub const ENRICHED_PREFIX: &str = "alerts.enriched";
    /// Broker statistics.
    pub const BROKER_STATS: &str = "$sys.broker.stats";
    /// Broker health.
    pub const BROKER_HEALTH: &str = "$sys.broker.health";

    /// `control.collector.task.<capability>`.
    pub fn task(capability: &str) -> String {
        format!("{TASK_PREFIX}.{capability}")
    }
    /// `control.collector.config.<collector_id>`.
    pub fn config(collector_id: &str) -> String {
        format!("{CONFIG_PREFIX}.{collector_id}")
    }
    /// `alerts.<level>`.
    pub fn alert(level: &str) -> String {
        format!("{ALERTS_PREFIX}.{level}")
    }
    /// `alerts.enriched.<level>`.
    pub fn enriched_alert(level: &str) -> String {
        format!("{ENRICHED_PREFIX}.{level}")
    }
    /// `control.health.heartbeat.<collector_id>`.
    pub fn heartbeat(collector_id: &str) -> String {
        format!("{HEARTBEAT_PREFIX}.{collector_id}")
    }
}
