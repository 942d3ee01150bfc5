//! The pace of a collector's sources under the broker's backpressure: the interval a source
//! waits between two rounds of collection (a scan, a sample).
//!
//! Rules (DESIGN.md section 5: "collectors slow down, procmond: interval x1.5"):
//! - every pressure signal from the broker (Backpressure SlowDown or Blocked) stretches the
//!   interval in force by `slow_down_milli / 1000` (x1.5), up to `max_stretch` times the
//!   configured interval;
//! - the pressure clears on the broker's Backpressure None, or when no signal came for
//!   `quiet_periods` intervals in force (the broker repeats SlowDown at most once a second
//!   while it lasts and never announces its end; only Blocked ends with None). A collector
//!   that publishes once per interval sees a lasting pressure once per interval, so the
//!   quiet window counts in intervals, not seconds;
//! - when it clears, the interval goes back to the configured one **at once**, not in steps:
//!   the broker tells us again within one round if the pressure is still there, and every
//!   round spent slower than configured is visibility lost (a short-lived process a scan
//!   does not see). One slow round costs less than many.
//! - the configured interval changes with UpdateConfig (refused outside its bounds) and
//!   AdjustInterval (a factor, clamped to the bounds); the interval in force always stays
//!   within `[configured, configured x max_stretch]`, and equals the configured one while
//!   there is no pressure.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Instant;

/// Why [`Pacing::handle_timeout`] is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// No pressure signal for the quiet window: the pressure has lapsed.
    PressureLapse,
}

/// The broker's word on a publisher's traffic (`Backpressure.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pressure {
    /// Clear.
    #[default]
    None,
    /// A queue it feeds is at 80% of its capacity.
    SlowDown,
    /// The broker stopped reading it until a Block queue drains.
    Blocked,
}

impl From<daemoneye_proto::pb::bus::BackpressureLevel> for Pressure {
    fn from(level: daemoneye_proto::pb::bus::BackpressureLevel) -> Self {
        use daemoneye_proto::pb::bus::BackpressureLevel as L;
        match level {
            L::None => Pressure::None,
            L::SlowDown => Pressure::SlowDown,
            L::Blocked => Pressure::Blocked,
        }
    }
}

/// How the pace is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingConfig {
    /// The configured interval.
    pub interval: Duration,
    /// Smallest configured interval accepted.
    pub min_interval: Duration,
    /// Largest configured interval accepted.
    pub max_interval: Duration,
    /// Stretch per pressure signal, in thousandths (1500: x1.5).
    pub slow_down_milli: u32,
    /// The cap: the interval in force is at most the configured one times this.
    pub max_stretch: u32,
    /// Intervals in force without a signal after which the pressure has lapsed.
    pub quiet_periods: u32,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(3600),
            slow_down_milli: 1500,
            max_stretch: 8,
            quiet_periods: 2,
        }
    }
}

/// A configured interval outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interval {asked:?} is outside {min:?}..={max:?}")]
pub struct IntervalOutOfBounds {
    /// What was asked.
    pub asked: Duration,
    /// The smallest accepted.
    pub min: Duration,
    /// The largest accepted.
    pub max: Duration,
}

/// `d * milli / 1000`, saturating at `u64::MAX` nanoseconds.
fn scale(d: Duration, milli: u32) -> Duration {
    let nanos = d.as_nanos().saturating_mul(u128::from(milli)) / 1000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The pacing machine.
#[derive(Debug)]
pub struct Pacing {
    config: PacingConfig,
    current: Duration,
    pressure: Pressure,
    last_signal: Option<Instant>,
    changes: VecDeque<Duration>,
}

impl Pacing {
    /// Pacing at the configured interval (clamped into its bounds), no pressure.
    pub fn new(mut config: PacingConfig) -> Self {
        config.max_interval = config.max_interval.max(config.min_interval);
        config.interval = config
            .interval
            .clamp(config.min_interval, config.max_interval);
        config.max_stretch = config.max_stretch.max(1);
        config.slow_down_milli = config.slow_down_milli.max(1000);
        config.quiet_periods = config.quiet_periods.max(1);
        Self {
            current: config.interval,
            config,
            pressure: Pressure::None,
            last_signal: None,
            changes: VecDeque::new(),
        }
    }

    /// The interval in force.
    pub fn interval(&self) -> Duration {
        self.current
    }

    /// The configured interval.
    pub fn configured(&self) -> Duration {
        self.config.interval
    }

    /// The most the interval in force may be now.
    pub fn cap(&self) -> Duration {
        self.config.interval.saturating_mul(self.config.max_stretch)
    }

    /// The pressure in force.
    pub fn pressure(&self) -> Pressure {
        self.pressure
    }

    /// The configuration.
    pub fn config(&self) -> PacingConfig {
        self.config
    }

    fn set_current(&mut self, d: Duration) {
        if d != self.current {
            self.current = d;
            self.changes.push_back(d);
        }
    }

    /// A Backpressure signal arrived.
    pub fn handle_pressure(&mut self, now: Instant, pressure: Pressure) {
        match pressure {
            Pressure::None => {
                self.pressure = Pressure::None;
                self.last_signal = None;
                self.set_current(self.config.interval);
            }
            Pressure::SlowDown | Pressure::Blocked => {
                self.pressure = pressure;
                self.last_signal = Some(now);
                let stretched = scale(self.current, self.config.slow_down_milli).min(self.cap());
                self.set_current(stretched.max(self.config.interval));
            }
        }
    }

    /// The configured interval changes (UpdateConfig); refused outside the bounds.
    pub fn set_interval(
        &mut self,
        now: Instant,
        interval: Duration,
    ) -> Result<(), IntervalOutOfBounds> {
        if interval < self.config.min_interval || interval > self.config.max_interval {
            return Err(IntervalOutOfBounds {
                asked: interval,
                min: self.config.min_interval,
                max: self.config.max_interval,
            });
        }
        self.reconfigure(now, interval);
        Ok(())
    }

    /// The configured interval times `factor_milli / 1000` (AdjustInterval), clamped to
    /// the bounds; returns the new configured interval.
    pub fn adjust(&mut self, now: Instant, factor_milli: u32) -> Duration {
        let asked = scale(self.config.interval, factor_milli)
            .clamp(self.config.min_interval, self.config.max_interval);
        self.reconfigure(now, asked);
        asked
    }

    fn reconfigure(&mut self, _now: Instant, interval: Duration) {
        self.config.interval = interval;
        let in_force = match self.pressure {
            Pressure::None => interval,
            Pressure::SlowDown | Pressure::Blocked => self.current.clamp(interval, self.cap()),
        };
        self.set_current(in_force);
    }

    /// Time passed: a pressure with no signal for the quiet window lapses.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((due, Timer::PressureLapse)) = self.poll_timeout()
            && due <= now
        {
            self.handle_pressure(now, Pressure::None);
        }
    }

    /// The next change of the interval in force, for the sources.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Duration> {
        self.changes.pop_front()
    }

    /// When a pressure lapses.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let last = self.last_signal?;
        let window = self.current.saturating_mul(self.config.quiet_periods);
        Some((last.saturating_add(window), Timer::PressureLapse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_stretches_by_half_up_to_the_cap_and_a_clear_restores_at_once() {
        let mut p = Pacing::new(PacingConfig {
            interval: Duration::from_secs(10),
            max_stretch: 3,
            ..PacingConfig::default()
        });
        let now = Instant::ZERO;
        p.handle_pressure(now, Pressure::SlowDown);
        assert_eq!(p.interval(), Duration::from_secs(15));
        p.handle_pressure(now, Pressure::Blocked);
        assert_eq!(p.interval(), Duration::from_millis(22_500));
        p.handle_pressure(now, Pressure::SlowDown);
        assert_eq!(p.interval(), Duration::from_secs(30), "capped at 3x");
        p.handle_pressure(now, Pressure::None);
        assert_eq!(p.interval(), Duration::from_secs(10));
        let changes: Vec<_> = std::iter::from_fn(|| p.poll_output()).collect();
        assert_eq!(changes.len(), 4);
    }

    #[test]
    fn a_slow_down_not_repeated_lapses_after_its_quiet_window() {
        let mut p = Pacing::new(PacingConfig {
            interval: Duration::from_secs(10),
            ..PacingConfig::default()
        });
        p.handle_pressure(Instant::ZERO, Pressure::SlowDown);
        let (due, _) = p.poll_timeout().expect("lapse timer");
        assert_eq!(due, Instant::ZERO + Duration::from_secs(30));
        p.handle_timeout(due);
        assert_eq!(
            (p.interval(), p.pressure()),
            (Duration::from_secs(10), Pressure::None)
        );
        assert_eq!(p.poll_timeout(), None);
    }
}
