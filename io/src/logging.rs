//! Logging for every DaemonEye binary: `tracing` to stderr, with a filter the user gives.

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level is not a valid `tracing` filter.
    #[error("invalid log level {level:?}: {source}")]
    InvalidLevel {
        /// The filter given.
        level: String,
        /// Why tracing refused it.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global logger was already installed in this process.
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// Logs to stderr with `tracing` at `level` (a filter such as `info` or `daemoneye_io=debug`),
/// with colours only on a terminal.
pub fn init_logging(level: &str) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|source| {
        LoggingError::InvalidLevel {
            level: level.to_string(),
            source,
        }
    })?;
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
}
