//! `[store]`: the event store the agent keeps of what crosses its bus.
//!
//! ```toml
//! [store]
//! enabled = true
//! # Relative to the agent's state directory.
//! path = "events.redb"
//! # A number of bytes, or with a unit: "500MB", "1GiB".
//! max_bytes = "1GiB"
//! # A number of seconds, or humane: "7d", "12h", "30m", "1h 30m".
//! max_age = "7d"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;
use crate::store::{DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, StoreConfig};

/// The store's file name in the agent's state directory, unless `path` says otherwise.
pub const DEFAULT_STORE_FILE: &str = "events.redb";

/// `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Keep the store (default true).
    pub enabled: bool,
    /// The file; a relative path is in the agent's state directory (default
    /// `events.redb` there).
    pub path: Option<PathBuf>,
    /// The file stays about this size or smaller: oldest events go first.
    pub max_bytes: ByteSize,
    /// Events older than this go.
    pub max_age: HumaneDuration,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            enabled: true,
            path: None,
            max_bytes: ByteSize {
                bytes: DEFAULT_MAX_BYTES,
                text: Some("1GiB".into()),
            },
            max_age: HumaneDuration {
                duration: DEFAULT_MAX_AGE,
                text: Some("7d".into()),
            },
        }
    }
}

impl StoreSection {
    /// Checks the values and says where the store is and how it is bounded, given the
    /// agent's state directory; `None` when the store is disabled.
    pub fn resolve(&self, state_dir: &Path) -> Result<Option<(PathBuf, StoreConfig)>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let invalid = |key: &str, value: String, why: &str| ConfigError::Invalid {
            key: format!("store.{key}"),
            value,
            why: why.into(),
        };
        const MIB: u64 = 1 << 20;
        if !(MIB..=(1 << 50)).contains(&self.max_bytes.bytes) {
            return Err(invalid(
                "max_bytes",
                self.max_bytes.to_string(),
                "must be between 1MiB and 1PiB",
            ));
        }
        let age = self.max_age.duration;
        if !(Duration::from_secs(60)..=Duration::from_secs(100 * 365 * 86_400)).contains(&age) {
            return Err(invalid(
                "max_age",
                self.max_age.to_string(),
                "must be between 1 minute and 100 years",
            ));
        }
        let path = match &self.path {
            None => state_dir.join(DEFAULT_STORE_FILE),
            Some(p) if p.as_os_str().is_empty() => {
                return Err(invalid("path", String::new(), "must not be empty"));
            }
            Some(p) => state_dir.join(p),
        };
        Ok(Some((
            path,
            StoreConfig {
                max_bytes: self.max_bytes.bytes,
                max_age: age,
            },
        )))
    }
}

/// A size in bytes, given as a number or as text with a unit (`500MB`, `1GiB`, `64 KiB`);
/// written back as it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteSize {
    /// The size.
    pub bytes: u64,
    text: Option<String>,
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(t) => f.write_str(t),
            None => write!(f, "{}", self.bytes),
        }
    }
}

/// Parses `500MB`, `1GiB`, `64 KiB`, `4096` (decimal units are powers of 1000, binary ones
/// of 1024).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 500MB, 1GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.text {
            Some(t) => s.serialize_str(t),
            None => s.serialize_u64(self.bytes),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(ByteSize {
                bytes: u64::try_from(n)
                    .map_err(|_| serde::de::Error::custom("a size is not negative"))?,
                text: None,
            }),
            NumberOrText::Text(t) => Ok(ByteSize {
                bytes: parse_byte_size(&t).map_err(serde::de::Error::custom)?,
                text: Some(t),
            }),
        }
    }
}

/// A duration, given as a number of seconds or as humane text (`7d`, `12h`, `1h 30m`);
/// written back as it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumaneDuration {
    /// The duration.
    pub duration: Duration,
    text: Option<String>,
}

impl HumaneDuration {
    /// `duration`, written back as `text` (`"60s"`).
    pub fn new(duration: Duration, text: &str) -> Self {
        HumaneDuration {
            duration,
            text: Some(text.to_string()),
        }
    }
}

impl std::fmt::Display for HumaneDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(t) => f.write_str(t),
            None => write!(f, "{}", self.duration.as_secs()),
        }
    }
}

/// Parses `7d`, `12h`, `30m`, `1h 30m`, or a bare number of seconds.
pub fn parse_humane_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{text:?} is not a duration (e.g. 7d, 12h, 30m): {e}"))
}

impl Serialize for HumaneDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.text {
            Some(t) => s.serialize_str(t),
            None => s.serialize_u64(self.duration.as_secs()),
        }
    }
}

impl<'de> Deserialize<'de> for HumaneDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(HumaneDuration {
                duration: Duration::from_secs(
                    u64::try_from(n)
                        .map_err(|_| serde::de::Error::custom("a duration is not negative"))?,
                ),
                text: None,
            }),
            NumberOrText::Text(t) => Ok(HumaneDuration {
                duration: parse_humane_duration(&t).map_err(serde::de::Error::custom)?,
                text: Some(t),
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(i64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.toml"), text)
    }

    #[test]
    fn the_defaults_put_a_1_gib_7_day_store_in_the_state_directory() {
        let (path, config) = AgentConfig::default()
            .store
            .resolve(Path::new("/state"))
            .expect("valid")
            .expect("enabled");
        assert_eq!(path, Path::new("/state/events.redb"));
        assert_eq!(config, StoreConfig::default());
    }

    #[test]
    fn sizes_and_durations_take_units_or_plain_numbers() {
        let c = parse("[store]\nmax_bytes = \"500MB\"\nmax_age = \"12h\"\npath = \"x/e.redb\"\n")
            .expect("parses");
        let (path, config) = c
            .store
            .resolve(Path::new("/s"))
            .expect("valid")
            .expect("on");
        assert_eq!(path, Path::new("/s/x/e.redb"));
        assert_eq!(config.max_bytes, 500_000_000);
        assert_eq!(config.max_age, Duration::from_secs(12 * 3600));
        let c = parse("[store]\nmax_bytes = 2097152\nmax_age = 3600\npath = \"/abs.redb\"\n")
            .expect("parses");
        let (path, config) = c
            .store
            .resolve(Path::new("/s"))
            .expect("valid")
            .expect("on");
        assert_eq!(path, Path::new("/abs.redb"));
        assert_eq!(
            (config.max_bytes, config.max_age.as_secs()),
            (2 << 20, 3600)
        );
        assert_eq!(parse_byte_size("64 KiB"), Ok(65_536));
        assert_eq!(
            parse_humane_duration("1h 30m"),
            Ok(Duration::from_secs(5400))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[store]\nmax_bytes = \"lots\"\n", "max_bytes"),
            ("[store]\nmax_age = \"soon\"\n", "max_age"),
            ("[store]\nmax_age = -1\n", "max_age"),
            ("[store]\nenable = true\n", "enable"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(key), "{err}");
        }
        for (text, key) in [
            ("[store]\nmax_bytes = 1000\n", "store.max_bytes = 1000"),
            ("[store]\nmax_age = \"5s\"\n", "store.max_age = 5s"),
        ] {
            let err = parse(text)
                .expect("parses")
                .store
                .resolve(Path::new("/s"))
                .expect_err(text);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn a_disabled_store_resolves_to_nothing_and_the_environment_can_set_each_key() {
        let mut c = AgentConfig::default();
        c.apply_env([
            (
                "DAEMONEYE_AGENT_STORE_MAX_AGE".to_string(),
                "2d".to_string(),
            ),
            (
                "DAEMONEYE_AGENT_STORE_MAX_BYTES".to_string(),
                "64MiB".to_string(),
            ),
        ])
        .expect("valid");
        let (_, config) = c
            .store
            .resolve(Path::new("/s"))
            .expect("valid")
            .expect("on");
        assert_eq!(config.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(config.max_bytes, 64 << 20);
        c.apply_env([(
            "DAEMONEYE_AGENT_STORE_ENABLED".to_string(),
            "false".to_string(),
        )])
        .expect("valid");
        assert_eq!(c.store.resolve(Path::new("/s")).expect("valid"), None);
    }
}
