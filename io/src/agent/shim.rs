//! Real collector processes: the `exec-collector` supervisor shim and the [`OsSpawner`]
//! that starts collectors through it.
//!
//! Each collector runs in its own process group (signals go to the group, so a collector's
//! children go with it), and a killed agent leaves nothing of the group behind. The agent
//! starts itself as a small supervisor shim (`daemoneye-agent exec-collector -- BINARY
//! ARGS...`, in a process group of its own) that asks for SIGTERM when the agent dies
//! (`prctl(PR_SET_PDEATHSIG)`, set on itself: no `unsafe`), then starts the collector as the
//! leader of a new group through a second step (`exec-collector --exec`) that asks for
//! SIGKILL when the shim dies and `exec`s the collector, keeping its pid. The shim reports
//! the collector's pid and, later, how it exited on a pipe (its stdin) and otherwise waits.
//! When the agent dies (SIGTERM, or its parent changes) the shim sends SIGKILL and SIGCONT
//! to the collector's whole group, so forked and stopped members die too, then exits. A
//! stopped process cannot act and a SIGKILLed one cannot clean up: that is why the part
//! that cleans up lives outside the collector's group and gets a catchable signal. Signals
//! (pause, resume, stop) go to the collector's group; the shim is not in it. Exits are
//! reaped by tokio (no zombies).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use daemoneye_core::supervisor::Signal;

use super::process::{CollectorSpec, ExitFuture, Spawner};

/// Environment prefixes that belong to the agent and never reach a collector.
const AGENT_ENV_PREFIX: &str = "DAEMONEYE_AGENT_";

/// Real processes: each collector in its own process group, started through the agent's
/// `exec-collector` shim (parent-death signal), reaped by tokio.
#[derive(Debug, Clone)]
pub struct OsSpawner {
    /// The agent's own executable.
    pub shim: PathBuf,
}

impl Spawner for OsSpawner {
    fn spawn(&mut self, spec: &CollectorSpec, socket: &Path) -> std::io::Result<(u32, ExitFuture)> {
        use std::io::Read;
        use tokio::io::AsyncReadExt;
        let (report, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut shim = spawn_shim(&self.shim, spec, socket, report_w)?;
        // The shim's first line is the collector's pid (or it exits at once: EOF). It comes
        // after two execs of the shim; the wait is that short, and bounded by the shim.
        let mut report = std::fs::File::from(report);
        let mut first = Vec::new();
        let mut byte = [0u8; 1];
        while first.len() < 64 && report.read(&mut byte)? == 1 && byte[0] != b'\n' {
            first.push(byte[0]);
        }
        let pid = String::from_utf8_lossy(&first)
            .strip_prefix("pid ")
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(pid) = pid else {
            let _ = shim.start_kill();
            return Err(std::io::Error::other(format!(
                "the collector shim did not start it: {}",
                String::from_utf8_lossy(&first)
            )));
        };
        let mut report = tokio::net::unix::pipe::Receiver::from_owned_fd(report.into())?;
        let exit = Box::pin(async move {
            let mut text = String::new();
            let _ = report.read_to_string(&mut text).await;
            let status = shim.wait().await;
            // The leader is gone; what it left in its group goes too, so a crashed collector
            // leaves no orphans behind (the shim did so already; this covers its own death).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            text.lines()
                .find_map(|l| l.strip_prefix("exit "))
                .map(str::to_string)
                .unwrap_or_else(|| format!("its supervisor shim {}", exit_text(status)))
        });
        Ok((pid, exit))
    }

    fn signal(&mut self, pid: u32, signal: Signal) -> std::io::Result<()> {
        let sig = match signal {
            Signal::Term => nix::sys::signal::Signal::SIGTERM,
            Signal::Kill => nix::sys::signal::Signal::SIGKILL,
            Signal::Stop => nix::sys::signal::Signal::SIGSTOP,
            Signal::Cont => nix::sys::signal::Signal::SIGCONT,
        };
        // The collector leads its own group: signal the whole group.
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig)
            .map_err(std::io::Error::from)
    }
}

/// "exited with status 3", "killed by signal 9".
pub fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

fn spawn_shim(
    shim: &Path,
    spec: &CollectorSpec,
    socket: &Path,
    report: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(shim);
    cmd.arg("exec-collector")
        .arg("--")
        .arg(&spec.binary)
        .args(&spec.args);
    // The agent's own settings are never inherited by accident.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(AGENT_ENV_PREFIX) {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(&spec.env).env(crate::paths::SOCKET_ENV, socket);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    // The shim's stdin is the write end of its report pipe; it leads a group of its own,
    // outside the collector's (which it creates).
    cmd.process_group(0)
        .stdin(Stdio::from(report))
        .kill_on_drop(false);
    cmd.spawn()
}

/// The `exec-collector` supervisor shim, run by the agent: starts the collector in a new
/// process group (through `exec-collector --exec`), reports its pid and its exit on stdin
/// (a pipe from the agent), and when the agent dies kills the collector's whole group.
/// Returns the shim's exit code.
pub fn collector_shim(binary: &Path, args: &[String]) -> u8 {
    use std::io::Write;
    use std::os::fd::AsFd;
    let report = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    let Ok(mut report) = report else {
        eprintln!("daemoneye-agent exec-collector: no report pipe on stdin");
        return 127;
    };
    let parent = nix::unistd::getppid();
    #[cfg(target_os = "linux")]
    {
        // Catchable, so the shim can take the collector's group with it.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
            let _ = writeln!(report, "error cannot set the parent-death signal: {e}");
            return 127;
        }
    }
    // The agent may have died before the signal was set: then nobody would ever send it.
    if nix::unistd::getppid() != parent {
        return 127;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(report, "error {e}");
            return 127;
        }
    };
    runtime.block_on(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    let _ = writeln!(report, "error {e}");
                    return 127;
                }
            };
        let me = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(report, "error {e}");
                return 127;
            }
        };
        let mut cmd = tokio::process::Command::new(me);
        cmd.arg("exec-collector")
            .arg("--exec")
            .arg("--")
            .arg(binary)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(report, "error {e}");
                return 127;
            }
        };
        let pid = child.id().unwrap_or(0);
        let group = nix::unistd::Pid::from_raw(pid as i32);
        if writeln!(report, "pid {pid}").is_err() {
            // The agent is gone already.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
            return 0;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                status = child.wait() => {
                    // What the collector left in its group goes with it.
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    let _ = writeln!(report, "exit {}", exit_text(status));
                    return 0;
                }
                _ = term.recv() => break,
                // Belt and braces: the parent-death signal is Linux's; a new parent means
                // the agent died.
                _ = tick.tick() => {
                    if nix::unistd::getppid() != parent {
                        break;
                    }
                }
            }
        }
        // The agent died: the collector's whole group goes, stopped members too.
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGCONT);
        let _ = child.wait().await;
        0
    })
}

/// The second step of the shim (`exec-collector --exec`), run as the new group's leader:
/// ask for SIGKILL when the supervisor shim dies, then become the collector. Returns only
/// on failure.
pub fn exec_collector(binary: &Path, args: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    #[cfg(target_os = "linux")]
    {
        let parent = nix::unistd::getppid();
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
            return std::io::Error::other(format!("cannot set the parent-death signal: {e}"));
        }
        // The agent may have died between fork and prctl: then nobody would ever signal us.
        if nix::unistd::getppid() != parent {
            return std::io::Error::other("the agent exited before the collector started");
        }
    }
    std::process::Command::new(binary).args(args).exec()
}
