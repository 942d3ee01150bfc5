//! A collector's settings: defaults, then a TOML file, then its environment, then what the
//! binary sets from its own flags ([`super::CollectorBuilder::configure`]); checked once,
//! with the bad key named.
//!
//! Every key has a variable `DAEMONEYE_<COMPONENT>_<KEY>` (`DAEMONEYE_PROCMOND_INTERVAL_SECS`),
//! derived from the fields here exactly as the agent's `DAEMONEYE_AGENT_*` are (the same
//! code, `crate::config::env`), so a collector never reads its parent's settings by
//! accident. An unknown `DAEMONEYE_<COMPONENT>_*` variable is an error unless the binary
//! declared it its own ([`super::CollectorBuilder::allow_env`]), and so is an unknown key
//! of the file (the binary's own keys there are handed to it apart,
//! [`super::CollectorBuilder::own_settings`]). Three variables are shared
//! and set by the agent: `DAEMONEYE_BROKER_SOCKET`, `DAEMONEYE_COLLECTOR_ID` and
//! `DAEMONEYE_COLLECTOR_STATE_DIR`; they win over the file.
//!
//! ```toml
//! interval_secs = 30
//! max_events_in_flight = 100000
//! compute_hashes = false
//! batch_max_events = 100
//! batch_max_delay_ms = 100
//! batch_max_idle_ms = 2
//! event_buffer = 1000
//! backpressure_threshold = 800
//! send_timeout_ms = 500
//! shutdown_timeout_ms = 500
//! health_check_secs = 60
//! startup_timeout_secs = 10
//! telemetry_secs = 30
//! wait_for_begin_monitoring = false
//! no_wal = false
//! log_level = "info"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::config::env::{ValueSection, field_names};

/// Most sources one collector runs.
pub const MAX_EVENT_SOURCES: usize = 16;

/// The agent's variables every collector reads.
pub const ENV_BROKER_SOCKET: &str = "DAEMONEYE_BROKER_SOCKET";
/// The id the agent gives a collector it runs (its `[[collectors]]` name).
pub const ENV_COLLECTOR_ID: &str = "DAEMONEYE_COLLECTOR_ID";
/// The state directory the agent gives a collector it runs.
pub const ENV_STATE_DIR: &str = "DAEMONEYE_COLLECTOR_STATE_DIR";

/// A collector's settings (see the module docs for the file and the variables).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSettings {
    /// The id it registers under (the agent's `DAEMONEYE_COLLECTOR_ID` wins); default: the
    /// component name.
    pub collector_id: Option<String>,
    /// Its type (`process`, ...); default: what the binary says.
    pub collector_type: Option<String>,
    /// The broker (`DAEMONEYE_BROKER_SOCKET` wins).
    pub broker_socket: Option<PathBuf>,
    /// Its state directory (`DAEMONEYE_COLLECTOR_STATE_DIR` wins); default: the user's.
    pub state_dir: Option<PathBuf>,
    /// Seconds between two rounds of collection (within the binary's bounds, default 5 to
    /// 3600).
    pub interval_secs: u64,
    /// Most events held in the WAL waiting for the broker; past it new events are dropped
    /// and counted.
    pub max_events_in_flight: u64,
    /// Hash what the sources hash.
    pub compute_hashes: bool,
    /// Most events in one batch.
    pub batch_max_events: usize,
    /// Longest an event waits for its batch, in ms.
    pub batch_max_delay_ms: u64,
    /// A batch goes out once its sources were quiet this long, in ms (0: as soon as the
    /// queue is drained).
    pub batch_max_idle_ms: u64,
    /// The sources' event queue (at least `backpressure_threshold`).
    pub event_buffer: usize,
    /// Most events held between the sources and the WAL's sync (queued or batched): a
    /// source's send waits while this many are held.
    pub backpressure_threshold: usize,
    /// Longest a source's send waits at the backpressure threshold before the event is
    /// dropped, in ms.
    pub send_timeout_ms: u64,
    /// The whole shutdown's budget (stop sources, flush, commit, deregister), in ms.
    pub shutdown_timeout_ms: u64,
    /// Seconds between two health checks of the sources.
    pub health_check_secs: u64,
    /// Longest the connection to the broker may take at start, in seconds.
    pub startup_timeout_secs: u64,
    /// Seconds between two log lines of the collector's numbers (0: none).
    pub telemetry_secs: u64,
    /// Start the sources only on the agent's BeginMonitoring.
    pub wait_for_begin_monitoring: bool,
    /// The write-ahead log (default `<component>.wal` in the state directory).
    pub wal: Option<PathBuf>,
    /// Publish without a WAL: events not acknowledged when the collector dies are lost.
    pub no_wal: bool,
    /// Log filter.
    pub log_level: String,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        Self {
            collector_id: None,
            collector_type: None,
            broker_socket: None,
            state_dir: None,
            interval_secs: 30,
            max_events_in_flight: 100_000,
            compute_hashes: false,
            batch_max_events: 100,
            batch_max_delay_ms: 100,
            batch_max_idle_ms: 2,
            event_buffer: 1000,
            backpressure_threshold: 800,
            send_timeout_ms: 500,
            shutdown_timeout_ms: 500,
            health_check_secs: 60,
            startup_timeout_secs: 10,
            telemetry_secs: 30,
            wait_for_begin_monitoring: false,
            wal: None,
            no_wal: false,
            log_level: "info".into(),
        }
    }
}

/// `DAEMONEYE_<COMPONENT>_`: the component's name in capitals, other characters as `_`.
pub fn env_prefix(component: &str) -> String {
    let name: String = component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("DAEMONEYE_{name}_")
}

impl CollectorSettings {
    /// Reads `path` (every key known and typed).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::load_with(path, &[])?.0)
    }

    /// Reads `path`, whose keys in `own` (any case) are the binary's own settings: returned
    /// apart, untyped, for it to read; every other key known and typed.
    pub fn load_with(path: &Path, own: &[String]) -> Result<(Self, toml::Table), ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            path: path.into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        // One line: the message, and where when the parser knows.
        let one_line = |e: &toml::de::Error| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            }
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse(one_line(&e)))?;
        let mut theirs = toml::Table::new();
        for key in own {
            if let Some(k) = table.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
                && let Some(value) = table.remove(&k)
            {
                theirs.insert(k.to_ascii_lowercase(), value);
            }
        }
        // Typed from text, so that an error points at its key.
        let rest = toml::to_string(&table).map_err(|e| parse(e.to_string()))?;
        let settings = toml::from_str(&rest).map_err(|e: toml::de::Error| {
            // A value's error: its line up to the value is `key = `.
            let key = e.span().and_then(|span| {
                let before = &rest[..span.start.min(rest.len())];
                let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
                let key = line.split('=').next()?.trim();
                (!key.is_empty()).then(|| key.to_string())
            });
            let mut message = e.message().trim().replace('\n', " ");
            if let Some(key) = key {
                message = format!("{key}: {message}");
            }
            if !own.is_empty() && message.starts_with("unknown field") {
                let own: Vec<String> = own.iter().map(|k| k.to_ascii_lowercase()).collect();
                message.push_str(&format!(
                    ", or one of this binary's own: {}",
                    own.join(", ")
                ));
            }
            parse(message)
        })?;
        Ok((settings, theirs))
    }

    /// The variable of every key, for `prefix` (see [`env_prefix`]).
    pub fn env_variables(prefix: &str) -> Vec<(String, &'static str)> {
        field_names::<CollectorSettings>()
            .iter()
            .map(|key| (format!("{prefix}{}", key.to_ascii_uppercase()), *key))
            .collect()
    }

    /// Applies the `prefix` variables in `env` and the agent's shared ones; other
    /// variables are ignored, unknown ones of `prefix` refused unless in `allowed` (keys,
    /// without the prefix).
    pub fn apply_env(
        &mut self,
        prefix: &str,
        allowed: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let known = Self::env_variables(prefix);
        for (variable, value) in env {
            let refuse = |reason: String| ConfigError::Environment {
                variable: variable.clone(),
                value: value.clone(),
                reason,
            };
            match variable.as_str() {
                ENV_BROKER_SOCKET => self.broker_socket = Some(PathBuf::from(&value)),
                ENV_COLLECTOR_ID => self.collector_id = Some(value.clone()),
                ENV_STATE_DIR => self.state_dir = Some(PathBuf::from(&value)),
                _ => {}
            }
            let Some(rest) = variable.strip_prefix(prefix) else {
                continue;
            };
            if rest == "CONFIG" || allowed.iter().any(|a| a.eq_ignore_ascii_case(rest)) {
                continue;
            }
            let Some((_, key)) = known.iter().find(|(v, _)| *v == variable) else {
                return Err(refuse(format!(
                    "unknown variable (keys: {})",
                    field_names::<CollectorSettings>().join(", ")
                )));
            };
            self.set(key, &value)
                .map_err(|why| refuse(format!("{key}: {why}")))?;
        }
        Ok(())
    }

    /// Checks every bound; `interval` is the binary's range of `interval_secs`.
    pub fn validate(&self, interval: (Duration, Duration)) -> Result<(), ConfigError> {
        let (lo, hi) = (interval.0.as_secs().max(1), interval.1.as_secs());
        check("interval_secs", self.interval_secs, lo, hi)?;
        check(
            "max_events_in_flight",
            self.max_events_in_flight,
            1,
            u64::MAX,
        )?;
        check("batch_max_events", self.batch_max_events as u64, 1, 100_000)?;
        check("batch_max_delay_ms", self.batch_max_delay_ms, 1, 60_000)?;
        check("batch_max_idle_ms", self.batch_max_idle_ms, 0, 60_000)?;
        check("event_buffer", self.event_buffer as u64, 1, 10_000_000)?;
        if !(1..=self.event_buffer).contains(&self.backpressure_threshold) {
            return Err(ConfigError::Invalid {
                key: "backpressure_threshold".into(),
                value: self.backpressure_threshold.to_string(),
                why: format!(
                    "must be between 1 and event_buffer ({}); lower it with event_buffer",
                    self.event_buffer
                ),
            });
        }
        check("send_timeout_ms", self.send_timeout_ms, 0, 60_000)?;
        check("shutdown_timeout_ms", self.shutdown_timeout_ms, 50, 600_000)?;
        check("health_check_secs", self.health_check_secs, 1, 86_400)?;
        check("startup_timeout_secs", self.startup_timeout_secs, 1, 3600)?;
        check("telemetry_secs", self.telemetry_secs, 0, 86_400)?;
        if let Some(id) = &self.collector_id {
            daemoneye_proto::frame::validate_name("collector_id", id).map_err(|e| {
                ConfigError::Invalid {
                    key: "collector_id".into(),
                    value: id.clone(),
                    why: e.to_string(),
                }
            })?;
        }
        crate::parse_filter(&self.log_level).map_err(|e| ConfigError::Invalid {
            key: "log_level".into(),
            value: self.log_level.clone(),
            why: e.to_string(),
        })?;
        Ok(())
    }
}

fn check(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            why: format!("must be between {min} and {max}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn every_key_has_a_variable_of_the_component_and_it_sets_that_key() {
        let prefix = env_prefix("proc-mond");
        assert_eq!(prefix, "DAEMONEYE_PROC_MOND_");
        let mut s = CollectorSettings::default();
        s.apply_env(
            &prefix,
            &[],
            env(&[
                ("DAEMONEYE_PROC_MOND_INTERVAL_SECS", "10"),
                ("DAEMONEYE_PROC_MOND_COMPUTE_HASHES", "true"),
                ("DAEMONEYE_PROC_MOND_WAL", "/tmp/x.wal"),
                ("DAEMONEYE_COLLECTOR_ID", "procmond-2"),
                ("DAEMONEYE_AGENT_MAX_CONNECTIONS", "3"),
            ]),
        )
        .expect("applies");
        assert_eq!(s.interval_secs, 10);
        assert!(s.compute_hashes);
        assert_eq!(s.wal, Some(PathBuf::from("/tmp/x.wal")));
        assert_eq!(s.collector_id.as_deref(), Some("procmond-2"));
        assert_eq!(
            CollectorSettings::env_variables(&prefix).len(),
            field_names::<CollectorSettings>().len()
        );
    }

    #[test]
    fn a_bad_or_unknown_variable_names_itself_and_a_bound_names_its_key() {
        let mut s = CollectorSettings::default();
        let err = s
            .apply_env(
                "DAEMONEYE_X_",
                &[],
                env(&[("DAEMONEYE_X_INTERVL_SECS", "3")]),
            )
            .expect_err("typo");
        assert!(
            err.to_string().contains("DAEMONEYE_X_INTERVL_SECS"),
            "{err}"
        );
        let err = s
            .apply_env(
                "DAEMONEYE_X_",
                &[],
                env(&[("DAEMONEYE_X_INTERVAL_SECS", "soon")]),
            )
            .expect_err("not a number");
        assert!(err.to_string().contains("interval_secs"), "{err}");
        s.apply_env(
            "DAEMONEYE_X_",
            &["MAX_PROCESSES".into()],
            env(&[("DAEMONEYE_X_MAX_PROCESSES", "9")]),
        )
        .expect("declared by the binary");
        s.interval_secs = 4;
        let bounds = (Duration::from_secs(5), Duration::from_secs(3600));
        let err = s.validate(bounds).expect_err("below 5");
        assert!(err.to_string().contains("interval_secs"), "{err}");
        s.interval_secs = 30;
        s.validate(bounds).expect("the defaults with interval 30");
        s.backpressure_threshold = 1001;
        let err = s.validate(bounds).expect_err("above the queue");
        assert!(
            err.to_string().contains("backpressure_threshold")
                && err.to_string().contains("event_buffer (1000)"),
            "{err}"
        );
    }

    #[test]
    fn a_file_holds_the_binarys_own_keys_and_each_error_is_one_line_naming_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        let own = vec!["SCAN_ONLY".to_string()];
        std::fs::write(&path, "interval_secs = 7\nscan_only = true\n").expect("write");
        let (settings, theirs) = CollectorSettings::load_with(&path, &own).expect("load");
        assert_eq!(settings.interval_secs, 7);
        assert_eq!(theirs.get("scan_only"), Some(&toml::Value::Boolean(true)));
        let err = CollectorSettings::load(&path).expect_err("scan_only is not the runtime's");
        assert!(
            err.to_string().contains("unknown field `scan_only`"),
            "{err}"
        );
        for (text, needle) in [
            ("interval_secs = \"x\"\n", "interval_secs: invalid type"),
            (
                "scan_only = true\nlog_level = 3\n",
                "log_level: invalid type",
            ),
            ("interval_secs = 7\n\nx = = 1\n", "line 3:"),
            ("bogus = 1\n", "or one of this binary's own: scan_only"),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = CollectorSettings::load_with(&path, &own).expect_err(text);
            let err = err.to_string();
            assert!(
                err.contains(needle) && !err.contains('\n'),
                "{text:?}: {err}"
            );
        }
    }
}
