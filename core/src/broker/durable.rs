//! Durable subscriptions across broker restarts.
//!
//! A durable subscription's queue lives in memory, but its definition (owner uid, name,
//! filter, capacity, overflow, queue group) must outlive a broker crash: a publisher that
//! re-sends after the restart (a collector replaying its WAL) must find the durable
//! subscriber's queue there to fill, not "no interest". The broker only says what the
//! definitions are and when they changed ([`Broker::durables_generation`]); the driver
//! stores them and gives them back with [`Broker::restore_durable`] before it accepts
//! connections. A restored subscription waits for its owner like any detached durable one,
//! and expires the same way, counted from the restart.

use daemoneye_proto::frame::{GroupSpec, Overflow, QoS};

use super::Broker;
use super::subscribe::NewSubscription;
use crate::Instant;
use crate::topic::TopicFilter;

/// What defines a durable subscription: everything but its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableDefinition {
    /// The owner's uid (durable names are per principal).
    pub uid: u32,
    /// The durable name.
    pub name: String,
    /// The topic filter.
    pub filter: String,
    /// Queue capacity.
    pub capacity: u32,
    /// Overflow strategy.
    pub overflow: Overflow,
    /// Queue group, if the subscription is a member of one.
    pub group: Option<GroupSpec>,
}

/// Why a stored definition was not restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The filter does not parse.
    #[error("durable subscription {name:?}: invalid filter {filter:?}: {reason}")]
    InvalidFilter {
        /// Durable name.
        name: String,
        /// Filter text.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A subscription with this uid and name exists already.
    #[error("durable subscription {name:?} of uid {uid} exists already")]
    Exists {
        /// Owner uid.
        uid: u32,
        /// Durable name.
        name: String,
    },
    /// The capacity is outside the broker's limits.
    #[error("durable subscription {name:?}: capacity {capacity} is not between 1 and {max}")]
    Capacity {
        /// Durable name.
        name: String,
        /// Stored capacity.
        capacity: u32,
        /// The broker's maximum.
        max: u32,
    },
}

impl Broker {
    /// Every durable subscription's definition, ordered by (uid, name).
    pub fn durable_definitions(&self) -> Vec<DurableDefinition> {
        self.durables
            .iter()
            .filter_map(|((uid, name), key)| {
                let s = self.subs.get(key)?;
                let group = s.group.as_ref().map(|g| GroupSpec {
                    name: g.to_string(),
                    strategy: self.groups.get(g).map(|g| g.strategy()).unwrap_or_default(),
                });
                Some(DurableDefinition {
                    uid: *uid,
                    name: name.clone(),
                    filter: s.filter.as_str().to_string(),
                    capacity: s.capacity,
                    overflow: s.overflow,
                    group,
                })
            })
            .collect()
    }

    /// Changes whenever a durable subscription is created or removed: the driver stores
    /// [`durable_definitions`](Self::durable_definitions) when it differs from the last
    /// value it stored.
    pub fn durables_generation(&self) -> u64 {
        self.durables_generation
    }

    /// Recreates a durable subscription from its stored definition, detached: it queues
    /// what matches from now on and waits for its owner (or its expiry, from `now`).
    pub fn restore_durable(
        &mut self,
        now: Instant,
        def: DurableDefinition,
    ) -> Result<(), RestoreError> {
        let filter = TopicFilter::parse(&def.filter).map_err(|e| RestoreError::InvalidFilter {
            name: def.name.clone(),
            filter: def.filter.clone(),
            reason: e.to_string(),
        })?;
        if def.capacity == 0 || def.capacity > self.config.max_capacity {
            return Err(RestoreError::Capacity {
                name: def.name,
                capacity: def.capacity,
                max: self.config.max_capacity,
            });
        }
        let id = (def.uid, def.name);
        if self.durables.contains_key(&id) {
            return Err(RestoreError::Exists {
                uid: id.0,
                name: id.1,
            });
        }
        self.start_clock(now);
        self.add_subscription(NewSubscription {
            owner: None,
            client_sub_id: 0,
            filter,
            group: def.group,
            qos: QoS::AtLeastOnce,
            capacity: def.capacity,
            overflow: def.overflow,
            durable: Some(id),
            detached_at: Some(now),
        });
        Ok(())
    }
}
