//! The process collector's sources against real processes, real netlink and real files
//! (Linux, as root): the connector's exec, exec-in-place and exit with their fields; the
//! hash against `sha256sum`, also of a deleted binary; the scanner alone; bursts of
//! short-lived processes with the scanner's result printed beside; the capability drop.
//!
//! The tests that start processes run one at a time (a lock): two bursts at once on two
//! cores would measure each other.
#![cfg(target_os = "linux")]

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use daemoneye_io::collector::process::connector::{ConnectorOptions, ProcConnector};
use daemoneye_io::collector::process::{
    Observation, ProcessReader, ReadOptions, RunStamps, Watch, WatchOptions, privileges,
    read_process, scan, scan_known,
};
use daemoneye_proto::pb::events::ProcessInfo;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn marker(what: &str) -> String {
    format!("DE-{what}-{}-{}", std::process::id(), now_ms())
}

/// A running watch and everything it observed so far.
struct Watching {
    watch: Watch,
    rx: Receiver<Observation>,
    seen: Vec<Observation>,
}

impl Watching {
    fn start(options: ReadOptions) -> Watching {
        let connector = ProcConnector::open(&ConnectorOptions::default())
            .expect("the process connector opens as root");
        let (watch, rx) = Watch::start(
            connector,
            ProcessReader::new(options),
            WatchOptions::default(),
        )
        .expect("threads");
        Watching {
            watch,
            rx,
            seen: Vec::new(),
        }
    }

    /// Collects observations until `done` holds for what was seen, or the deadline.
    fn until(&mut self, within: Duration, mut done: impl FnMut(&[Observation]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            while let Ok(o) = self.rx.try_recv() {
                self.seen.push(o);
            }
            if done(&self.seen) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(o) = self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                self.seen.push(o);
            }
        }
    }

    fn execs_of(&self, pid: u32) -> Vec<&ProcessInfo> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Observation::Exec { info, .. } if info.pid == pid => Some(&**info),
                _ => None,
            })
            .collect()
    }

    fn exit_of(&self, pid: u32) -> Option<i32> {
        self.seen.iter().find_map(|o| match o {
            Observation::Exit {
                pid: p, exit_code, ..
            } if *p == pid => Some(*exit_code),
            _ => None,
        })
    }
}

fn has_exec(seen: &[Observation], pid: u32) -> bool {
    seen.iter()
        .any(|o| matches!(o, Observation::Exec { info, .. } if info.pid == pid))
}

fn has_exit(seen: &[Observation], pid: u32) -> bool {
    seen.iter()
        .any(|o| matches!(o, Observation::Exit { pid: p, .. } if *p == pid))
}

#[test]
fn an_exec_its_exec_into_another_binary_and_its_exit_arrive_with_their_fields() {
    let _serial = serial();
    let mut w = Watching::start(ReadOptions::default());
    let first = marker("first");
    let second = marker("second");
    let spawned_ms = now_ms();
    // sh waits on a pipe (so its first image is read whole), then execs bash, which exits 7.
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("read x; exec /bin/bash -c 'exit 7' {second}"),
            &first,
        ])
        .uid(65534)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    assert!(
        w.until(Duration::from_secs(5), |seen| has_exec(seen, pid)),
        "the first exec arrives"
    );
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(7));
    assert!(
        w.until(Duration::from_secs(5), |seen| has_exit(seen, pid)),
        "the exit arrives"
    );
    let execs = w.execs_of(pid);
    assert_eq!(execs.len(), 2, "two execs in one pid: {execs:#?}");
    let (a, b) = (execs[0], execs[1]);
    assert_eq!(
        a.cmdline,
        vec![
            "/bin/sh",
            "-c",
            &format!("read x; exec /bin/bash -c 'exit 7' {second}"),
            &first
        ]
    );
    assert!(
        a.exe.ends_with("/dash") || a.exe.ends_with("/sh"),
        "{}",
        a.exe
    );
    assert_eq!((a.uid, a.euid, a.user.as_str()), (65534, 65534, "nobody"));
    assert_eq!(a.ppid, std::process::id());
    assert!(
        a.start_time_ms.abs_diff(spawned_ms) < 1000,
        "start {} vs spawn {spawned_ms}",
        a.start_time_ms
    );
    assert!(a.unread.is_empty(), "{:?}", a.unread);
    assert_eq!(b.cmdline, vec!["/bin/bash", "-c", "exit 7", &second]);
    assert!(b.exe.ends_with("/bash"), "{}", b.exe);
    assert_eq!(b.start_ticks, a.start_ticks, "the same process");
    assert_eq!(w.exit_of(pid), Some(7));
    let stats = w.watch.stats();
    assert!(stats.execs >= 2 && stats.exits >= 1, "{stats:?}");
    w.watch.stop();
}

#[test]
fn a_killed_process_exits_with_128_plus_the_signal() {
    let _serial = serial();
    let mut w = Watching::start(ReadOptions::default());
    let mut child = Command::new("/bin/sleep").arg("30").spawn().expect("spawn");
    let pid = child.id();
    assert!(w.until(Duration::from_secs(5), |seen| has_exec(seen, pid)));
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(w.until(Duration::from_secs(5), |seen| has_exit(seen, pid)));
    assert_eq!(w.exit_of(pid), Some(128 + 9));
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

#[test]
fn the_hash_equals_sha256sum_and_a_deleted_binary_still_hashes() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join(marker("sleeper"));
    std::fs::copy("/bin/sleep", &binary).expect("copy");
    let expected = sha256sum(&binary);
    let options = ReadOptions {
        compute_hashes: true,
        enhanced_metadata: true,
    };
    let mut w = Watching::start(options);
    let mut child = Command::new(&binary).arg("30").spawn().expect("spawn");
    let pid = child.id();
    assert!(w.until(Duration::from_secs(5), |seen| has_exec(seen, pid)));
    let seen = w.execs_of(pid)[0].clone();
    assert_eq!(seen.exe_sha256, expected);
    assert_eq!(seen.exe, binary.display().to_string());
    assert!(!seen.exe_deleted);
    assert!(seen.exe_inode > 0);
    assert!(seen.env_names.iter().any(|n| n == "PATH"));
    assert!(seen.env_names.iter().all(|n| !n.contains('=')));
    assert!(seen.open_files >= 3);

    std::fs::remove_file(&binary).expect("delete the binary");
    // A fresh reader (empty cache) still hashes the deleted file through /proc/<pid>/exe.
    let again = read_process(pid, options);
    assert!(again.info.exe_deleted);
    assert_eq!(again.info.exe, binary.display().to_string());
    assert_eq!(again.info.exe_sha256, expected);

    // A file copied over the old path is not the process's binary.
    std::fs::copy("/bin/true", &binary).expect("copy another");
    let replaced = read_process(pid, options);
    assert!(replaced.info.exe_deleted, "the path names another file now");
    assert_eq!(replaced.info.exe_sha256, expected);
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn hashing_a_large_binary_does_not_hold_up_reading_the_processes_after_it() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    // In memory: 640 MiB written to disk would be written back while the next tests run.
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
    // `sleep` padded to 640 MiB: it still runs, and hashing it takes a few hundred ms,
    // longer than the processes started behind it live.
    let big = dir.path().join(marker("big"));
    let mut bytes = std::fs::read("/bin/sleep").expect("read sleep");
    bytes.resize(bytes.len() + (640 << 20), 0);
    std::fs::write(&big, &bytes).expect("write");
    drop(bytes);
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let expected = sha256sum(&big);
    let mut w = Watching::start(ReadOptions {
        compute_hashes: true,
        enhanced_metadata: true,
    });
    let mut sleeper = Command::new(&big).arg("30").spawn().expect("spawn big");
    let quick: Vec<std::process::Child> = (0..5)
        .map(|_| {
            Command::new("/bin/sleep")
                .arg("0.2")
                .current_dir("/tmp")
                .spawn()
                .expect("spawn")
        })
        .collect();
    let pids: Vec<u32> = quick.iter().map(std::process::Child::id).collect();
    for mut c in quick {
        c.wait().expect("wait");
    }
    let all_seen = w.until(Duration::from_secs(20), |seen| {
        has_exec(seen, sleeper.id())
            && pids
                .iter()
                .all(|p| has_exec(seen, *p) && has_exit(seen, *p))
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(all_seen, "every exec observed");
    assert_eq!(w.execs_of(sleeper.id())[0].exe_sha256, expected);
    // Each read while it ran: its environment (read by the reader thread, after the
    // receive thread's early read; an exited process has none) is there, although the big
    // binary's hash was still being worked out when it exited.
    let position = |pid: u32, exit: bool| {
        w.seen.iter().position(|o| match o {
            Observation::Exec { info, .. } => !exit && info.pid == pid,
            Observation::Exit { pid: p, .. } => exit && *p == pid,
            _ => false,
        })
    };
    for pid in &pids {
        // An exit (nothing to hash) never overtakes its exec waiting for a hash.
        assert!(
            position(*pid, false) < position(*pid, true),
            "exec before exit"
        );
        let info = w.execs_of(*pid)[0];
        assert!(info.env_names.iter().any(|n| n == "PATH"), "{info:?}");
        assert!(info.unread.is_empty(), "{info:?}");
        assert_eq!(info.cwd, "/tmp", "{info:?}");
        assert_eq!(
            info.exe_sha256,
            sha256sum(std::path::Path::new("/bin/sleep"))
        );
    }
}

#[test]
fn the_scanner_alone_sees_a_long_lived_process_with_its_fields_and_its_exit() {
    let _serial = serial();
    let reader = ProcessReader::new(ReadOptions {
        compute_hashes: true,
        enhanced_metadata: false,
    });
    let mut child = Command::new("/bin/sleep")
        .arg("30")
        .current_dir("/tmp")
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // `spawn` returns once the exec has begun; the kernel sets the new argv a moment
    // later, and a scan in between reads an empty one.
    exec_done(pid);
    let all = scan(&reader, 0);
    let found = all.iter().find(|p| p.pid == pid).expect("the scan sees it");
    assert_eq!(found.cmdline, vec!["/bin/sleep", "30"]);
    assert!(found.exe.ends_with("/sleep"));
    assert_eq!(found.cwd, "/tmp");
    assert_eq!(found.ppid, std::process::id());
    assert_eq!((found.uid, found.user.as_str()), (0, "root"));
    assert_eq!(
        found.exe_sha256,
        sha256sum(std::path::Path::new(&found.exe))
    );
    assert_eq!(
        found.parent_exe,
        std::env::current_exe().expect("exe").display().to_string()
    );
    assert!(found.unread.is_empty(), "{:?}", found.unread);
    child.kill().expect("kill");
    child.wait().expect("wait");
    assert!(
        !scan(&reader, 0).iter().any(|p| p.pid == pid),
        "gone after its exit"
    );
}

/// Waits until `pid` has completed its exec (its argv is set).
fn exec_done(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the child's exec did not complete"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_reconciliation_scan_keeps_a_known_process_and_rereads_one_that_changed() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join(marker("kept"));
    std::fs::copy("/bin/sleep", &binary).expect("copy");
    let reader = ProcessReader::new(ReadOptions {
        compute_hashes: true,
        enhanced_metadata: false,
    });
    let mut child = Command::new(&binary)
        .arg("30")
        .current_dir("/tmp")
        .spawn()
        .expect("spawn");
    let pid = child.id();
    exec_done(pid);
    let first = scan(&reader, 0);
    let before = first.iter().find(|p| p.pid == pid).expect("seen").clone();
    assert_eq!(before.cwd, "/tmp");
    // A field the cheap read does not look at tells which read produced the result.
    let mut known = before.clone();
    known.cwd = "/known".into();
    let again = |known: &ProcessInfo| reconciled(&reader, known, &mut RunStamps::default());
    let kept = again(&known);
    assert_eq!(kept.cwd, "/known", "the same process is kept as known");
    assert_eq!(kept.cmdline, before.cmdline);
    assert_eq!(kept.exe_sha256, before.exe_sha256);
    assert_eq!(
        kept.parent_exe, before.parent_exe,
        "the scan fills the parent"
    );
    assert!(kept.memory_bytes > 0 && kept.unread.is_empty());

    // Another start at the pid, another name, other ids: each is read in full.
    for change in [
        (|k: &mut ProcessInfo| k.start_ticks += 1) as fn(&mut ProcessInfo),
        |k| k.name = "other".into(),
        |k| k.uid = 4242,
        |k| k.exe = "/bin/other".into(),
        |k| k.unread = vec!["cwd".into()],
    ] {
        let mut stale = known.clone();
        change(&mut stale);
        assert_eq!(again(&stale).cwd, "/tmp", "{stale:?}");
    }
    // The binary deleted after the start: the cheap read notices and the full read says so.
    std::fs::remove_file(&binary).expect("delete the binary");
    let reread = again(&known);
    assert_eq!(reread.cwd, "/tmp");
    assert!(reread.exe_deleted);
    assert_eq!(reread.exe_sha256, before.exe_sha256);
    // Known as deleted, it is kept from then on.
    let mut deleted = reread;
    deleted.cwd = "/known".into();
    assert_eq!(again(&deleted).cwd, "/known");
    child.kill().expect("kill");
    child.wait().expect("wait");
}

/// The first line `child` prints on its piped stdout.
fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("a line");
    line
}

/// A reconciliation scan that knows `known` (and nothing else): what it gives for its pid.
fn reconciled(reader: &ProcessReader, known: &ProcessInfo, stamps: &mut RunStamps) -> ProcessInfo {
    let pid = known.pid;
    scan_known(reader, 0, true, |p| (p == pid).then_some(known), stamps)
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("seen again")
}

/// Waits until `pid` is in `state` (`S` asleep, `T` stopped).
fn in_state(pid: u32, state: char) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let now = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
    };
    while now() != Some(state) {
        assert!(Instant::now() < deadline, "the child never reached {state}");
        std::thread::yield_now();
    }
}

#[test]
fn a_process_that_has_not_run_since_the_last_scan_is_kept_unless_its_binary_changed() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = dir.path().join(marker("idle"));
    std::fs::copy("/bin/sleep", &binary).expect("copy");
    let reader = ProcessReader::new(ReadOptions::default());
    let mut child = Command::new(&binary).arg("30").spawn().expect("spawn");
    let pid = child.id();
    exec_done(pid);
    in_state(pid, 'S');
    let real = scan(&reader, 0)
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("seen");
    let mut stamps = RunStamps::default();
    let mut reconcile = |known: &ProcessInfo| reconciled(&reader, known, &mut stamps);
    // Confirmed once (its counts remembered); then, while it sleeps, `status` is not read
    // again: an id only `status` shows stays as known.
    assert_eq!(reconcile(&real).uid, real.uid);
    let mut stale = real.clone();
    stale.uid = 4242;
    assert_eq!(
        reconcile(&stale).uid,
        4242,
        "an idle process is not read again"
    );
    assert_eq!(reconcile(&stale).uid, 4242);
    // Once it has run (a stop and a continue), it is checked again in full.
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s);
    signal(nix::sys::signal::Signal::SIGSTOP).expect("stop");
    in_state(pid, 'T');
    signal(nix::sys::signal::Signal::SIGCONT).expect("continue");
    in_state(pid, 'S');
    assert_eq!(reconcile(&stale).uid, real.uid, "read again after it ran");
    // Idle again, but its binary replaced on disk: noticed without it running.
    assert_eq!(reconcile(&real).uid, real.uid);
    let new = dir.path().join("replacement");
    std::fs::copy("/bin/true", &new).expect("copy");
    std::fs::rename(&new, &binary).expect("replace the binary");
    let after = reconcile(&real);
    assert!(after.exe_deleted, "{after:?}");
    child.kill().expect("kill");
    child.wait().expect("wait");

    // A process with a second thread is always checked in full: the counts are its main
    // thread's, and another thread may act while that one sleeps.
    let mut threaded = Command::new("python3")
        .args([
            "-c",
            "import threading, time\n\
             threading.Thread(target=time.sleep, args=(30,)).start()\n\
             print('ready', flush=True)\n\
             time.sleep(30)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let pid = threaded.id();
    assert_eq!(first_line(&mut threaded).trim(), "ready");
    in_state(pid, 'S');
    let real = scan(&reader, 0)
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("seen");
    let mut stale = real.clone();
    stale.uid = 4242;
    let mut stamps = RunStamps::default();
    for _ in 0..3 {
        let seen = reconciled(&reader, &stale, &mut stamps);
        assert_eq!(seen.uid, real.uid, "a threaded process is read again");
    }
    threaded.kill().expect("kill");
    threaded.wait().expect("wait");
}

#[test]
fn a_sleeping_process_whose_parent_exits_is_read_again_for_its_new_parent() {
    let _serial = serial();
    let reader = ProcessReader::new(ReadOptions::default());
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 30 & echo $!; read line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let line = first_line(&mut parent);
    let pid: u32 = line.trim().parse().expect("a pid");
    exec_done(pid);
    in_state(pid, 'S');
    let real = scan(&reader, 0)
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("seen");
    assert_eq!(real.ppid, parent.id());
    let mut stamps = RunStamps::default();
    let mut reconcile = |known: &ProcessInfo| reconciled(&reader, known, &mut stamps);
    assert_eq!(reconcile(&real).uid, real.uid);
    let mut stale = real.clone();
    stale.uid = 4242;
    let kept = reconcile(&stale);
    assert_eq!(
        (kept.uid, kept.ppid),
        (4242, parent.id()),
        "kept while idle"
    );
    // Its parent exits: the sleeper gets another one without running.
    drop(parent.stdin.take());
    parent.wait().expect("wait for sh");
    let now = reconcile(&stale);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let ppid: u32 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse().ok())
        .expect("ppid");
    assert_ne!(ppid, parent.id());
    assert_eq!(now.ppid, ppid, "read again for its new parent");
    assert_eq!(now.uid, real.uid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the sleeper");
}

struct Burst {
    pids: Vec<u32>,
    markers: HashMap<u32, String>,
    elapsed: Duration,
}

/// Starts `n` processes made by `command(i)`, at most `parallel` alive at once, and reaps
/// them all.
fn burst(n: usize, parallel: usize, command: impl Fn(usize) -> (Command, String)) -> Burst {
    let started = Instant::now();
    let mut running = std::collections::VecDeque::new();
    let mut pids = Vec::with_capacity(n);
    let mut markers = HashMap::new();
    for i in 0..n {
        if running.len() >= parallel {
            let mut c: std::process::Child = running.pop_front().expect("one");
            c.wait().expect("wait");
        }
        let (mut cmd, m) = command(i);
        let c = cmd.stdin(Stdio::null()).spawn().expect("spawn");
        pids.push(c.id());
        markers.insert(c.id(), m);
        running.push_back(c);
    }
    for mut c in running {
        c.wait().expect("wait");
    }
    Burst {
        pids,
        markers,
        elapsed: started.elapsed(),
    }
}

/// A scanner polling every 100 ms beside the burst: the markers it saw.
fn scanner_beside(
    stop: Arc<std::sync::atomic::AtomicBool>,
    tag: String,
) -> std::thread::JoinHandle<HashSet<String>> {
    std::thread::spawn(move || {
        let reader = ProcessReader::new(ReadOptions::default());
        let mut seen = HashSet::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for p in scan(&reader, 0) {
                for a in &p.cmdline {
                    if a.starts_with(&tag) {
                        seen.insert(a.clone());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

struct Capture {
    with_argv_and_exe: usize,
    with_argv: usize,
    with_exit: usize,
}

fn capture(w: &mut Watching, b: &Burst) -> Capture {
    let pids: HashSet<u32> = b.pids.iter().copied().collect();
    // Every exit arrives (the kernel reports each one); wait for them.
    let all_exits = w.until(Duration::from_secs(10), |seen| {
        let exited = seen
            .iter()
            .filter(|o| matches!(o, Observation::Exit { pid, .. } if pids.contains(pid)))
            .count();
        exited >= pids.len()
    });
    assert!(all_exits, "every exit arrives");
    let mut with_argv_and_exe = 0;
    let mut with_argv = 0;
    let mut with_exit = 0;
    let mut by_pid: HashMap<u32, Vec<&ProcessInfo>> = HashMap::new();
    let mut exits: HashSet<u32> = HashSet::new();
    for o in &w.seen {
        match o {
            Observation::Exec { info, .. } => by_pid.entry(info.pid).or_default().push(&**info),
            Observation::Exit { pid, .. } => {
                exits.insert(*pid);
            }
            _ => {}
        }
    }
    for pid in &b.pids {
        let m = &b.markers[pid];
        let execs = by_pid.get(pid).cloned().unwrap_or_default();
        let marked = execs.iter().find(|i| i.cmdline.iter().any(|a| a == m));
        if let Some(info) = marked {
            with_argv += 1;
            if !info.exe.is_empty() {
                with_argv_and_exe += 1;
            }
        }
        if exits.contains(pid) && !execs.is_empty() {
            with_exit += 1;
        }
    }
    Capture {
        with_argv_and_exe,
        with_argv,
        with_exit,
    }
}

const BURST: usize = 2000;

#[test]
fn a_burst_of_5ms_processes_is_captured_with_argv_and_exe() {
    let _serial = serial();
    let mut w = Watching::start(ReadOptions::default());
    let tag = marker("five");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = scanner_beside(stop.clone(), tag.clone());
    let b = burst(BURST, 8, |i| {
        let m = format!("{tag}-{i}");
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "sleep 0.005", &m]);
        (c, m)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let c = capture(&mut w, &b);
    let scanned = scanner.join().expect("scanner").len();
    println!(
        "5 ms burst of {BURST} in {:?}: connector {} with argv and exe, {} with argv, {} by pid with exit; scanner every 100 ms: {scanned}; {:?}",
        b.elapsed,
        c.with_argv_and_exe,
        c.with_argv,
        c.with_exit,
        w.watch.stats()
    );
    assert!(
        c.with_argv_and_exe * 100 >= BURST * 99,
        "{} of {BURST}",
        c.with_argv_and_exe
    );
    assert_eq!(c.with_exit, BURST);
}

#[test]
fn a_burst_of_instant_processes_is_captured_with_argv_and_every_one_by_pid_and_exit() {
    let _serial = serial();
    let mut w = Watching::start(ReadOptions::default());
    let tag = marker("instant");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = scanner_beside(stop.clone(), tag.clone());
    let b = burst(BURST, 8, |i| {
        let m = format!("{tag}-{i}");
        let mut c = Command::new("/bin/true");
        c.arg(&m);
        (c, m)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let c = capture(&mut w, &b);
    let scanned = scanner.join().expect("scanner").len();
    println!(
        "instant burst of {BURST} in {:?}: connector {} with argv and exe, {} with argv, {} by pid with exit; scanner every 100 ms: {scanned}; {:?}",
        b.elapsed,
        c.with_argv_and_exe,
        c.with_argv,
        c.with_exit,
        w.watch.stats()
    );
    assert!(
        c.with_argv * 100 >= BURST * 90,
        "{} of {BURST}",
        c.with_argv
    );
    assert_eq!(c.with_exit, BURST);
}

/// Run in a child (see the test below): opens the connector, drops, and reports.
#[test]
#[ignore = "run by privileges_drop_to_exactly_ptrace_and_dac_read_search in a child process"]
fn privilege_child() {
    let Ok(other) = std::env::var("DAEMONEYE_TEST_OTHER_PID") else {
        return;
    };
    let other: u32 = other.parse().expect("pid");
    // The order procmond follows: open the connector, start the watch (its threads take
    // their priority, then drop their own capabilities), drop this thread's.
    let connector = ProcConnector::open(&ConnectorOptions::default()).expect("open as root");
    let (watch, rx) = Watch::start(
        connector,
        ProcessReader::new(ReadOptions::default()),
        WatchOptions {
            drop_privileges: true,
            ..WatchOptions::default()
        },
    )
    .expect("watch");
    let kept = privileges::drop_to_minimum().expect("drop");
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    let eff = privileges::cap_eff_of_status(&status).expect("CapEff");
    let info = read_process(
        other,
        ReadOptions {
            compute_hashes: true,
            enhanced_metadata: true,
        },
    )
    .info;
    let probe = Command::new("/bin/true").spawn().expect("spawn").id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delivered = false;
    while Instant::now() < deadline && !delivered {
        if let Ok(Observation::Exec { info, .. }) = rx.recv_timeout(Duration::from_millis(100)) {
            delivered = info.pid == probe;
        }
    }
    let mut watch_threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("procmon-") {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let eff = privileges::cap_eff_of_status(&status).unwrap_or(u64::MAX);
            watch_threads.push(format!("{:x}", eff));
        }
    }
    let realtime = watch.is_realtime();
    watch.stop();
    println!(
        "RESULT eff={eff:x} kept_eff={:x} bounding={:x} watch_threads={} realtime={realtime} exe={} cwd={} hash={} env={} delivered={delivered}",
        kept.effective,
        kept.bounding,
        watch_threads.join(","),
        info.exe,
        info.cwd,
        info.exe_sha256,
        info.env_names.len()
    );
}

#[test]
fn privileges_drop_to_exactly_ptrace_and_dac_read_search() {
    let _serial = serial();
    let mut other = Command::new("/bin/sleep")
        .arg("30")
        .current_dir("/tmp")
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("spawn as nobody");
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "privilege_child", "--ignored", "--nocapture"])
        .env("DAEMONEYE_TEST_OTHER_PID", other.id().to_string())
        .output()
        .expect("run the child");
    other.kill().expect("kill");
    other.wait().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "no result: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mask = format!("{:x}", privileges::kept_mask());
    assert_eq!(
        mask, "80004",
        "CAP_SYS_PTRACE (19) and CAP_DAC_READ_SEARCH (2)"
    );
    assert!(line.contains(&format!("eff={mask} ")), "{line}");
    assert!(line.contains(&format!("kept_eff={mask} ")), "{line}");
    assert!(line.contains(&format!("bounding={mask} ")), "{line}");
    assert!(
        line.contains(&format!("watch_threads={mask},{mask},{mask} ")),
        "{line}"
    );
    assert!(line.contains("realtime=true "), "{line}");
    assert!(
        line.contains("exe=/usr/bin/sleep") || line.contains("exe=/bin/sleep"),
        "{line}"
    );
    assert!(line.contains("cwd=/tmp "), "{line}");
    assert!(!line.contains("hash= "), "{line}");
    assert!(!line.contains("env=0 "), "{line}");
    assert!(line.contains("delivered=true"), "{line}");
}
