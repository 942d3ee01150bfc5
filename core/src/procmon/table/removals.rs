//! What the table remembers of the processes it removed, the last one per pid: enough to
//! recognise an exec or exit that arrives after the table closed its process, and a scan
//! that read a process before its exit was handled.

use std::collections::BTreeMap;

/// What the table knows of an entry's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// Start ticks read.
    Started(u64),
    /// Start not read; alive at this tick.
    SeenAt(u64),
}

/// The last identity removed from a pid.
#[derive(Debug, Clone, Copy)]
pub(super) struct Removed {
    pub(super) known: Known,
    /// Its exit has not arrived and may still (the table closed it on a scan's word).
    pub(super) owes: Option<Owed>,
    /// Insertion number, for eviction.
    seq: u64,
}

/// What may still arrive of a process a scan closed: its execs and exit, up to a tick.
/// A late exec is dropped (it announced nothing new; a later holder's exit is still
/// reported). Its exit is owed only if the table trusted it when it was closed: without a
/// loss since, its exit is queued and comes before anything of a later holder of its pid.
/// After a loss the table cannot tell its late exit from a later, unseen holder's, and
/// reports the exit (flagged unseen) rather than risk dropping another process's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owed {
    /// Nothing after this tick is its own: it was dead by then (the scan's end, or the
    /// start of the pid's next holder the scan read).
    pub(super) until: u64,
    /// The exit is owed while the overrun epoch is this one.
    pub(super) exit_epoch: Option<u64>,
}

impl Removed {
    /// Its start, or the tick it was last known to hold the pid.
    pub(super) fn tick(&self) -> u64 {
        match self.known {
            Known::Started(s) | Known::SeenAt(s) => s,
        }
    }

    /// A process a scan listed with start `s` may be this removed one.
    pub(super) fn may_be(&self, s: u64) -> bool {
        match self.known {
            Known::Started(r) => r == s,
            Known::SeenAt(t) => s <= t,
        }
    }

    /// An exit at tick `at` may be this one's, still owed, in overrun epoch `epoch`.
    pub(super) fn owes_exit_at(&self, at: u64, epoch: u64) -> bool {
        self.owes
            .is_some_and(|o| o.exit_epoch == Some(epoch) && self.may_act_at(o, at))
    }

    /// An exec at tick `at` whose start was not read may be this one's, arriving late.
    pub(super) fn may_exec_at(&self, at: u64) -> bool {
        self.owes.is_some_and(|o| self.may_act_at(o, at))
    }

    fn may_act_at(&self, owed: Owed, at: u64) -> bool {
        at <= owed.until
            && match self.known {
                Known::Started(r) => at >= r,
                Known::SeenAt(t) => at >= t,
            }
    }
}

/// The last removed identity of each pid, at most `capacity` pids (the oldest forgotten).
#[derive(Debug, Default)]
pub(super) struct Removals {
    by_pid: BTreeMap<u32, Removed>,
    /// `by_pid` by insertion number, oldest first.
    order: BTreeMap<u64, u32>,
    seq: u64,
}

impl Removals {
    pub(super) fn get(&self, pid: u32) -> Option<&Removed> {
        self.by_pid.get(&pid)
    }

    pub(super) fn get_mut(&mut self, pid: u32) -> Option<&mut Removed> {
        self.by_pid.get_mut(&pid)
    }

    /// Records `pid`'s latest removed identity (an older one arriving late leaves a later
    /// one's record alone).
    pub(super) fn remember(&mut self, pid: u32, known: Known, owes: Option<Owed>, capacity: usize) {
        let tick = match known {
            Known::Started(s) | Known::SeenAt(s) => s,
        };
        if self.by_pid.get(&pid).is_some_and(|r| r.tick() > tick) {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let removed = Removed { known, owes, seq };
        if let Some(old) = self.by_pid.insert(pid, removed) {
            self.order.remove(&old.seq);
        }
        self.order.insert(seq, pid);
        while self.by_pid.len() > capacity.max(1) {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            self.by_pid.remove(&old);
        }
    }
}
