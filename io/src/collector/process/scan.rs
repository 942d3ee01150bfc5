//! The full `/proc` scan: the fallback where the process connector is refused, the
//! reconciliation that catches what the connector missed, and the start-up snapshot.
//!
//! A scan must stay cheap (10,000 processes in under 100 ms): it reads each process once
//! (no parent reads: the parent's exe and argv come from the scan's own results), and a
//! hash is computed once per executable file and then served from the cache.

use std::collections::HashMap;

use daemoneye_proto::pb::events::ProcessInfo;

use super::reader::{ProcessReader, Reason, Source};

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
    let mut out: Vec<ProcessInfo> = list_pids(max)
        .into_iter()
        .map(|pid| reader.complete_with(reader.read_early(pid), false))
        .filter(|o| !o.gone)
        .map(|o| o.info)
        .collect();
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
