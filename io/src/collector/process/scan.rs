//! The full `/proc` scan: the fallback where the process connector is refused, the
//! reconciliation that catches what the connector missed, and the start-up snapshot.
//!
//! A scan must stay cheap (10,000 processes in under 100 ms): it reads each process once
//! (no parent reads: the parent's exe and argv come from the scan's own results), and a
//! hash is computed once per executable file and then served from the cache.

use std::collections::HashMap;

use daemoneye_proto::pb::events::ProcessInfo;

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

/// Every process in `/proc` (at most `max`, lowest pids first; 0 = unlimited), read with
/// `reader`'s options, by pid. A process that vanished during the scan is left out.
pub fn scan(reader: &ProcessReader, max: usize) -> Vec<ProcessInfo> {
    let pids = list_pids(max);
    // Reading /proc is system calls all the way: spread the pids over the cores.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pids.len().div_ceil(MIN_PIDS_PER_THREAD))
        .max(1);
    let read = |pids: &[u32]| -> Vec<ProcessInfo> {
        pids.iter()
            .map(|pid| reader.complete_with(reader.read_early(*pid), false))
            .filter(|o| !o.gone)
            .map(|o| o.info)
            .collect()
    };
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
