//! Maps the runtime's monotonic clock onto the core's [`Instant`].
//!
//! The clock is tokio's: the operating system's monotonic clock in production, the
//! simulation's virtual time under turmoil (and with tokio's paused time in tests).

use std::time::Duration;

use daemoneye_core::Instant;

/// A source of core time.
pub trait Clock {
    /// The current core instant.
    fn now(&self) -> Instant;
    /// The real instant at which the core instant `at` falls (for sleeping until a deadline).
    fn to_std(&self, at: Instant) -> std::time::Instant;
}

/// The runtime's monotonic clock, with the core origin at its creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: tokio::time::Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
    fn to_std(&self, at: Instant) -> std::time::Instant {
        (self.origin + Duration::from_nanos(at.as_nanos())).into_std()
    }
}

/// The wall clock now, Unix milliseconds (0 before 1970, saturating far ahead): the time
/// stamped on events and shown to people; never used for deadlines.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
