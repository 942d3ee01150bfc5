//! The one spelling of each protocol enum that people type or read: CLI flags, the agent's
//! state files, `$sys` stats and the CLI's JSON all use these names.
//!
//! Each enum gets, from one table per enum below: `ALL` (every value, in wire order),
//! `as_str`, `FromStr` (refusing an unknown name with the list of known ones), `Display`,
//! and with the `clap` feature `clap::ValueEnum`. A new value is one line in its table.

use std::fmt;
use std::str::FromStr;

use crate::frame::{Overflow, QoS, QueueStrategy, Role};
use crate::pb::control::{HealthState, LifecycleOp};

/// A name that is not one of an enum's canonical names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    /// What was being named, e.g. "overflow strategy".
    pub kind: &'static str,
    /// The name given.
    pub name: String,
    /// The known names, comma-separated.
    pub expected: String,
}

/// Implements the name mapping of one enum from its table of `Variant => "name"`.
macro_rules! canonical_names {
    ($ty:ident, $kind:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in wire order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The canonical name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                $ty::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        kind: $kind,
                        name: s.to_string(),
                        expected: [$($name),+].join(", "),
                    })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                $ty::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }
    };
}

canonical_names!(QoS, "QoS", {
    AtMostOnce => "0",
    AtLeastOnce => "1",
});

canonical_names!(QueueStrategy, "queue strategy", {
    RoundRobin => "round-robin",
    LeastLoaded => "least-loaded",
    Random => "random",
});

canonical_names!(Overflow, "overflow strategy", {
    Block => "block",
    DropOldest => "drop-oldest",
    DropNewest => "drop-newest",
    Error => "error",
});

canonical_names!(Role, "role", {
    Client => "client",
    Collector => "collector",
    Agent => "agent",
});

canonical_names!(HealthState, "health state", {
    Unspecified => "unspecified",
    Healthy => "healthy",
    Degraded => "degraded",
    Unhealthy => "unhealthy",
});

canonical_names!(LifecycleOp, "lifecycle operation", {
    Unspecified => "unspecified",
    Start => "start",
    Stop => "stop",
    Restart => "restart",
    Pause => "pause",
    Resume => "resume",
    Status => "status",
});

impl QoS {
    /// The QoS level as a number, as MQTT users write it (0 or 1).
    pub fn level(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `T` survives `as_str` then `parse`, and no two values share a name.
    fn round_trips<T>(all: &[T])
    where
        T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr<Err = UnknownName>,
    {
        let mut names = std::collections::BTreeSet::new();
        for &v in all {
            let name = v.to_string();
            assert_eq!(name.parse::<T>(), Ok(v), "{name}");
            assert!(names.insert(name.clone()), "{name} is used twice");
        }
    }

    #[test]
    fn every_value_round_trips_through_its_name() {
        round_trips(QoS::ALL);
        round_trips(QueueStrategy::ALL);
        round_trips(Overflow::ALL);
        round_trips(Role::ALL);
        round_trips(HealthState::ALL);
        round_trips(LifecycleOp::ALL);
    }

    #[test]
    fn all_lists_every_wire_value() {
        let wire = |values: &mut dyn Iterator<Item = i32>| values.collect::<Vec<_>>();
        assert_eq!(
            wire(&mut QueueStrategy::ALL.iter().map(|q| q.to_pb() as i32)),
            [0, 1, 2]
        );
        assert_eq!(
            wire(&mut Overflow::ALL.iter().map(|o| o.to_pb() as i32)),
            [1, 2, 3, 4],
            "every strategy but the wire's `default`"
        );
        assert_eq!(wire(&mut QoS::ALL.iter().map(|q| q.to_pb() as i32)), [0, 1]);
        assert_eq!(
            wire(&mut Role::ALL.iter().map(|r| r.to_pb() as i32)),
            [1, 2, 3]
        );
        assert_eq!(
            wire(&mut HealthState::ALL.iter().map(|h| *h as i32)),
            [0, 1, 2, 3]
        );
        assert_eq!(
            wire(&mut LifecycleOp::ALL.iter().map(|o| *o as i32)),
            [0, 1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn the_spellings_in_use_are_the_canonical_ones() {
        assert_eq!("round-robin".parse(), Ok(QueueStrategy::RoundRobin));
        assert_eq!("least-loaded".parse(), Ok(QueueStrategy::LeastLoaded));
        assert_eq!("drop-newest".parse(), Ok(Overflow::DropNewest));
        assert_eq!("drop-oldest".parse(), Ok(Overflow::DropOldest));
        assert_eq!("1".parse(), Ok(QoS::AtLeastOnce));
        assert_eq!(QoS::AtLeastOnce.level(), 1);
        assert_eq!(HealthState::Unhealthy.as_str(), "unhealthy");
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        let err = "drop-all".parse::<Overflow>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown overflow strategy \"drop-all\" (expected one of: block, drop-oldest, drop-newest, error)"
        );
        assert!(
            "RoundRobin".parse::<QueueStrategy>().is_err(),
            "names are exact"
        );
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_accepts_exactly_the_canonical_names() {
        use clap::ValueEnum;
        for &o in Overflow::ALL {
            assert_eq!(<Overflow as ValueEnum>::from_str(o.as_str(), false), Ok(o));
        }
        let possible: Vec<_> = QueueStrategy::value_variants()
            .iter()
            .filter_map(|q| q.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        assert_eq!(possible, ["round-robin", "least-loaded", "random"]);
    }
}
