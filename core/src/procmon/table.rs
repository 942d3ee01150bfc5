//! The table of live processes, keyed by pid with each entry's identity (pid, start ticks):
//! the pure machine that decides what the process collector publishes.
//!
//! It turns what the sources observe (execs and exits in real time from the kernel's
//! process connector, complete scans of `/proc`, overruns of the connector's socket) into
//! the events a reader needs: one start-up SNAPSHOT instead of a flood of NEW, NEW on an
//! exec of an unknown process, MODIFIED on an exec of a known one (with the fields that
//! changed), EXIT with the code, and, from the periodic reconciliation scan, whatever the
//! real-time path missed. It asks for scans ([`Output::Scan`]) and says when the next
//! periodic one is due ([`ProcessTable::poll_timeout`]). It never reads `/proc`, a socket or
//! a clock.
//!
//! # Two clocks
//!
//! `now` ([`Instant`]) is the driver's monotonic clock and only schedules scans. Identity
//! uses the kernel's: every observation carries its time in **clock ticks since boot**, the
//! unit and clock of `/proc/<pid>/stat`'s `starttime` (CLOCK_BOOTTIME on Linux 5.3 and
//! later; the process connector stamps CLOCK_MONOTONIC nanoseconds, so the source adds the
//! boot-time offset and divides by the tick length). A scan carries the ticks at which it
//! listed `/proc` and finished reading it ([`ScanResult`]). Observations within one tick
//! are taken conservatively (kept for the next scan rather than closed).
//!
//! # Identity
//!
//! A process is (pid, start ticks); a pid holds one process at a time. An entry whose start
//! was not read (a partial exec read: the process was gone) is known by pid and by the tick
//! it was last seen alive. An observation is matched against the pid's entry:
//!
//! - it happened before the entry's process started (an exec or exit delivered late, after a
//!   scan already saw the pid's next holder): it belongs to an earlier holder and changes
//!   nothing (`stale_execs`; an exit goes to that holder, see below). The same holds for
//!   an exec older than the pid's last removed process, or of that process itself;
//! - both starts known: equal is the same process, a later start is a new holder (the pid
//!   was reused): EXIT of the old (code unknown) then NEW, never MODIFIED;
//! - an entry known by the tick `t` it was seen at against a read start `s`: a later start
//!   is a new holder; `s <= t` is the same process when the read came after `t` (both held
//!   the pid at `t`): an exec's read always does, a scan's when `t` precedes its listing
//!   (else the scan's read may be older than the table's, which stands);
//! - an exec whose start was not read, against any entry: the same process when no overrun
//!   can have hidden the entry's exit since it was last confirmed (the entry is *trusted*),
//!   else a new holder. The connector delivers in order, so without a loss a reuse always
//!   shows the old holder's exit first. The kernel reports an overrun (ENOBUFS) on the
//!   first read after the first loss, then drops silently until its queue is empty again;
//!   the source says when that happened ([`ProcessTable::handle_overrun_ended`]). Between
//!   the two nothing confirms an entry; after, an observation that happened after the end,
//!   or a scan asked for after it, does.
//!
//! # Exits
//!
//! An exit of the pid's live entry is its EXIT, with the code. An exit that matches no live
//! entry either is the late exit of a process a scan already closed without a code (only
//! when the table trusted that process and no overrun came since, so the exit was surely
//! queued and nothing of a later holder can come first; and only up to the tick it was
//! known dead by: dropped, `late_exits`), or is an **unseen** exit: reported by pid with its
//! code and flagged (`unseen_exits`). Every exit is reported at least by pid: where a loss
//! leaves the table unable to tell a late exit from a later unseen holder's, it reports
//! rather than risk dropping one. The last removed identity of each pid (and what may still
//! arrive of it) is kept for this, bounded by [`TableConfig::recent_capacity`].
//!
//! An unseen exit is also what a child that never exec'd (and that no scan saw) ends with:
//! the table, taking no forks, never knew it ran.
//!
//! # Scans
//!
//! The first scan's result is the start-up SNAPSHOT (in parts within
//! [`TableConfig::snapshot_part_bytes`]); execs and exits that arrive before it are
//! published as usual and their processes left out of it. Every later result reconciles: a
//! listed process the table lacks is NEW (source scan), unless it is the pid's last removed
//! identity or older (its exit arrived while the scan ran); an entry not listed and last seen alive
//! before the listing tick is EXIT (code unknown; seen later, it may have started after the
//! listing and is left to the next scan); a listed pid with a later start is EXIT + NEW; a
//! listed process whose compared fields ([`COMPARED_FIELDS`]) changed since the table's
//! read, which the table read before the listing, is MODIFIED (source scan). Zombies
//! (state `Z`) and entries without a start are not running processes to a scan.
//!
//! # Forks
//!
//! The table takes no fork events: a child that never execs is announced by the next scan
//! that lists it, and the exec's time and start ticks already tell a reuse from a re-exec.
//! Forks would add a message per thread and per subshell without changing a decision except
//! after a loss, which the overrun's rescan settles.
//!
//! # Bounds
//!
//! With [`TableConfig::max_processes`] set, a table at the limit refuses new identities
//! (counted in `refused`; their exits are then unseen exits). One scan is in flight at a
//! time; an overrun during a scan asks for another as soon as it ends.

mod event;
mod removals;
mod snapshot;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use daemoneye_proto::pb::events::ProcessInfo;

use crate::Instant;
pub use event::{
    COMPARED_FIELDS, PROCESS_FIELDS, ProcessEvent, Source, changed_fields, start_ticks,
};
use removals::{Known, Owed, Removals};
pub use snapshot::PART_OVERHEAD;

/// The table's settings; the caller enforces the flags' bounds (interval 5..=3600 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// Time between the end of a scan and the next periodic one (`--interval`).
    pub reconcile_interval: Duration,
    /// Live processes the table keeps at most; 0 is unlimited (`--max-processes`).
    pub max_processes: usize,
    /// Bytes of one snapshot part's encoded `ProcessEvent` without its collector id. The
    /// default leaves 64 KiB of a 1 MiB frame for the collector id, the publish header and
    /// the topic.
    pub snapshot_part_bytes: usize,
    /// Wait before asking again after a scan failed.
    pub scan_retry: Duration,
    /// Removed identities remembered (the last one per pid), to tell a late exit from an
    /// unseen one.
    pub recent_capacity: usize,
    /// A deliberately broken table for the simulation's canary: an exec of a reused pid is
    /// taken for a re-exec (MODIFIED instead of EXIT and NEW). Only with the `canary`
    /// feature, which only the simulator enables.
    #[cfg(feature = "canary")]
    #[doc(hidden)]
    pub canary_reuse_as_modified: bool,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(30),
            max_processes: 0,
            snapshot_part_bytes: daemoneye_proto::DEFAULT_MAX_FRAME as usize - 64 * 1024,
            scan_retry: Duration::from_secs(5),
            recent_capacity: 65_536,
            #[cfg(feature = "canary")]
            canary_reuse_as_modified: false,
        }
    }
}

/// A complete scan of `/proc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanResult {
    /// The kernel tick at which the scan listed `/proc` (before reading any process).
    pub listed_at: u64,
    /// The kernel tick at which it had read the last process.
    pub finished_at: u64,
    /// Every process read, each read after the listing. A pid whose `stat` could not be
    /// read (gone) is left out or has its start unread; a zombie has state `Z`.
    pub processes: Vec<ProcessInfo>,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Publish this event (see [`ProcessEvent::into_pb`]).
    Publish(Box<ProcessEvent>),
    /// Scan `/proc` completely now and answer with [`ProcessTable::handle_scan`] (or
    /// [`ProcessTable::handle_scan_failed`]).
    Scan,
}

/// Why the table wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The periodic reconciliation scan is due.
    Reconcile,
}

/// Counters for heartbeats and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    /// NEW events published.
    pub new: u64,
    /// MODIFIED events published.
    pub modified: u64,
    /// EXIT events published (unseen ones included).
    pub exits: u64,
    /// Snapshot parts published.
    pub snapshot_parts: u64,
    /// Processes in the snapshot.
    pub snapshot_processes: u64,
    /// Overruns of the real-time path reported.
    pub overruns: u64,
    /// New identities refused at the process limit.
    pub refused: u64,
    /// Exits of processes never seen running.
    pub unseen_exits: u64,
    /// Exits of processes the table had already closed without a code.
    pub late_exits: u64,
    /// Execs that belonged to an earlier holder of their pid.
    pub stale_execs: u64,
    /// Id changes without an exec published as MODIFIED.
    pub credential_changes: u64,
    /// Scans asked for.
    pub scans_requested: u64,
    /// Scan results handled.
    pub scans_completed: u64,
    /// Scans that failed.
    pub scan_failures: u64,
    /// Scan entries that were not running processes (zombies, no start).
    pub scan_skipped: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    info: ProcessInfo,
    known: Known,
    /// Latest tick the process was known alive.
    last_seen: u64,
    /// The overrun epoch up to which the entry is confirmed (trusted when current).
    epoch: u64,
}

#[derive(Debug, Clone, Copy)]
struct ScanInFlight {
    /// The overrun epoch when it was asked for: it confirms what it lists up to there.
    epoch: u64,
}

/// How an observation relates to its pid's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// The entry's process.
    Same,
    /// A later holder of the pid: the entry's process is gone.
    Newer,
    /// An earlier holder: the observation is out of date.
    Older,
}

/// The table of live processes. See the module docs for the rules.
#[derive(Debug)]
pub struct ProcessTable {
    config: TableConfig,
    entries: BTreeMap<u32, Entry>,
    recent: Removals,
    /// Overruns reported so far.
    epoch: u64,
    /// The tick of the latest overrun's report or end.
    last_overrun_at: Option<u64>,
    /// Between an overrun and its end: the kernel may still be dropping events.
    congested: bool,
    scan: Option<ScanInFlight>,
    /// An overrun arrived while a scan ran: ask again when it ends.
    rescan: bool,
    snapshot_done: bool,
    next_reconcile: Option<Instant>,
    /// When the last scan ended (or failed).
    last_scan_end: Option<Instant>,
    outputs: VecDeque<Output>,
    stats: TableStats,
}

impl ProcessTable {
    /// A table that first asks for the start-up scan (its result becomes the snapshot).
    pub fn new(config: TableConfig, now: Instant) -> Self {
        let _ = now;
        let mut table = Self {
            config,
            entries: BTreeMap::new(),
            recent: Removals::default(),
            epoch: 0,
            last_overrun_at: None,
            congested: false,
            scan: None,
            rescan: false,
            snapshot_done: false,
            next_reconcile: None,
            last_scan_end: None,
            outputs: VecDeque::new(),
            stats: TableStats::default(),
        };
        table.request_scan();
        table
    }

    // ---- inputs ----

    /// A process exec'd at kernel tick `at`, read as `info` (possibly partial: a field that
    /// could not be read is listed in `unread`; an unread start is matched by pid, see the
    /// module docs). The reader must never return another process's fields: when the pid's
    /// current holder started after `at`, it reports the start (and the rest) unread.
    pub fn handle_exec(&mut self, now: Instant, at: u64, info: ProcessInfo) {
        let _ = now;
        let pid = info.pid;
        let start = start_ticks(&info);
        let Some(entry) = self.entries.get(&pid) else {
            // An exec of the pid's last removed process arriving late, or of one older
            // still (the pid has had a later holder since): it announces nothing.
            let late = self.recent.get(pid).is_some_and(|r| match start {
                Some(s) => s <= r.tick(),
                None => at < r.tick() || r.may_exec_at(at),
            });
            if late {
                self.stats.stale_execs += 1;
            } else {
                let epoch = self.epoch_of_event(at);
                self.announce_new(info, start, at, Source::Netlink, epoch);
            }
            return;
        };
        let relation = self.relate_exec(entry, start, at);
        #[cfg(feature = "canary")]
        let relation = if self.config.canary_reuse_as_modified && relation == Relation::Newer {
            Relation::Same
        } else {
            relation
        };
        match relation {
            Relation::Older => self.stats.stale_execs += 1,
            Relation::Newer => {
                // Its exit came before this exec in the connector's order: it was lost.
                self.remove_with_exit(pid, None, Source::Netlink, None);
                let epoch = self.epoch_of_event(at);
                self.announce_new(info, start, at, Source::Netlink, epoch);
            }
            Relation::Same => {
                let epoch = self.epoch_of_event(at);
                let Some(entry) = self.entries.get_mut(&pid) else {
                    return;
                };
                let info = event::keep_identity(&entry.info, info);
                let changed = changed_fields(&entry.info, &info);
                if let Some(s) = start_ticks(&info) {
                    entry.known = Known::Started(s);
                } else if let Known::SeenAt(t) = entry.known {
                    entry.known = Known::SeenAt(t.max(at));
                }
                entry.info = info.clone();
                entry.last_seen = entry.last_seen.max(at);
                entry.epoch = entry.epoch.max(epoch);
                self.publish(ProcessEvent::Modified {
                    process: info,
                    changed,
                    source: Source::Netlink,
                });
            }
        }
    }

    /// A process changed its user or group ids at kernel tick `at` without an exec (the
    /// connector's UID and GID events), read again as `info`. When the read is of the
    /// process the table holds at the pid (the same start) and a compared field differs,
    /// it publishes MODIFIED with the changes. A read without a start, of another holder
    /// of the pid, of an unknown pid, or with nothing changed publishes nothing: an exec,
    /// an exit or a scan tells about those.
    pub fn handle_credentials(&mut self, now: Instant, at: u64, info: ProcessInfo) {
        let _ = now;
        let pid = info.pid;
        let Some(s) = start_ticks(&info) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&pid) else {
            return;
        };
        match entry.known {
            Known::Started(se) if se == s => {}
            Known::SeenAt(t) if s <= t => entry.known = Known::Started(s),
            _ => return,
        }
        entry.last_seen = entry.last_seen.max(at);
        let changed = changed_fields(&entry.info, &info);
        if changed.is_empty() {
            return;
        }
        entry.info = info.clone();
        self.stats.credential_changes += 1;
        self.publish(ProcessEvent::Modified {
            process: info,
            changed,
            source: Source::Netlink,
        });
    }

    /// A process exited at kernel tick `at` with `code` (the low byte of a normal exit's
    /// status, or 128 plus the signal), `None` when the source could not tell.
    pub fn handle_exit(&mut self, now: Instant, at: u64, pid: u32, code: Option<i32>) {
        let _ = now;
        let owner = self
            .entries
            .get(&pid)
            .is_some_and(|e| !matches!(e.known, Known::Started(s) if at < s));
        if owner {
            self.remove_with_exit(pid, code, Source::Netlink, None);
            // Whatever held the pid at `at` exited then: after a loss that may be a later
            // holder than the entry, which a scan that read it before must not bring back.
            self.remember(pid, Known::SeenAt(at), None);
            return;
        }
        let epoch = self.epoch;
        if let Some(r) = self.recent.get_mut(pid)
            && r.owes_exit_at(at, epoch)
        {
            r.owes = r.owes.map(|o| Owed {
                exit_epoch: None,
                ..o
            });
            self.stats.late_exits += 1;
            return;
        }
        self.stats.unseen_exits += 1;
        // Whatever held the pid at `at` and started no later is gone: a scan that read it
        // before this exit must not bring it back.
        self.remember(pid, Known::SeenAt(at), None);
        self.publish(ProcessEvent::Exit {
            process: event::unseen_process(pid),
            exit_code: code,
            source: Source::Netlink,
            unseen: true,
        });
    }

    /// The real-time path lost events: a read of the connector's socket failed with
    /// ENOBUFS at kernel tick `at`. A scan is asked for at once (or as soon as the one
    /// running ends). The kernel reports one overrun per congestion and keeps dropping
    /// silently until its queue is empty again, so until [`Self::handle_overrun_ended`]
    /// nothing the real-time path says is taken as proof that no exit was missed.
    pub fn handle_overrun(&mut self, now: Instant, at: u64) {
        let _ = now;
        self.stats.overruns += 1;
        self.congested = true;
        self.loss_at(at);
    }

    /// The connector's socket was read empty at kernel tick `at` after an overrun: losses,
    /// if any, ended before it. Another scan is asked for, which covers them all.
    pub fn handle_overrun_ended(&mut self, now: Instant, at: u64) {
        let _ = now;
        if self.congested {
            self.congested = false;
            self.loss_at(at);
        }
    }

    /// Events up to tick `at` may be missing: every entry confirmed so far becomes
    /// untrusted, and a scan is due.
    fn loss_at(&mut self, at: u64) {
        self.epoch += 1;
        self.last_overrun_at = Some(self.last_overrun_at.map_or(at, |t| t.max(at)));
        if self.scan.is_some() {
            self.rescan = true;
        } else {
            self.request_scan();
        }
    }

    /// The result of the scan the table asked for. A result nobody asked for is taken as
    /// asked for now.
    pub fn handle_scan(&mut self, now: Instant, scan_result: ScanResult) {
        let ScanResult {
            listed_at,
            finished_at,
            processes,
        } = scan_result;
        let scan = self.scan.take().unwrap_or(ScanInFlight {
            epoch: self.scan_epoch(),
        });
        self.stats.scans_completed += 1;
        let mut listed: BTreeMap<u32, (u64, ProcessInfo)> = BTreeMap::new();
        // The latest start the scan read at each pid, zombies included: whatever the table
        // had there before that start was dead by it.
        let mut held: BTreeMap<u32, u64> = BTreeMap::new();
        for info in processes {
            if let Some(s) = start_ticks(&info) {
                let latest = held.entry(info.pid).or_insert(s);
                *latest = (*latest).max(s);
            }
            let Some(s) = start_ticks(&info).filter(|_| info.status != "Z") else {
                self.stats.scan_skipped += 1;
                continue;
            };
            match listed.get(&info.pid) {
                Some((other, _)) if *other >= s => {}
                _ => {
                    listed.insert(info.pid, (s, info));
                }
            }
        }
        let gone: Vec<u32> = self
            .entries
            .iter()
            .filter(|(pid, e)| !listed.contains_key(pid) && e.last_seen < listed_at)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            let owed = self.owed_exit(pid, finished_at, held.get(&pid).copied());
            self.remove_with_exit(pid, None, Source::Scan, owed);
        }
        let startup = !self.snapshot_done;
        let mut snapshot = Vec::new();
        for (pid, (s, info)) in listed {
            let relation = match self.entries.get(&pid) {
                None if self.recent.get(pid).is_some_and(|r| r.may_be(s)) => continue,
                None => None,
                Some(e) => Some(match e.known {
                    Known::Started(se) if s == se => Relation::Same,
                    Known::Started(se) if s > se => Relation::Newer,
                    Known::Started(_) => Relation::Older,
                    Known::SeenAt(t) if s > t => Relation::Newer,
                    // Read after `t`, a process that started by `t` held the pid then.
                    Known::SeenAt(t) if t <= listed_at => Relation::Same,
                    // The read may predate `t`: the table's word is newer; the next scan
                    // settles the start.
                    Known::SeenAt(_) => Relation::Older,
                }),
            };
            match relation {
                Some(Relation::Older) => {}
                Some(Relation::Same) => self.reconcile_same(pid, s, info, listed_at, scan.epoch),
                Some(Relation::Newer) | None => {
                    if relation.is_some() {
                        let owed = self.owed_exit(pid, finished_at, Some(s));
                        self.remove_with_exit(pid, None, Source::Scan, owed);
                    }
                    if !startup {
                        self.announce_new(info, Some(s), listed_at, Source::Scan, scan.epoch);
                    } else if self.has_room() {
                        self.insert(info.clone(), Known::Started(s), listed_at, scan.epoch);
                        snapshot.push(info);
                    } else {
                        self.stats.refused += 1;
                    }
                }
            }
        }
        if startup {
            self.snapshot_done = true;
            let parts = snapshot::split(snapshot, self.config.snapshot_part_bytes);
            let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
            for (i, processes) in parts.into_iter().enumerate() {
                self.stats.snapshot_parts += 1;
                self.stats.snapshot_processes += processes.len() as u64;
                self.outputs
                    .push_back(Output::Publish(Box::new(ProcessEvent::Snapshot {
                        processes,
                        part: u32::try_from(i + 1).unwrap_or(u32::MAX),
                        parts: count,
                    })));
            }
        }
        self.scan_ended(now);
    }

    /// The scan the table asked for could not be made; it asks again after
    /// [`TableConfig::scan_retry`] (or the interval, if shorter).
    pub fn handle_scan_failed(&mut self, now: Instant) {
        self.scan = None;
        self.rescan = false;
        self.stats.scan_failures += 1;
        let wait = self.config.scan_retry.min(self.config.reconcile_interval);
        self.last_scan_end = Some(now);
        self.next_reconcile = Some(now + wait);
    }

    /// Time passed: the periodic scan is asked for when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.scan.is_none() && self.next_reconcile.is_some_and(|t| t <= now) {
            self.next_reconcile = None;
            self.request_scan();
        }
    }

    /// New settings: a changed interval counts from the end of the last scan; a lower
    /// process limit evicts nothing, it only refuses new processes until the table is below
    /// it.
    pub fn set_config(&mut self, now: Instant, config: TableConfig) {
        let _ = now;
        // Only a periodic deadline moves; a retry after a failed scan keeps its time.
        if let Some(end) = self.last_scan_end
            && self.next_reconcile == Some(end + self.config.reconcile_interval)
        {
            self.next_reconcile = Some(end + config.reconcile_interval);
        }
        self.config = config;
    }

    // ---- outputs and time ----

    /// The next thing to do, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the periodic scan is due; `None` while a scan runs (the table waits for its
    /// result).
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        if self.scan.is_some() {
            return None;
        }
        self.next_reconcile.map(|t| (t, Timer::Reconcile))
    }

    // ---- queries ----

    /// Counters.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// The settings.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// Live processes in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No live process in the table.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live process of `pid`, as last read.
    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid).map(|e| &e.info)
    }

    /// Every live process as (pid, start ticks if known), by pid.
    pub fn identities(&self) -> impl Iterator<Item = (u32, Option<u64>)> + '_ {
        self.entries.iter().map(|(pid, e)| {
            (
                *pid,
                match e.known {
                    Known::Started(s) => Some(s),
                    Known::SeenAt(_) => None,
                },
            )
        })
    }

    /// A scan was asked for and has not been answered.
    pub fn scan_in_flight(&self) -> bool {
        self.scan.is_some()
    }

    /// The start-up snapshot was published.
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    // ---- internals ----

    fn relate_exec(&self, entry: &Entry, start: Option<u64>, at: u64) -> Relation {
        if let Known::Started(se) = entry.known
            && at < se
        {
            return Relation::Older;
        }
        match (start, entry.known) {
            (Some(s), Known::Started(se)) => match s.cmp(&se) {
                std::cmp::Ordering::Equal => Relation::Same,
                std::cmp::Ordering::Greater => Relation::Newer,
                std::cmp::Ordering::Less => Relation::Older,
            },
            (Some(s), Known::SeenAt(t)) => {
                if s <= t {
                    Relation::Same
                } else {
                    Relation::Newer
                }
            }
            (None, _) => {
                if entry.epoch == self.epoch {
                    Relation::Same
                } else {
                    Relation::Newer
                }
            }
        }
    }

    /// The epoch an observation at tick `at` confirms: the current one only if it happened
    /// after the latest loss ended (no event that followed it can have been dropped).
    fn epoch_of_event(&self, at: u64) -> u64 {
        let after_loss = self.last_overrun_at.is_none_or(|r| at > r);
        if after_loss && !self.congested {
            self.epoch
        } else {
            self.epoch.saturating_sub(1)
        }
    }

    fn reconcile_same(&mut self, pid: u32, s: u64, info: ProcessInfo, listed_at: u64, epoch: u64) {
        let Some(entry) = self.entries.get_mut(&pid) else {
            return;
        };
        entry.known = Known::Started(s);
        entry.epoch = entry.epoch.max(epoch);
        if entry.last_seen >= listed_at {
            // The table's read may be newer than the scan's: keep it, learn the start.
            if start_ticks(&entry.info).is_none() {
                entry.info = event::keep_identity(&info, entry.info.clone());
            }
            return;
        }
        entry.last_seen = listed_at;
        let changed = changed_fields(&entry.info, &info);
        entry.info = info.clone();
        if !changed.is_empty() {
            self.publish(ProcessEvent::Modified {
                process: info,
                changed,
                source: Source::Scan,
            });
        }
    }

    fn has_room(&self) -> bool {
        self.config.max_processes == 0 || self.entries.len() < self.config.max_processes
    }

    fn insert(&mut self, info: ProcessInfo, known: Known, seen: u64, epoch: u64) {
        let last_seen = match known {
            Known::Started(s) => s.max(seen),
            Known::SeenAt(t) => t.max(seen),
        };
        self.entries.insert(
            info.pid,
            Entry {
                info,
                known,
                last_seen,
                epoch,
            },
        );
    }

    fn announce_new(
        &mut self,
        info: ProcessInfo,
        start: Option<u64>,
        at: u64,
        source: Source,
        epoch: u64,
    ) {
        if !self.has_room() {
            self.stats.refused += 1;
            return;
        }
        let known = start.map_or(Known::SeenAt(at), Known::Started);
        self.insert(info.clone(), known, at, epoch);
        self.publish(ProcessEvent::New {
            process: info,
            source,
        });
    }

    /// Which exits may still be the own of `pid`'s entry, which a scan found gone by
    /// `finished_at` (or replaced by a holder that started at `next_start`).
    fn owed_exit(&self, pid: u32, finished_at: u64, next_start: Option<u64>) -> Option<Owed> {
        let entry = self.entries.get(&pid)?;
        let started = match entry.known {
            Known::Started(s) | Known::SeenAt(s) => s,
        };
        let until = next_start
            .filter(|n| *n > started)
            .map_or(finished_at, |n| n.min(finished_at));
        Some(Owed {
            until,
            exit_epoch: (entry.epoch == self.epoch).then_some(self.epoch),
        })
    }

    /// Removes `pid`'s entry with an EXIT; `owes`: which exits may still be its own.
    fn remove_with_exit(
        &mut self,
        pid: u32,
        code: Option<i32>,
        source: Source,
        owes: Option<Owed>,
    ) {
        let Some(entry) = self.entries.remove(&pid) else {
            return;
        };
        self.remember(pid, entry.known, owes);
        self.publish(ProcessEvent::Exit {
            process: entry.info,
            exit_code: code,
            source,
            unseen: false,
        });
    }

    fn remember(&mut self, pid: u32, known: Known, owes: Option<Owed>) {
        self.recent
            .remember(pid, known, owes, self.config.recent_capacity);
    }

    fn publish(&mut self, event: ProcessEvent) {
        match &event {
            ProcessEvent::New { .. } => self.stats.new += 1,
            ProcessEvent::Modified { .. } => self.stats.modified += 1,
            ProcessEvent::Exit { .. } => self.stats.exits += 1,
            ProcessEvent::Snapshot { .. } => {}
        }
        self.outputs.push_back(Output::Publish(Box::new(event)));
    }

    /// The epoch a scan asked for now confirms: none while the kernel may still be
    /// dropping events.
    fn scan_epoch(&self) -> u64 {
        if self.congested {
            self.epoch.saturating_sub(1)
        } else {
            self.epoch
        }
    }

    fn request_scan(&mut self) {
        self.scan = Some(ScanInFlight {
            epoch: self.scan_epoch(),
        });
        self.rescan = false;
        self.stats.scans_requested += 1;
        self.outputs.push_back(Output::Scan);
    }

    fn scan_ended(&mut self, now: Instant) {
        self.last_scan_end = Some(now);
        self.next_reconcile = Some(now + self.config.reconcile_interval);
        if self.rescan {
            self.next_reconcile = None;
            self.request_scan();
        }
    }
}
