//! Least privilege for the process collector (Linux): once its sockets and files are open,
//! it keeps only the capabilities that reading other users' `/proc` entries needs, through
//! the `caps` crate (a maintained, small wrapper of capget/capset/prctl).
//!
//! Kept, in the permitted and effective sets (and nothing else in the bounding set):
//!
//! - `CAP_SYS_PTRACE`: `/proc/<pid>/exe`, `cwd`, `environ` and `fd` of a process are
//!   behind the kernel's ptrace access check (`PTRACE_MODE_READ_FSCREDS`); for a process of
//!   another user, or one that is not dumpable (setuid programs), only this capability
//!   passes it. Without it the executable, working directory, environment names, open file
//!   count and the hash (read through `/proc/<pid>/exe`) of other users' processes are lost.
//! - `CAP_DAC_READ_SEARCH`: read (never write) any file and search any directory, so an
//!   executable readable only by its owner (mode 0700 binaries of another user, or under a
//!   0700 home) can still be hashed from its path when the process is gone.
//!
//! Dropped: everything else, CAP_NET_ADMIN included (the connector socket is already bound
//! and listening; the kernel then refuses the socket's final "ignore" request, which is
//! harmless: closing it is enough). The inheritable and ambient sets are cleared, the
//! bounding set reduced to the kept two, and `no_new_privs` is set, so no program this
//! process might execute can gain anything back.
//!
//! Capabilities belong to threads: [`drop_to_minimum`] changes the calling thread and
//! the threads it starts afterwards. Call it before starting any other thread (open the
//! connector, drop, then start the watch); [`KeptCaps::threads_with_more`] lists the
//! threads of the process that still hold more, so the caller can log them.

use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

/// The capabilities kept (see the module documentation for why each).
pub const KEPT: [Capability; 2] = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

/// The kept capabilities as the bit mask `/proc/<pid>/status` shows (`CapEff`).
pub fn kept_mask() -> u64 {
    KEPT.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
}

/// Why dropping failed.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    /// A capability operation failed.
    #[error("cannot {step}: {message}")]
    Caps {
        /// What was being done.
        step: &'static str,
        /// The error.
        message: String,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::errno::Errno),
}

/// What the calling thread holds after [`drop_to_minimum`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCaps {
    /// The effective set's mask.
    pub effective: u64,
    /// The permitted set's mask.
    pub permitted: u64,
    /// The bounding set's mask.
    pub bounding: u64,
    /// Other threads of this process whose effective set is larger (started before the
    /// drop), by thread id.
    pub threads_with_more: Vec<u32>,
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
}

fn caps_err(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |e| PrivilegeError::Caps {
        step,
        message: e.to_string(),
    }
}

/// Drops every capability but [`KEPT`] from the calling thread (those it does not have
/// stay absent), clears the inheritable and ambient sets, reduces the bounding set and
/// sets `no_new_privs`. Safe to call unprivileged (it only drops).
pub fn drop_to_minimum() -> Result<KeptCaps, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("read permitted"))?;
    let keep: CapsHashSet = KEPT
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, about to go.
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read bounding"))?;
    let may_setpcap = permitted.contains(&Capability::CAP_SETPCAP);
    if may_setpcap {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(caps_err("raise CAP_SETPCAP"))?;
        for cap in bounding.iter().filter(|c| !KEPT.contains(c)) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(caps_err("drop from bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clear inheritable"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("set effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("set permitted"))?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    let effective = caps::read(None, CapSet::Effective).map_err(caps_err("read effective"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("read permitted"))?;
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read bounding"))?;
    let kept = KeptCaps {
        effective: mask(&effective),
        permitted: mask(&permitted),
        bounding: mask(&bounding),
        threads_with_more: threads_with_more_than(mask(&effective)),
    };
    tracing::info!(
        effective = format_args!("{:#x}", kept.effective),
        bounding = format_args!("{:#x}", kept.bounding),
        "capabilities dropped to CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
    );
    if !kept.threads_with_more.is_empty() {
        // Each watch thread drops its own as it starts: one may not have got there yet.
        tracing::debug!(threads = ?kept.threads_with_more, "threads not yet dropped to the same capabilities");
    }
    Ok(kept)
}

/// The `CapEff` mask of a `/proc/.../status` text.
pub fn cap_eff_of_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// This process's threads (by id) whose effective set has a capability outside `mask`.
pub fn threads_with_more_than(mask: u64) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .flatten()
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let eff = cap_eff_of_status(&status)?;
            (eff & !mask != 0).then_some(tid)
        })
        .collect();
    out.sort_unstable();
    out
}
