//! The process collector's source on Linux: one pass over `/proc` gives every process's
//! `ProcessInfo`, and [`process_event`] wraps one in the `events.process.*` payload.
//! A field that cannot be read is left empty; only a process that vanished mid-read is
//! skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use daemoneye_proto::pb::events as pbe;
use prost::Message;

/// One pass over `/proc`: at most `max` processes, by pid.
pub fn scan(max: usize) -> BTreeMap<u32, pbe::ProcessInfo> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        if out.len() >= max {
            break;
        }
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(info) = read_process(pid) {
            out.insert(pid, info);
        }
    }
    out
}

/// The encoded `ProcessEvent` of `kind` for `info`, observed at `observed_at_ms` (Unix ms)
/// by collector `collector_id`.
pub fn process_event(
    collector_id: &str,
    kind: pbe::ProcessEventKind,
    info: &pbe::ProcessInfo,
    observed_at_ms: u64,
) -> Bytes {
    let event = pbe::ProcessEvent {
        kind: kind as i32,
        process: Some(info.clone()),
        changed: Vec::new(),
        observed_at_ms,
        collector_id: collector_id.to_string(),
        source: "scan".into(),
        ..Default::default()
    };
    Bytes::from(event.encode_to_vec())
}

fn read_process(pid: u32) -> Option<pbe::ProcessInfo> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    let (head, rest) = stat.rsplit_once(") ")?;
    let name = head.split_once(" (").map(|(_, n)| n.to_string())?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let cmdline = std::fs::read(base.join("cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let exe = std::fs::read_link(base.join("exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let uid = std::fs::read_to_string(base.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    Some(pbe::ProcessInfo {
        pid,
        ppid,
        name,
        exe,
        cmdline,
        uid,
        status: fields.first().map(|s| s.to_string()).unwrap_or_default(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_finds_this_process_with_its_name_and_parent() {
        let me = std::process::id();
        let found = scan(usize::MAX);
        let info = found.get(&me).expect("this process is in /proc");
        assert_eq!(info.pid, me);
        assert_eq!(info.ppid, std::os::unix::process::parent_id());
        assert!(!info.name.is_empty());
        assert!(!info.cmdline.is_empty());
    }

    #[test]
    fn a_scan_stops_at_its_limit() {
        assert_eq!(scan(1).len(), 1);
    }

    #[test]
    fn the_event_carries_the_process_and_its_collector() {
        let info = pbe::ProcessInfo {
            pid: 7,
            name: "x".into(),
            ..Default::default()
        };
        let bytes = process_event("procmond", pbe::ProcessEventKind::Exit, &info, 42);
        let event = pbe::ProcessEvent::decode(bytes).expect("decodes");
        assert_eq!(event.kind, pbe::ProcessEventKind::Exit as i32);
        assert_eq!(event.process, Some(info));
        assert_eq!(
            (event.observed_at_ms, event.collector_id.as_str()),
            (42, "procmond")
        );
    }
}
