//! Reading one process from `/proc/<pid>` into a `ProcessInfo`.
//!
//! Reading races the process's exit, so it happens in two steps. [`ProcessReader::read_early`]
//! reads what vanishes with the process and is cheap (`cmdline`, the `exe` link and its file
//! identity, `stat`, `status`, the `cwd` link): the watch calls it on its receive thread the
//! moment an exec arrives. [`ProcessReader::complete`] reads the rest (`cgroup`, the parent,
//! names, the hash, enhanced metadata) and builds the info. A field that cannot be read keeps its
//! default, its name goes into `unread`, and the reason is counted in [`ReadStats`] (per
//! source file and reason: gone, permission, other). A process gone before anything could
//! be read still yields an info with its pid ([`ReadOutcome::gone`]) and counts as lost to
//! the race.
//!
//! This module reads only; it never decides what an observation means (that is the core's
//! process table).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use daemoneye_proto::pb::events::ProcessInfo;

use super::hash::{ExeFile, FileId, HashCache, HashError};
use super::names::NameCache;
use super::procfs::{self, Stat};

/// What to read beyond the standard fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Environment variable names (never values), open file count, capability sets.
    pub enhanced_metadata: bool,
    /// The executable's SHA-256 (`exe_sha256`).
    pub compute_hashes: bool,
}

/// A source of fields, as counted in [`ReadStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// `/proc/<pid>/stat`: ppid, name, state, session, tty, start, CPU, RSS.
    Stat,
    /// `/proc/<pid>/cmdline`: argv.
    Cmdline,
    /// `/proc/<pid>/exe`: the executable's path and identity.
    Exe,
    /// `/proc/<pid>/cwd`.
    Cwd,
    /// `/proc/<pid>/status`: uids, gids, capabilities.
    Status,
    /// `/proc/<pid>/cgroup`.
    Cgroup,
    /// User and group names.
    Names,
    /// The parent's exe and argv.
    Parent,
    /// The executable's hash.
    Hash,
    /// `/proc/<pid>/environ` (names only).
    Environ,
    /// `/proc/<pid>/fd`.
    Fds,
}

impl Source {
    /// Every source, in order.
    pub const ALL: [Source; 11] = [
        Source::Stat,
        Source::Cmdline,
        Source::Exe,
        Source::Cwd,
        Source::Status,
        Source::Cgroup,
        Source::Names,
        Source::Parent,
        Source::Hash,
        Source::Environ,
        Source::Fds,
    ];

    /// The `ProcessInfo` fields this source fills (what goes into `unread` when it fails).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Source::Stat => &[
                "ppid",
                "name",
                "status",
                "session_id",
                "tty",
                "start_time",
                "start_time_ms",
                "start_ticks",
                "cpu_time_ms",
                "cpu_percent",
                "memory_bytes",
            ],
            Source::Cmdline => &["cmdline"],
            Source::Exe => &["exe", "exe_dev", "exe_inode"],
            Source::Cwd => &["cwd"],
            Source::Status => &["uid", "gid", "euid"],
            Source::Cgroup => &["cgroup", "container_id"],
            Source::Names => &["user", "group", "effective_user"],
            Source::Parent => &["parent_exe", "parent_cmdline"],
            Source::Hash => &["exe_sha256"],
            Source::Environ => &["env_names"],
            Source::Fds => &["open_files"],
        }
    }

    /// The source's name in logs and heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stat => "stat",
            Source::Cmdline => "cmdline",
            Source::Exe => "exe",
            Source::Cwd => "cwd",
            Source::Status => "status",
            Source::Cgroup => "cgroup",
            Source::Names => "names",
            Source::Parent => "parent",
            Source::Hash => "hash",
            Source::Environ => "environ",
            Source::Fds => "fds",
        }
    }
}

/// Why a field could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The process (or the file) was gone.
    Gone,
    /// Permission was refused.
    Permission,
    /// Anything else (malformed content, an unexpected error).
    Other,
}

impl Reason {
    /// The reason for an IO error on a `/proc` file.
    pub fn of(e: &std::io::Error) -> Reason {
        match e.kind() {
            std::io::ErrorKind::NotFound => Reason::Gone,
            std::io::ErrorKind::PermissionDenied => Reason::Permission,
            _ if e.raw_os_error() == Some(nix::libc::ESRCH) => Reason::Gone,
            _ => Reason::Other,
        }
    }

    /// The reason's name in logs and heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Gone => "gone",
            Reason::Permission => "permission",
            Reason::Other => "other",
        }
    }
}

/// Counters of fields not read, per source and reason, and of processes lost to the race.
/// Shared (`Arc`) and readable at any time.
#[derive(Debug, Default)]
pub struct ReadStats {
    failures: [[AtomicU64; 3]; Source::ALL.len()],
    lost_to_race: AtomicU64,
    reads: AtomicU64,
}

impl ReadStats {
    /// How often `source` failed for `reason`.
    pub fn failures(&self, source: Source, reason: Reason) -> u64 {
        self.failures[source as usize][reason as usize].load(Ordering::Relaxed)
    }

    /// Processes gone before anything could be read.
    pub fn lost_to_race(&self) -> u64 {
        self.lost_to_race.load(Ordering::Relaxed)
    }

    /// Processes read (complete reads, including the lost ones).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Every non-zero failure count, in source and reason order.
    pub fn snapshot(&self) -> Vec<(Source, Reason, u64)> {
        let mut out = Vec::new();
        for source in Source::ALL {
            for reason in [Reason::Gone, Reason::Permission, Reason::Other] {
                let n = self.failures(source, reason);
                if n > 0 {
                    out.push((source, reason, n));
                }
            }
        }
        out
    }

    /// Counts a failure of `source` for `reason` found by a caller (a scan's missing parent).
    pub fn count(&self, source: Source, reason: Reason) {
        self.fail(source, reason);
    }

    fn fail(&self, source: Source, reason: Reason) {
        self.failures[source as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The executable as seen at exec: its path (without " (deleted)") and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExeSeen {
    /// The path the link names.
    pub path: String,
    /// The kernel marked the link " (deleted)".
    pub deleted: bool,
    /// The identity of the file the process runs (through the link), when readable.
    pub id: Option<FileId>,
}

/// What [`ProcessReader::read_early`] read: the fields that vanish first.
#[derive(Debug, Clone)]
pub struct EarlyRead {
    /// The process.
    pub pid: u32,
    /// argv.
    pub cmdline: Result<Vec<String>, Reason>,
    /// The executable.
    pub exe: Result<ExeSeen, Reason>,
    /// `/proc/<pid>/stat`.
    pub stat: Result<Stat, Reason>,
    /// `/proc/<pid>/status`: user and group ids, capabilities.
    pub status: Result<procfs::Status, Reason>,
    /// The working directory.
    pub cwd: Result<String, Reason>,
}

impl EarlyRead {
    /// True when nothing at all could be read (the process was already gone).
    pub fn nothing_read(&self) -> bool {
        self.cmdline.is_err() && self.exe.is_err() && self.stat.is_err()
    }
}

/// An executable opened for hashing whose hash is not cached yet
/// ([`ProcessReader::finish_hash`] works it out).
#[derive(Debug)]
pub struct PendingHash(ExeFile);

/// The result of reading one process.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOutcome {
    /// What was read; `unread` lists the fields that were not.
    pub info: ProcessInfo,
    /// The process was gone before anything could be read (`info` has only the pid and
    /// what the caller already knew).
    pub gone: bool,
}

/// Reads processes; cheap to clone (the caches and counters are shared).
#[derive(Debug, Clone)]
pub struct ProcessReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    enhanced_metadata: AtomicBool,
    compute_hashes: AtomicBool,
    boot: procfs::BootClock,
    names: NameCache,
    hashes: HashCache,
    stats: ReadStats,
}

impl ProcessReader {
    /// A reader with `options` (changeable later with [`ProcessReader::set_options`]).
    pub fn new(options: ReadOptions) -> Self {
        ProcessReader {
            inner: Arc::new(Inner {
                enhanced_metadata: AtomicBool::new(options.enhanced_metadata),
                compute_hashes: AtomicBool::new(options.compute_hashes),
                boot: procfs::BootClock::read(),
                names: NameCache::new(),
                hashes: HashCache::default(),
                stats: ReadStats::default(),
            }),
        }
    }

    /// Changes what is read from now on (a configuration update).
    pub fn set_options(&self, options: ReadOptions) {
        let i = &self.inner;
        i.enhanced_metadata
            .store(options.enhanced_metadata, Ordering::Relaxed);
        i.compute_hashes
            .store(options.compute_hashes, Ordering::Relaxed);
    }

    /// The current options.
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            enhanced_metadata: self.inner.enhanced_metadata.load(Ordering::Relaxed),
            compute_hashes: self.inner.compute_hashes.load(Ordering::Relaxed),
        }
    }

    /// The failure counters.
    pub fn stats(&self) -> &ReadStats {
        &self.inner.stats
    }

    /// The hash cache.
    pub fn hashes(&self) -> &HashCache {
        &self.inner.hashes
    }

    /// The name cache.
    pub fn names(&self) -> &NameCache {
        &self.inner.names
    }

    /// The boot clock (start ticks to wall-clock time).
    pub fn boot_clock(&self) -> &procfs::BootClock {
        &self.inner.boot
    }

    /// Reads everything about `pid` at once.
    pub fn read(&self, pid: u32) -> ReadOutcome {
        self.complete(self.read_early(pid))
    }

    /// Reads what vanishes with the process, in order of value: argv, the executable,
    /// stat, the ids (status) and the working directory.
    pub fn read_early(&self, pid: u32) -> EarlyRead {
        let cmdline = procfs::read_cmdline(pid);
        let exe = read_exe(pid);
        let stat = procfs::read_stat(pid);
        let status = procfs::read_status(pid);
        let cwd = procfs::read_link(pid, "cwd");
        // A zombie has no memory left: its empty argv is not its argv.
        let cmdline = match (cmdline, &stat) {
            (Ok(argv), Ok(s)) if argv.is_empty() && s.state == 'Z' => Err(Reason::Gone),
            (Ok(argv), Err(Reason::Gone)) if argv.is_empty() => Err(Reason::Gone),
            (c, _) => c,
        };
        EarlyRead {
            pid,
            cmdline,
            exe,
            stat,
            status,
            cwd,
        }
    }

    /// Completes an early read: everything else, then the info.
    pub fn complete(&self, early: EarlyRead) -> ReadOutcome {
        self.complete_with(early, true)
    }

    /// [`ProcessReader::complete`], except that an executable whose hash is not cached
    /// is only opened (the open file keeps what ran readable after an exit or a removal):
    /// the caller hashes it with [`ProcessReader::finish_hash`], off the thread that must
    /// keep up with the processes' exits.
    pub fn complete_deferring_hash(&self, early: EarlyRead) -> (ReadOutcome, Option<PendingHash>) {
        self.complete_inner(early, true, true)
    }

    /// Fills `info`'s hash from `pending`; a failure is counted and `exe_sha256` goes into
    /// its `unread`.
    pub fn finish_hash(&self, info: &mut ProcessInfo, pending: PendingHash) {
        match self.inner.hashes.hash_exe(pending.0) {
            Ok(hash) => info.exe_sha256 = hash,
            Err(e) => self.hash_unread(info, hash_reason(&e)),
        }
    }

    /// Leaves `info` without its hash (the watch is stopping): counted as not read.
    pub fn abandon_hash(&self, info: &mut ProcessInfo, _pending: PendingHash) {
        self.hash_unread(info, Reason::Other);
    }

    fn hash_unread(&self, info: &mut ProcessInfo, reason: Reason) {
        self.inner.stats.fail(Source::Hash, reason);
        info.unread
            .extend(Source::Hash.fields().iter().map(|f| String::from(*f)));
    }

    /// [`ProcessReader::complete`], reading the parent only when `read_parent` (a scan
    /// fills it from its own results instead).
    pub(crate) fn complete_with(&self, early: EarlyRead, with_parent: bool) -> ReadOutcome {
        self.complete_inner(early, with_parent, false).0
    }

    fn complete_inner(
        &self,
        early: EarlyRead,
        with_parent: bool,
        defer_hash: bool,
    ) -> (ReadOutcome, Option<PendingHash>) {
        let options = self.options();
        let stats = &self.inner.stats;
        stats.reads.fetch_add(1, Ordering::Relaxed);
        let pid = early.pid;
        let mut info = ProcessInfo {
            pid,
            ..Default::default()
        };
        let mut unread: Vec<&'static str> = Vec::new();
        let fail = |source: Source, reason: Reason, unread: &mut Vec<&'static str>| {
            stats.fail(source, reason);
            unread.extend_from_slice(source.fields());
        };
        if early.nothing_read() {
            stats.lost_to_race.fetch_add(1, Ordering::Relaxed);
            for source in [Source::Stat, Source::Cmdline, Source::Exe] {
                fail(source, Reason::Gone, &mut unread);
            }
            info.unread = unread.into_iter().map(String::from).collect();
            return (ReadOutcome { info, gone: true }, None);
        }
        let kernel_thread = early.stat.as_ref().is_ok_and(Stat::is_kernel_thread);
        match early.stat {
            Ok(stat) => self.fill_from_stat(&mut info, &stat),
            Err(r) => fail(Source::Stat, r, &mut unread),
        }
        match early.cmdline {
            Ok(argv) => info.cmdline = argv,
            Err(r) => fail(Source::Cmdline, r, &mut unread),
        }
        let mut exe_seen = None;
        match early.exe {
            Ok(seen) => {
                info.exe.clone_from(&seen.path);
                info.exe_deleted = seen.deleted || replaced(&seen);
                if let Some(id) = seen.id {
                    info.exe_dev = id.dev;
                    info.exe_inode = id.ino;
                }
                exe_seen = Some(seen);
            }
            // A kernel thread has no executable: nothing is missing.
            Err(_) if kernel_thread => {}
            Err(r) => fail(Source::Exe, r, &mut unread),
        }
        match early.cwd {
            Ok(cwd) => info.cwd = cwd,
            Err(_) if kernel_thread => {}
            Err(r) => fail(Source::Cwd, r, &mut unread),
        }
        match &early.status {
            Ok(s) => {
                info.uid = s.ruid;
                info.euid = s.euid;
                info.gid = s.rgid;
                if options.enhanced_metadata {
                    info.cap_effective = s.cap_eff;
                    info.cap_permitted = s.cap_prm;
                }
                let names = &self.inner.names;
                let user = names.user(s.ruid);
                let euser = if s.euid == s.ruid {
                    user.clone()
                } else {
                    names.user(s.euid)
                };
                let group = names.group(s.rgid);
                if user.is_none() || euser.is_none() || group.is_none() {
                    stats.fail(Source::Names, Reason::Other);
                }
                if user.is_none() {
                    unread.push("user");
                }
                if euser.is_none() {
                    unread.push("effective_user");
                }
                if group.is_none() {
                    unread.push("group");
                }
                info.user = user.unwrap_or_default();
                info.effective_user = euser.unwrap_or_default();
                info.group = group.unwrap_or_default();
            }
            Err(r) => {
                fail(Source::Status, *r, &mut unread);
                unread.extend_from_slice(Source::Names.fields());
                if options.enhanced_metadata {
                    unread.extend_from_slice(&["cap_effective", "cap_permitted"]);
                }
            }
        }
        match procfs::read_cgroup(pid) {
            Ok(path) => {
                info.container_id = container_id(&path).unwrap_or_default();
                info.cgroup = path;
            }
            Err(r) => fail(Source::Cgroup, r, &mut unread),
        }
        if with_parent && info.ppid > 0 {
            match read_parent(info.ppid) {
                Ok((exe, argv)) => {
                    info.parent_exe = exe;
                    info.parent_cmdline = argv;
                }
                Err(r) => fail(Source::Parent, r, &mut unread),
            }
        }
        let mut pending = None;
        if options.compute_hashes && !kernel_thread {
            match &exe_seen {
                Some(seen) => match HashCache::open_process_exe(pid, &seen.path, seen.id) {
                    Ok(exe) => match self.inner.hashes.cached(&exe) {
                        Some(hash) => info.exe_sha256 = hash,
                        None => pending = Some(PendingHash(exe)),
                    },
                    Err(e) => fail(Source::Hash, hash_reason(&e), &mut unread),
                },
                None => fail(Source::Hash, Reason::Gone, &mut unread),
            }
        }
        if options.enhanced_metadata {
            match procfs::read_environ_names(pid) {
                Ok(names) => info.env_names = names,
                Err(_) if kernel_thread => {}
                Err(r) => fail(Source::Environ, r, &mut unread),
            }
            match procfs::count_fds(pid) {
                Ok(n) => info.open_files = n,
                Err(r) => fail(Source::Fds, r, &mut unread),
            }
        }
        info.unread = unread.into_iter().map(String::from).collect();
        let mut outcome = ReadOutcome { info, gone: false };
        if let Some(exe) = pending.take_if(|_| !defer_hash) {
            self.finish_hash(&mut outcome.info, exe);
        }
        (outcome, pending)
    }

    /// A process read before, read again cheaply for a reconciliation scan: its `stat`
    /// (already read by the caller), the `exe` link and, with `ids`, `status`. When it is still the
    /// process `known` describes (same start and name) and nothing compared changed (the
    /// executable's path, its deletion or replacement, the ids and, with enhanced metadata,
    /// the capabilities), returns `known` with the `stat` fields refreshed (state, parent
    /// pid, session, terminal, CPU, memory) and its parent fields left for the scan to fill.
    /// `None` means read it in full: another process, something changed, or `known` misses
    /// a field the options ask for.
    ///
    /// argv, cwd and cgroup stay as read before: a process's own rewrite of its argv (a
    /// title) and a move between cgroups are not followed between full reads.
    ///
    /// `paths` remembers, for one scan, what each executable path names on disk now (one
    /// lookup per binary, not per process: a host runs many processes of few binaries).
    pub(crate) fn refresh(
        &self,
        known: &ProcessInfo,
        stat: &Stat,
        ids: bool,
        paths: &mut PathIds,
    ) -> Option<ProcessInfo> {
        let options = self.options();
        let same = known.start_ticks != 0
            && stat.start_ticks == known.start_ticks
            && stat.state != 'Z'
            && stat.comm == known.name;
        if !same || !self.holds_all(known) {
            return None;
        }
        if !stat.is_kernel_thread() {
            let target = procfs::read_link(known.pid, "exe").ok()?;
            let (path, unlinked) = match target.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (target.as_str(), false),
            };
            if path != known.exe {
                return None;
            }
            // The path now names another file than the one that runs (the id at exec).
            let replaced = !unlinked
                && match paths.lookup(path) {
                    PathId::File(dev, ino) => (dev, ino) != (known.exe_dev, known.exe_inode),
                    PathId::Missing => true,
                    PathId::Unknown => false,
                };
            if (unlinked || replaced) != known.exe_deleted {
                return None;
            }
            if ids {
                let status = procfs::read_status(known.pid).ok()?;
                let ids_same = (status.ruid, status.euid, status.rgid)
                    == (known.uid, known.euid, known.gid)
                    && (!options.enhanced_metadata
                        || (status.cap_eff, status.cap_prm)
                            == (known.cap_effective, known.cap_permitted));
                if !ids_same {
                    return None;
                }
            }
        }
        let mut info = self.kept(known);
        self.fill_from_stat(&mut info, stat);
        Some(info)
    }

    /// A process that has not been on a CPU since `known` was confirmed (the caller
    /// compared its scheduler counts, read before that confirmation and again now): it
    /// cannot have exec'd, renamed itself, changed its ids, capabilities or session, or
    /// made a thread, so nothing of it is read; only what changes without it running is
    /// checked: its executable's file, which may have been removed or replaced on disk
    /// (through `paths`; a rename of a directory above it is followed at the process's
    /// next run). Its parent pid, which changes when the parent exits, is the caller's to
    /// check. `None` means read it again.
    ///
    /// Kept as they were read: its memory (which the kernel may reclaim meanwhile), its
    /// state and its terminal; its CPU time cannot have grown, and its lifetime CPU share
    /// is worked out again.
    pub(crate) fn keep_idle(
        &self,
        known: &ProcessInfo,
        paths: &mut PathIds,
    ) -> Option<ProcessInfo> {
        if known.start_ticks == 0 || !self.holds_all(known) {
            return None;
        }
        // A kernel thread has no executable (a process's unread one fails `holds_all`).
        if !known.exe.is_empty()
            && !known.exe_deleted
            && paths.lookup(&known.exe) != PathId::File(known.exe_dev, known.exe_inode)
        {
            return None;
        }
        let mut info = self.kept(known);
        info.cpu_percent = self
            .inner
            .boot
            .cpu_percent_since(known.start_ticks, known.cpu_time_ms);
        Some(info)
    }

    /// `known` holds every field the options ask for (its parent fields aside: the scan
    /// fills them).
    fn holds_all(&self, known: &ProcessInfo) -> bool {
        let parent_field = |f: &String| Source::Parent.fields().contains(&f.as_str());
        known.unread.iter().all(parent_field)
            && !(self.options().compute_hashes
                && known.exe_sha256.is_empty()
                && !known.exe.is_empty())
    }

    /// `known` with its parent left for the scan to fill.
    fn kept(&self, known: &ProcessInfo) -> ProcessInfo {
        let mut info = known.clone();
        info.parent_exe.clear();
        info.parent_cmdline.clear();
        info.unread.clear();
        info
    }

    fn fill_from_stat(&self, info: &mut ProcessInfo, stat: &Stat) {
        let boot = &self.inner.boot;
        info.ppid = stat.ppid;
        info.name.clone_from(&stat.comm);
        info.status = stat.state.to_string();
        info.session_id = stat.session;
        info.tty = procfs::tty_name(stat.tty_nr);
        info.start_ticks = stat.start_ticks;
        info.start_time_ms = boot.ticks_to_unix_ms(stat.start_ticks);
        info.start_time = info.start_time_ms / 1000;
        info.cpu_time_ms = boot.ticks_to_ms(stat.utime + stat.stime);
        info.cpu_percent = boot.lifetime_cpu_percent(stat);
        info.memory_bytes = stat.rss_pages.saturating_mul(boot.page_size);
    }
}

/// What a path names on disk, as looked up once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathId {
    /// A file: its device and inode.
    File(u64, u64),
    /// Nothing (removed).
    Missing,
    /// It could not be looked up (permission): taken as unchanged.
    Unknown,
}

/// The identity of the executable paths met during one scan, each looked up once; dropped
/// with the scan, so a replaced binary is seen by the next one.
#[derive(Debug, Default)]
pub(crate) struct PathIds(std::collections::HashMap<String, PathId>);

impl PathIds {
    /// What `path` names, from the disk the first time in this scan.
    pub(crate) fn lookup(&mut self, path: &str) -> PathId {
        if let Some(id) = self.0.get(path) {
            return *id;
        }
        let id = match std::fs::metadata(path) {
            Ok(m) => {
                let f = FileId::of(&m);
                PathId::File(f.dev, f.ino)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PathId::Missing,
            Err(_) => PathId::Unknown,
        };
        self.0.insert(path.to_string(), id);
        id
    }
}

/// The executable's path and identity, read through `/proc/<pid>/exe`.
fn read_exe(pid: u32) -> Result<ExeSeen, Reason> {
    let target = procfs::read_link(pid, "exe")?;
    let (path, deleted) = match target.strip_suffix(" (deleted)") {
        Some(p) => (p.to_string(), true),
        None => (target, false),
    };
    let id = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| FileId::of(&m));
    Ok(ExeSeen { path, deleted, id })
}

/// True when the executable's path now names another file than the one that runs.
fn replaced(seen: &ExeSeen) -> bool {
    let Some(id) = seen.id else { return false };
    match std::fs::metadata(&seen.path) {
        Ok(m) => {
            let now = FileId::of(&m);
            (now.dev, now.ino) != (id.dev, id.ino)
        }
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn read_parent(ppid: u32) -> Result<(String, Vec<String>), Reason> {
    let argv = procfs::read_cmdline(ppid);
    let exe = procfs::read_link(ppid, "exe")
        .map(|t| t.strip_suffix(" (deleted)").map_or(t.clone(), String::from));
    match (exe, argv) {
        (Err(r), Err(_)) => Err(r),
        (exe, argv) => Ok((exe.unwrap_or_default(), argv.unwrap_or_default())),
    }
}

fn hash_reason(e: &HashError) -> Reason {
    match e {
        HashError::Io { source, .. } => Reason::of(source),
        HashError::Replaced { .. } | HashError::Unidentified => Reason::Gone,
    }
}

/// The container id in a cgroup path: a 64-hex-digit segment, bare (`/docker/<id>`,
/// kubepods' `/kubepods/.../pod<uid>/<id>`) or wrapped in a systemd scope
/// (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`).
pub fn container_id(cgroup: &str) -> Option<String> {
    const PREFIXES: [&str; 5] = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ];
    cgroup.split('/').rev().find_map(|segment| {
        let mut s = segment.strip_suffix(".scope").unwrap_or(segment);
        for p in PREFIXES {
            if let Some(rest) = s.strip_prefix(p) {
                s = rest;
                break;
            }
        }
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_looks_a_path_up_once_and_the_next_scan_sees_it_replaced() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("tool");
        std::fs::write(&bin, b"one").expect("write");
        let path = bin.to_str().expect("utf-8");
        let ino = std::fs::metadata(&bin).expect("meta").ino();
        let mut scan = PathIds::default();
        let first = scan.lookup(path);
        assert!(matches!(first, PathId::File(_, i) if i == ino), "{first:?}");
        // Replaced on disk (a new inode): the same scan keeps what it saw, the next one
        // sees the new file; removed: missing.
        let new = dir.path().join("tool.new");
        std::fs::write(&new, b"two").expect("write");
        std::fs::rename(&new, &bin).expect("rename");
        assert_eq!(scan.lookup(path), first);
        let next = PathIds::default().lookup(path);
        assert!(
            matches!(next, PathId::File(..)) && next != first,
            "{next:?}"
        );
        std::fs::remove_file(&bin).expect("remove");
        assert_eq!(PathIds::default().lookup(path), PathId::Missing);
    }

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn container_ids_are_found_in_the_common_runtimes_paths() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods/burstable/pod1234-5678/{ID}"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/system.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_id("/"), None);
    }

    #[test]
    fn this_process_reads_completely() {
        let reader = ProcessReader::new(ReadOptions {
            enhanced_metadata: true,
            compute_hashes: true,
        });
        let out = reader.read(std::process::id());
        assert!(!out.gone);
        let info = out.info;
        assert_eq!(info.unread, Vec::<String>::new());
        assert_eq!(info.ppid, std::os::unix::process::parent_id());
        assert_eq!(
            info.exe,
            std::env::current_exe().expect("exe").display().to_string()
        );
        assert_eq!(info.exe_sha256.len(), 64);
        assert!(info.start_time_ms > 1_600_000_000_000);
        assert!(info.memory_bytes > 0);
        assert!(info.env_names.iter().any(|n| n == "PATH"));
        assert!(info.open_files >= 3);
        assert_eq!(info.uid, nix::unistd::getuid().as_raw());
        assert!(!info.user.is_empty());
    }

    #[test]
    fn a_pid_that_does_not_exist_is_gone_and_counted() {
        let reader = ProcessReader::new(ReadOptions::default());
        let out = reader.read(u32::MAX - 1);
        assert!(out.gone);
        assert_eq!(out.info.pid, u32::MAX - 1);
        assert!(out.info.unread.iter().any(|f| f == "cmdline"));
        assert_eq!(reader.stats().lost_to_race(), 1);
        assert_eq!(reader.stats().failures(Source::Cmdline, Reason::Gone), 1);
    }
}
