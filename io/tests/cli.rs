//! The CLI as an operator meets it, with the real binaries: exit statuses scripts can
//! trust, QoS1 `pub` that never hangs silently, and the errors a user sees.

use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, Bins, Lines, signal, wait_exit};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

/// Polls `cond` until it holds or the deadline `T` passes.
fn eventually(what: &str, cond: impl FnMut() -> bool) {
    daemoneye_tests::eventually(what, T, cond);
}

#[test]
fn qos1_pub_to_an_away_durable_gives_up_after_its_timeout_and_names_the_holder() {
    let agent = Agent::start(&bins(), None);
    // The README's order: a durable subscriber that has gone away...
    let (status, _, err) = agent.run_cli(&[
        "sub",
        "orders",
        "--qos",
        "1",
        "--durable",
        "order-forwarder",
        "--timeout",
        "0.2",
    ]);
    assert!(status.success(), "{err}");
    // ...holds a QoS1 publish: `pub` says so and fails after its timeout, not ten minutes.
    let started = Instant::now();
    let (status, _, err) = agent.run_cli(&[
        "pub",
        "orders",
        "o",
        "--qos",
        "1",
        "--count",
        "5",
        "--timeout",
        "1",
    ]);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(started.elapsed() < T, "took {:?}", started.elapsed());
    assert!(
        err.contains("5 of 5 message(s) not acknowledged")
            && err.contains(r#"durable "order-forwarder" (orders), its subscriber away: 5 queued"#),
        "{err}"
    );
}

#[test]
fn qos1_pub_names_an_expired_durable_as_the_reason_for_loss() {
    let agent = Agent::start(&bins(), Some("[broker]\ndurable_expiry_secs = 1\n"));
    // A durable subscriber takes one message and leaves; the rest wait in its queue until
    // the durable expires.
    let mut sub = agent.subscriber(&["orders", "--qos", "1", "--durable", "fwd", "--count", "1"]);
    let (status, _, err) = agent.run_cli(&[
        "pub",
        "orders",
        "o",
        "--qos",
        "1",
        "--count",
        "3",
        "--timeout",
        "30",
    ]);
    assert!(wait_exit(&mut sub.child, T).expect("sub exits").success());
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("2 subscription cop(ies) dropped")
            && err.contains(r#"durable "fwd" (orders) expired while its subscriber was away"#),
        "{err}"
    );
    assert!(!err.contains("overflow"), "{err}");
}

#[test]
fn qos1_pub_that_every_subscriber_acknowledges_succeeds() {
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["orders", "--qos", "1", "--count", "3"]);
    let (status, _, err) = agent.run_cli(&["pub", "orders", "o", "--qos", "1", "--count", "3"]);
    assert!(status.success(), "{err}");
    assert_eq!(sub.stdout.wait_count(3, T).len(), 3);
    assert!(wait_exit(&mut sub.child, T).expect("sub exits").success());
    // With nobody listening it is still a success, with a note.
    let (status, _, err) = agent.run_cli(&["pub", "nobody.here", "o", "--qos", "1"]);
    assert!(status.success(), "{err}");
    assert!(err.contains("no subscription matched 1 of 1"), "{err}");
}

#[test]
fn zero_counts_are_usage_errors() {
    let agent = Agent::start(&bins(), None);
    for args in [
        &["pub", "t", "m", "--count", "0"][..],
        &["bench", "--msgs", "0"][..],
    ] {
        let (status, _, err) = agent.run_cli(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("0"), "{args:?}: {err}");
    }
}

#[test]
fn health_exit_status_says_healthy_degraded_or_unhealthy() {
    let (status, out, _) = {
        let out = std::process::Command::new(bins().cli)
            .args(["health", "--help"])
            .output()
            .expect("help");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            (),
        )
    };
    assert!(status.success());
    assert!(
        out.contains("Exit status: 0 healthy; 3 degraded; 4 unhealthy"),
        "{out}"
    );
    let config = "[[collectors]]\nname = \"napper\"\nbinary = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 1000\"]\n";
    let agent = Agent::start(&bins(), Some(config));
    eventually("a healthy agent", || {
        agent.run_cli(&["health"]).0.code() == Some(0)
    });
    let (status, _, err) = agent.run_cli(&["collectors", "stop", "napper"]);
    assert!(status.success(), "{err}");
    // A stopped collector is degraded.
    let (status, out, err) = agent.run_cli(&["health"]);
    assert_eq!(status.code(), Some(3), "{out}{err}");
    assert!(
        out.contains("overall  degraded") && err.contains("agent is degraded"),
        "{out}{err}"
    );
}

/// Runs the agent with `args` and `env` until it exits (it must refuse to start).
fn agent_refuses(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(bins().agent)
        .args(args)
        .arg("--socket")
        .arg(dir.path().join("broker.sock"))
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .env("DAEMONEYE_AGENT_STATE_DIR", dir.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let status = wait_exit(&mut child, T).expect("the agent refuses to start");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    (status.code(), err)
}

#[test]
fn a_log_level_must_be_a_level_name_or_a_target_directive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "collectors = []\n[logging]\nlevel = \"verbose\"\n").expect("write");
    let (code, err) = agent_refuses(&["--config", config.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("level = \"verbose\"") && err.contains("\"verbose\" is not a level"),
        "{err}"
    );
    let (code, err) = agent_refuses(&["--log-level", "loud"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'--log-level <LEVEL>'") && err.contains("\"loud\" is not a level"),
        "{err}"
    );
    let (code, err) = agent_refuses(&[], &[("DAEMONEYE_AGENT_LOG_LEVEL", "debug,chatty")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("DAEMONEYE_AGENT_LOG_LEVEL") && err.contains("\"chatty\" is not a level"),
        "{err}"
    );
    // A directive with a target is a filter, and the agent logs with it.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "collectors = []\n").expect("write");
    let mut child = std::process::Command::new(bins().agent)
        .args(["--log-level", "warn,daemoneye_agent=info", "--config"])
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("broker.sock"))
        .env("DAEMONEYE_AGENT_STATE_DIR", dir.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let mut stderr = Lines::follow(child.stderr.take().expect("stderr"));
    let started = stderr.wait_for("broker started", T);
    signal(&child, Signal::SIGTERM);
    wait_exit(&mut child, T).expect("the agent stops");
    started.expect("the agent logs at info for its own target");
}

/// Starts a long-running CLI command that says "subscribed" on stderr once it is ready.
fn ready(agent: &Agent, args: &[&str]) -> daemoneye_tests::Subscriber {
    let mut child = agent
        .cli(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cli");
    let stdout = Lines::follow(child.stdout.take().expect("stdout"));
    let mut stderr = Lines::follow(child.stderr.take().expect("stderr"));
    stderr.wait_for("subscribed", T).expect("ready");
    daemoneye_tests::Subscriber {
        child,
        stdout,
        stderr,
    }
}

#[test]
fn reply_answers_req_with_a_body_the_request_or_a_command() {
    let agent = Agent::start(&bins(), None);
    let mut echo = ready(&agent, &["reply", "svc.echo", "--echo", "--count", "1"]);
    let (status, out, err) = agent.run_cli(&["req", "svc.echo", "hello", "--timeout", "5"]);
    assert!(status.success(), "{err}");
    assert_eq!(out, "hello\n");
    assert!(
        wait_exit(&mut echo.child, T)
            .expect("exits after --count")
            .success()
    );
    echo.stderr
        .wait_for("[1] answered a request on svc.echo (5 bytes)", T)
        .expect("says what it answered");

    let _fixed = ready(&agent, &["reply", "svc.time", "noon"]);
    let _upper = ready(&agent, &["reply", "svc.upper", "--command", "tr a-z A-Z"]);
    for _ in 0..2 {
        let (status, out, err) = agent.run_cli(&["req", "svc.time", "?"]);
        assert!(status.success(), "{err}");
        assert_eq!(out, "noon\n");
    }
    let (status, out, err) = agent.run_cli(&["req", "svc.upper", "shout"]);
    assert!(status.success(), "{err}");
    assert_eq!(out, "SHOUT\n");

    // One answer is required.
    let (status, _, err) = agent.run_cli(&["reply", "svc.x"]);
    assert_eq!(status.code(), Some(2), "{err}");
}

#[test]
fn no_responders_hints_at_a_starting_agent_only_while_it_is_young() {
    let agent = Agent::start(&bins(), None);
    // Just started: the agent's age is within the wait.
    let (status, _, err) = agent.run_cli(&["req", "svc.nobody", "x", "--timeout", "3"]);
    assert!(!status.success());
    assert!(
        err.contains("no responders on svc.nobody") && err.contains("is it still starting?"),
        "{err}"
    );
    // Older than the wait by more than a moment: no such hint, but how to start one.
    let (status, _, err) = agent.run_cli(&["req", "svc.nobody", "x", "--timeout", "0.3"]);
    assert!(!status.success());
    assert!(!err.contains("still starting"), "{err}");
    assert!(
        err.contains("is a responder running? e.g. `daemoneye-cli reply svc.nobody --echo`"),
        "{err}"
    );
}

#[test]
fn sub_survives_an_agent_restart_unless_told_not_to() {
    let mut agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["restart.t"]);
    let mut once = agent.subscriber(&["restart.t", "--no-reconnect"]);
    let (status, _, err) = agent.run_cli(&["pub", "restart.t", "one"]);
    assert!(status.success(), "{err}");
    sub.stdout.wait_for("restart.t one", T).expect("before");
    once.stdout.wait_for("restart.t one", T).expect("before");

    agent.terminate();
    sub.stderr
        .wait_for("connection lost", T)
        .expect("says it lost the agent");
    let status = wait_exit(&mut once.child, T).expect("--no-reconnect exits");
    assert!(!status.success());
    once.stderr
        .wait_for("connection lost: ", T)
        .expect("--no-reconnect says why it ended");
    once.stderr
        .wait_for("connection to the broker closed", T)
        .expect("and fails");

    // The same socket, a new agent: the subscriber comes back by itself.
    let dir = std::mem::replace(&mut agent.dir, tempfile::tempdir().expect("tempdir"));
    let agent = Agent::start_at(&bins(), None, dir, agent.socket.clone());
    sub.stderr
        .wait_for("reconnected", T)
        .expect("says it is back");
    eventually("the renewed subscription", || {
        let (status, _, err) = agent.run_cli(&["pub", "restart.t", "two", "--qos", "1"]);
        status.success() && !err.contains("no subscription matched")
    });
    sub.stdout.wait_for("restart.t two", T).expect("after");
    assert_eq!(
        sub.child.try_wait().expect("try_wait"),
        None,
        "still running"
    );
}

#[test]
fn sub_prints_one_line_per_message_and_previews_binary() {
    let agent = Agent::start(&bins(), None);
    let mut text = agent.subscriber(&["bin.t", "--count", "3"]);
    let mut raw = agent
        .cli(&["sub", "bin.t", "--count", "3", "--raw"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sub --raw");
    let mut raw_stdout = raw.stdout.take().expect("stdout");
    let mut raw_stderr = Lines::follow(raw.stderr.take().expect("stderr"));
    raw_stderr.wait_for("subscribed", T).expect("ready");
    for payload in [
        &b"plain text"[..],
        &[0xff, 0x00, 0xfe][..],
        &b"two\nlines"[..],
    ] {
        let mut p = agent
            .cli(&["pub", "bin.t"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("pub");
        std::io::Write::write_all(&mut p.stdin.take().expect("stdin"), payload).expect("write");
        assert!(p.wait().expect("wait").success());
    }
    assert!(wait_exit(&mut text.child, T).expect("exits").success());
    assert_eq!(
        text.stdout.drain(T),
        [
            "bin.t plain text",
            "bin.t base64:/wD+ (3 bytes)",
            "bin.t base64:dHdvCmxpbmVz (9 bytes)"
        ]
    );
    // --raw: the bytes as they are, each followed by a newline.
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut raw_stdout, &mut out).expect("read");
    assert!(wait_exit(&mut raw, T).expect("exits").success());
    assert_eq!(out, b"plain text\n\xff\x00\xfe\ntwo\nlines\n");
}

#[test]
fn sub_says_on_stderr_when_its_queue_drops_messages() {
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["flood.t", "--capacity", "1", "--overflow", "drop-newest"]);
    // Stopped, it reads nothing: its socket fills and its one-message queue overflows.
    signal(&sub.child, Signal::SIGSTOP);
    let big = "x".repeat(60_000);
    let (status, _, err) = agent.run_cli(&["pub", "flood.t", &big, "--count", "200"]);
    signal(&sub.child, Signal::SIGCONT);
    assert!(status.success(), "{err}");
    let line = sub
        .stderr
        .wait_for("dropped: ", T)
        .expect("a drop notice on stderr");
    assert!(
        line.contains("message(s) for flood.t lost to the queue's overflow strategy"),
        "{line}"
    );
    assert!(
        !sub.stdout.seen.iter().any(|l| l.contains("dropped")),
        "notices stay off stdout"
    );
}

#[test]
fn collector_crashes_are_warnings_and_a_normal_shutdown_is_quiet() {
    let mut empty = Agent::start_logging(&bins(), None, "info");
    empty
        .stderr
        .wait_for("collectors = []: starting with no collectors", T)
        .expect("says the list is empty");
    assert!(!empty.stderr.seen.iter().any(|l| l.contains("procmond")));
    drop(empty);

    let config = "[[collectors]]\nname = \"napper\"\nbinary = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 1000\"]\nbackoff_initial_ms = 20\n";
    let mut agent = Agent::start_logging(&bins(), Some(config), "info");
    let started = agent
        .stderr
        .wait_for("collector started", T)
        .expect("started");
    let pid: i32 = started
        .split("pid=")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{started}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let crash = agent
        .stderr
        .wait_for("exited unexpectedly", T)
        .expect("the kill is logged");
    assert!(
        crash.contains("WARN") && crash.contains("killed by signal 9"),
        "{crash}"
    );
    // Restarted: a second start after the crash.
    let mark = agent.stderr.seen.len();
    let deadline = Instant::now() + T;
    while !agent.stderr.seen[mark..]
        .iter()
        .any(|l| l.contains("collector started"))
    {
        assert!(
            Instant::now() < deadline,
            "no restart: {:?}",
            agent.stderr.seen
        );
        let n = agent.stderr.seen.len() + 1;
        agent.stderr.wait_count(n, T);
    }
    let (status, _, err) = agent.run_cli(&["collectors", "stop", "napper"]);
    assert!(status.success(), "{err}");
    let stopped = agent
        .stderr
        .wait_for("collector stopped", T)
        .expect("an asked-for stop is logged");
    assert!(stopped.contains("INFO"), "{stopped}");
    let mark = agent.stderr.seen.len();
    let (status, _) = agent.terminate();
    assert!(status.success());
    let after = agent.stderr.drain(Duration::from_millis(200))[mark..].to_vec();
    assert!(after.iter().any(|l| l.contains("stopped")), "{after:?}");
    assert!(
        !after
            .iter()
            .any(|l| l.contains("WARN") || l.contains("reconnecting")),
        "{after:?}"
    );
}

/// Runs a binary to completion without an agent: (status, stdout, stderr).
fn run(bin: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_environment_and_version_names_the_revision() {
    let b = bins();
    let (status, help, _) = run(&b.agent, &["--help"]);
    assert!(status.success());
    for variable in [
        "DAEMONEYE_BROKER_SOCKET",
        "DAEMONEYE_AGENT_LOG_LEVEL",
        "DAEMONEYE_AGENT_BROKER_MAX_CONNECTIONS",
        "DAEMONEYE_AGENT_BROKER_DURABLE_EXPIRY_SECS",
    ] {
        assert!(help.contains(variable), "{variable} missing from:\n{help}");
    }
    for bin in [&b.agent, &b.cli] {
        let (status, version, _) = run(bin, &["--version"]);
        assert!(status.success());
        // "daemoneye-x 0.1.0 (git 0123abcd...)", or "(git unknown)" outside a checkout.
        let revision = version
            .split("(git ")
            .nth(1)
            .and_then(|r| r.strip_suffix(")\n"))
            .unwrap_or_else(|| panic!("{version}"));
        assert!(
            revision == "unknown" || revision.chars().all(|c| c.is_ascii_hexdigit()),
            "{version}"
        );
    }
}

#[test]
fn the_cli_prints_completion_scripts() {
    let cli = bins().cli;
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef daemoneye-cli"),
        ("fish", "complete -c daemoneye-cli"),
    ] {
        let (status, script, err) = run(&cli, &["completions", shell]);
        assert!(status.success(), "{shell}: {err}");
        assert!(
            script.contains(marker) && script.contains("collectors"),
            "{shell}"
        );
    }
    let (status, _, _) = run(&cli, &["completions", "tcsh"]);
    assert_eq!(status.code(), Some(2));
}

#[test]
fn stats_watch_refreshes_and_bench_paces() {
    let agent = Agent::start(&bins(), None);
    let mut watch = agent
        .cli(&["stats", "--watch", "0.1", "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stats --watch");
    let mut lines = Lines::follow(watch.stdout.take().expect("stdout"));
    let seen = lines.wait_count(3, T).to_vec();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for l in &seen {
        let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
        assert!(v["uptime_ms"].as_u64().is_some(), "{l}");
    }
    let uptimes: Vec<u64> = seen
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["uptime_ms"]
                .as_u64()
                .expect("uptime")
        })
        .collect();
    assert!(uptimes.windows(2).all(|w| w[0] <= w[1]), "{uptimes:?}");

    // 20 messages at 100 per second take at least 190 ms (the first goes at once).
    let started = Instant::now();
    let (status, out, err) = agent.run_cli(&[
        "bench", "--msgs", "20", "--rate", "100", "--size", "16", "--json",
    ]);
    assert!(status.success(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(190));
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (report["sent"].clone(), report["rate"].clone()),
        (20.into(), 100.0.into())
    );
    let (status, _, err) = agent.run_cli(&["bench", "--msgs", "5", "--rate", "0"]);
    assert_eq!(status.code(), Some(2), "{err}");
}

#[test]
fn qos1_pub_on_a_terminal_shows_what_it_waits_for_after_a_second() {
    let agent = Agent::start(&bins(), None);
    let (status, _, err) = agent.run_cli(&[
        "sub",
        "orders",
        "--qos",
        "1",
        "--durable",
        "away",
        "--timeout",
        "0.2",
    ]);
    assert!(status.success(), "{err}");
    // `script` gives the command a terminal and copies what it writes there.
    let command = format!(
        "{} pub orders o --qos 1 --count 5 --timeout 2 --socket {}",
        bins().cli.display(),
        agent.socket.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("waiting for PubAcks: 0 of 5 acknowledged; held by durable \"away\""),
        "{shown}"
    );
    assert!(shown.contains("not acknowledged"), "{shown}");
    assert_eq!(out.status.code(), Some(3), "{shown}");
}
