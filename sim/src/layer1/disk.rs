//! The collectors' WAL files: the WAL machine's actions carried out against a simulated
//! file and device (appends, truncations, atomic rewrites, syncs that take time), what a
//! crash leaves of the file (the synced prefix, a torn tail, maybe garbage), and the replay
//! of a restarted collector, held to invariant 1 (nothing accepted is lost). Some logs
//! publish under reserved sequences before their sync: an event is then accepted only once
//! its sync completes, and no sequence a crashed run published may go to another event
//! (the model's sequence-reuse check). The idle compaction's timer is served every step,
//! and must not be left due (the timer contract).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::wal::{self, Wal, WalAction, WalConfig};
use daemoneye_proto::frame::{Publish, QoS};

use super::{Canary, World};
use crate::report::Violation;

/// A WAL-backed collector's log: the machine (lost in a crash) and its file (which
/// survives: the synced prefix for sure, and a torn piece of the rest).
#[derive(Debug)]
pub(super) struct SimWal {
    pub(super) machine: Wal,
    pub(super) config: WalConfig,
    pub(super) disk: Vec<u8>,
    pub(super) synced: usize,
    /// A sync in progress: (length it covers, when the device finishes it).
    pub(super) syncing: VecDeque<(u64, Instant)>,
    /// Records accepted and not yet acknowledged: the reference the replay is held to.
    pub(super) must_survive: BTreeSet<u64>,
    /// Published by this run before their sync (under a reservation), not yet accepted or
    /// acknowledged.
    pub(super) sent_early: BTreeSet<u64>,
    /// Events appended since the last commit.
    pub(super) batch: u32,
}

impl World {
    /// A crash loses the WAL machine and whatever the device had not synced, except for a
    /// random prefix of it (a torn tail), maybe followed by garbage.
    pub(super) fn crash_wal(&mut self, i: usize) {
        let garbage = self.chance(self.faults.wal_garbage);
        let keep = self.rng.unit();
        let junk = self.rng.next_u64().to_le_bytes();
        let Some(w) = self.clients[i].wal.as_mut() else {
            return;
        };
        let unsynced = w.disk.len() - w.synced;
        w.disk
            .truncate(w.synced + (unsynced as f64 * keep) as usize);
        if garbage {
            w.disk
                .extend_from_slice(&junk[..1 + (junk[0] % 7) as usize]);
        }
        w.syncing.clear();
        w.sent_early.clear();
        w.batch = 0;
        let (len, synced) = (w.disk.len(), w.synced);
        self.log(format!("c{i} WAL after crash: {len}B ({synced}B synced)"));
    }

    /// A restarted WAL-backed collector replays its log: every record accepted and not
    /// acknowledged must come back (invariant 1), and is re-sent.
    pub(super) fn recover_wal(&mut self, i: usize) -> Result<(), Violation> {
        let Some(w) = self.clients[i].wal.as_mut() else {
            return Ok(());
        };
        let (records, end) = wal::replay(&w.disk, w.config.max_record);
        let back: BTreeSet<u64> = records.iter().map(|r| r.sequence).collect();
        let lost: Vec<u64> = w.must_survive.difference(&back).copied().collect();
        w.machine = Wal::recover(w.config.clone(), records, &end);
        self.log(format!("c{i} WAL replay: {end}"));
        if !lost.is_empty() {
            return Err(self.violation(
                "wal-accepted-lost",
                format!("c{i}: accepted records {lost:?} are not in the replayed log"),
            ));
        }
        self.drive_wal(i)
    }

    /// The WAL driver: runs the machine's actions against the simulated file.
    pub(super) fn drive_wal(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            let now = self.now;
            let sync_delay = Duration::from_millis(self.rng.below(30));
            let c = &mut self.clients[i];
            let Some(w) = c.wal.as_mut() else {
                return Ok(());
            };
            let Some(action) = w.machine.poll_output() else {
                return Ok(());
            };
            match action {
                WalAction::Truncate { len } => {
                    w.disk.truncate(len as usize);
                    w.synced = w.synced.min(w.disk.len());
                }
                WalAction::Append(bytes) => w.disk.extend_from_slice(&bytes),
                WalAction::Sync { len } => w.syncing.push_back((len, now + sync_delay)),
                WalAction::Rewrite(bytes) => {
                    // Temporary file, sync, rename: atomic.
                    w.disk = bytes.to_vec();
                    w.synced = w.disk.len();
                    self.log(format!("c{i} WAL compacted to {}B", bytes.len()));
                }
                WalAction::Publish { record, replayed } => {
                    if w.machine.is_pending(record.sequence) {
                        if !replayed {
                            w.must_survive.insert(record.sequence);
                        }
                    } else if w.config.reserve_block > 0 && !replayed {
                        w.sent_early.insert(record.sequence);
                    } else {
                        return Err(self.violation(
                            "wal-early-publish",
                            format!("c{i}: #{} published before its sync", record.sequence),
                        ));
                    }
                    let p = Publish {
                        sequence: record.sequence,
                        resent: replayed,
                        ..Publish::new(
                            record.topic.clone(),
                            record.payload.clone(),
                            QoS::AtLeastOnce,
                        )
                    };
                    let id = (c.publisher_id.clone(), record.sequence);
                    if let Err(e) = c.session.publish_sequenced(p) {
                        return Err(self.violation("wal-publish", format!("c{i}: {e}")));
                    }
                    self.note_publish(id.clone(), record.payload, QoS::AtLeastOnce)?;
                    self.log(format!(
                        "c{i} publish #{} {} from WAL{}",
                        id.1,
                        record.topic,
                        if replayed { " (replayed)" } else { "" }
                    ));
                }
            }
        }
    }

    /// Completes the device's syncs that are due.
    pub(super) fn complete_syncs(&mut self, i: usize) -> Result<(), Violation> {
        if self.clients[i].process_down {
            return Ok(());
        }
        let now = self.now;
        let Some(w) = self.clients[i].wal.as_mut() else {
            return Ok(());
        };
        while let Some(&(len, at)) = w.syncing.front() {
            if at > now {
                break;
            }
            w.syncing.pop_front();
            if self.canary != Canary::LyingSync {
                w.synced = w.synced.max(len as usize);
            }
            w.machine.handle_synced(self.now, len);
            // What went out early is accepted now.
            let machine = &w.machine;
            let accepted: Vec<u64> = w
                .sent_early
                .iter()
                .copied()
                .filter(|s| machine.is_pending(*s))
                .collect();
            for s in accepted {
                w.sent_early.remove(&s);
                w.must_survive.insert(s);
            }
        }
        // The idle compaction's timer, served as the io driver serves it.
        w.machine.handle_timeout(now);
        self.drive_wal(i)?;
        let next = self.clients[i]
            .wal
            .as_ref()
            .and_then(|w| w.machine.poll_timeout())
            .map(|at| (at, "idle compaction"));
        self.check_nothing_due(&format!("c{i} WAL"), next)
    }
}
