//! Environment overrides of the agent's configuration, derived from the config's own fields.
//!
//! The keys are read from each section's `Deserialize` (the field list serde's derive passes
//! to `deserialize_struct`), and a value is set by writing it into the section's TOML form
//! and reading the section back, so it is checked exactly like the same key in a file.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserializer, Serialize};

use super::{AgentConfig, ConfigError};

/// Prefix of the agent's environment overrides.
pub const ENV_PREFIX: &str = "DAEMONEYE_AGENT_";

/// Variables whose name predates the derived ones, and the `section.key` each sets.
const LEGACY_NAMES: &[(&str, &str)] = &[("DAEMONEYE_AGENT_LOG_LEVEL", "logging.level")];

/// One environment variable and the config key it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    /// The variable, e.g. `DAEMONEYE_AGENT_BROKER_MAX_CONNECTIONS`.
    pub variable: String,
    /// The section, e.g. `broker`.
    pub section: &'static str,
    /// The key in that section, e.g. `max_connections`.
    pub key: &'static str,
}

impl EnvOverride {
    /// The dotted key, e.g. `broker.max_connections`.
    pub fn dotted_key(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

/// A `[section]` of plain values, as the overrides see it.
pub(crate) trait ValueSection {
    /// Its keys, in declaration order.
    fn keys(&self) -> &'static [&'static str];
    /// Sets `key` from the text `raw`: as a string if the key takes one, else as a TOML
    /// literal (integer, boolean). The error is the deserializer's reason.
    fn set(&mut self, key: &str, raw: &str) -> Result<(), String>;
}

impl<T: Serialize + DeserializeOwned> ValueSection for T {
    fn keys(&self) -> &'static [&'static str] {
        field_names::<T>()
    }

    fn set(&mut self, key: &str, raw: &str) -> Result<(), String> {
        let table = toml::Table::try_from(&*self).map_err(|e| e.to_string())?;
        let with = |value: toml::Value| {
            let mut table = table.clone();
            table.insert(key.to_string(), value);
            toml::Value::Table(table).try_into::<T>()
        };
        let parsed = match with(toml::Value::String(raw.to_string())) {
            Ok(section) => section,
            Err(as_text) => match toml_literal(raw.trim()) {
                Some(value) => with(value).map_err(|e| e.to_string())?,
                None => return Err(as_text.to_string()),
            },
        };
        *self = parsed;
        Ok(())
    }
}

/// `raw` read as a TOML value (`3`, `true`), if it is one.
fn toml_literal(raw: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()?
        .remove("v")
}

/// The fields serde's derive declares for `T` (empty if `T` is not a struct).
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

impl AgentConfig {
    /// The sections of plain values, by name: every key of these has an environment
    /// override. The other sections (`acl`, `collectors`) are lists and have none, and
    /// `bridge` holds tables (`[bridge.nats]`, whose lists and optional keys are set in
    /// the file).
    pub(super) fn value_sections(&mut self) -> [(&'static str, &mut dyn ValueSection); 6] {
        [
            ("broker", &mut self.broker),
            ("logging", &mut self.logging),
            ("agent", &mut self.agent),
            ("store", &mut self.store),
            ("detection", &mut self.detection),
            ("tasks", &mut self.tasks),
        ]
    }
}

/// Every environment override the agent reads, derived from the config's fields.
pub fn env_overrides() -> Vec<EnvOverride> {
    let mut config = AgentConfig::default();
    let keys: Vec<(&'static str, &'static str)> = config
        .value_sections()
        .iter()
        .flat_map(|(section, s)| s.keys().iter().map(move |key| (*section, *key)))
        .collect();
    let unique = |key: &str| keys.iter().filter(|(_, k)| *k == key).count() == 1;
    let mut out = Vec::new();
    for &(section, key) in &keys {
        let name = |rest: String| EnvOverride {
            variable: format!("{ENV_PREFIX}{}", rest.to_ascii_uppercase()),
            section,
            key,
        };
        out.push(name(format!("{section}_{key}")));
        if unique(key) {
            out.push(name(key.to_string()));
        }
    }
    for &(variable, dotted) in LEGACY_NAMES {
        if let Some(&(section, key)) = keys.iter().find(|(s, k)| format!("{s}.{k}") == dotted) {
            out.push(EnvOverride {
                variable: variable.to_string(),
                section,
                key,
            });
        }
    }
    out
}

pub(super) fn apply(
    config: &mut AgentConfig,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let overrides = env_overrides();
    for (variable, value) in env {
        if !variable.starts_with(ENV_PREFIX) {
            continue;
        }
        let refuse = |reason: String| ConfigError::Environment {
            variable: variable.clone(),
            value: value.clone(),
            reason,
        };
        let Some(o) = overrides.iter().find(|o| o.variable == variable) else {
            return Err(refuse(
                "unknown variable (see daemoneye-agent --help)".into(),
            ));
        };
        let mut sections = config.value_sections();
        let Some((_, section)) = sections.iter_mut().find(|(name, _)| *name == o.section) else {
            return Err(refuse(format!("no section [{}]", o.section)));
        };
        section
            .set(o.key, &value)
            .map_err(|why| refuse(format!("{}: {why}", o.dotted_key())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn apply_one(config: &mut AgentConfig, variable: &str, value: &str) -> Result<(), ConfigError> {
        config.apply_env([(variable.to_string(), value.to_string())])
    }

    /// The section `section` of `config` as TOML.
    fn section_toml(config: &AgentConfig, section: &str) -> toml::Table {
        let text = match section {
            "broker" => toml::to_string(&config.broker),
            "logging" => toml::to_string(&config.logging),
            "agent" => toml::to_string(&config.agent),
            "store" => toml::to_string(&config.store),
            "detection" => toml::to_string(&config.detection),
            "tasks" => toml::to_string(&config.tasks),
            other => panic!("no section {other}"),
        }
        .expect("serializes");
        toml::from_str(&text).expect("parses")
    }

    #[test]
    fn every_key_of_every_value_section_has_a_variable_that_sets_it() {
        let mut config = AgentConfig::default();
        let overrides = env_overrides();
        let sections: Vec<_> = config
            .value_sections()
            .iter()
            .map(|(name, s)| (*name, s.keys()))
            .collect();
        for (section, keys) in sections {
            assert!(!keys.is_empty(), "[{section}] has no keys?");
            for &key in keys {
                let canonical = format!("DAEMONEYE_AGENT_{}_{}", section, key).to_uppercase();
                let o = overrides
                    .iter()
                    .find(|o| o.variable == canonical)
                    .unwrap_or_else(|| panic!("{section}.{key} has no {canonical}"));
                assert_eq!((o.section, o.key), (section, key));
                // A value of the key's type (a number, a path/text, a log level) reaches
                // that key.
                let mut c = AgentConfig::default();
                let value = [
                    "4242",
                    "/tmp/daemoneye-env-test",
                    "debug",
                    "true",
                    "[\"/tmp/daemoneye-env-test\"]",
                ]
                .into_iter()
                .find(|v| apply_one(&mut c, &canonical, v).is_ok())
                .unwrap_or_else(|| panic!("{canonical} takes no number, path or level"));
                let set = section_toml(&c, section);
                let shown = set.get(key).map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                assert_eq!(
                    shown.as_deref(),
                    Some(value),
                    "{canonical} did not set {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn every_section_is_a_value_section_or_a_list() {
        let mut config = AgentConfig::default();
        let mut value_sections: Vec<&str> = config
            .value_sections()
            .iter()
            .map(|(name, _)| *name)
            .collect();
        value_sections.extend(["acl", "collectors", "bridge"]);
        value_sections.sort_unstable();
        let mut declared = field_names::<AgentConfig>().to_vec();
        declared.sort_unstable();
        assert_eq!(
            declared, value_sections,
            "a new section of plain values belongs in AgentConfig::value_sections"
        );
    }

    #[test]
    fn the_short_names_in_use_still_work() {
        let mut c = AgentConfig::default();
        for (variable, value) in [
            ("DAEMONEYE_AGENT_MAX_CONNECTIONS", "3"),
            ("DAEMONEYE_AGENT_SOCKET", "/run/x.sock"),
            ("DAEMONEYE_AGENT_STATE_DIR", "/var/tmp/de"),
            ("DAEMONEYE_AGENT_LOG_LEVEL", "debug"),
            ("DAEMONEYE_AGENT_BROKER_FRAME_TIMEOUT_MS", " 2500 "),
        ] {
            apply_one(&mut c, variable, value).expect(variable);
        }
        assert_eq!(c.broker.max_connections, 3);
        assert_eq!(c.broker.socket, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(c.agent.state_dir, Some(PathBuf::from("/var/tmp/de")));
        assert_eq!(c.logging.level, "debug");
        assert_eq!(c.broker.frame_timeout_ms, 2500);
        // A path made of digits is still a path.
        apply_one(&mut c, "DAEMONEYE_AGENT_SOCKET", "123").expect("digits");
        assert_eq!(c.broker.socket, Some(PathBuf::from("123")));
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_key() {
        let mut c = AgentConfig::default();
        for (variable, value) in [
            ("DAEMONEYE_AGENT_MAX_CONNECTIONS", "lots"),
            ("DAEMONEYE_AGENT_BROKER_MAX_FRAME", "-5"),
            ("DAEMONEYE_AGENT_BROKER_DURABLE_EXPIRY_SECS", "true"),
        ] {
            let err = apply_one(&mut c, variable, value).expect_err(variable);
            let text = err.to_string();
            assert!(text.contains(variable), "{text}");
            assert!(text.contains("broker."), "{text}");
        }
        assert_eq!(c, AgentConfig::default(), "a refused value changes nothing");
    }

    #[test]
    fn unknown_variables_of_ours_are_refused_and_others_ignored() {
        let mut c = AgentConfig::default();
        let err = apply_one(&mut c, "DAEMONEYE_AGENT_MAX_CONECTIONS", "3").expect_err("typo");
        assert!(
            err.to_string().contains("DAEMONEYE_AGENT_MAX_CONECTIONS"),
            "{err}"
        );
        apply_one(&mut c, "DAEMONEYE_PROCMOND_INTERVAL", "5").expect("not ours");
        apply_one(&mut c, "HOME", "/root").expect("not ours");
    }
}
