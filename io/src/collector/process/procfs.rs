//! The `/proc/<pid>/*` files, parsed: `stat`, `status`, `cmdline`, `cgroup`, `environ`
//! (names only), the `exe` and `cwd` links and the `fd` directory; and the boot clock that
//! turns start ticks into wall-clock time. Each read returns the [`Reason`] it failed for.

use std::os::unix::ffi::OsStrExt;

use nix::time::{ClockId, clock_gettime};
use nix::unistd::{SysconfVar, sysconf};

use super::reader::Reason;

/// The fields of `/proc/<pid>/stat` the collector uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// `comm` (field 2), without its parentheses.
    pub comm: String,
    /// The state letter (field 3).
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Field 6.
    pub session: u32,
    /// Field 7: the controlling terminal's device number.
    pub tty_nr: u32,
    /// Field 9: the kernel's task flags.
    pub flags: u32,
    /// Fields 14 and 15, clock ticks.
    pub utime: u64,
    /// See `utime`.
    pub stime: u64,
    /// Field 20: threads in the process.
    pub threads: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start_ticks: u64,
    /// Field 24: resident pages.
    pub rss_pages: u64,
}

/// `PF_KTHREAD`: the task is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

impl Stat {
    /// True for a kernel thread (no executable, no argv, no environment).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Parses the content of a `stat` file; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<Stat> {
        // comm may contain spaces and parentheses: it ends at the last ") ".
        let open = text.find(" (")?;
        let close = text.rfind(") ")?;
        let comm = text.get(open + 2..close)?.to_string();
        let mut fields = text.get(close + 2..)?.split_ascii_whitespace();
        let state = fields.next()?.chars().next()?;
        let mut next_num = |skip: usize| -> Option<u64> {
            for _ in 0..skip {
                fields.next()?;
            }
            fields.next()?.parse::<i64>().ok().map(|v| v as u64)
        };
        // Fields after state (3), counting from 4.
        let ppid = next_num(0)? as u32; // 4
        let session = next_num(1)? as u32; // 6 (skip pgrp)
        let tty_nr = next_num(0)? as u32; // 7
        let flags = next_num(1)? as u32; // 9 (skip tpgid)
        let utime = next_num(4)?; // 14 (skip minflt, cminflt, majflt, cmajflt)
        let stime = next_num(0)?; // 15
        let threads = next_num(4)?; // 20 (skip cutime, cstime, priority, nice)
        let start_ticks = next_num(1)?; // 22 (skip itrealvalue)
        let rss_pages = next_num(1)?; // 24 (skip vsize)
        Some(Stat {
            comm,
            state,
            ppid,
            session,
            tty_nr,
            flags,
            utime,
            stime,
            threads,
            start_ticks,
            rss_pages,
        })
    }
}

fn path(pid: u32, file: &str) -> String {
    format!("/proc/{pid}/{file}")
}

/// Reads a whole `/proc` file: one open, reads into a page-sized buffer until EOF, close.
/// (`std::fs::read` asks the size first, which `/proc` reports as 0, then probes with
/// small reads: twice the system calls, and each read regenerates the file.)
fn read_proc_file(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut out = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn read_proc_text(path: &str) -> std::io::Result<String> {
    read_proc_file(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Reads and parses a `/proc` file that the kernel generates whole in one `seq_file` show
/// (`stat`, `status`): such a file comes entire in one read when it fits the buffer, so a
/// read shorter than the buffer is its end. One open, one read into the stack, one close:
/// a reconciliation scan reads two of these per process, ten thousand processes in a
/// scan, and the read for the end of file and the heap buffer were a quarter of it. A file
/// longer than the buffer is read on to its end.
fn read_whole<T>(path: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, Reason> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Reason::of(&e))?;
    let mut page = [0u8; 4096];
    let n = loop {
        match file.read(&mut page) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Reason::of(&e)),
        }
    };
    let parsed = if n < page.len() {
        parse(&String::from_utf8_lossy(&page[..n]))
    } else {
        let mut all = page.to_vec();
        file.read_to_end(&mut all).map_err(|e| Reason::of(&e))?;
        parse(&String::from_utf8_lossy(&all))
    };
    parsed.ok_or(Reason::Other)
}

/// `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> Result<Stat, Reason> {
    read_whole(&path(pid, "stat"), Stat::parse)
}

/// `/proc/<pid>/cmdline`, one string per argument (lossy UTF-8).
pub fn read_cmdline(pid: u32) -> Result<Vec<String>, Reason> {
    let bytes = read_proc_file(&path(pid, "cmdline")).map_err(|e| Reason::of(&e))?;
    Ok(split_nul(&bytes)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn split_nul(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    bytes.split(|b| *b == 0).filter(move |_| !bytes.is_empty())
}

/// The target of the `/proc/<pid>/<link>` symlink (`exe`, `cwd`), lossily as UTF-8.
pub fn read_link(pid: u32, link: &str) -> Result<String, Reason> {
    std::fs::read_link(path(pid, link))
        .map(|p| String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned())
        .map_err(|e| Reason::of(&e))
}

/// The scheduler's counts of a process's main thread (`/proc/<pid>/schedstat`): time on a
/// CPU in nanoseconds and times it was put on one. Both only grow while it runs, so equal
/// counts at two moments mean it did not run in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedStat {
    /// Time on a CPU, ns.
    pub run_ns: u64,
    /// Times scheduled onto a CPU (0 where the kernel keeps no scheduler statistics).
    pub runs: u64,
}

impl SchedStat {
    /// Parses `<run ns> <wait ns> <runs>`.
    pub fn parse(text: &str) -> Option<SchedStat> {
        let mut f = text.split_ascii_whitespace().map(str::parse::<u64>);
        let run_ns = f.next()?.ok()?;
        let _wait = f.next()?.ok()?;
        let runs = f.next()?.ok()?;
        Some(SchedStat { run_ns, runs })
    }
}

/// `/proc/<pid>/schedstat` (absent on kernels built without scheduler statistics).
pub fn read_schedstat(pid: u32) -> Result<SchedStat, Reason> {
    read_whole(&path(pid, "schedstat"), SchedStat::parse)
}

/// The fields of `/proc/<pid>/status` the collector uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Real user id.
    pub ruid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Real group id.
    pub rgid: u32,
    /// Effective group id.
    pub egid: u32,
    /// `CapEff`.
    pub cap_eff: u64,
    /// `CapPrm`.
    pub cap_prm: u64,
}

impl Status {
    /// Parses the content of a `status` file; `None` without its Uid and Gid lines.
    pub fn parse(text: &str) -> Option<Status> {
        let mut s = Status::default();
        let (mut uids, mut gids) = (false, false);
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let mut ids = value.split_ascii_whitespace().map(str::parse::<u32>);
            match key {
                "Uid" => {
                    s.ruid = ids.next()?.ok()?;
                    s.euid = ids.next()?.ok()?;
                    uids = true;
                }
                "Gid" => {
                    s.rgid = ids.next()?.ok()?;
                    s.egid = ids.next()?.ok()?;
                    gids = true;
                }
                "CapEff" => s.cap_eff = u64::from_str_radix(value.trim(), 16).ok()?,
                "CapPrm" => s.cap_prm = u64::from_str_radix(value.trim(), 16).ok()?,
                _ => {}
            }
        }
        (uids && gids).then_some(s)
    }
}

/// `/proc/<pid>/status`.
pub fn read_status(pid: u32) -> Result<Status, Reason> {
    read_whole(&path(pid, "status"), Status::parse)
}

/// The cgroup path: the unified (v2, `0::`) hierarchy's, else the first line's.
pub fn read_cgroup(pid: u32) -> Result<String, Reason> {
    let text = read_proc_text(&path(pid, "cgroup")).map_err(|e| Reason::of(&e))?;
    let path_of = |line: &str| line.splitn(3, ':').nth(2).map(String::from);
    text.lines()
        .find(|l| l.starts_with("0::"))
        .and_then(path_of)
        .or_else(|| text.lines().next().and_then(path_of))
        .ok_or(Reason::Other)
}

/// The environment's variable names, never their values.
pub fn read_environ_names(pid: u32) -> Result<Vec<String>, Reason> {
    let bytes = read_proc_file(&path(pid, "environ")).map_err(|e| Reason::of(&e))?;
    Ok(split_nul(&bytes)
        .map(|entry| {
            let name = entry.split(|b| *b == b'=').next().unwrap_or(entry);
            String::from_utf8_lossy(name).into_owned()
        })
        .collect())
}

/// The number of open file descriptors.
pub fn count_fds(pid: u32) -> Result<u32, Reason> {
    let dir = std::fs::read_dir(path(pid, "fd")).map_err(|e| Reason::of(&e))?;
    Ok(dir.count() as u32)
}

/// The terminal's name from `stat`'s tty_nr: "pts/N", "ttyN", "ttySN", "console", or
/// "major:minor" for others; empty for none.
pub fn tty_name(tty_nr: u32) -> String {
    if tty_nr == 0 {
        return String::new();
    }
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 0 => "tty".into(),
        5 if minor == 1 => "console".into(),
        _ => format!("{major}:{minor}"),
    }
}

/// The clocks that turn a process's start ticks into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    pub hz: u64,
    /// Bytes per page.
    pub page_size: u64,
    /// The boot's wall-clock time, Unix milliseconds.
    pub boot_unix_ms: u64,
}

impl BootClock {
    /// Reads the tick rate and the boot time: the wall clock minus the boot clock
    /// (`CLOCK_BOOTTIME`, which counts suspend like the start ticks do); `btime` from
    /// `/proc/stat` when the clocks cannot be read.
    pub fn read() -> Self {
        let hz = sysconf(SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|v| *v > 0)
            .map_or(100, |v| v as u64);
        let page_size = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .filter(|v| *v > 0)
            .map_or(4096, |v| v as u64);
        let boot_unix_ms = match (
            clock_gettime(ClockId::CLOCK_REALTIME),
            clock_gettime(ClockId::CLOCK_BOOTTIME),
        ) {
            (Ok(real), Ok(boot)) => {
                let ms = |t: nix::sys::time::TimeSpec| {
                    t.tv_sec() as i128 * 1000 + i128::from(t.tv_nsec()) / 1_000_000
                };
                (ms(real) - ms(boot)).max(0) as u64
            }
            _ => btime_ms().unwrap_or(0),
        };
        BootClock {
            hz,
            page_size,
            boot_unix_ms,
        }
    }

    /// Clock ticks as milliseconds.
    pub fn ticks_to_ms(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1000) / self.hz
    }

    /// A start in ticks since boot as Unix milliseconds.
    pub fn ticks_to_unix_ms(&self, ticks: u64) -> u64 {
        self.boot_unix_ms + self.ticks_to_ms(ticks)
    }

    /// CPU use over the process's lifetime, percent of one core.
    pub fn lifetime_cpu_percent(&self, stat: &Stat) -> f32 {
        self.cpu_percent_since(stat.start_ticks, self.ticks_to_ms(stat.utime + stat.stime))
    }

    /// `cpu_ms` of CPU as a share of the time since `start_ticks`, in percent.
    pub fn cpu_percent_since(&self, start_ticks: u64, cpu_ms: u64) -> f32 {
        let Ok(now) = clock_gettime(ClockId::CLOCK_BOOTTIME) else {
            return 0.0;
        };
        let now_ms = now.tv_sec() as u64 * 1000 + now.tv_nsec() as u64 / 1_000_000;
        let lived = now_ms.saturating_sub(self.ticks_to_ms(start_ticks));
        if lived == 0 {
            return 0.0;
        }
        (cpu_ms as f64 * 100.0 / lived as f64) as f32
    }
}

fn btime_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse::<u64>().ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_a_comm_with_spaces_and_parentheses() {
        let text = "42 (a b) c)) S 1 42 42 34817 42 4194560 100 0 0 0 7 3 0 0 20 0 1 0 12345 1000 250 18446744073709551615";
        let s = Stat::parse(text).expect("parses");
        assert_eq!(s.comm, "a b) c)");
        assert_eq!((s.state, s.ppid, s.session, s.tty_nr), ('S', 1, 42, 34817));
        assert_eq!(
            (s.utime, s.stime, s.threads, s.start_ticks, s.rss_pages),
            (7, 3, 1, 12345, 250)
        );
        assert!(!s.is_kernel_thread());
        assert_eq!(Stat::parse("42 (x"), None);
    }

    #[test]
    fn a_whole_file_is_read_to_its_end_whether_shorter_or_longer_than_a_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in [0usize, 100, 4095, 4096, 4097, 10_000] {
            let path = dir.path().join(format!("f{len}"));
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            std::fs::write(&path, &text).expect("write");
            let read = read_whole(path.to_str().expect("utf-8"), |t| Some(t.to_string()));
            assert_eq!(read, Ok(text), "{len} bytes");
        }
        assert_eq!(
            read_whole("/nonexistent/daemoneye", |_| Some(())),
            Err(Reason::Gone)
        );
        // A real seq_file: this process's own.
        let me = read_status(std::process::id()).expect("own status");
        assert_eq!(me.ruid, nix::unistd::getuid().as_raw());
        let stat = read_stat(std::process::id()).expect("own stat");
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
    }

    #[test]
    fn schedstat_counts_grow_while_a_process_runs_and_stay_while_it_sleeps() {
        assert_eq!(
            SchedStat::parse("1234 99 7\n"),
            Some(SchedStat {
                run_ns: 1234,
                runs: 7
            })
        );
        assert_eq!(SchedStat::parse("1234 99"), None);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Asleep once its state says so; from then on its counts stay.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read_stat(pid).map(|s| s.state) != Ok('S') {
            assert!(std::time::Instant::now() < deadline, "sleep never slept");
            std::thread::yield_now();
        }
        let before = read_schedstat(pid).expect("schedstat");
        assert!(before.run_ns > 0, "{before:?}");
        for _ in 0..50 {
            assert_eq!(read_schedstat(pid), Ok(before));
        }
        // Woken (a stop and a continue make it run): the counts move.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("stop");
        while read_stat(pid).map(|s| s.state) != Ok('T') {
            assert!(std::time::Instant::now() < deadline, "never stopped");
            std::thread::yield_now();
        }
        assert_ne!(read_schedstat(pid), Ok(before));
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    #[test]
    fn tty_numbers_have_their_names() {
        assert_eq!(tty_name(0), "");
        assert_eq!(tty_name(34817), "pts/1");
        assert_eq!(tty_name((4 << 8) | 1), "tty1");
        assert_eq!(tty_name((4 << 8) | 65), "ttyS1");
        assert_eq!(tty_name((137 << 8) | 2), "pts/258");
    }

    #[test]
    fn status_gives_real_and_effective_ids_and_capabilities() {
        let text = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t101\t0\t0\nCapPrm:\t0000000000000004\nCapEff:\t0000000000080004\n";
        let s = Status::parse(text).expect("parses");
        assert_eq!((s.ruid, s.euid, s.rgid, s.egid), (1000, 0, 100, 101));
        assert_eq!((s.cap_prm, s.cap_eff), (4, 0x80004));
        assert_eq!(Status::parse("Name:\tx\n"), None);
    }

    #[test]
    fn the_boot_clock_agrees_with_btime() {
        let clock = BootClock::read();
        let btime = btime_ms().expect("btime");
        assert!(clock.boot_unix_ms.abs_diff(btime) < 2000);
    }
}
