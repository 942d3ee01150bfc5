//! DESIGN.md section 9, invariant 8: any split of the same input bytes gives the broker the
//! same outputs. A second broker (same configuration and seed) gets every input the first
//! one gets, with each chunk of bytes cut again at random points; after every drain both
//! must have transmitted the same bytes to every connection, closed the same connections
//! and counted the same.

use std::collections::BTreeMap;

use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::stats::Counters;
use daemoneye_core::broker::{Broker, BrokerConfig, ConnId, Output};
use daemoneye_core::rng::SeededRng;

use super::UID;
use crate::report::{FNV_OFFSET, fnv};

/// The second broker and what both have transmitted.
#[derive(Debug)]
pub(super) struct Shadow {
    pub(super) broker: Broker,
    /// Cut points (its own stream: the world's draws stay as they were).
    pub(super) rng: SeededRng,
    /// Per connection: bytes transmitted and a hash of them and of the closes, for the
    /// first broker and for this one.
    pub(super) primary: BTreeMap<ConnId, (usize, u64)>,
    mirror: BTreeMap<ConnId, (usize, u64)>,
}

impl Shadow {
    pub(super) fn new(config: BrokerConfig, broker_seed: u64, cut_seed: u64) -> Self {
        Shadow {
            broker: Broker::new(config, Acl::owner_only(UID), broker_seed),
            rng: SeededRng::new(cut_seed),
            primary: BTreeMap::new(),
            mirror: BTreeMap::new(),
        }
    }

    /// The same bytes, in other reads.
    pub(super) fn handle_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let n = 1 + self.rng.below(rest.len().min(97) as u64) as usize;
            self.broker.handle_bytes(now, conn, &rest[..n]);
            rest = &rest[n..];
        }
    }

    pub(super) fn note(map: &mut BTreeMap<ConnId, (usize, u64)>, out: &Output) {
        match out {
            Output::Transmit { conn, data } => {
                let e = map.entry(*conn).or_insert((0, FNV_OFFSET));
                e.0 += data.len();
                e.1 = fnv(e.1, data);
            }
            Output::Close { conn, reason } => {
                let e = map.entry(*conn).or_insert((0, FNV_OFFSET));
                e.1 = fnv(e.1, format!("close {reason:?}").as_bytes());
            }
            Output::PauseRead { .. } | Output::ResumeRead { .. } => {}
        }
    }

    /// Drains the shadow and compares.
    pub(super) fn check(&mut self, primary_totals: Counters) -> Result<(), String> {
        while let Some(out) = self.broker.poll_output() {
            Self::note(&mut self.mirror, &out);
        }
        if self.primary != self.mirror {
            let diff: Vec<_> = self
                .primary
                .iter()
                .filter(|(c, v)| self.mirror.get(c) != Some(v))
                .map(|(c, v)| format!("{c:?}: {v:?} vs {:?}", self.mirror.get(c)))
                .collect();
            return Err(format!(
                "the same bytes in other reads gave other outputs (bytes, hash): {diff:?}"
            ));
        }
        if self.broker.totals() != primary_totals {
            return Err(format!(
                "the same bytes in other reads gave other counters: {primary_totals:?} vs {:?}",
                self.broker.totals()
            ));
        }
        Ok(())
    }
}
