//! What a reader of procmond's events believes, and the invariants checked against the
//! world's truth after every step.
//!
//! The model reads only the table's outputs (and, to name the process behind an event whose
//! start was not read, the input that caused it); the truth is the world's.
//!
//! # What a loss relaxes
//!
//! Between an overrun's report and the end of a scan asked for after the loss ended
//! (`lossy`), the table cannot tell some things apart, and the model accepts its documented
//! choices:
//!
//! - an exec whose start was not read, at a pid the table no longer trusts, is announced
//!   as a new process (after an EXIT of the old one): if it was the old process, it is
//!   announced twice and then exits twice (`procmon-unique-new`, `procmon-single-exit`);
//! - an exit at a pid is the table's entry's, though after a loss it may be a later, unseen
//!   holder's (`procmon-exit-code`, `procmon-exit-by-pid`);
//! - an exit flagged unseen may be the late exit of an announced process
//!   (`procmon-unseen`); also outside `lossy` when a scan had closed that process without a
//!   code after a loss: the table reports an exit it cannot attribute rather than drop it.

use std::collections::{BTreeMap, BTreeSet};

use daemoneye_core::procmon::table::{ProcessEvent, start_ticks};
use prost::Message;

use super::world::{Procs, TrueId};

/// The input that made the table speak.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    /// An exec of this identity was delivered.
    Exec(TrueId),
    /// The exit of this identity, with its code, was delivered.
    Exit(TrueId, i32),
    /// An id change of this identity was delivered.
    Credentials(TrueId),
    /// A scan result, an overrun, a timer or a configuration change.
    Other,
}

/// A failed invariant: its name and what happened.
pub(crate) type Failure = (&'static str, String);

/// The reader's view and the bookkeeping the invariants need.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// pid -> the identity a reader believes runs there.
    pub(crate) mirror: BTreeMap<u32, TrueId>,
    /// Identities announced (NEW or snapshot), ever.
    pub(crate) announced: BTreeSet<TrueId>,
    /// Identities reported exited (EXIT, not unseen).
    pub(crate) reported_exited: BTreeSet<TrueId>,
    /// Of those, the ones a scan or a reuse closed without a code: after a loss their late
    /// exit may come flagged unseen (the table cannot tell it from a later holder's).
    pub(crate) exited_without_code: BTreeSet<TrueId>,
    /// Identities announced a second time by a partial exec after a loss (the table
    /// could not tell the process from a new holder of its pid): one more EXIT is theirs.
    pub(crate) reannounced: BTreeSet<TrueId>,
    /// Between an overrun's report and the end of a scan asked for after its end: the
    /// table may not know of a reuse, so a few rules are relaxed (see `check_event`).
    pub(crate) lossy: bool,
    /// Between an overrun and its end (the source is draining the socket).
    pub(crate) draining: bool,
    /// The scan in flight was asked for outside any loss.
    pub(crate) scan_clean: bool,
    /// An overrun (or its end) came and no scan has been asked for since.
    pub(crate) owed_scan: bool,
    /// Snapshot parts seen (part, parts).
    pub(crate) snapshot_parts: Vec<(u32, u32)>,
    /// Unseen exits reported during the current input, by pid.
    pub(crate) unseen_now: Vec<(u32, Option<i32>)>,
    /// EXIT events (any) reported during the current input, by pid.
    pub(crate) exits_now: Vec<u32>,
}

impl Model {
    /// The overrun's report reached the table.
    pub(crate) fn overrun(&mut self) {
        self.lossy = true;
        self.draining = true;
        self.scan_clean = false;
        self.owed_scan = true;
    }

    /// The overrun's end reached the table.
    pub(crate) fn overrun_ended(&mut self) {
        self.draining = false;
        self.scan_clean = false;
        self.owed_scan = true;
    }

    /// The table asked for a scan.
    pub(crate) fn scan_requested(&mut self) {
        self.scan_clean = !self.draining;
        self.owed_scan = false;
    }

    /// A scan failed: it confirmed nothing, and the table's retry (after its
    /// `scan_retry`) stands for any rescan an overrun owed.
    pub(crate) fn scan_completed_failed(&mut self) {
        self.scan_clean = false;
        self.owed_scan = false;
    }

    /// A scan result was handled.
    pub(crate) fn scan_completed(&mut self) {
        if self.scan_clean && !self.draining {
            self.lossy = false;
        }
        self.scan_clean = false;
    }

    fn announce(
        &mut self,
        info: &daemoneye_proto::pb::events::ProcessInfo,
        cause: Cause,
    ) -> Result<(), Failure> {
        let id = match (start_ticks(info), cause) {
            (Some(s), _) => (info.pid, s),
            (None, Cause::Exec(x)) => x,
            (None, _) => {
                return Err((
                    "procmon-identity",
                    format!("pid {} announced without a start by a scan", info.pid),
                ));
            }
        };
        if id.0 != info.pid {
            return Err((
                "procmon-identity",
                format!("event for pid {} caused by {id:?}", info.pid),
            ));
        }
        if !self.announced.insert(id) {
            if start_ticks(info).is_none() && self.lossy {
                self.reannounced.insert(id);
            } else {
                return Err(("procmon-unique-new", format!("{id:?} announced twice")));
            }
        }
        if let Some(other) = self.mirror.insert(info.pid, id) {
            return Err((
                "procmon-one-per-pid",
                format!("{id:?} announced while {other:?} was never reported exited"),
            ));
        }
        Ok(())
    }

    /// Checks one event the table published, caused by `cause`.
    pub(crate) fn check_event(
        &mut self,
        ev: &ProcessEvent,
        cause: Cause,
        procs: &Procs,
        part_budget: usize,
    ) -> Result<(), Failure> {
        match ev {
            ProcessEvent::Snapshot {
                processes,
                part,
                parts,
            } => {
                let expected = self.snapshot_parts.len() as u32 + 1;
                if *part != expected || *parts < *part {
                    return Err((
                        "procmon-snapshot",
                        format!("part {part} of {parts}, expected part {expected}"),
                    ));
                }
                if let Some((_, n)) = self.snapshot_parts.last()
                    && n != parts
                {
                    return Err(("procmon-snapshot", format!("parts {n} then {parts}")));
                }
                let len = ev.clone().into_pb("", u64::MAX).encoded_len();
                if len > part_budget && processes.len() > 1 {
                    return Err((
                        "procmon-snapshot",
                        format!("part {part} is {len} bytes, over the budget {part_budget}"),
                    ));
                }
                self.snapshot_parts.push((*part, *parts));
                for p in processes {
                    self.announce(p, cause)?;
                }
            }
            ProcessEvent::New { process, .. } => {
                if self.snapshot_parts.last().is_none_or(|(p, n)| p != n)
                    && matches!(cause, Cause::Other)
                {
                    return Err((
                        "procmon-snapshot",
                        format!("scan NEW of pid {} before the snapshot", process.pid),
                    ));
                }
                self.announce(process, cause)?;
            }
            ProcessEvent::Modified {
                process, changed, ..
            } => {
                let Some(id) = self.mirror.get(&process.pid).copied() else {
                    return Err((
                        "procmon-no-exit-before-new",
                        format!("MODIFIED of pid {} never announced", process.pid),
                    ));
                };
                if let Cause::Exec(x) | Cause::Credentials(x) = cause
                    && x != id
                {
                    return Err((
                        "procmon-pid-reuse",
                        format!("the exec of {x:?} published as a MODIFIED of {id:?}"),
                    ));
                }
                if let Some(s) = start_ticks(process)
                    && s != id.1
                {
                    return Err((
                        "procmon-pid-reuse",
                        format!("MODIFIED names start {s} for {id:?} ({changed:?})"),
                    ));
                }
            }
            ProcessEvent::Exit {
                process,
                exit_code,
                unseen: true,
                ..
            } => {
                let Cause::Exit(x, code) = cause else {
                    return Err((
                        "procmon-exit-by-pid",
                        format!("unseen exit of pid {} without an exit", process.pid),
                    ));
                };
                if x.0 != process.pid || *exit_code != Some(code) {
                    return Err((
                        "procmon-exit-by-pid",
                        format!("unseen exit {process:?} for the exit of {x:?} ({code})"),
                    ));
                }
                let late_code = self.exited_without_code.remove(&x);
                if self.mirror.get(&x.0) == Some(&x)
                    || (self.announced.contains(&x) && !self.lossy && !late_code)
                {
                    return Err((
                        "procmon-unseen",
                        format!("{x:?} was announced, its exit is flagged unseen"),
                    ));
                }
                self.unseen_now.push((process.pid, *exit_code));
                self.exits_now.push(process.pid);
            }
            ProcessEvent::Exit {
                process, exit_code, ..
            } => {
                let Some(id) = self.mirror.remove(&process.pid) else {
                    return Err((
                        "procmon-no-exit-before-new",
                        format!("EXIT of pid {} never announced", process.pid),
                    ));
                };
                if start_ticks(process).is_some_and(|s| s != id.1) {
                    return Err((
                        "procmon-no-exit-before-new",
                        format!("EXIT names {process:?}, a reader knows {id:?}"),
                    ));
                }
                if procs.is_alive(id) {
                    return Err(("procmon-no-false-exit", format!("EXIT of {id:?}, alive")));
                }
                if exit_code.is_none() {
                    self.exited_without_code.insert(id);
                }
                if !self.reported_exited.insert(id) && !self.reannounced.remove(&id) {
                    return Err(("procmon-single-exit", format!("{id:?} exited twice")));
                }
                match (cause, exit_code) {
                    (Cause::Exit(x, code), Some(c)) if x == id && code != *c => {
                        return Err((
                            "procmon-exit-code",
                            format!("{id:?} exited with {code}, reported {c}"),
                        ));
                    }
                    (Cause::Exit(x, _), Some(_)) if x != id && !self.lossy => {
                        return Err((
                            "procmon-exit-code",
                            format!("the exit of {x:?} reported for {id:?}"),
                        ));
                    }
                    (Cause::Exit(..), _) | (_, None) => {}
                    (_, Some(c)) => {
                        return Err((
                            "procmon-exit-code",
                            format!("{id:?} given code {c} without an exit"),
                        ));
                    }
                }
                self.exits_now.push(process.pid);
            }
        }
        Ok(())
    }

    /// After a delivered exit of `x` was handled: it is reported, by identity or at least by
    /// pid with its code (relaxed to "some exit at the pid, or none" while lossy).
    pub(crate) fn check_exit_reported(&self, x: TrueId, code: i32) -> Result<(), Failure> {
        if self.reported_exited.contains(&x) || self.unseen_now.contains(&(x.0, Some(code))) {
            return Ok(());
        }
        if self.lossy {
            return Ok(());
        }
        Err((
            "procmon-exit-by-pid",
            format!("the exit of {x:?} ({code}) was not reported"),
        ))
    }

    /// After a scan result: every identity alive from the listing to now was announced.
    pub(crate) fn check_announced(&self, throughout: &[TrueId]) -> Result<(), Failure> {
        match throughout.iter().find(|id| !self.announced.contains(id)) {
            Some(id) => Err((
                "procmon-announced",
                format!("{id:?} ran through a scan and was never announced"),
            )),
            None => Ok(()),
        }
    }
}
