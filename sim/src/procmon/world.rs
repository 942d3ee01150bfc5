//! The procmon simulation's ground truth and what the host shows of it: virtual processes
//! (fork, exec, exit, setuid, zombies, pids reused from a small pid space), the kernel
//! process connector's socket, and the reads of `/proc`.
//!
//! What the simulation assumes of the kernel, and so of the order the table sees:
//!
//! - the connector queues every exec and exit in the order they happen (one FIFO); a
//!   message that finds the queue full is dropped. The first drop sets ENOBUFS, which the
//!   next read returns before anything queued; further drops are silent until the queue is
//!   empty again (the kernel's `NETLINK_S_CONGESTED` bit). Nothing else is reordered;
//! - a process holds its pid from fork until it is reaped; a zombie (exited, not reaped)
//!   still holds it, shows state `Z` and its `stat`, but no exe, argv or cwd;
//! - pids are handed out in increasing order, wrapping, skipping held ones (Linux's
//!   allocator), from a pid space small enough that reuse is frequent;
//! - one tick is one millisecond and at most one process event happens per tick, so a
//!   reused pid's new holder starts in a later tick than its old holder's exit (real
//!   kernels tick every 10 ms; reusing a pid within one tick needs the whole pid space to
//!   wrap within it);
//! - a read after an exec returns the exec'er's fields while it lives, its `stat` alone
//!   while it is a zombie, and nothing (every field unread) once the pid is free or held by
//!   a later process: a real reader tells the latter by a start after the event's time.

use std::collections::{BTreeMap, VecDeque};

use daemoneye_proto::pb::events::ProcessInfo;

/// A process's true identity: (pid, start tick).
pub(crate) type TrueId = (u32, u64);

/// The images processes exec.
const IMAGES: &[&str] = &[
    "/bin/sh",
    "/usr/bin/curl",
    "/usr/bin/python3",
    "/bin/sleep",
    "/usr/sbin/sshd",
    "/tmp/.x/payload",
    "/usr/bin/true",
];

/// One process of the world.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    pub(crate) start: u64,
    pub(crate) ppid: u32,
    pub(crate) exe: String,
    pub(crate) cmdline: Vec<String>,
    pub(crate) uid: u32,
    /// The tick of its last setuid without an exec (0: never).
    pub(crate) uid_changed_at: u64,
    /// The connector's message for that setuid reached the table with a read of it.
    pub(crate) uid_reported: bool,
    /// Exec'd since its fork (a fork-only child shows its parent's image).
    pub(crate) execd: bool,
    /// A scan has read it alive (how the table learns of a child that never execs).
    pub(crate) scanned: bool,
    /// Exited, and reaped at this tick.
    pub(crate) zombie_until: Option<u64>,
}

/// Every process, by pid (live ones and zombies).
#[derive(Debug)]
pub(crate) struct Procs {
    pub(crate) by_pid: BTreeMap<u32, Proc>,
    /// Every identity that exited, with its code.
    pub(crate) exited: BTreeMap<TrueId, i32>,
    pid_space: u32,
    next_pid: u32,
    made: u64,
}

impl Procs {
    /// A world with init (pid 1) and pids `2..2 + pid_space` to hand out.
    pub(crate) fn new(pid_space: u32) -> Self {
        let mut by_pid = BTreeMap::new();
        by_pid.insert(
            1,
            Proc {
                start: 1,
                ppid: 0,
                exe: "/sbin/init".into(),
                cmdline: vec!["/sbin/init".into()],
                uid: 0,
                uid_changed_at: 0,
                uid_reported: false,
                execd: true,
                scanned: false,
                zombie_until: None,
            },
        );
        Self {
            by_pid,
            exited: BTreeMap::new(),
            pid_space,
            next_pid: 2,
            made: 0,
        }
    }

    /// The live (not zombie) process of `pid`.
    pub(crate) fn alive(&self, pid: u32) -> Option<&Proc> {
        self.by_pid.get(&pid).filter(|p| p.zombie_until.is_none())
    }

    /// Live processes' identities, by pid.
    pub(crate) fn live_ids(&self) -> Vec<TrueId> {
        self.by_pid
            .iter()
            .filter(|(_, p)| p.zombie_until.is_none())
            .map(|(pid, p)| (*pid, p.start))
            .collect()
    }

    /// Live pids other than init's.
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        self.by_pid
            .iter()
            .filter(|(pid, p)| **pid != 1 && p.zombie_until.is_none())
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// `id` is alive now.
    pub(crate) fn is_alive(&self, id: TrueId) -> bool {
        self.alive(id.0).is_some_and(|p| p.start == id.1)
    }

    /// Forks `parent` at `tick`: the child's pid, if one is free.
    pub(crate) fn fork(&mut self, parent: u32, tick: u64) -> Option<u32> {
        let pid = (0..self.pid_space)
            .map(|i| 2 + (self.next_pid - 2 + i) % self.pid_space)
            .find(|p| !self.by_pid.contains_key(p))?;
        self.next_pid = 2 + (pid - 2 + 1) % self.pid_space;
        let p = self.alive(parent)?.clone();
        self.by_pid.insert(
            pid,
            Proc {
                start: tick,
                ppid: parent,
                execd: false,
                scanned: false,
                zombie_until: None,
                uid_changed_at: 0,
                uid_reported: false,
                ..p
            },
        );
        Some(pid)
    }

    /// `pid` execs image number `image` (a setuid image makes it root).
    pub(crate) fn exec(&mut self, pid: u32, image: u64, setuid: bool) {
        self.made += 1;
        let made = self.made;
        let Some(p) = self.by_pid.get_mut(&pid) else {
            return;
        };
        let exe = IMAGES[image as usize % IMAGES.len()];
        p.exe = exe.to_string();
        p.cmdline = vec![exe.to_string(), format!("MARKER-{made}")];
        p.execd = true;
        if setuid {
            p.uid = 0;
        }
    }

    /// `pid` changes its uid without an exec.
    pub(crate) fn setuid(&mut self, pid: u32, uid: u32, tick: u64) {
        if let Some(p) = self.by_pid.get_mut(&pid) {
            p.uid = uid;
            p.uid_changed_at = tick;
            p.uid_reported = false;
        }
    }

    /// `pid` exits with `code`; it is reaped at `reap_at`. Its children go to init.
    pub(crate) fn exit(&mut self, pid: u32, code: i32, reap_at: u64) -> Option<TrueId> {
        let p = self.by_pid.get_mut(&pid)?;
        p.zombie_until = Some(reap_at);
        let id = (pid, p.start);
        self.exited.insert(id, code);
        for child in self.by_pid.values_mut() {
            if child.ppid == pid {
                child.ppid = 1;
            }
        }
        Some(id)
    }

    /// Reaps the zombies due by `tick`.
    pub(crate) fn reap(&mut self, tick: u64) {
        self.by_pid
            .retain(|_, p| p.zombie_until.is_none_or(|until| until > tick));
    }

    /// What `/proc/<pid>` shows now to a scan: the holder's fields (a zombie's `stat`
    /// only), or nothing.
    pub(crate) fn scan_read(&self, pid: u32, rss: u64) -> Option<ProcessInfo> {
        let p = self.by_pid.get(&pid)?;
        Some(if p.zombie_until.is_some() {
            zombie_info(pid, p)
        } else {
            full_info(pid, p, rss)
        })
    }

    /// A scan's result reached the table: the live processes it read are known to it.
    pub(crate) fn mark_scanned(&mut self, read: &[ProcessInfo]) {
        for info in read.iter().filter(|i| i.status != "Z") {
            if let Some(p) = self.by_pid.get_mut(&info.pid)
                && p.start == info.start_ticks
            {
                p.scanned = true;
            }
        }
    }

    /// What a read right after the exec of `id` finds (see the module docs).
    pub(crate) fn exec_read(&self, id: TrueId, rss: u64) -> (ProcessInfo, &'static str) {
        match self.by_pid.get(&id.0) {
            Some(p) if p.start == id.1 && p.zombie_until.is_none() => {
                (full_info(id.0, p, rss), "full")
            }
            Some(p) if p.start == id.1 => (zombie_info(id.0, p), "zombie"),
            _ => (gone_info(id.0), "gone"),
        }
    }
}

fn name_of(exe: &str) -> String {
    exe.rsplit('/')
        .next()
        .unwrap_or(exe)
        .chars()
        .take(15)
        .collect()
}

fn full_info(pid: u32, p: &Proc, rss: u64) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid: p.ppid,
        name: name_of(&p.exe),
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
        uid: p.uid,
        user: format!("u{}", p.uid),
        euid: p.uid,
        effective_user: format!("u{}", p.uid),
        start_ticks: p.start,
        start_time_ms: 1_700_000_000_000 + p.start,
        start_time: (1_700_000_000_000 + p.start) / 1000,
        status: "S".into(),
        memory_bytes: rss,
        cwd: "/".into(),
        ..Default::default()
    }
}

fn zombie_info(pid: u32, p: &Proc) -> ProcessInfo {
    let unread = [
        "exe",
        "cmdline",
        "cwd",
        "exe_dev",
        "exe_inode",
        "exe_deleted",
    ];
    ProcessInfo {
        pid,
        ppid: p.ppid,
        name: name_of(&p.exe),
        uid: p.uid,
        user: format!("u{}", p.uid),
        euid: p.uid,
        effective_user: format!("u{}", p.uid),
        start_ticks: p.start,
        start_time_ms: 1_700_000_000_000 + p.start,
        start_time: (1_700_000_000_000 + p.start) / 1000,
        status: "Z".into(),
        unread: unread.iter().map(|u| (*u).to_string()).collect(),
        ..Default::default()
    }
}

fn gone_info(pid: u32) -> ProcessInfo {
    ProcessInfo {
        pid,
        unread: daemoneye_core::procmon::table::PROCESS_FIELDS
            .iter()
            .map(|u| (*u).to_string())
            .collect(),
        ..Default::default()
    }
}

/// A message of the kernel's process connector.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KernelMsg {
    /// `id` exec'd at tick `at`.
    Exec { id: TrueId, at: u64 },
    /// `id` exited at tick `at` with `code`.
    Exit { id: TrueId, at: u64, code: i32 },
    /// `id` changed its user id at tick `at` without an exec (PROC_EVENT_UID).
    Credentials { id: TrueId, at: u64 },
}

/// What one read of the socket returns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Recv {
    /// ENOBUFS: messages were dropped.
    Overrun,
    /// A message.
    Msg(KernelMsg),
}

/// The connector's socket: a bounded FIFO, ENOBUFS once per congestion.
#[derive(Debug)]
pub(crate) struct Socket {
    queue: VecDeque<KernelMsg>,
    capacity: usize,
    error: bool,
    congested: bool,
    /// Messages dropped.
    pub(crate) lost: u64,
}

impl Socket {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity,
            error: false,
            congested: false,
            lost: 0,
        }
    }

    /// The kernel sends `msg`; false when it was dropped.
    pub(crate) fn send(&mut self, msg: KernelMsg) -> bool {
        if self.queue.len() >= self.capacity {
            self.lost += 1;
            if !self.congested {
                self.error = true;
                self.congested = true;
            }
            return false;
        }
        self.queue.push_back(msg);
        true
    }

    /// One read: the pending error first, then the oldest message.
    pub(crate) fn recv(&mut self) -> Option<Recv> {
        if self.error {
            self.error = false;
            return Some(Recv::Overrun);
        }
        let msg = self.queue.pop_front()?;
        if self.queue.is_empty() {
            self.congested = false;
        }
        Some(Recv::Msg(msg))
    }

    /// Nothing queued and no error pending (the kernel dropped nothing it has not said).
    pub(crate) fn is_quiet(&self) -> bool {
        self.queue.is_empty() && !self.error && !self.congested
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
