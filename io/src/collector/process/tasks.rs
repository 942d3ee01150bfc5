//! The `process` capability's tasks (DESIGN.md sections 11 and 12): what the agent asks
//! procmond about one process to enrich an alert.
//!
//! Each task's `kind` names what is wanted and its payload is a `ProcessTaskRequest` (pid,
//! start ticks, executable path and identity); the result's payload is a
//! `ProcessTaskResult`:
//!
//! - `hash`: the executable's SHA-256, through `/proc/<pid>/exe` while the process lives
//!   (a binary deleted or replaced since still hashes as what runs), else from the path
//!   when its device and inode are still those of the request; cached by file identity
//!   ([`HashCache`]).
//! - `ancestry`: the process, its parent, ... up to pid 1 (or as far as can be read), each
//!   read by the [`ProcessReader`]; a parent that started after its child is a reused pid
//!   and ends the chain.
//! - `open_files`: the targets of `/proc/<pid>/fd`; sockets are resolved by inode through
//!   the process's own `/proc/<pid>/net/{tcp,tcp6,udp,udp6,unix}` (its network
//!   namespace), with local and remote addresses and the TCP state.
//!
//! **Identity.** A process is (pid, start ticks). Before and after each read the pid's
//! start ticks are checked against the request's (0 = any): a pid that exited, or now
//! belongs to another process, answers `gone = true` and never the other process's data.
//! A gone process is a definite answer (`ok`); a failed result is kept for what could not
//! be asked (unknown kind, bad payload) or read (permission).
//!
//! **Privileges.** The reads run on the blocking pool; each of its threads first drops to
//! the collector's two capabilities (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) when the
//! collector runs with dropped privileges, so no thread of a collector that dropped keeps
//! more, whenever its first task arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::Bytes;
use daemoneye_proto::pb::control as pbc;
use daemoneye_proto::pb::events::{ProcessInfo, ProcessTaskRequest, ProcessTaskResult, Socket};
use prost::Message;

use super::hash::{FileId, HashCache, HashError};
use super::procfs;
use super::reader::{ProcessReader, ReadOptions, Reason};
use crate::collector::source::TaskOutcome;

/// The task kinds served.
pub const KINDS: [&str; 3] = ["hash", "ancestry", "open_files"];

/// Most processes in one ancestry (a chain is never longer than the pid space; this only
/// bounds a pathological one).
const MAX_ANCESTRY: usize = 1024;

/// Serves `process` tasks. Cheap to clone (the reader and its caches are shared).
#[derive(Debug, Clone)]
pub struct ProcessTasks {
    reader: ProcessReader,
    hashes: Arc<HashCache>,
    drop_privileges: bool,
}

impl ProcessTasks {
    /// A server with its own reader and hash cache; `drop_privileges` as the collector.
    pub fn new(drop_privileges: bool) -> Self {
        ProcessTasks {
            reader: ProcessReader::new(ReadOptions::default()),
            hashes: Arc::new(HashCache::default()),
            drop_privileges,
        }
    }

    /// Serves one task on the blocking pool (the reads and the hashing block).
    pub async fn handle(&self, task: pbc::Task) -> TaskOutcome {
        let this = self.clone();
        let served = tokio::task::spawn_blocking(move || {
            if this.drop_privileges {
                keep_only_reading_capabilities();
            }
            this.serve(&task.kind, &task.payload)
        })
        .await;
        served.unwrap_or_else(|e| TaskOutcome::failed(format!("process task failed: {e}")))
    }

    /// Serves a task of `kind` with `payload` (a `ProcessTaskRequest`) on this thread.
    pub fn serve(&self, kind: &str, payload: &[u8]) -> TaskOutcome {
        if !KINDS.contains(&kind) {
            return TaskOutcome::failed(format!(
                "unknown process task kind {kind:?}: expected one of {}",
                KINDS.join(", ")
            ));
        }
        let request = match ProcessTaskRequest::decode(payload) {
            Ok(r) if r.pid != 0 => r,
            Ok(_) => {
                return TaskOutcome::failed(format!(
                    "process task {kind:?}: the ProcessTaskRequest names no pid"
                ));
            }
            Err(e) => {
                return TaskOutcome::failed(format!(
                    "process task {kind:?}: malformed ProcessTaskRequest payload: {e}"
                ));
            }
        };
        let answer = match kind {
            "hash" => self.hash(&request),
            "ancestry" => self.ancestry(&request),
            _ => open_files(&request),
        };
        match answer {
            Ok((result, message)) => TaskOutcome {
                ok: true,
                message,
                payload: Bytes::from(result.encode_to_vec()),
            },
            Err(message) => TaskOutcome::failed(message),
        }
    }

    fn hash(&self, req: &ProcessTaskRequest) -> Answer {
        let pid = req.pid;
        if is_alive(req) {
            let link = format!("/proc/{pid}/exe");
            match File::open(&link) {
                Ok(file) => {
                    let hashed = self.hashes.hash_open_file(file, &link);
                    // Opened while the pid was still this process: it is its binary.
                    if is_alive(req) {
                        let hash = hashed.map_err(|e| format!("process {pid}: {e}"))?;
                        let result = ProcessTaskResult {
                            exe_sha256: hash,
                            ..Default::default()
                        };
                        return Ok((result, format!("sha256 of process {pid}'s executable")));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(format!("cannot read {link}: permission denied"));
                }
                Err(_) if is_alive(req) => {
                    return Err(format!("process {pid} has no executable to hash"));
                }
                Err(_) => {}
            }
        }
        // Gone (or its link unreadable): the path, only if it still names the same file.
        let gone = ProcessTaskResult {
            gone: true,
            ..Default::default()
        };
        if req.exe.is_empty() || (req.exe_dev, req.exe_inode) == (0, 0) {
            return Ok((gone, gone_message(pid, "its executable was not identified")));
        }
        match self.hash_path_if_same(req) {
            Ok(hash) => Ok((
                ProcessTaskResult {
                    exe_sha256: hash,
                    gone: true,
                    ..Default::default()
                },
                format!(
                    "process {pid} is gone: sha256 of {} (same device and inode)",
                    req.exe
                ),
            )),
            Err(e) => Ok((gone, gone_message(pid, &e.to_string()))),
        }
    }

    fn hash_path_if_same(&self, req: &ProcessTaskRequest) -> Result<String, HashError> {
        let io = |source| HashError::Io {
            path: req.exe.clone(),
            source,
        };
        let file = File::open(&req.exe).map_err(io)?;
        let now = FileId::of(&file.metadata().map_err(io)?);
        if (now.dev, now.ino) != (req.exe_dev, req.exe_inode) {
            return Err(HashError::Replaced {
                path: req.exe.clone(),
            });
        }
        self.hashes.hash_open_file(file, &req.exe)
    }

    fn ancestry(&self, req: &ProcessTaskRequest) -> Answer {
        let pid = req.pid;
        let first = match self.read_checked(pid, req.start_ticks) {
            Some(info) => info,
            None => return Ok((gone_result(), gone_message(pid, "it exited"))),
        };
        let mut chain = vec![first];
        let mut seen = BTreeSet::from([pid]);
        let mut why_short = None;
        while let Some(child) = chain.last() {
            let (ppid, born) = (child.ppid, child.start_ticks);
            if child.pid == 1 || ppid == 0 || chain.len() >= MAX_ANCESTRY {
                break;
            }
            if !seen.insert(ppid) {
                why_short = Some(format!("pid {ppid} seen twice"));
                break;
            }
            match self.read_checked(ppid, 0) {
                // A parent starts before its child: a later start is a reused pid.
                Some(parent) if parent.start_ticks <= born => chain.push(parent),
                _ => {
                    why_short = Some(format!("parent {ppid} exited"));
                    break;
                }
            }
        }
        let message = match why_short {
            None => format!("{} processes from {pid} up", chain.len()),
            Some(why) => format!("{} processes from {pid} up ({why})", chain.len()),
        };
        let result = ProcessTaskResult {
            ancestry: chain,
            ..Default::default()
        };
        Ok((result, message))
    }

    /// Reads `pid`, and gives it only if it is still the process started at `start_ticks`
    /// (0 = any) once read.
    fn read_checked(&self, pid: u32, start_ticks: u64) -> Option<ProcessInfo> {
        let expected = match start_ticks_of(pid) {
            Some(t) if start_ticks == 0 || t == start_ticks => t,
            _ => return None,
        };
        let outcome = self.reader.read(pid);
        let same = outcome.info.start_ticks == expected && start_ticks_of(pid) == Some(expected);
        (!outcome.gone && same).then_some(outcome.info)
    }
}

/// A result and its one-line message, or why the task failed.
type Answer = Result<(ProcessTaskResult, String), String>;

fn gone_result() -> ProcessTaskResult {
    ProcessTaskResult {
        gone: true,
        ..Default::default()
    }
}

fn gone_message(pid: u32, why: &str) -> String {
    format!("process {pid} is gone ({why})")
}

/// The start ticks of the live (not zombie) process `pid`.
fn start_ticks_of(pid: u32) -> Option<u64> {
    procfs::read_stat(pid)
        .ok()
        .filter(|s| s.state != 'Z')
        .map(|s| s.start_ticks)
}

/// `pid` still runs and is the process the request names.
fn is_alive(req: &ProcessTaskRequest) -> bool {
    start_ticks_of(req.pid).is_some_and(|t| req.start_ticks == 0 || t == req.start_ticks)
}

fn open_files(req: &ProcessTaskRequest) -> Answer {
    let pid = req.pid;
    if !is_alive(req) {
        return Ok((gone_result(), gone_message(pid, "it exited")));
    }
    let fds = match list_fds(pid) {
        Ok(fds) => fds,
        Err(Reason::Gone) => return Ok((gone_result(), gone_message(pid, "it exited"))),
        Err(r) => {
            return Err(format!(
                "cannot read /proc/{pid}/fd: {}",
                match r {
                    Reason::Permission => "permission denied",
                    _ => "unreadable",
                }
            ));
        }
    };
    let mut files = Vec::new();
    let mut socket_inodes = BTreeSet::new();
    for target in fds {
        match socket_inode(&target) {
            Some(inode) => {
                socket_inodes.insert(inode);
            }
            None if !files.contains(&target) => files.push(target),
            None => {}
        }
    }
    let sockets = resolve_sockets(pid, &socket_inodes);
    // Read after the fact: a pid reused meanwhile was another process's table.
    if !is_alive(req) {
        return Ok((gone_result(), gone_message(pid, "it exited")));
    }
    let message = format!(
        "{} open files and {} sockets of process {pid}",
        files.len(),
        sockets.len()
    );
    let result = ProcessTaskResult {
        open_files: files,
        sockets,
        ..Default::default()
    };
    Ok((result, message))
}

/// The targets of `/proc/<pid>/fd`, in descriptor order.
fn list_fds(pid: u32) -> Result<Vec<String>, Reason> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| Reason::of(&e))?;
    let mut fds: Vec<(u32, String)> = dir
        .flatten()
        .filter_map(|entry| {
            let fd: u32 = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort_unstable_by_key(|(fd, _)| *fd);
    Ok(fds.into_iter().map(|(_, t)| t).collect())
}

/// The inode of a `socket:[N]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The sockets among `inodes`, found in the process's network namespace; those in no
/// table read (netlink, packet, raw) are listed with their inode alone.
fn resolve_sockets(pid: u32, inodes: &BTreeSet<u64>) -> Vec<Socket> {
    let mut found: BTreeMap<u64, Socket> = BTreeMap::new();
    if !inodes.is_empty() {
        for table in ["tcp", "tcp6", "udp", "udp6", "unix"] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
                continue;
            };
            for socket in parse_net_table(table, &text) {
                if inodes.contains(&socket.inode) {
                    found.entry(socket.inode).or_insert(socket);
                }
            }
        }
    }
    inodes
        .iter()
        .map(|inode| {
            found.remove(inode).unwrap_or_else(|| Socket {
                protocol: "other".into(),
                inode: *inode,
                ..Default::default()
            })
        })
        .collect()
}

/// The sockets of one `/proc/net/<table>` file (`tcp`, `tcp6`, `udp`, `udp6`, `unix`).
pub fn parse_net_table(table: &str, text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            if table == "unix" {
                parse_unix_line(line)
            } else {
                parse_inet_line(table, line)
            }
        })
        .collect()
}

fn parse_inet_line(table: &str, line: &str) -> Option<Socket> {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
    let state = u8::from_str_radix(state, 16).ok()?;
    Some(Socket {
        protocol: table.to_string(),
        local: inet_address(local)?,
        remote: inet_address(remote)?,
        state: if table.starts_with("tcp") {
            tcp_state(state).to_string()
        } else {
            String::new()
        },
        inode: inode.parse().ok()?,
    })
}

/// `0100007F:1F90` as `127.0.0.1:8080`; a 32-digit address as `[::1]:8080`. The kernel
/// prints each 32-bit word of the address in host order.
fn inet_address(text: &str) -> Option<String> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = |n: usize| -> Option<Vec<[u8; 4]>> {
        (0..n)
            .map(|i| {
                let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                Some(w.to_ne_bytes())
            })
            .collect()
    };
    match addr.len() {
        8 => {
            let w = words(1)?;
            Some(format!("{}:{port}", Ipv4Addr::from(w[0])))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, w) in words(4)?.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(w);
            }
            Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

fn tcp_state(code: u8) -> &'static str {
    match code {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

fn parse_unix_line(line: &str) -> Option<Socket> {
    // Num RefCount Protocol Flags Type St Inode [Path]
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    Some(Socket {
        protocol: "unix".into(),
        local: f.get(7).map(|p| p.to_string()).unwrap_or_default(),
        inode: f.get(6)?.parse().ok()?,
        ..Default::default()
    })
}

/// Drops the calling thread to the collector's reading capabilities, once (a thread that
/// already holds no more is left alone).
#[cfg(target_os = "linux")]
fn keep_only_reading_capabilities() {
    use super::privileges;
    let kept = privileges::kept_mask();
    let effective = caps::read(None, caps::CapSet::Effective)
        .map(|set| set.iter().fold(0u64, |m, c| m | c.bitmask()))
        .unwrap_or(u64::MAX);
    if effective & !kept != 0
        && let Err(e) = privileges::drop_to_minimum()
    {
        tracing::debug!(error = %e, "task thread: capabilities not dropped");
    }
}

#[cfg(not(target_os = "linux"))]
fn keep_only_reading_capabilities() {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn inet_tables_parse_addresses_ports_states_and_inodes() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4243 1\n";
        let s = parse_net_table("tcp", tcp);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].local.as_str(), s[0].remote.as_str()),
            ("127.0.0.1:8080", "0.0.0.0:0")
        );
        assert_eq!((s[0].state.as_str(), s[0].inode), ("LISTEN", 4242));
        assert_eq!(s[1].remote, "127.0.0.1:8080");
        assert_eq!(s[1].state, "ESTABLISHED");
        let tcp6 = "header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n";
        let s = parse_net_table("tcp6", tcp6);
        assert_eq!(s[0].local, "[::1]:22");
        assert_eq!(s[0].remote, "[::]:0");
        let udp = "header\n  1: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2\n";
        let s = parse_net_table("udp", udp);
        assert_eq!(
            (s[0].local.as_str(), s[0].state.as_str()),
            ("0.0.0.0:68", "")
        );
    }

    #[test]
    fn unix_table_gives_paths_and_inodes() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/x.sock\n0000000000000000: 00000003 00000000 00000000 0001 03 31338\n";
        let s = parse_net_table("unix", text);
        assert_eq!((s[0].local.as_str(), s[0].inode), ("/run/x.sock", 31337));
        assert_eq!((s[1].local.as_str(), s[1].inode), ("", 31338));
    }

    #[test]
    fn socket_links_give_their_inode_and_other_links_none() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("/etc/passwd"), None);
        assert_eq!(socket_inode("pipe:[5]"), None);
    }

    #[test]
    fn unknown_kinds_and_bad_payloads_fail_with_a_clear_message() {
        let tasks = ProcessTasks::new(false);
        let out = tasks.serve("memory", &[]);
        assert!(!out.ok && out.message.contains("unknown process task kind \"memory\""));
        let out = tasks.serve("hash", &[0xff, 0xff]);
        assert!(!out.ok && out.message.contains("malformed ProcessTaskRequest"));
        let out = tasks.serve("hash", &[]);
        assert!(
            !out.ok && out.message.contains("names no pid"),
            "{}",
            out.message
        );
    }

    #[test]
    fn this_process_is_read_and_a_wrong_start_is_gone() {
        let tasks = ProcessTasks::new(false);
        let pid = std::process::id();
        let ticks = start_ticks_of(pid).unwrap();
        let ask = |kind: &str, start_ticks| {
            let req = ProcessTaskRequest {
                pid,
                start_ticks,
                ..Default::default()
            };
            let out = tasks.serve(kind, &req.encode_to_vec());
            assert!(out.ok, "{}", out.message);
            ProcessTaskResult::decode(out.payload).unwrap()
        };
        let a = ask("ancestry", ticks);
        assert_eq!(a.ancestry[0].pid, pid);
        assert!(!a.gone);
        let h = ask("hash", ticks);
        assert_eq!(h.exe_sha256.len(), 64);
        for kind in KINDS {
            let r = ask(kind, ticks + 1);
            assert!(r.gone, "{kind}");
            assert!(r.ancestry.is_empty() && r.exe_sha256.is_empty() && r.open_files.is_empty());
        }
    }
}
