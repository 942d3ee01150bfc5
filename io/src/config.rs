//! The agent's configuration: TOML, every key known and checked.
//!
//! Every key of a section of plain values (`[broker]`, `[logging]`, `[agent]`) has an
//! environment override, derived from the section's own fields (see [`env_overrides`]):
//! `DAEMONEYE_AGENT_<SECTION>_<KEY>` (e.g. `DAEMONEYE_AGENT_BROKER_MAX_CONNECTIONS`), and
//! `DAEMONEYE_AGENT_<KEY>` where no other section has that key (`DAEMONEYE_AGENT_MAX_CONNECTIONS`).
//! A new key gets its variables by being declared; a new section is added to
//! `AgentConfig::value_sections`.
//!
//! ```toml
//! [broker]
//! socket = "/run/user/1000/daemoneye/broker.sock"
//! max_connections = 64
//! max_frame = 1048576
//! max_subscriptions_per_connection = 256
//! handshake_timeout_ms = 5000
//! frame_timeout_ms = 10000
//! heartbeat_interval_ms = 10000
//! default_capacity = 1000
//! max_capacity = 1000000
//! memory_budget_bytes = 104857600
//! durable_expiry_secs = 600
//! stats_interval_secs = 30
//!
//! [logging]
//! level = "info"
//!
//! [store]
//! # The event store (see `config/store.rs`): path relative to this agent's state directory.
//! enabled = true
//! path = "events.redb"
//! max_bytes = "1GiB"
//! max_age = "7d"
//!
//! [detection]
//! # The Sigma engine (see `config/detection.rs`).
//! rules = ["/etc/daemoneye/rules"]
//! fold_window = "60s"
//! enrich_level = "high"
//!
//! [tasks]
//! timeout = "10s"
//! max_attempts = 3
//!
//! [bridge.nats]
//! # The NATS bridge (see `config/bridge.rs`); no section, no bridge.
//! servers = ["nats://127.0.0.1:4222"]
//! export = ["alerts.#"]
//!
//! [agent]
//! # Root of the agents' state; each agent instance keeps its own directory below it,
//! # named after its socket, and each collector one inside that.
//! state_dir = "/var/lib/daemoneye"
//!
//! [[collectors]]
//! name = "procmond"
//! binary = "procmond"
//!
//! # Started elsewhere: accepted only under this uid.
//! [[collectors]]
//! name = "netmond"
//! external = true
//! uid = 1001
//!
//! [[acl.rules]]
//! uid = 1001
//! publish = ["events.#"]
//! subscribe = ["events.#"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemoneye_core::acl::{Acl, AclConfig};
use daemoneye_core::broker::BrokerConfig;
use serde::{Deserialize, Serialize};

use crate::logging::LogFilter;

mod bridge;
mod detection;
pub(crate) mod env;
mod store;

pub use bridge::{BridgeSection, MACHINE_ID, NatsAuth, NatsSection, NatsSettings, read_machine_id};
pub use detection::{
    DetectionSection, DetectionSettings, ENRICHMENT_KINDS, LEVELS, TasksSection, TasksSettings,
};
pub use env::{ENV_PREFIX, EnvOverride, env_overrides};
pub use store::{
    ByteSize, DEFAULT_STORE_FILE, HumaneDuration, StoreSection, parse_byte_size,
    parse_humane_duration,
};

/// Why the configuration is unusable; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has an unknown key or a wrong type.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (names the key and the line).
        message: String,
    },
    /// A value is out of its range.
    #[error("config key {key} = {value}: {why}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// The value given.
        value: String,
        /// The allowed range.
        why: String,
    },
    /// An environment override names no key, or its value does not fit the key.
    #[error("environment variable {variable} = {value:?}: {reason}")]
    Environment {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The ACL section is invalid.
    #[error("config [acl]: {0}")]
    Acl(#[from] daemoneye_core::acl::AclError),
}

/// `[broker]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Socket path (else `DAEMONEYE_BROKER_SOCKET`, else the default).
    pub socket: Option<PathBuf>,
    /// Connections beyond this are refused.
    pub max_connections: u64,
    /// Largest frame body.
    pub max_frame: u64,
    /// Subscriptions per connection.
    pub max_subscriptions_per_connection: u64,
    /// Time a client has to say Hello.
    pub handshake_timeout_ms: u64,
    /// Time a started frame has to arrive whole (from its first byte, not extended by
    /// progress; see `BrokerConfig::frame_timeout`).
    pub frame_timeout_ms: u64,
    /// Keepalive interval.
    pub heartbeat_interval_ms: u64,
    /// Queue capacity of a subscription that does not ask.
    pub default_capacity: u64,
    /// Largest capacity a subscription may ask for.
    pub max_capacity: u64,
    /// Bytes queued across all subscriptions.
    pub memory_budget_bytes: u64,
    /// Durable subscriptions whose owner stays away longer are removed.
    pub durable_expiry_secs: u64,
    /// Interval of `$sys.broker.stats`.
    pub stats_interval_secs: u64,
}

impl Default for BrokerSection {
    fn default() -> Self {
        let d = BrokerConfig::default();
        Self {
            socket: None,
            max_connections: d.max_connections as u64,
            max_frame: u64::from(d.max_frame),
            max_subscriptions_per_connection: d.max_subscriptions_per_connection as u64,
            handshake_timeout_ms: d.handshake_timeout.as_millis() as u64,
            frame_timeout_ms: d.frame_timeout.as_millis() as u64,
            heartbeat_interval_ms: d.heartbeat_interval.as_millis() as u64,
            default_capacity: u64::from(d.default_capacity),
            max_capacity: u64::from(d.max_capacity),
            memory_budget_bytes: d.memory_budget,
            durable_expiry_secs: d.durable_expiry.as_secs(),
            stats_interval_secs: d.stats_interval.as_secs(),
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`), or comma-separated
    /// directives: bare levels and `target=level`.
    pub level: LogFilter,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            level: "info".parse().expect("a level name"),
        }
    }
}

/// One `[[collectors]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Unique name (used by `daemoneye-cli collectors ...`), and the id the collector
    /// registers under (the agent passes it in `DAEMONEYE_COLLECTOR_ID`).
    pub name: String,
    /// A path (with `/`), or a name looked up in the agent's directory, then `PATH`.
    /// Required unless `external`.
    pub binary: Option<String>,
    /// Started elsewhere, not by the agent: its registrations are accepted only from `uid`.
    #[serde(default)]
    pub external: bool,
    /// The uid an external collector runs as (required with `external`).
    pub uid: Option<u32>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (`DAEMONEYE_BROKER_SOCKET` is always set).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// Capabilities it serves (task routing).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Restart after an unexpected exit (default true).
    pub auto_restart: Option<bool>,
    /// Restarts allowed within the window (default 5).
    pub max_restarts: Option<u64>,
    /// The restart-counting window (default 60 s).
    pub restart_window_secs: Option<u64>,
    /// First restart delay (default 1000 ms).
    pub backoff_initial_ms: Option<u64>,
    /// Largest restart delay (default 60000 ms).
    pub backoff_max_ms: Option<u64>,
    /// A run this long resets the restart count (default 60 s).
    pub stable_after_secs: Option<u64>,
    /// SIGTERM to SIGKILL (default 10000 ms).
    pub stop_timeout_ms: Option<u64>,
}

/// `[agent]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Root of the state directories (default: `/var/lib/daemoneye` for root, else
    /// `$XDG_STATE_HOME/daemoneye` or `~/.local/state/daemoneye`). This agent's own
    /// directory is `agents/<socket name>-<hash of the socket path>` below it.
    pub state_dir: Option<PathBuf>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Broker limits.
    pub broker: BrokerSection,
    /// Logging.
    pub logging: LoggingSection,
    /// The agent's own settings.
    pub agent: AgentSection,
    /// The event store.
    pub store: StoreSection,
    /// The detection engine.
    pub detection: DetectionSection,
    /// The task coordinator.
    pub tasks: TasksSection,
    /// Bridges to other buses (`[bridge.nats]`).
    pub bridge: BridgeSection,
    /// Topic ACL.
    pub acl: AclConfig,
    /// Collectors to supervise. Absent: procmond, if a procmond binary is found.
    pub collectors: Option<Vec<CollectorConfig>>,
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

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses TOML text (named `path` in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Applies the `DAEMONEYE_AGENT_*` overrides found in `env` (see [`env_overrides`]);
    /// other variables are ignored, an unknown `DAEMONEYE_AGENT_*` one is an error.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        env::apply(self, env)
    }

    /// Checks every collector entry and resolves its binary. With no `[[collectors]]` at
    /// all, procmond is supervised if a procmond binary is found, else nothing.
    pub fn collector_specs(
        &self,
    ) -> Result<Vec<crate::agent::process::CollectorSpec>, ConfigError> {
        use daemoneye_core::supervisor::RestartPolicy;
        let Some(list) = &self.collectors else {
            return Ok(match crate::agent::process::resolve_binary("procmond") {
                Ok(binary) => vec![crate::agent::process::CollectorSpec {
                    name: "procmond".into(),
                    binary,
                    args: Vec::new(),
                    env: Default::default(),
                    working_dir: None,
                    capabilities: vec!["process".into()],
                    policy: RestartPolicy::default(),
                }],
                Err(_) => Vec::new(),
            });
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut specs = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let key = |field: &str| format!("collectors[{i}].{field}");
            let invalid = |field: &str, value: String, why: String| ConfigError::Invalid {
                key: key(field),
                value,
                why,
            };
            daemoneye_proto::frame::validate_name("name", &c.name)
                .map_err(|e| invalid("name", c.name.clone(), e.to_string()))?;
            if !seen.insert(c.name.clone()) {
                return Err(invalid(
                    "name",
                    c.name.clone(),
                    "is used by another collector".into(),
                ));
            }
            if c.external {
                if c.uid.is_none() {
                    return Err(invalid(
                        "uid",
                        String::new(),
                        "an external collector needs the uid it runs as".into(),
                    ));
                }
                if let Some(b) = &c.binary {
                    return Err(invalid(
                        "binary",
                        b.clone(),
                        "an external collector is not started by the agent".into(),
                    ));
                }
                continue;
            }
            if let Some(uid) = c.uid {
                return Err(invalid(
                    "uid",
                    uid.to_string(),
                    "only an external collector names its uid (a supervised one is known by its pid)".into(),
                ));
            }
            let Some(binary) = &c.binary else {
                return Err(invalid(
                    "binary",
                    String::new(),
                    "missing (or set external = true and uid for a collector started elsewhere)"
                        .into(),
                ));
            };
            let binary = crate::agent::process::resolve_binary(binary)
                .map_err(|why| invalid("binary", binary.clone(), why.to_string()))?;
            let d = RestartPolicy::default();
            // An optional duration field: the default, or the value checked against its range
            // and converted with `unit` (Duration::from_millis or from_secs).
            let duration = |field: &str,
                            v: Option<u64>,
                            default: Duration,
                            (min, max): (u64, u64),
                            unit: fn(u64) -> Duration|
             -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(v) => {
                        check(&key(field), v, min, max)?;
                        Ok(unit(v))
                    }
                }
            };
            let ms: fn(u64) -> Duration = Duration::from_millis;
            let secs: fn(u64) -> Duration = Duration::from_secs;
            let max_restarts = match c.max_restarts {
                None => d.max_restarts,
                Some(v) => {
                    check(&key("max_restarts"), v, 0, 1000)?;
                    v as u32
                }
            };
            let policy = RestartPolicy {
                auto_restart: c.auto_restart.unwrap_or(d.auto_restart),
                max_restarts,
                window: duration(
                    "restart_window_secs",
                    c.restart_window_secs,
                    d.window,
                    (1, 86_400),
                    secs,
                )?,
                backoff_initial: duration(
                    "backoff_initial_ms",
                    c.backoff_initial_ms,
                    d.backoff_initial,
                    (1, 3_600_000),
                    ms,
                )?,
                backoff_max: duration(
                    "backoff_max_ms",
                    c.backoff_max_ms,
                    d.backoff_max,
                    (1, 3_600_000),
                    ms,
                )?,
                stable_after: duration(
                    "stable_after_secs",
                    c.stable_after_secs,
                    d.stable_after,
                    (1, 86_400),
                    secs,
                )?,
                stop_timeout: duration(
                    "stop_timeout_ms",
                    c.stop_timeout_ms,
                    d.stop_timeout,
                    (1, 600_000),
                    ms,
                )?,
            };
            if policy.stable_after < policy.window {
                return Err(invalid(
                    "stable_after_secs",
                    policy.stable_after.as_secs().to_string(),
                    format!(
                        "must be at least restart_window_secs ({}), or a reset could exceed max_restarts within one window",
                        policy.window.as_secs()
                    ),
                ));
            }
            if policy.backoff_initial > policy.backoff_max {
                return Err(invalid(
                    "backoff_initial_ms",
                    policy.backoff_initial.as_millis().to_string(),
                    "must not exceed backoff_max_ms".into(),
                ));
            }
            specs.push(crate::agent::process::CollectorSpec {
                name: c.name.clone(),
                binary,
                args: c.args.clone(),
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                capabilities: c.capabilities.clone(),
                policy,
            });
        }
        Ok(specs)
    }

    /// The collectors the config names as started elsewhere: (id, uid). Checked by
    /// [`AgentConfig::collector_specs`].
    pub fn external_collectors(&self) -> Vec<(String, u32)> {
        self.collectors
            .iter()
            .flatten()
            .filter(|c| c.external)
            .filter_map(|c| Some((c.name.clone(), c.uid?)))
            .collect()
    }

    /// Root of the state directories: `[agent] state_dir`, else the default.
    pub fn state_root(&self) -> PathBuf {
        self.agent
            .state_dir
            .clone()
            .unwrap_or_else(crate::paths::default_state_dir)
    }

    /// Checks every value and builds the broker's configuration and ACL for `owner_uid`.
    pub fn broker_config(&self, owner_uid: u32) -> Result<(BrokerConfig, Acl), ConfigError> {
        let b = &self.broker;
        check("broker.max_connections", b.max_connections, 1, 65_536)?;
        check("broker.max_frame", b.max_frame, 1024, 64 * 1024 * 1024)?;
        check(
            "broker.max_subscriptions_per_connection",
            b.max_subscriptions_per_connection,
            1,
            1_000_000,
        )?;
        check(
            "broker.handshake_timeout_ms",
            b.handshake_timeout_ms,
            10,
            600_000,
        )?;
        check(
            "broker.frame_timeout_ms",
            b.frame_timeout_ms,
            100,
            3_600_000,
        )?;
        check(
            "broker.heartbeat_interval_ms",
            b.heartbeat_interval_ms,
            100,
            3_600_000,
        )?;
        check(
            "broker.default_capacity",
            b.default_capacity,
            1,
            b.max_capacity.max(1),
        )?;
        check("broker.max_capacity", b.max_capacity, 1, 100_000_000)?;
        check(
            "broker.memory_budget_bytes",
            b.memory_budget_bytes,
            64 * 1024,
            1 << 40,
        )?;
        check(
            "broker.durable_expiry_secs",
            b.durable_expiry_secs,
            1,
            30 * 24 * 3600,
        )?;
        check(
            "broker.stats_interval_secs",
            b.stats_interval_secs,
            1,
            24 * 3600,
        )?;
        let acl = Acl::compile(owner_uid, &self.acl)?;
        let config = BrokerConfig {
            owner_uid,
            max_frame: b.max_frame as u32,
            max_connections: b.max_connections as usize,
            max_subscriptions_per_connection: b.max_subscriptions_per_connection as usize,
            handshake_timeout: Duration::from_millis(b.handshake_timeout_ms),
            frame_timeout: Duration::from_millis(b.frame_timeout_ms),
            heartbeat_interval: Duration::from_millis(b.heartbeat_interval_ms),
            default_capacity: b.default_capacity as u32,
            max_capacity: b.max_capacity as u32,
            memory_budget: b.memory_budget_bytes,
            durable_expiry: Duration::from_secs(b.durable_expiry_secs),
            stats_interval: Duration::from_secs(b.stats_interval_secs),
            ..BrokerConfig::default()
        };
        Ok((config, acl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.toml"), text)
    }

    #[test]
    fn empty_config_gives_the_defaults() {
        let c = parse("").expect("empty is valid");
        let (b, _) = c.broker_config(1000).expect("defaults are valid");
        assert_eq!(b.max_connections, 64);
        assert_eq!(b.default_capacity, 1000);
        assert_eq!(b.memory_budget, 100 * 1024 * 1024);
        assert_eq!(b.frame_timeout, Duration::from_secs(10));
    }

    #[test]
    fn frame_timeout_is_configurable_and_checked() {
        let c = parse("[broker]\nframe_timeout_ms = 2500\n").expect("parses");
        let (b, _) = c.broker_config(1000).expect("valid");
        assert_eq!(b.frame_timeout, Duration::from_millis(2500));
        let c = parse("[broker]\nframe_timeout_ms = 0\n").expect("parses");
        let err = c.broker_config(1000).expect_err("zero");
        assert!(err.to_string().contains("broker.frame_timeout_ms"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[broker]\nmax_conections = 3\n").expect_err("typo");
        assert!(err.to_string().contains("max_conections"), "{err}");
    }

    #[test]
    fn negative_or_absurd_values_are_named() {
        let err = parse("[broker]\nhandshake_timeout_ms = -5\n").expect_err("negative");
        assert!(err.to_string().contains("handshake_timeout_ms"), "{err}");
        let c = parse("[broker]\nmax_connections = 0\n").expect("parses");
        let err = c.broker_config(0).expect_err("zero connections");
        assert!(
            err.to_string().contains("broker.max_connections = 0"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_apply_and_bad_ones_are_named() {
        let mut c = AgentConfig::default();
        c.apply_env([(
            "DAEMONEYE_AGENT_MAX_CONNECTIONS".to_string(),
            "3".to_string(),
        )])
        .expect("valid");
        assert_eq!(c.broker.max_connections, 3);
        let err = c
            .apply_env([(
                "DAEMONEYE_AGENT_MAX_CONNECTIONS".to_string(),
                "lots".to_string(),
            )])
            .expect_err("not a number");
        assert!(
            err.to_string().contains("DAEMONEYE_AGENT_MAX_CONNECTIONS"),
            "{err}"
        );
        // Other components' variables are not ours.
        c.apply_env([("DAEMONEYE_PROCMOND_INTERVAL".to_string(), "5".to_string())])
            .expect("ignored");
    }

    #[test]
    fn collector_entries_are_checked_and_named() {
        let ok =
            parse("[[collectors]]\nname = \"sh\"\nbinary = \"/bin/sh\"\nstop_timeout_ms = 500\n")
                .expect("parses");
        let specs = ok.collector_specs().expect("valid");
        assert_eq!(specs[0].policy.stop_timeout, Duration::from_millis(500));
        let missing =
            parse("[[collectors]]\nname = \"x\"\nbinary = \"/no/such/bin\"\n").expect("parses");
        let err = missing.collector_specs().expect_err("missing binary");
        assert!(
            err.to_string().contains("collectors[0].binary")
                && err.to_string().contains("/no/such/bin"),
            "{err}"
        );
        let negative =
            parse("[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\nstop_timeout_ms = -1\n");
        assert!(
            negative
                .expect_err("negative")
                .to_string()
                .contains("stop_timeout_ms")
        );
        let absurd = parse(
            "[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\nstop_timeout_ms = 99999999999\n",
        )
        .expect("parses");
        let err = absurd.collector_specs().expect_err("absurd");
        assert!(
            err.to_string().contains("collectors[0].stop_timeout_ms"),
            "{err}"
        );
        let short =
            parse("[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\nstable_after_secs = 5\n")
                .expect("parses");
        assert!(
            short
                .collector_specs()
                .expect_err("stable < window")
                .to_string()
                .contains("stable_after_secs")
        );
        let twice = parse("[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\n[[collectors]]\nname = \"x\"\nbinary = \"/bin/sh\"\n").expect("parses");
        assert!(
            twice
                .collector_specs()
                .expect_err("duplicate")
                .to_string()
                .contains("used by another collector")
        );
    }

    #[test]
    fn bad_acl_filter_is_named() {
        let c = parse("[[acl.rules]]\nuid = 5\npublish = [\"a.#.b\"]\n").expect("parses");
        let err = c.broker_config(0).expect_err("bad filter");
        assert!(err.to_string().contains("a.#.b"), "{err}");
    }
}
