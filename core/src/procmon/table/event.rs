//! What the process table publishes: [`ProcessEvent`], its [`Source`], its conversion into
//! the wire's `daemoneye.events.v1.ProcessEvent`, and the rule for which fields of a
//! process count as a modification.

use daemoneye_proto::pb::events::{self as pbe, ProcessEventKind, ProcessInfo};

/// How the table learned of an event (the wire's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The real-time path: the kernel's process connector (exec and exit as they happen).
    Netlink,
    /// A periodic or overrun-triggered reconciliation scan.
    Scan,
    /// The start-up snapshot.
    Snapshot,
}

impl Source {
    /// The wire's name: `"netlink"`, `"scan"` or `"snapshot"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Netlink => "netlink",
            Source::Scan => "scan",
            Source::Snapshot => "snapshot",
        }
    }
}

/// One event to publish, typed; [`ProcessEvent::into_pb`] makes the wire message.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessEvent {
    /// A process the table had not announced: an exec (source netlink) or one a scan found.
    New {
        /// The process as read.
        process: ProcessInfo,
        /// Netlink or scan.
        source: Source,
    },
    /// An announced process that exec'd again (netlink; `changed` may be empty when the
    /// read found nothing different, e.g. an exec of the same binary and argv), or whose
    /// fields changed without an exec (scan: setuid, a rewritten argv, `prctl` renaming).
    Modified {
        /// The process as now read; its identity fields are the table's.
        process: ProcessInfo,
        /// The fields that differ, by their wire names, in [`COMPARED_FIELDS`] order.
        changed: Vec<&'static str>,
        /// Netlink or scan.
        source: Source,
    },
    /// A process ended.
    Exit {
        /// The process as last known; for an unseen exit, the pid alone with every other
        /// field listed in `unread`.
        process: ProcessInfo,
        /// The exit code when the kernel reported it (netlink); `None` when the table
        /// inferred the exit (a scan no longer lists the process, or its pid was reused).
        exit_code: Option<i32>,
        /// Netlink or scan.
        source: Source,
        /// The table never had this process running: its exec was lost (an overrun, or
        /// before the start-up snapshot) or the process limit refused it. The exit is still
        /// reported, by pid, with its code.
        unseen: bool,
    },
    /// One part of the start-up snapshot: everything running when the collector started,
    /// in parts that each fit the configured byte budget.
    Snapshot {
        /// The processes of this part, by pid.
        processes: Vec<ProcessInfo>,
        /// This part, from 1.
        part: u32,
        /// How many parts the snapshot has.
        parts: u32,
    },
}

impl ProcessEvent {
    /// The wire's kind.
    pub fn kind(&self) -> ProcessEventKind {
        match self {
            ProcessEvent::New { .. } => ProcessEventKind::New,
            ProcessEvent::Modified { .. } => ProcessEventKind::Modified,
            ProcessEvent::Exit { .. } => ProcessEventKind::Exit,
            ProcessEvent::Snapshot { .. } => ProcessEventKind::Snapshot,
        }
    }

    /// How the table learned of it.
    pub fn source(&self) -> Source {
        match self {
            ProcessEvent::New { source, .. }
            | ProcessEvent::Modified { source, .. }
            | ProcessEvent::Exit { source, .. } => *source,
            ProcessEvent::Snapshot { .. } => Source::Snapshot,
        }
    }

    /// The process of a new, modified or exit event (`None` for a snapshot part).
    pub fn process(&self) -> Option<&ProcessInfo> {
        match self {
            ProcessEvent::New { process, .. }
            | ProcessEvent::Modified { process, .. }
            | ProcessEvent::Exit { process, .. } => Some(process),
            ProcessEvent::Snapshot { .. } => None,
        }
    }

    /// The wire message, stamped with the collector's id and the observation time (Unix
    /// milliseconds), both of which only the caller knows.
    pub fn into_pb(self, collector_id: &str, observed_at_ms: u64) -> pbe::ProcessEvent {
        let kind = self.kind() as i32;
        let source = self.source().as_str().to_string();
        let mut event = pbe::ProcessEvent {
            kind,
            observed_at_ms,
            collector_id: collector_id.to_string(),
            source,
            ..Default::default()
        };
        match self {
            ProcessEvent::New { process, .. } => event.process = Some(process),
            ProcessEvent::Modified {
                process, changed, ..
            } => {
                event.process = Some(process);
                event.changed = changed.into_iter().map(str::to_string).collect();
            }
            ProcessEvent::Exit {
                process,
                exit_code,
                unseen,
                ..
            } => {
                event.process = Some(process);
                event.exit_code = exit_code.unwrap_or(0);
                event.has_exit_code = exit_code.is_some();
                event.unseen = unseen;
            }
            ProcessEvent::Snapshot {
                processes,
                part,
                parts,
            } => {
                event.processes = processes;
                event.part = part;
                event.parts = parts;
            }
        }
        event
    }
}

/// The fields whose difference makes a MODIFIED event, by wire name. Left out on purpose:
/// what changes all the time (RSS, CPU, state, open files, cwd), what changes without the
/// process doing anything (ppid: an orphan is re-parented), what is fixed for a process's
/// life (pid, start), and what is derived from another process (the parent's exe and argv).
/// A field either read listed as unread is not compared; `exe_sha256` is compared only when
/// both reads hashed.
pub const COMPARED_FIELDS: &[&str] = &[
    "name",
    "exe",
    "cmdline",
    "uid",
    "user",
    "gid",
    "group",
    "euid",
    "effective_user",
    "session_id",
    "tty",
    "cgroup",
    "container_id",
    "exe_deleted",
    "exe_sha256",
    "exe_dev",
    "exe_inode",
    "cap_effective",
    "cap_permitted",
];

/// Every field of `ProcessInfo` but `pid` and `unread`, by wire name: what an unseen exit
/// lists as unread.
pub const PROCESS_FIELDS: &[&str] = &[
    "ppid",
    "name",
    "exe",
    "cmdline",
    "user",
    "uid",
    "start_time",
    "exe_sha256",
    "status",
    "cpu_percent",
    "memory_bytes",
    "cwd",
    "gid",
    "group",
    "euid",
    "effective_user",
    "start_time_ms",
    "start_ticks",
    "parent_exe",
    "parent_cmdline",
    "session_id",
    "tty",
    "cgroup",
    "container_id",
    "cpu_time_ms",
    "exe_deleted",
    "env_names",
    "open_files",
    "cap_effective",
    "cap_permitted",
    "exe_dev",
    "exe_inode",
];

/// The fields of [`COMPARED_FIELDS`] that differ between two reads of one process.
pub fn changed_fields(old: &ProcessInfo, new: &ProcessInfo) -> Vec<&'static str> {
    let unread =
        |name: &str| old.unread.iter().any(|u| u == name) || new.unread.iter().any(|u| u == name);
    COMPARED_FIELDS
        .iter()
        .copied()
        .filter(|name| !unread(name) && differs(old, new, name))
        .collect()
}

fn differs(a: &ProcessInfo, b: &ProcessInfo, field: &str) -> bool {
    match field {
        "name" => a.name != b.name,
        "exe" => a.exe != b.exe,
        "cmdline" => a.cmdline != b.cmdline,
        "uid" => a.uid != b.uid,
        "user" => a.user != b.user,
        "gid" => a.gid != b.gid,
        "group" => a.group != b.group,
        "euid" => a.euid != b.euid,
        "effective_user" => a.effective_user != b.effective_user,
        "session_id" => a.session_id != b.session_id,
        "tty" => a.tty != b.tty,
        "cgroup" => a.cgroup != b.cgroup,
        "container_id" => a.container_id != b.container_id,
        "exe_deleted" => a.exe_deleted != b.exe_deleted,
        "exe_sha256" => {
            !a.exe_sha256.is_empty() && !b.exe_sha256.is_empty() && a.exe_sha256 != b.exe_sha256
        }
        "exe_dev" => a.exe_dev != b.exe_dev,
        "exe_inode" => a.exe_inode != b.exe_inode,
        "cap_effective" => a.cap_effective != b.cap_effective,
        "cap_permitted" => a.cap_permitted != b.cap_permitted,
        _ => false,
    }
}

/// The process's start in clock ticks since boot, `None` when it was not read (listed in
/// `unread`, or zero: no process starts at tick 0 but the kernel's own).
pub fn start_ticks(info: &ProcessInfo) -> Option<u64> {
    let unread = info.unread.iter().any(|u| u == "start_ticks");
    (!unread && info.start_ticks != 0).then_some(info.start_ticks)
}

/// The record of an exit whose process the table never had: the pid, everything else
/// unread.
pub(super) fn unseen_process(pid: u32) -> ProcessInfo {
    ProcessInfo {
        pid,
        unread: PROCESS_FIELDS.iter().map(|f| (*f).to_string()).collect(),
        ..Default::default()
    }
}

/// `new` with the identity fields of `old` (start ticks and start times) where `new` did
/// not read them: an exec never changes them.
pub(super) fn keep_identity(old: &ProcessInfo, mut new: ProcessInfo) -> ProcessInfo {
    let old_has = |name: &str| !old.unread.iter().any(|u| u == name);
    let carry: [(&str, bool); 3] = [
        (
            "start_ticks",
            start_ticks(&new).is_none() && start_ticks(old).is_some(),
        ),
        (
            "start_time",
            new.unread.iter().any(|u| u == "start_time") && old_has("start_time"),
        ),
        (
            "start_time_ms",
            new.unread.iter().any(|u| u == "start_time_ms") && old_has("start_time_ms"),
        ),
    ];
    for (name, take) in carry {
        if !take {
            continue;
        }
        match name {
            "start_ticks" => new.start_ticks = old.start_ticks,
            "start_time" => new.start_time = old.start_time,
            _ => new.start_time_ms = old.start_time_ms,
        }
        new.unread.retain(|u| u != name);
    }
    new
}
