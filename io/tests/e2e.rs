//! End-to-end tests of the real binaries over real sockets in temporary directories.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use daemoneye_tests::{Agent, Bins, exists, signal, wait_exit};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(10);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn publish(agent: &Agent, args: &[&str]) {
    let mut full = vec!["pub"];
    full.extend_from_slice(args);
    let (status, _, err) = agent.run_cli(&full);
    assert!(status.success(), "pub {args:?} failed: {err}");
}

/// The broker still routes for well-behaved clients.
fn assert_alive(agent: &Agent) {
    let mut sub = agent.subscriber(&["alive.check", "--count", "1"]);
    publish(agent, &["alive.check", "yes"]);
    assert_eq!(sub.stdout.wait_count(1, T), ["alive.check yes"]);
}

#[test]
fn pubsub_with_wildcards_across_processes() {
    let agent = Agent::start(&bins(), None);
    let mut all = agent.subscriber(&["events.#", "--count", "2", "--json"]);
    let mut proc_only = agent.subscriber(&["events.process.+", "--count", "1"]);
    publish(&agent, &["events.process.new", "pid=42"]);
    publish(&agent, &["events.network.connect", "tcp"]);
    let lines = all.stdout.wait_count(2, T).to_vec();
    assert!(
        lines[0].contains(r#""topic":"events.process.new""#)
            && lines[0].contains(r#""payload":"pid=42""#),
        "{lines:?}"
    );
    assert!(
        lines[1].contains(r#""topic":"events.network.connect""#),
        "{lines:?}"
    );
    assert_eq!(
        proc_only.stdout.wait_count(1, T),
        ["events.process.new pid=42"]
    );
    assert!(
        wait_exit(&mut all.child, T)
            .expect("exits after --count")
            .success()
    );
}

#[test]
fn non_utf8_payload_is_base64_in_json() {
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["bin.data", "--count", "1", "--json"]);
    let mut p = agent
        .cli(&["pub", "bin.data"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("pub");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(&[0xFF, 0x00, 0xFE])
        .expect("write");
    assert!(p.wait().expect("wait").success());
    let line = &sub.stdout.wait_count(1, T)[0];
    assert!(line.contains(r#""payload_b64":"/wD+""#), "{line}");
}

#[test]
fn queue_group_splits_round_robin_across_processes() {
    let agent = Agent::start(&bins(), None);
    let mut a = agent.subscriber(&["jobs.scan", "--group", "workers", "--count", "5"]);
    let mut b = agent.subscriber(&["jobs.scan", "--group", "workers", "--count", "5"]);
    let mut plain = agent.subscriber(&["jobs.scan", "--count", "10"]);
    publish(&agent, &["jobs.scan", "x", "--count", "10"]);
    assert_eq!(a.stdout.wait_count(5, T).len(), 5);
    assert_eq!(b.stdout.wait_count(5, T).len(), 5);
    assert_eq!(
        plain.stdout.wait_count(10, T).len(),
        10,
        "plain subscribers get every message"
    );
    assert!(wait_exit(&mut a.child, T).expect("a exits").success());
    assert!(wait_exit(&mut b.child, T).expect("b exits").success());
}

#[test]
fn request_reply_across_processes() {
    let agent = Agent::start(&bins(), None);
    let socket = agent.socket.clone();
    // The responder is this test process, using the client library.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let responder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use daemoneye_io::client::{Client, ClientOptions, plain_subscribe, simple_publish};
            let client = Client::connect(&socket, ClientOptions::new("echo"))
                .await
                .expect("connect");
            let mut sub = client
                .subscribe(plain_subscribe("svc.echo"))
                .await
                .expect("subscribe");
            ready_tx.send(()).expect("ready");
            let req = sub.recv().await.expect("request");
            let mut reply = simple_publish(
                req.reply_to.as_deref().expect("reply_to"),
                bytes::Bytes::from(format!("echo: {}", String::from_utf8_lossy(&req.payload))),
                daemoneye_proto::frame::QoS::AtMostOnce,
            );
            reply.correlation = req.correlation.clone();
            client.publish(reply).await.expect("reply");
            client.close().await;
        });
    });
    ready_rx.recv_timeout(T).expect("responder ready");
    let (status, out, err) = agent.run_cli(&["req", "svc.echo", "hello", "--timeout", "5"]);
    assert!(status.success(), "{err}");
    assert_eq!(out.trim(), "echo: hello");
    responder.join().expect("responder");
    let (status, _, err) = agent.run_cli(&["req", "svc.nobody", "x", "--timeout", "0.3"]);
    assert!(!status.success());
    assert!(err.contains("no responders on svc.nobody"), "{err}");
}

fn no_interest(agent: &Agent) -> u64 {
    let (status, out, err) = agent.run_cli(&["stats", "--json"]);
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stats json");
    v["totals"]["no_interest"].as_u64().expect("no_interest")
}

#[test]
fn a_request_waits_for_a_responder_that_is_still_starting() {
    let agent = Agent::start(&bins(), None);
    let before = no_interest(&agent);
    let mut req = agent
        .cli(&["req", "svc.late", "ping", "--timeout", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("req");
    // The request has found nobody at least once before the responder starts.
    let deadline = std::time::Instant::now() + T;
    while no_interest(&agent) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never went out"
        );
    }
    let mut responder = agent.subscriber(&["svc.late", "--count", "1"]);
    let got = responder.stdout.wait_count(1, T).to_vec();
    assert_eq!(
        got.len(),
        1,
        "the retried request reaches the late responder"
    );
    // The plain subscriber does not answer, so the requester times out, not "no responders".
    let status = wait_exit(&mut req, T + T).expect("req exits");
    assert!(!status.success());
    let mut err = String::new();
    req.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn qos1_unacked_messages_go_to_another_member_when_a_subscriber_is_killed() {
    let agent = Agent::start(&bins(), None);
    let mut first = agent.subscriber(&["orders", "--group", "g", "--qos", "1", "--json"]);
    let mut second = agent.subscriber(&["orders", "--group", "g", "--qos", "1", "--json"]);
    // The first member stops processing: it neither reads nor acks.
    signal(&first.child, Signal::SIGSTOP);
    let mut publisher = agent
        .cli(&["pub", "orders", "o", "--qos", "1", "--count", "4"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("pub");
    // Round robin gives each member two; the stopped member's PubAcks wait.
    assert_eq!(second.stdout.wait_count(2, T).len(), 2);
    assert!(
        wait_exit(&mut publisher, Duration::from_millis(500)).is_none(),
        "PubAck before delivery"
    );
    // Kill it mid-stream: its unacked message is redelivered to the other member.
    signal(&first.child, Signal::SIGKILL);
    let _ = first.child.wait();
    let lines = second.stdout.wait_count(4, T).to_vec();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains(r#""redelivered":true"#)),
        "{lines:?}"
    );
    let status = wait_exit(&mut publisher, T).expect("publisher finishes after the acks");
    assert!(status.success());
}

#[test]
fn restarted_durable_subscriber_gets_the_unacked_messages() {
    let agent = Agent::start(&bins(), None);
    let args = [
        "orders",
        "--qos",
        "1",
        "--durable",
        "order-forwarder",
        "--json",
    ];
    let mut first = agent.subscriber(&args);
    signal(&first.child, Signal::SIGSTOP);
    let mut publisher = agent
        .cli(&["pub", "orders", "o", "--qos", "1", "--count", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("pub");
    assert!(
        wait_exit(&mut publisher, Duration::from_millis(500)).is_none(),
        "PubAck before delivery"
    );
    signal(&first.child, Signal::SIGKILL);
    let _ = first.child.wait();
    // The restarted consumer resumes the durable subscription and misses nothing.
    let mut again = agent.subscriber(&[&args[..], &["--count", "3"]].concat());
    let lines = again.stdout.wait_count(3, T).to_vec();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains(r#""redelivered":true"#)),
        "{lines:?}"
    );
    assert!(
        wait_exit(&mut publisher, T)
            .expect("publisher finishes")
            .success()
    );
}

#[test]
fn drop_newest_overflow_is_visible_from_outside_with_a_stalled_subscriber() {
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["flood", "--capacity", "10", "--overflow", "drop-newest"]);
    signal(&sub.child, Signal::SIGSTOP);
    let payload = "x".repeat(4096);
    publish(&agent, &["flood", &payload, "--count", "3000"]);
    let (status, stats, _) = agent.run_cli(&["stats", "--json"]);
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats json");
    let dropped = v["totals"]["dropped"].as_u64().expect("dropped counter");
    assert!(
        dropped > 0,
        "a stalled subscriber with capacity 10 must drop: {stats}"
    );
    let flood = v["subscriptions_detail"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .find(|s| s["filter"] == "flood")
        .cloned();
    let sub_dropped = flood.expect("the flood subscription")["counters"]["dropped"]
        .as_u64()
        .expect("per-subscription");
    assert_eq!(sub_dropped, dropped, "totals agree with the subscription");
    signal(&sub.child, Signal::SIGCONT);
    let got = sub.stdout.wait_count(3000 - dropped as usize, T).len() as u64;
    assert_eq!(
        got + dropped,
        3000,
        "every message is delivered or counted as dropped"
    );
}

/// Far more than a socket buffer holds goes to a stopped subscriber: the broker's writes
/// come back short, the rest waits for the socket to drain, and once the subscriber reads
/// again it gets every message, once, in order.
#[test]
fn a_stalled_subscriber_gets_everything_in_order_once_it_reads_again() {
    use daemoneye_io::client::simple_publish;
    use daemoneye_proto::frame::QoS;
    const N: usize = 3_000;
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["ordered", "--capacity", "5000", "--overflow", "block"]);
    signal(&sub.child, Signal::SIGSTOP);
    runtime().block_on(async {
        let client = lib_client(&agent, "orderly").await;
        let pad = "x".repeat(4000);
        for k in 0..N {
            client
                .publish(simple_publish(
                    "ordered",
                    bytes::Bytes::from(format!("{k:05}{pad}")),
                    QoS::AtMostOnce,
                ))
                .await
                .expect("publish");
        }
        let report = client.close().await;
        assert_eq!(report.unconfirmed, 0);
    });
    signal(&sub.child, Signal::SIGCONT);
    let lines = sub.stdout.wait_count(N, T);
    assert_eq!(lines.len(), N, "every message arrives");
    for (k, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("ordered {k:05}x")),
            "message {k} out of order: {}",
            &line[..line.len().min(20)]
        );
    }
}

#[test]
fn socket_is_0600_in_a_0700_directory() {
    let agent = Agent::start(&bins(), None);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&agent.socket), 0o600);
    assert_eq!(mode(agent.socket.parent().expect("dir")), 0o700);
}

#[test]
fn stale_socket_file_is_replaced_and_a_live_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let socket = run.join("broker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale listener"));
    assert!(exists(&socket), "a stale socket file is left behind");
    let agent = Agent::start_at(&bins(), None, dir, socket.clone());
    assert_alive(&agent);
    let second = std::process::Command::new(&agent.bins.agent)
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::piped())
        .output()
        .expect("second agent");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("a live broker is already listening"), "{err}");
    assert_alive(&agent);
}

#[test]
fn another_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root to run a client under another uid");
        return;
    }
    let agent = Agent::start(&bins(), None);
    use std::os::unix::process::CommandExt;
    let out = agent
        .cli(&["pub", "t", "x"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("permission denied"), "{err}");
    assert_alive(&agent);
}

/// Sends `bytes` on a fresh connection (closing our side after them if `half_close`), and
/// reads everything the broker says until it closes.
fn hostile(agent: &Agent, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(&agent.socket).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(bytes).expect("write");
    if half_close {
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

#[test]
fn hostile_clients_are_closed_and_others_keep_receiving() {
    let agent = Agent::start(&bins(), Some("[broker]\nhandshake_timeout_ms = 300\n"));
    let mut steady = agent.subscriber(&["steady", "--count", "5"]);
    // Garbage, a zero-length frame, a header claiming 4 GiB: an Error frame, then close.
    let cases: [&[u8]; 3] = [
        b"\x16\x03\x01garbage that is not a frame",
        &[0, 0, 0, 0],
        &[0xFF, 0xFF, 0xFF, 0xFF],
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let answer = hostile(&agent, bytes, false);
        assert!(
            answer.len() > 4,
            "case {i}: an Error frame before the close"
        );
        publish(&agent, &["steady", &format!("after case {i}")]);
    }
    // A truncated frame, then the client closes its side (still reading): the broker
    // answers with an Error naming the truncation, then closes.
    let answer = hostile(&agent, &[0, 0, 0, 50, 1, 2], true);
    let mut decoder = daemoneye_proto::FrameDecoder::new(u32::MAX);
    decoder.push(&answer).expect("frames");
    let frame = decoder.next_frame().expect("a frame").expect("one frame");
    assert!(
        matches!(
            &frame.body,
            Some(daemoneye_proto::pb::bus::frame::Body::Error(e))
                if e.message.contains("ended inside a frame body (2 of 50 bytes)")
        ),
        "{frame:?}"
    );
    publish(&agent, &["steady", "after truncated"]);
    // A client that connects and sends nothing is closed at the handshake timeout.
    let answer = hostile(&agent, &[], false);
    assert!(
        !answer.is_empty(),
        "the silent client gets an Error frame and EOF"
    );
    publish(&agent, &["steady", "after silent"]);
    assert_eq!(steady.stdout.wait_count(5, T).len(), 5);
}

#[test]
fn connection_beyond_the_limit_gets_an_error_and_others_stay() {
    let agent = Agent::start(&bins(), Some("[broker]\nmax_connections = 4\n"));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(agent.subscriber(&["held"]));
    }
    let (status, _, err) = agent.run_cli(&["pub", "held", "x"]);
    assert!(!status.success());
    assert!(err.contains("connection limit of 4"), "{err}");
    let mut last = held.pop().expect("fourth");
    signal(&last.child, Signal::SIGKILL);
    let _ = last.child.wait();
    drop(last);
    // Once the broker has seen the killed client go, a slot is free again.
    let mut ok = false;
    for _ in 0..100 {
        if agent.run_cli(&["pub", "held", "y"]).0.success() {
            ok = true;
            break;
        }
    }
    assert!(ok, "a slot frees once a client leaves");
    assert_eq!(held[0].stdout.wait_count(1, T), ["held y"]);
}

#[test]
fn sigterm_with_busy_clients_exits_within_500ms_and_removes_the_socket() {
    let mut agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["busy.#"]);
    let mut flood = agent
        .cli(&["pub", "busy.x", "payload", "--count", "100000000"])
        .stderr(Stdio::null())
        .spawn()
        .expect("flood");
    // Wait until traffic flows.
    sub.stdout.wait_count(1000, T);
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(500), "shutdown took {took:?}");
    assert!(!exists(&agent.socket), "socket removed");
    let _ = flood.kill();
    let _ = flood.wait();
}

#[test]
fn cli_failures_are_one_clear_line_and_nonzero() {
    let agent = Agent::start(&bins(), None);
    for (args, needle) in [
        (vec!["pub", "a..b", "x"], "level 1 is empty"),
        (vec!["sub", "a.#.b"], "'#' must be the last level"),
        (vec!["pub", "$sys.x", "x"], "permission denied"),
        (vec!["sub", "t", "--group", "  "], "whitespace"),
    ] {
        let (status, _, err) = agent.run_cli(&args);
        assert!(!status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let out = std::process::Command::new(&agent.bins.cli)
        .args(["pub", "t", "x", "--socket", "/nonexistent/broker.sock"])
        .output()
        .expect("cli");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no broker at /nonexistent/broker.sock"));
    let (status, _, _) = agent.run_cli(&["sub", "quiet", "--timeout", "0.2"]);
    assert!(
        status.success(),
        "--timeout ending the wait is a normal exit"
    );
}

// ----- acknowledgement, handles and clean close (the client library) -----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn lib_client(agent: &Agent, name: &str) -> daemoneye_io::client::Client {
    let mut options = daemoneye_io::client::ClientOptions::new(name);
    options.session.reconnect = None;
    daemoneye_io::client::Client::connect(&agent.socket, options)
        .await
        .expect("connect")
}

fn qos1_group(filter: &str, group: &str) -> daemoneye_proto::frame::Subscribe {
    use daemoneye_proto::frame::{GroupSpec, QoS, QueueStrategy, Subscribe};
    let mut spec = Subscribe {
        qos: QoS::AtLeastOnce,
        ..Subscribe::new(filter)
    };
    spec.group = Some(GroupSpec {
        name: group.into(),
        strategy: QueueStrategy::RoundRobin,
    });
    spec
}

/// Issue 11 item 1: `sub --count 1` of a durable QoS1 subscription resumed with five
/// messages waiting prints one and acks one; the other four wait for the next resume (and
/// the publisher's PubAcks with them).
#[test]
fn durable_sub_with_count_acks_only_what_it_printed() {
    let agent = Agent::start(&bins(), None);
    let args = ["orders", "--qos", "1", "--durable", "fwd", "--json"];
    // Create the durable subscription, then leave.
    let mut first = agent.subscriber(&[&args[..], &["--count", "1"]].concat());
    publish(&agent, &["orders", "o0", "--qos", "1"]);
    assert_eq!(first.stdout.wait_count(1, T).len(), 1);
    assert!(wait_exit(&mut first.child, T).expect("exits").success());
    let mut publisher = agent
        .cli(&["pub", "orders", "o", "--qos", "1", "--count", "5"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("pub");
    // Resume with --count 1 while the five wait (or arrive).
    let mut one = agent.subscriber(&[&args[..], &["--count", "1"]].concat());
    assert_eq!(one.stdout.wait_count(1, T).len(), 1);
    assert!(wait_exit(&mut one.child, T).expect("exits").success());
    let printed = one.stdout.drain(Duration::from_millis(100)).len();
    assert_eq!(printed, 1, "--count 1 prints exactly one");
    // The next resume gets the other four.
    let mut rest = agent.subscriber(&[&args[..], &["--count", "4"]].concat());
    let lines = rest.stdout.wait_count(4, T).to_vec();
    assert_eq!(
        lines.len(),
        4,
        "the four unprinted messages were kept: {lines:?}"
    );
    assert!(wait_exit(&mut rest.child, T).expect("exits").success());
    assert!(
        wait_exit(&mut publisher, T)
            .expect("publisher gets its PubAcks once all five are printed")
            .success()
    );
}

/// `sub` with several filters is one stream: every message of every filter, each acked
/// once printed (the QoS1 publisher's PubAcks all come back).
#[test]
fn sub_with_several_filters_is_one_acked_stream() {
    let agent = Agent::start(&bins(), None);
    let mut sub = agent.subscriber(&["a.x", "b.x", "--qos", "1", "--count", "6"]);
    publish(&agent, &["a.x", "1", "--qos", "1", "--count", "3"]);
    publish(&agent, &["b.x", "2", "--qos", "1", "--count", "3"]);
    let lines = sub.stdout.wait_count(6, T).to_vec();
    assert_eq!(
        lines.iter().filter(|l| l.as_str() == "a.x 1").count(),
        3,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.as_str() == "b.x 2").count(),
        3,
        "{lines:?}"
    );
    assert!(wait_exit(&mut sub.child, T).expect("exits").success());
}

/// Issue 11 item 3: the same three-member queue-group workload, run three times in one
/// process, each run dropping its clients and subscriptions without `close()`: the dropped
/// members leave the group, so every run's live members get every message.
#[test]
fn dropped_group_members_leave_the_group_and_every_run_gets_everything() {
    use daemoneye_io::client::simple_publish;
    use daemoneye_proto::frame::QoS;
    let agent = Agent::start(&bins(), None);
    const N: usize = 30;
    runtime().block_on(async {
        let publisher = lib_client(&agent, "work-pub").await;
        for run in 0..3 {
            let mut members = Vec::new();
            for i in 0..3 {
                let client = lib_client(&agent, &format!("member-{run}-{i}")).await;
                let sub = client
                    .subscribe(qos1_group("work.items", "workers"))
                    .await
                    .expect("subscribe");
                members.push((client, sub));
            }
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut tasks = Vec::new();
            for (client, mut sub) in members {
                let tx = tx.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(mut d) = sub.recv().await {
                        d.ack();
                        if tx.send(d.into_inner().payload).is_err() {
                            break;
                        }
                    }
                    drop(client);
                }));
            }
            drop(tx);
            for k in 0..N {
                let ack = publisher
                    .publish(simple_publish(
                        "work.items",
                        bytes::Bytes::from(format!("{run}-{k}")),
                        QoS::AtLeastOnce,
                    ))
                    .await
                    .expect("publish");
                assert_eq!(ack.map(|a| a.delivered), Some(1), "run {run}");
            }
            let mut got = std::collections::BTreeSet::new();
            while got.len() < N {
                match tokio::time::timeout(T, rx.recv()).await {
                    Ok(Some(p)) => {
                        got.insert(p);
                    }
                    _ => panic!("run {run}: live members got {} of {N}", got.len()),
                }
            }
            // Drop every handle of this run, with no close().
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        // Nothing of the dropped members is left at the broker.
        let stats = publisher
            .request(
                simple_publish("$sys.broker.stats", bytes::Bytes::new(), QoS::AtMostOnce),
                T,
            )
            .await
            .expect("stats");
        let stats =
            <daemoneye_proto::pb::stats::BrokerStats as prost::Message>::decode(stats.payload)
                .expect("stats decode");
        assert!(
            stats
                .subscriptions_detail
                .iter()
                .all(|s| s.filter != "work.items"),
            "dropped subscriptions are gone: {:?}",
            stats.subscriptions_detail
        );
        publisher.close().await;
    });
}

/// Issue 11 item 3, QoS1: a member that received messages and dropped them (and its
/// subscription) without acking does not lose them: the broker redelivers them to the
/// other member, and every PubAck still says delivered.
#[test]
fn dropped_qos1_subscription_unacked_messages_are_redelivered_not_acked() {
    use daemoneye_io::client::simple_publish;
    use daemoneye_proto::frame::QoS;
    let agent = Agent::start(&bins(), None);
    runtime().block_on(async {
        let client_a = lib_client(&agent, "member-a").await;
        let client_b = lib_client(&agent, "member-b").await;
        let publisher = lib_client(&agent, "orders-pub").await;
        let mut a = client_a
            .subscribe(qos1_group("orders", "g"))
            .await
            .expect("a");
        let mut b = client_b
            .subscribe(qos1_group("orders", "g"))
            .await
            .expect("b");
        let mut pending = Vec::new();
        for k in 0..4 {
            pending.push(
                publisher
                    .send(simple_publish(
                        "orders",
                        bytes::Bytes::from(format!("o{k}")),
                        QoS::AtLeastOnce,
                    ))
                    .await
                    .expect("send"),
            );
        }
        // Round robin: two each. A takes its two and drops them unacked.
        for _ in 0..2 {
            let d = tokio::time::timeout(T, a.recv())
                .await
                .expect("a receives")
                .expect("a open");
            assert!(d.needs_ack());
        }
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut d = tokio::time::timeout(T, b.recv())
                .await
                .expect("b receives")
                .expect("b open");
            d.ack();
            got.push(d.into_inner());
        }
        // A drops its subscription (its client stays): the two come to B, redelivered.
        drop(a);
        for _ in 0..2 {
            let mut d = tokio::time::timeout(T, b.recv())
                .await
                .expect("the unacked messages are redelivered to b")
                .expect("b open");
            assert!(d.redelivered, "{d:?}");
            d.ack();
            got.push(d.into_inner());
        }
        let mut payloads: Vec<_> = got.iter().map(|d| d.payload.clone()).collect();
        payloads.sort();
        assert_eq!(
            payloads,
            ["o0", "o1", "o2", "o3"].map(|s| bytes::Bytes::from_static(s.as_bytes()))
        );
        for p in pending {
            let ack = tokio::time::timeout(T, p.wait())
                .await
                .expect("puback")
                .expect("ok")
                .expect("qos1");
            assert_eq!((ack.delivered, ack.dropped), (1, 0));
        }
        for c in [client_a, client_b, publisher] {
            let report = c.close().await;
            assert_eq!(report.unconfirmed, 0);
        }
    });
}

/// Issue 11 item 2 and the bounded close: four publishers each publish QoS0 messages at
/// Block into a small queue and `close()` at once; the subscriber gets every message (the
/// broker routes what it holds for a closing publisher before it answers the Goodbye).
#[test]
fn four_publishers_closing_cleanly_lose_nothing() {
    use daemoneye_io::client::simple_publish;
    use daemoneye_proto::frame::{Overflow, QoS, Subscribe};
    const PUBS: usize = 4;
    const N: usize = 5_000;
    let agent = Agent::start(&bins(), None);
    runtime().block_on(async {
        let sub_client = lib_client(&agent, "drain").await;
        let mut sub = sub_client
            .subscribe(Subscribe {
                capacity: Some(16),
                overflow: Some(Overflow::Block),
                ..Subscribe::new("bulk.#")
            })
            .await
            .expect("subscribe");
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while n < PUBS * N {
                match tokio::time::timeout(T, sub.recv()).await {
                    Ok(Some(_)) => n += 1,
                    _ => break,
                }
            }
            n
        });
        let mut pubs = Vec::new();
        for i in 0..PUBS {
            let client = lib_client(&agent, &format!("bulk-{i}")).await;
            pubs.push(tokio::spawn(async move {
                for k in 0..N {
                    client
                        .publish(simple_publish(
                            &format!("bulk.{i}"),
                            bytes::Bytes::from(format!("{k}")),
                            QoS::AtMostOnce,
                        ))
                        .await
                        .expect("publish");
                }
                client.close().await
            }));
        }
        for p in pubs {
            let report = p.await.expect("publisher");
            assert_eq!(report.unconfirmed, 0);
        }
        let got = reader.await.expect("reader");
        assert_eq!(got, PUBS * N, "every message of a clean close arrives");
        sub_client.close().await;
    });
}

/// A clean close waits for the broker at most `close_timeout`, then reports the QoS1
/// publishes it could not confirm.
#[test]
fn close_gives_up_after_its_timeout_and_counts_unconfirmed_publishes() {
    use daemoneye_io::client::{Client, ClientOptions, simple_publish};
    use daemoneye_proto::frame::QoS;
    let agent = Agent::start(&bins(), None);
    runtime().block_on(async {
        let mut options = ClientOptions::new("impatient");
        options.session.reconnect = None;
        options.close_timeout = Duration::from_millis(300);
        let client = Client::connect(&agent.socket, options)
            .await
            .expect("connect");
        // A broker that stops answering.
        signal(&agent.child, Signal::SIGSTOP);
        let _pending = client
            .send(simple_publish(
                "nobody.listens",
                bytes::Bytes::from_static(b"x"),
                QoS::AtLeastOnce,
            ))
            .await
            .expect("send");
        let started = std::time::Instant::now();
        let report = client.close().await;
        let took = started.elapsed();
        signal(&agent.child, Signal::SIGCONT);
        assert!(report.timed_out, "{report:?}");
        assert_eq!(report.unconfirmed, 1, "{report:?}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "close took {took:?}"
        );
    });
}
