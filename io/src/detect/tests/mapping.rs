//! The field mapping: how procmond's process is presented to Sigma rules.

use super::{Ev, creation, process};
use crate::detect::mapping::{self, MappedEvent, PROCESS_CREATION, Value, shell_join};
use crate::detect::{RuleSet, RuleSources};
use daemoneye_proto::pb::events::ProcessInfo;

#[test]
fn command_lines_are_joined_as_a_shell_shows_them() {
    let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(shell_join(&argv(&["ls", "-la", "/tmp"])), "ls -la /tmp");
    assert_eq!(
        shell_join(&argv(&["sh", "-c", "curl x | sh"])),
        "sh -c 'curl x | sh'"
    );
    assert_eq!(shell_join(&argv(&["echo", ""])), "echo ''");
    assert_eq!(shell_join(&argv(&["echo", "it's"])), r#"echo 'it'"'"'s'"#);
    assert_eq!(shell_join(&argv(&["a", "$HOME", "x;y"])), "a '$HOME' 'x;y'");
    assert_eq!(
        shell_join(&argv(&["--port=80", "user@host:/p,q"])),
        "--port=80 user@host:/p,q"
    );
}

#[test]
fn every_field_of_the_table_is_read() {
    let mut p = process("/usr/bin/sha256sum", &["sha256sum", "a file"]);
    p.exe_sha256 = "ab".repeat(32);
    p.parent_cmdline = vec!["bash".into(), "-c".into(), "x y".into()];
    let m = MappedEvent::new(PROCESS_CREATION, &p);
    let s = |f: &str| match m.get(f) {
        Some(Value::Str(s)) => s.to_string(),
        other => panic!("{f}: {other:?}"),
    };
    assert_eq!(s("Image"), "/usr/bin/sha256sum");
    assert_eq!(s("CommandLine"), "sha256sum a file");
    assert_eq!(s("ParentImage"), "/usr/bin/bash");
    assert_eq!(s("ParentCommandLine"), "bash -c x y");
    assert_eq!(s("User"), "alice");
    assert_eq!(s("CurrentDirectory"), "/home/alice");
    assert_eq!(s("Hashes"), format!("SHA256={}", "ab".repeat(32)));
    assert_eq!(s("ProcessName"), "sha256sum");
    assert_eq!(m.get("ProcessId"), Some(&Value::Int(4242)));
    assert_eq!(m.get("ParentProcessId"), Some(&Value::Int(4100)));
    assert_eq!(m.get("UserId"), Some(&Value::Int(1000)));
    assert_eq!(m.get("ImageDeleted"), Some(&Value::Bool(false)));
    assert_eq!(m.fields().len(), PROCESS_CREATION.len());
}

#[test]
fn unread_fields_are_absent_not_empty() {
    let mut p = process("/usr/bin/true", &["true"]);
    p.unread = [
        "exe",
        "exe_dev",
        "exe_inode",
        "cwd",
        "user",
        "uid",
        "ppid",
        "cmdline",
    ]
    .map(String::from)
    .to_vec();
    p.user = String::new();
    let m = MappedEvent::new(PROCESS_CREATION, &p);
    for f in [
        "Image",
        "CurrentDirectory",
        "User",
        "UserId",
        "ParentProcessId",
        "CommandLine",
        "ImageDeleted",
        "Hashes",
    ] {
        assert!(m.get(f).is_none(), "{f} should be absent");
    }
    assert!(m.get("ProcessId").is_some());
    // A kernel thread has no argv and no exe: neither is presented.
    let k = ProcessInfo {
        pid: 2,
        name: "kthreadd".into(),
        ..Default::default()
    };
    let m = MappedEvent::new(PROCESS_CREATION, &k);
    assert!(m.get("CommandLine").is_none() && m.get("Image").is_none());
}

#[test]
fn absent_fields_match_null_and_fail_exists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("null.yml"),
        "title: No cwd\nid: t-null\nlogsource: {product: linux, category: process_creation}\n\
         detection:\n  s:\n    CurrentDirectory: null\n    Image|exists: true\n  condition: s\n",
    )
    .unwrap();
    let set = RuleSet::load(&RuleSources {
        builtin: false,
        directories: vec![dir.path().into()],
    });
    assert_eq!(set.active(), 1, "{:?}", set.statuses());
    let mut p = process("/usr/bin/true", &["true"]);
    assert!(set.evaluate(&creation(p.clone())).is_empty());
    p.unread = vec!["cwd".into()];
    assert_eq!(set.evaluate(&creation(p)).len(), 1);
}

#[test]
fn image_deleted_matches_as_string_or_boolean() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.yml"),
        "title: Deleted\nid: t-bool\nlogsource: {product: linux, category: process_creation}\n\
         detection:\n  s:\n    ImageDeleted: true\n  condition: s\n",
    )
    .unwrap();
    let set = RuleSet::load(&RuleSources {
        builtin: true,
        directories: vec![dir.path().into()],
    });
    let ev = Ev("/usr/bin/x", &["x"], true).event();
    assert_eq!(set.evaluate(&ev).len(), 2);
    let ev = Ev("/usr/bin/x", &["x"], false).event();
    assert!(set.evaluate(&ev).is_empty());
    assert!(mapping::is_process_creation(
        &Ev("/x", &["x"], false).event()
    ));
}
