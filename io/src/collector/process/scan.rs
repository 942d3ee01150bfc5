//! The full `/proc` scan: the fallback where the process connector is refused, the
//! reconciliation that catches what the connector missed, and the start-up snapshot.
//!
//! A scan must stay cheap (10,000 processes in under 100 ms), so it goes identity first:
//! a process the caller already knows (a reconciliation scan passes the process table) is
//! read again with `stat`, the `exe` link and `status` only, and kept as known when it is
//! the same process (pid and start) with nothing compared changed
//! ([`ProcessReader::refresh`](super::ProcessReader)); only the processes it does not know,
//! or that changed, are read in full. No scan reads parents (the parent's exe and argv come
//! from the scan's own results), and a hash is computed once per executable file and then
//! served from the cache.

use std::collections::HashMap;

use daemoneye_proto::pb::events::ProcessInfo;

use super::procfs;
use super::reader::{ProcessReader, Reason, Source};

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
    scan_known(reader, max, true, |_| None)
}

/// [`scan`], identity first: a pid for which `known` gives the info read before is read
/// cheaply and that info kept (its `stat` fields refreshed) when it is still the same,
/// unchanged process; any other pid is read in full. Without `ids` the cheap read leaves
/// out `status` (the user and group ids, the capabilities): for a caller that learns of
/// every id change otherwise (the process connector's UID and GID events, no overrun).
pub fn scan_known<'k>(
    reader: &ProcessReader,
    max: usize,
    ids: bool,
    known: impl Fn(u32) -> Option<&'k ProcessInfo> + Sync,
) -> Vec<ProcessInfo> {
    let pids = list_pids(max);
    // Reading /proc is system calls all the way: spread the pids over the cores.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pids.len().div_ceil(MIN_PIDS_PER_THREAD))
        .max(1);
    let one = |pid: u32| -> Option<ProcessInfo> {
        if let Some(before) = known(pid)
            && let Ok(stat) = procfs::read_stat(pid)
            && let Some(info) = reader.refresh(before, &stat, ids)
        {
            return Some(info);
        }
        let read = reader.complete_with(reader.read_early(pid), false);
        (!read.gone).then_some(read.info)
    };
    let read = |pids: &[u32]| -> Vec<ProcessInfo> { pids.iter().filter_map(|p| one(*p)).collect() };
    let mut out: Vec<ProcessInfo> = if threads <= 1 {
        read(&pids)
    } else {
        let per = pids.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = pids.chunks(per).map(|c| s.spawn(move || read(c))).collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    let by_pid: HashMap<u32, usize> = out.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
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
