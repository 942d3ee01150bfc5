//! The full `/proc` scan: the fallback where the process connector is refused, the
//! reconciliation that catches what the connector missed, and the start-up snapshot.
//!
//! A scan must stay cheap (10,000 processes in under 100 ms), so it goes identity first:
//! a process the caller already knows (a reconciliation scan passes the process table)
//! that has not been on a CPU since the scan before confirmed it is kept after reading its
//! scheduler counts alone; one that ran is read again with `stat`, the `exe` link and
//! `status` only (the executable's path looked up once per binary, not per process), and
//! kept as known when it is the same process (pid and start) with nothing compared
//! changed; only the processes it does not know, or that changed, are read in full. No
//! scan reads parents (the parent's exe and argv come from the scan's own results), and a
//! hash is computed once per executable file and then served from the cache.

use std::collections::HashMap;

use daemoneye_proto::pb::events::ProcessInfo;

use super::procfs::{self, SchedStat};
use super::reader::{PathIds, ProcessReader, Reason, Source};

/// Below this many pids per thread, one thread is faster than several.
const MIN_PIDS_PER_THREAD: usize = 512;

/// The pids in `/proc`, ascending, at most `max` of them (0 = all).
pub fn list_pids(max: usize) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    pids.sort_unstable();
    if max > 0 {
        pids.truncate(max);
    }
    pids
}

/// Every process in `/proc` (at most `max`, lowest pids first; 0 = unlimited), read in
/// full with `reader`'s options, by pid. A process that vanished during the scan is left
/// out.
pub fn scan(reader: &ProcessReader, max: usize) -> Vec<ProcessInfo> {
    scan_known(reader, max, true, |_| None, &mut RunStamps::default())
}

/// What a reconciliation scan remembers of each single-threaded process it confirmed, for
/// the next one (see [`scan_known`]).
#[derive(Debug, Default)]
pub struct RunStamps(HashMap<u32, Stamp>);

impl RunStamps {
    /// Processes remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// None remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A confirmed process: its scheduler counts read just before it was confirmed, its start,
/// and its parent then (pid and start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    counts: SchedStat,
    start: u64,
    ppid: u32,
    parent_start: Option<u64>,
}

type Stamped = Vec<(u32, Stamp)>;

/// [`scan`], identity first: a pid for which `known` gives the info read before is read
/// cheaply and that info kept (its `stat` fields refreshed) when it is still the same,
/// unchanged process; any other pid is read in full. Without `ids` the cheap read leaves
/// out `status` (the user and group ids, the capabilities): for a caller that learns of
/// every id change otherwise (the process connector's UID and GID events, no overrun).
///
/// `stamps` carries the processes' scheduler counts from one scan to the next. Each known
/// process's counts are read first; when they equal those remembered from the scan
/// before, the process has not been on a CPU since it was confirmed and nothing more of it
/// is read ([`ProcessReader::keep_idle`]): a quiet host's processes mostly sleep between
/// two scans, and the counts cost half of `stat` and a fifth of the cheap read. Counts
/// are remembered only for a process with one thread (they are the main thread's; another
/// could exec while it sleeps, and a thread can only be made by one that runs), and the
/// parent is checked after the scan (a process is given a new parent when its parent
/// exits, without running itself): when the parent pid no longer holds the living process
/// it held, the process is read again.
pub fn scan_known<'k>(
    reader: &ProcessReader,
    max: usize,
    ids: bool,
    known: impl Fn(u32) -> Option<&'k ProcessInfo> + Sync,
    stamps: &mut RunStamps,
) -> Vec<ProcessInfo> {
    let pids = list_pids(max);
    // Reading /proc is system calls all the way: spread the pids over the cores.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pids.len().div_ceil(MIN_PIDS_PER_THREAD))
        .max(1);
    let before = &*stamps;
    let known = &known;
    // A known process read again (`stat`, then `refresh`); stamped when it has one thread.
    let confirm = |pid: u32,
                   info: &ProcessInfo,
                   counts: Option<SchedStat>,
                   paths: &mut PathIds,
                   next: &mut Stamped| {
        let stat = procfs::read_stat(pid).ok()?;
        let info = reader.refresh(info, &stat, ids, paths)?;
        if let Some(counts) = counts.filter(|_| stat.threads == 1) {
            let stamp = Stamp {
                counts,
                start: stat.start_ticks,
                ppid: stat.ppid,
                parent_start: None,
            };
            next.push((pid, stamp));
        }
        Some(info)
    };
    let one = |pid: u32, paths: &mut PathIds, next: &mut Stamped, idle: &mut Vec<u32>| {
        if let Some(info) = known(pid) {
            // Counts first: they vouch only for what is read after them. All zeros where
            // the kernel keeps no scheduler statistics: they vouch for nothing.
            let counts = procfs::read_schedstat(pid).ok().filter(|c| c.runs > 0);
            if let (Some(c), Some(stamp)) = (counts, before.0.get(&pid))
                && (stamp.counts, stamp.start, stamp.ppid) == (c, info.start_ticks, info.ppid)
                && let Some(kept) = reader.keep_idle(info, paths)
            {
                next.push((pid, *stamp));
                idle.push(pid);
                return Some(kept);
            }
            if let Some(info) = confirm(pid, info, counts, paths, next) {
                return Some(info);
            }
        }
        let read = reader.complete_with(reader.read_early(pid), false);
        (!read.gone).then_some(read.info)
    };
    let read = |pids: &[u32]| -> (Vec<ProcessInfo>, Stamped, Vec<u32>) {
        let (mut paths, mut next, mut idle) = (PathIds::default(), Vec::new(), Vec::new());
        let infos = pids
            .iter()
            .filter_map(|p| one(*p, &mut paths, &mut next, &mut idle))
            .collect();
        (infos, next, idle)
    };
    let parts: Vec<_> = if threads <= 1 {
        vec![read(&pids)]
    } else {
        let per = pids.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = pids.chunks(per).map(|c| s.spawn(move || read(c))).collect();
            parts
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    let mut out = Vec::with_capacity(pids.len());
    let mut next = HashMap::with_capacity(stamps.0.len());
    let mut idle = Vec::new();
    for (infos, stamped, kept) in parts {
        out.extend(infos);
        next.extend(stamped);
        idle.extend(kept);
    }
    // The living process at each pid, by start.
    let living = |out: &[ProcessInfo], at: &HashMap<u32, usize>, pid: u32| {
        let p = &out[*at.get(&pid)?];
        (p.status != "Z").then_some(p.start_ticks)
    };
    let mut at: HashMap<u32, usize> = out.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let mut paths = PathIds::default();
    for pid in idle {
        let stamp = next[&pid];
        let parent_same =
            || stamp.parent_start.is_some() && living(&out, &at, stamp.ppid) == stamp.parent_start;
        if stamp.ppid == 0 || parent_same() {
            continue;
        }
        // Its parent left: read it again for its new one.
        next.remove(&pid);
        let i = at[&pid];
        let mut again = Vec::new();
        match confirm(pid, &out[i], None, &mut paths, &mut again) {
            Some(info) => out[i] = info,
            None => {
                let read = reader.complete_with(reader.read_early(pid), false);
                if read.gone {
                    out.swap_remove(i);
                    at = out.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
                } else {
                    out[i] = read.info;
                }
            }
        }
    }
    for stamp in next.values_mut().filter(|s| s.parent_start.is_none()) {
        stamp.parent_start = living(&out, &at, stamp.ppid);
    }
    stamps.0 = next;
    let by_pid = at;
    let parents: Vec<Option<(String, Vec<String>)>> = out
        .iter()
        .map(|p| {
            let parent = &out[*by_pid.get(&p.ppid)?];
            Some((parent.exe.clone(), parent.cmdline.clone()))
        })
        .collect();
    for (info, parent) in out.iter_mut().zip(parents) {
        match parent {
            Some((exe, argv)) => {
                info.parent_exe = exe;
                info.parent_cmdline = argv;
            }
            // pid 1 and kernel threads' parent 0 have none; any other parent left.
            None if info.ppid > 0 => {
                reader.stats().count(Source::Parent, Reason::Gone);
                info.unread
                    .extend(Source::Parent.fields().iter().map(|f| f.to_string()));
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::process::reader::ReadOptions;

    #[test]
    fn a_scan_finds_this_process_with_its_parent() {
        let reader = ProcessReader::new(ReadOptions::default());
        let all = scan(&reader, 0);
        let me = all
            .iter()
            .find(|p| p.pid == std::process::id())
            .expect("this process");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(!me.cmdline.is_empty());
        assert!(!me.parent_exe.is_empty() || me.unread.iter().any(|f| f == "parent_exe"));
    }

    #[test]
    fn a_scan_stops_at_its_limit() {
        let reader = ProcessReader::new(ReadOptions::default());
        assert!(scan(&reader, 1).len() <= 1);
    }
}
