//! What a `CollectorControl` message on `control.collector.config.<id>` does to a running
//! collector. The interval's rules (bounds, AdjustInterval's clamping, the backpressure
//! stretch) are the core [`Pacing`] machine's; this only reads the message into it and
//! says what the runtime must do next. An UpdateConfig is checked whole before any of it
//! applies: a refused field leaves every setting as it was.

use daemoneye_core::Instant;
use daemoneye_core::collector::Pacing;
use daemoneye_proto::pb::control as pbc;
use daemoneye_proto::pb::control::collector_control::Command;

use super::config::CollectorSettings;

/// What the runtime does after a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlEffect {
    /// Nothing more.
    None,
    /// Start the sources (BeginMonitoring).
    Begin,
    /// Stop (GracefulShutdown).
    Shutdown,
}

/// Settings an UpdateConfig changed besides the interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Update {
    pub(crate) max_events_in_flight: Option<u64>,
    pub(crate) compute_hashes: Option<bool>,
}

/// The outcome of one control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlOutcome {
    pub(crate) ok: bool,
    pub(crate) message: String,
    pub(crate) effect: ControlEffect,
    pub(crate) update: Option<Update>,
    pub(crate) health_check: bool,
    pub(crate) shutdown_budget_ms: Option<u64>,
}

fn outcome(ok: bool, message: impl Into<String>, effect: ControlEffect) -> ControlOutcome {
    ControlOutcome {
        ok,
        message: message.into(),
        effect,
        update: None,
        health_check: false,
        shutdown_budget_ms: None,
    }
}

/// Applies `command` to the pacing machine and says what else to do.
pub(crate) fn apply(
    command: &pbc::CollectorControl,
    now: Instant,
    pacing: &mut Pacing,
    settings: &CollectorSettings,
) -> ControlOutcome {
    match &command.command {
        None => outcome(false, "empty control message", ControlEffect::None),
        Some(Command::HealthCheck(_)) => ControlOutcome {
            health_check: true,
            ..outcome(true, "health reported", ControlEffect::None)
        },
        Some(Command::BeginMonitoring(_)) => outcome(true, "monitoring", ControlEffect::Begin),
        Some(Command::GracefulShutdown(g)) => ControlOutcome {
            shutdown_budget_ms: (g.timeout_ms > 0).then_some(g.timeout_ms),
            ..outcome(true, "shutting down", ControlEffect::Shutdown)
        },
        Some(Command::AdjustInterval(a)) => {
            if a.factor_milli == 0 {
                return outcome(false, "factor_milli must be above 0", ControlEffect::None);
            }
            let got = pacing.adjust(now, a.factor_milli);
            outcome(
                true,
                format!("interval {}s", got.as_secs()),
                ControlEffect::None,
            )
        }
        Some(Command::UpdateConfig(u)) => {
            let config = pacing.config();
            if u.interval_secs != 0 {
                let asked = std::time::Duration::from_secs(u64::from(u.interval_secs));
                if asked < config.min_interval || asked > config.max_interval {
                    let why = format!(
                        "interval {}s refused: must be between {} and {} seconds",
                        u.interval_secs,
                        config.min_interval.as_secs(),
                        config.max_interval.as_secs()
                    );
                    return outcome(false, why, ControlEffect::None);
                }
            }
            let mut parts = Vec::new();
            if u.interval_secs != 0 {
                let asked = std::time::Duration::from_secs(u64::from(u.interval_secs));
                // Checked above: the machine cannot refuse it.
                let _ = pacing.set_interval(now, asked);
                parts.push(format!("interval {}s", u.interval_secs));
            }
            let mut update = Update::default();
            if u.max_events_in_flight != 0 {
                update.max_events_in_flight = Some(u64::from(u.max_events_in_flight));
                parts.push(format!("max events in flight {}", u.max_events_in_flight));
            }
            if let Some(h) = u.compute_hashes {
                update.compute_hashes = Some(h);
                parts.push(format!("compute_hashes {h}"));
            }
            let message = if parts.is_empty() {
                format!(
                    "nothing to change (interval {}s, compute_hashes {})",
                    pacing.configured().as_secs(),
                    settings.compute_hashes
                )
            } else {
                parts.join(", ")
            };
            ControlOutcome {
                update: Some(update),
                ..outcome(true, message, ControlEffect::None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_core::collector::PacingConfig;
    use std::time::Duration;

    fn update(interval_secs: u32) -> pbc::CollectorControl {
        pbc::CollectorControl {
            command: Some(Command::UpdateConfig(pbc::UpdateConfig {
                interval_secs,
                max_events_in_flight: 50,
                compute_hashes: Some(true),
            })),
        }
    }

    #[test]
    fn an_update_applies_whole_or_not_at_all() {
        let mut pacing = Pacing::new(PacingConfig::default());
        let s = CollectorSettings::default();
        let refused = apply(&update(2), Instant::ZERO, &mut pacing, &s);
        assert!(!refused.ok && refused.update.is_none(), "{refused:?}");
        assert!(
            refused.message.contains("between 5 and 3600"),
            "{}",
            refused.message
        );
        let ok = apply(&update(10), Instant::ZERO, &mut pacing, &s);
        assert!(ok.ok);
        assert_eq!(pacing.interval(), Duration::from_secs(10));
        assert_eq!(
            ok.update,
            Some(Update {
                max_events_in_flight: Some(50),
                compute_hashes: Some(true)
            })
        );
    }
}
