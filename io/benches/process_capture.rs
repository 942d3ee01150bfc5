//! The process collector's sources, measured on this host (Linux, as root):
//! exec-to-event latency through the process connector, the capture rates of two bursts
//! (2,000 processes living about 5 ms, 2,000 exiting at once) beside a scanner polling
//! every 100 ms, the scan time of the live system and of 10,000 processes.
//!
//! `cargo bench -p daemoneye-io --bench process_capture` prints a table
//! (`DAEMONEYE_BENCH_ONLY=scan` the scans alone, `=capture` the rest alone).

use std::collections::{HashMap, HashSet, VecDeque};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use daemoneye_io::collector::process::{
    Observation, ProcessReader, ReadOptions, RunStamps, Watch, WatchOptions,
    connector::{ConnectorOptions, ProcConnector},
    scan, scan_known,
};

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("process_capture: Linux only");
}

#[cfg(target_os = "linux")]
fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("process_capture: needs root (the process connector)");
        return;
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    // DAEMONEYE_BENCH_ONLY=scan measures the scans alone, =capture the rest alone.
    let only = std::env::var("DAEMONEYE_BENCH_ONLY").unwrap_or_default();
    if only != "scan" {
        capture(&mut rows);
    }
    if only != "capture" {
        scans(&mut rows);
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("\n{:width$}  result", "measure");
    println!("{}  {}", "-".repeat(width), "-".repeat(40));
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}

/// Exec-to-event latency and the two bursts.
#[cfg(target_os = "linux")]
fn capture(rows: &mut Vec<(String, String)>) {
    let (p50, p99, n) = latency(500);
    rows.push((
        format!("exec-to-event latency ({n} execs of /bin/true)"),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
    ));
    for (label, parallel, five_ms) in [
        (
            "2,000 processes living ~5 ms (sh -c 'sleep 0.005' MARKER)",
            8,
            true,
        ),
        (
            "2,000 processes exiting at once (/bin/true MARKER)",
            8,
            false,
        ),
    ] {
        let r = capture_burst(2000, parallel, five_ms);
        rows.push((
            label.to_string(),
            format!(
                "connector: {} with argv+exe, {} with argv, {} also with ids+cwd, {} by pid+exit; scanner (100 ms): {}; {:.1} s",
                r.with_argv_and_exe, r.with_argv, r.with_ids_and_cwd, r.with_exit, r.scanner, r.seconds
            ),
        ));
    }
}

/// Full scans of the live system and of 10,000 more processes, and the reconciliation
/// scan of those 10,000 once known.
#[cfg(target_os = "linux")]
fn scans(rows: &mut Vec<(String, String)>) {
    let reader = ProcessReader::new(ReadOptions::default());
    let hashing = ProcessReader::new(ReadOptions {
        compute_hashes: true,
        enhanced_metadata: false,
    });
    let _ = scan(&hashing, 0);
    let (live, count) = time_scan(&reader);
    rows.push((
        format!("scan of the live system ({count} processes)"),
        format!("{live:.1} ms"),
    ));
    let tree = SleepTree::spawn(10_000);
    let _ = scan(&hashing, 0);
    let (plain, count) = time_scan(&reader);
    let (hashed, _) = time_scan(&hashing);
    let enhanced = ProcessReader::new(ReadOptions {
        compute_hashes: true,
        enhanced_metadata: true,
    });
    let _ = scan(&enhanced, 0);
    let (full, _) = time_scan(&enhanced);
    // The reconciliation scan: every process known from the scan before (as the process
    // table knows them), read identity first; with the connector live the ids come from its
    // events (no `status` read), scanning alone reads them.
    let reconcile = |reader: &ProcessReader, ids: bool| {
        let known: HashMap<u32, _> = scan(reader, 0).into_iter().map(|p| (p.pid, p)).collect();
        // Each scan after the first finds the sleeping processes idle since the one before
        // (their scheduler counts unchanged): the steady state of a reconciliation.
        let mut stamps = RunStamps::default();
        let _ = scan_known(reader, 0, ids, |pid| known.get(&pid), &mut stamps);
        time_scan_with(|| scan_known(reader, 0, ids, |pid| known.get(&pid), &mut stamps).len()).0
    };
    let (live_plain, live_hashed, live_full) = (
        reconcile(&reader, false),
        reconcile(&hashing, false),
        reconcile(&enhanced, false),
    );
    let (alone_plain, alone_full) = (reconcile(&reader, true), reconcile(&enhanced, true));
    drop(tree);
    rows.push((
        format!("full scan of {count} processes (10,000 sleeping + the system)"),
        format!("{plain:.1} ms; hashes from the cache {hashed:.1} ms; + enhanced {full:.1} ms"),
    ));
    rows.push((
        format!("reconciliation scan of the same {count}, all known, connector live"),
        format!(
            "{live_plain:.1} ms; with hashes {live_hashed:.1} ms; + enhanced {live_full:.1} ms"
        ),
    ));
    rows.push((
        format!("reconciliation scan of the same {count}, all known, scanning alone"),
        format!("{alone_plain:.1} ms; + enhanced {alone_full:.1} ms"),
    ));
}

#[cfg(target_os = "linux")]
fn watch() -> (Watch, std::sync::mpsc::Receiver<Observation>) {
    let connector = ProcConnector::open(&ConnectorOptions::default()).expect("connector");
    Watch::start(
        connector,
        ProcessReader::new(ReadOptions::default()),
        WatchOptions::default(),
    )
    .expect("watch")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Spawn one `/bin/true MARKER-i` at a time; latency from just before the spawn to the
/// exec observation reaching the consumer.
#[cfg(target_os = "linux")]
fn latency(n: usize) -> (f64, f64, usize) {
    let (w, rx) = watch();
    let tag = format!("LAT-{}", std::process::id());
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let marker = format!("{tag}-{i}");
        let started = Instant::now();
        let mut child = Command::new("/bin/true")
            .arg(&marker)
            .spawn()
            .expect("spawn");
        let deadline = started + Duration::from_secs(2);
        while let Ok(o) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Observation::Exec { info, .. } = o
                && info.cmdline.iter().any(|a| a == &marker)
            {
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        let _ = child.wait();
    }
    w.stop();
    latencies.sort_by(f64::total_cmp);
    (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len(),
    )
}

struct BurstResult {
    with_argv_and_exe: usize,
    /// With argv, the user ids (`status`) and the working directory.
    with_ids_and_cwd: usize,
    with_argv: usize,
    with_exit: usize,
    scanner: usize,
    seconds: f64,
}

#[cfg(target_os = "linux")]
fn capture_burst(n: usize, parallel: usize, five_ms: bool) -> BurstResult {
    let (w, rx) = watch();
    let tag = format!("BURST-{}-{five_ms}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = {
        let (stop, tag) = (stop.clone(), tag.clone());
        std::thread::spawn(move || {
            let reader = ProcessReader::new(ReadOptions::default());
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                for p in scan(&reader, 0) {
                    seen.extend(p.cmdline.into_iter().filter(|a| a.starts_with(&tag)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen.len()
        })
    };
    let started = Instant::now();
    let mut running: VecDeque<Child> = VecDeque::new();
    let mut markers = HashMap::new();
    for i in 0..n {
        if running.len() >= parallel
            && let Some(mut c) = running.pop_front()
        {
            let _ = c.wait();
        }
        let m = format!("{tag}-{i}");
        let mut cmd = if five_ms {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "sleep 0.005", &m]);
            c
        } else {
            let mut c = Command::new("/bin/true");
            c.arg(&m);
            c
        };
        let c = cmd.stdin(Stdio::null()).spawn().expect("spawn");
        markers.insert(c.id(), m);
        running.push_back(c);
    }
    for mut c in running {
        let _ = c.wait();
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let scanner = scanner.join().unwrap_or(0);
    let mut argv: HashMap<u32, (bool, bool, bool)> = HashMap::new();
    let mut exits = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while exits.len() < n {
        let Ok(o) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            break;
        };
        match o {
            Observation::Exec { info, .. } => {
                if let Some(m) = markers.get(&info.pid) {
                    let e = argv.entry(info.pid).or_default();
                    if info.cmdline.iter().any(|a| a == m) {
                        e.0 = true;
                        e.1 |= !info.exe.is_empty();
                        e.2 |= !info.cwd.is_empty() && !info.unread.iter().any(|f| f == "uid");
                    }
                }
            }
            Observation::Exit { pid, .. } if markers.contains_key(&pid) => {
                exits.insert(pid);
            }
            _ => {}
        }
    }
    w.stop();
    BurstResult {
        with_argv_and_exe: argv.values().filter(|v| v.0 && v.1).count(),
        with_ids_and_cwd: argv.values().filter(|v| v.2).count(),
        with_argv: argv.values().filter(|v| v.0).count(),
        with_exit: exits.len(),
        scanner,
        seconds,
    }
}

/// Median of five full scans, ms, and the number of processes.
#[cfg(target_os = "linux")]
fn time_scan(reader: &ProcessReader) -> (f64, usize) {
    time_scan_with(|| scan(reader, 0).len())
}

/// Median of five runs of `scan` (which returns how many processes it read), ms, and the
/// number of processes.
fn time_scan_with(mut scan: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        count = scan();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[2], count)
}

/// `n` sleeping processes in process groups of 1,000 (one shell each), killed on drop.
struct SleepTree {
    shells: Vec<Child>,
}

#[cfg(target_os = "linux")]
impl SleepTree {
    fn spawn(n: usize) -> SleepTree {
        use std::os::unix::process::CommandExt;
        let before = count_processes();
        let per = 1000;
        let shells: Vec<Child> = (0..n.div_ceil(per))
            .map(|_| {
                Command::new("/bin/sh")
                    .args([
                        "-c",
                        &format!(
                            "i=0; while [ $i -lt {per} ]; do sleep 600 & i=$((i+1)); done; wait"
                        ),
                    ])
                    .process_group(0)
                    .spawn()
                    .expect("spawn a shell")
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while count_processes() < before + n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        SleepTree { shells }
    }
}

#[cfg(target_os = "linux")]
impl Drop for SleepTree {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        for c in &mut self.shells {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

#[cfg(target_os = "linux")]
fn count_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|s| s.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}
