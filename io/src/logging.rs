//! Logging for every DaemonEye binary: `tracing` to stderr, with a filter the user gives.
//! A filter is a level name, or comma-separated directives where each bare word is a level
//! and `target=level` sets one target's level; anything else is refused, never read as a
//! target name that silently turns logging off.

/// The level names a filter accepts (any case).
pub const LEVEL_NAMES: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level is not a valid filter.
    #[error("invalid log level {level:?}: {source}")]
    InvalidLevel {
        /// The filter given.
        level: String,
        /// Why it was refused.
        source: LevelError,
    },
    /// A global logger was already installed in this process.
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// Why a log filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// A bare word that is not a level name.
    #[error(
        "{word:?} is not a level (error, warn, info, debug, trace or off; `target=level` sets one target's level)"
    )]
    NotALevel {
        /// The word.
        word: String,
    },
    /// A `target=level` directive without a target.
    #[error("{directive:?} has no target before '='")]
    NoTarget {
        /// The directive.
        directive: String,
    },
    /// `tracing` refused the filter.
    #[error(transparent)]
    Filter(#[from] tracing_subscriber::filter::ParseError),
}

/// A log filter that [`parse_filter`] accepts; in the config it is checked as it is read,
/// like any other key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogFilter(String);

impl LogFilter {
    /// The filter's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogFilter {
    type Error = LevelError;
    fn try_from(text: String) -> Result<Self, LevelError> {
        parse_filter(&text)?;
        Ok(LogFilter(text))
    }
}

impl std::str::FromStr for LogFilter {
    type Err = LevelError;
    fn from_str(text: &str) -> Result<Self, LevelError> {
        Self::try_from(text.to_string())
    }
}

impl From<LogFilter> for String {
    fn from(filter: LogFilter) -> String {
        filter.0
    }
}

impl PartialEq<&str> for LogFilter {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_level(word: &str) -> bool {
    LEVEL_NAMES
        .iter()
        .any(|l| l.eq_ignore_ascii_case(word.trim()))
}

/// Parses a log filter: every bare word must be a level name, every `target=level` must
/// have a target and a level name.
pub fn parse_filter(filter: &str) -> Result<tracing_subscriber::EnvFilter, LevelError> {
    for directive in filter.split(',') {
        match directive.rsplit_once('=') {
            None if is_level(directive) => {}
            None => {
                return Err(LevelError::NotALevel {
                    word: directive.to_string(),
                });
            }
            Some((target, _)) if target.trim().is_empty() => {
                return Err(LevelError::NoTarget {
                    directive: directive.to_string(),
                });
            }
            Some((_, level)) if !is_level(level) => {
                return Err(LevelError::NotALevel {
                    word: level.to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(tracing_subscriber::EnvFilter::try_new(filter)?)
}

/// Logs to stderr with `tracing` at `level` (a filter such as `info` or `daemoneye_io=debug`),
/// with colours only on a terminal.
///
/// The NATS client's own log (`async_nats`) is off unless the filter names it: it repeats
/// every failed reconnect, and the bridge reports each problem once itself.
pub fn init_logging(level: &str) -> Result<(), LoggingError> {
    let mut filter = parse_filter(level).map_err(|source| LoggingError::InvalidLevel {
        level: level.to_string(),
        source,
    })?;
    if !level.contains("async_nats") {
        filter = filter.add_directive("async_nats=off".parse().map_err(|source| {
            LoggingError::InvalidLevel {
                level: level.to_string(),
                source: LevelError::from(source),
            }
        })?);
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|_| LoggingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_level_is_named() {
        let err = init_logging("info,=[").expect_err("not a filter");
        assert!(
            matches!(&err, LoggingError::InvalidLevel { level, .. } if level == "info,=["),
            "{err}"
        );
        assert!(
            err.to_string().contains("invalid log level \"info,=[\""),
            "{err}"
        );
    }

    #[test]
    fn bare_words_must_be_levels_and_directives_need_a_target_and_a_level() {
        for good in [
            "info",
            "WARN",
            "off",
            "warn,daemoneye_io=debug",
            "daemoneye_core::broker=trace",
        ] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for (bad, word) in [
            ("verbose", "verbose"),
            ("loud", "loud"),
            ("info,chatty", "chatty"),
        ] {
            let err = parse_filter(bad).expect_err(bad);
            assert!(
                matches!(&err, LevelError::NotALevel { word: w } if w == word),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            parse_filter("daemoneye_io=loud"),
            Err(LevelError::NotALevel { word }) if word == "loud"
        ));
        assert!(matches!(
            parse_filter("=debug"),
            Err(LevelError::NoTarget { .. })
        ));
        assert!(matches!(
            parse_filter(""),
            Err(LevelError::NotALevel { .. })
        ));
    }

    #[test]
    fn a_log_filter_is_checked_as_it_is_read() {
        #[derive(Debug, serde::Deserialize)]
        struct Section {
            #[allow(dead_code)]
            level: LogFilter,
        }
        let err = toml::from_str::<Section>("level = \"verbose\"").expect_err("not a level");
        assert!(
            err.to_string().contains("\"verbose\" is not a level"),
            "{err}"
        );
        let ok: Section = toml::from_str("level = \"warn,daemoneye_io=debug\"").expect("valid");
        assert_eq!(ok.level, "warn,daemoneye_io=debug");
        assert!("loud".parse::<LogFilter>().is_err());
    }
}
