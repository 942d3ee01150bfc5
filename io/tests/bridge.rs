//! The NATS bridge end to end: real agents, a real nats-server (with JetStream) started by
//! the test, and a "central" NATS client in the test. Export and import round trip,
//! wildcard mapping (`+`, and `#` at the end), loop prevention between two hosts that
//! import each other's exports, a central subscriber that sees both hosts, a task for one
//! host that reaches only that host, nothing lost at QoS1 across a nats-server killed and
//! restarted mid-stream, bad credentials (one-line error, Degraded health, the local bus
//! unaffected), a JetStream stream that overlaps the exports without covering them
//! (Degraded until it is removed, then the queue flows in order), and QoS1 exports on disk
//! across an agent stopped (SIGTERM and SIGKILL) and restarted. Credentials files and TLS
//! are in `bridge_auth.rs`.
//!
//! Every wait is for a condition with a deadline, never a sleep.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_tests::{Agent, Bins, NatsServer, bridge_config, eventually, signal, wait_exit};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An agent on host `host` bridged to `nats`, with `extra` lines in `[bridge.nats]`.
fn agent(nats: &str, host: &str, extra: &str) -> Agent {
    Agent::start(&bins(), Some(&bridge_config(nats, host, extra)))
}

fn wait_healthy(agent: &Agent) {
    eventually("the bridge connects", T, || {
        agent.bridge_status()["state"] == "healthy"
    });
}

async fn local(agent: &Agent, name: &str) -> Client {
    Client::connect(&agent.socket, ClientOptions::new(name))
        .await
        .expect("connect to the agent")
}

async fn publish(client: &Client, topic: &str, payload: &str, qos: QoS) {
    client
        .publish(Publish::new(topic, Bytes::from(payload.to_string()), qos))
        .await
        .expect("publish");
}

async fn next_nats(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(T, sub.next())
        .await
        .expect("a NATS message in time")
        .expect("subscription open")
}

fn header(m: &async_nats::Message, name: &str) -> String {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

#[test]
fn exports_and_imports_round_trip_with_wildcards_and_headers() {
    let nats = NatsServer::start();
    let agent = agent(
        &nats.url(),
        "h1",
        "export = [\"alerts.#\", \"events.+.new\"]",
    );
    wait_healthy(&agent);
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        let mut all = central.subscribe("daemoneye.h1.>").await.expect("sub");
        central.flush().await.expect("flush");
        let client = local(&agent, "publisher").await;
        // `alerts.#` takes `alerts` itself and everything below; `events.+.new` one level.
        publish(&client, "alerts", "a0", QoS::AtLeastOnce).await;
        publish(&client, "alerts.high", "a1", QoS::AtLeastOnce).await;
        publish(
            &client,
            "events.process.exit",
            "not exported",
            QoS::AtLeastOnce,
        )
        .await;
        publish(&client, "events.process.new", "e1", QoS::AtLeastOnce).await;
        publish(&client, "alerts.low.deep", "a2", QoS::AtMostOnce).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = next_nats(&mut all).await;
            got.push((
                m.subject.to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            ));
            assert_eq!(header(&m, "DaemonEye-Origin"), "h1");
            assert!(!header(&m, "DaemonEye-Publisher").is_empty());
            // QoS1 exports carry the id JetStream deduplicates resends by; the QoS0 one
            // (a2) is never resent and carries none.
            let qos0 = m.payload.as_ref() == b"a2";
            let id = header(&m, "Nats-Msg-Id");
            assert_eq!(id.is_empty(), qos0, "Nats-Msg-Id {id:?}");
            if !qos0 {
                assert_eq!(
                    id,
                    format!(
                        "h1.{}.{}",
                        header(&m, "DaemonEye-Publisher"),
                        header(&m, "DaemonEye-Sequence")
                    )
                );
            }
            assert_eq!(
                format!("daemoneye.h1.{}", header(&m, "DaemonEye-Topic")),
                m.subject.as_str()
            );
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                ("daemoneye.h1.alerts".to_string(), "a0".to_string()),
                ("daemoneye.h1.alerts.high".into(), "a1".into()),
                ("daemoneye.h1.alerts.low.deep".into(), "a2".into()),
                ("daemoneye.h1.events.process.new".into(), "e1".into()),
            ]
        );

        // Import: tasks for this host and for all hosts land locally, others do not.
        let mut tasks = client
            .subscribe(Subscribe::new("control.collector.task.#"))
            .await
            .expect("local sub");
        for (subject, body) in [
            ("daemoneye.h2.control.collector.task.process", "for h2"),
            ("daemoneye.h1.control.collector.task.process", "for h1"),
            ("daemoneye.all.control.collector.task.process", "for all"),
        ] {
            central
                .publish(subject, Bytes::from(body))
                .await
                .expect("central publish");
        }
        central.flush().await.expect("flush");
        let mut bodies = BTreeSet::new();
        for _ in 0..2 {
            let d = tokio::time::timeout(T, tasks.recv())
                .await
                .expect("an import in time")
                .expect("open");
            assert_eq!(d.topic, "control.collector.task.process");
            bodies.insert(String::from_utf8_lossy(&d.payload).into_owned());
        }
        assert_eq!(bodies, ["for all".to_string(), "for h1".to_string()].into());
    });
    eventually("two imports counted", T, || {
        agent.bridge_status()["imported"] == 2
    });
}

#[test]
fn two_hosts_importing_each_others_exports_do_not_loop_and_a_central_subscriber_sees_both() {
    let nats = NatsServer::start();
    let a = agent(
        &nats.url(),
        "h1",
        "import_from = [\"daemoneye.h2:alerts.#\"]",
    );
    let b = agent(
        &nats.url(),
        "h2",
        "import_from = [\"daemoneye.h1:alerts.#\"]",
    );
    wait_healthy(&a);
    wait_healthy(&b);
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        let mut both = central
            .subscribe("daemoneye.*.alerts.>")
            .await
            .expect("sub");
        central.flush().await.expect("flush");
        let ca = local(&a, "a").await;
        let cb = local(&b, "b").await;
        let mut on_a = ca.subscribe(Subscribe::new("alerts.#")).await.expect("sub");
        let mut on_b = cb.subscribe(Subscribe::new("alerts.#")).await.expect("sub");
        publish(&ca, "alerts.high", "from h1", QoS::AtLeastOnce).await;
        publish(&cb, "alerts.high", "from h2", QoS::AtLeastOnce).await;
        // Each host sees its own alert and, imported, the other's.
        for sub in [&mut on_a, &mut on_b] {
            let mut seen = BTreeSet::new();
            for _ in 0..2 {
                let d = tokio::time::timeout(T, sub.recv())
                    .await
                    .expect("in time")
                    .expect("open");
                seen.insert(String::from_utf8_lossy(&d.payload).into_owned());
            }
            assert_eq!(seen, ["from h1".to_string(), "from h2".to_string()].into());
        }
        // A marker from each host after the imports: the central subscriber sees exactly
        // the two alerts and the two markers, nothing re-exported.
        for _ in 0..2 {
            let _ = next_nats(&mut both).await;
        }
        publish(&ca, "alerts.marker", "end h1", QoS::AtLeastOnce).await;
        publish(&cb, "alerts.marker", "end h2", QoS::AtLeastOnce).await;
        let mut rest = Vec::new();
        while rest.len() < 2 {
            let m = next_nats(&mut both).await;
            rest.push(format!(
                "{} {}",
                m.subject,
                String::from_utf8_lossy(&m.payload)
            ));
        }
        rest.sort();
        assert_eq!(
            rest,
            vec![
                "daemoneye.h1.alerts.marker end h1".to_string(),
                "daemoneye.h2.alerts.marker end h2".to_string()
            ],
            "nothing but the markers after the two alerts: no loop"
        );
    });
    // Each exported only its own alert and marker, and refused to export the other's.
    for agent in [&a, &b] {
        eventually("the counters settle", T, || {
            let s = agent.bridge_status();
            // Imported: the other's alert and marker, neither exported back.
            s["exported"] == 2 && s["imported"] == 2 && s["loops_prevented"] == 2
        });
    }
}

#[test]
fn a_task_published_centrally_for_one_host_reaches_only_that_host() {
    let nats = NatsServer::start();
    let a = agent(&nats.url(), "h1", "");
    let b = agent(&nats.url(), "h2", "");
    wait_healthy(&a);
    wait_healthy(&b);
    runtime().block_on(async {
        let ca = local(&a, "collector-a").await;
        let cb = local(&b, "collector-b").await;
        let mut on_a = ca
            .subscribe(Subscribe::new("control.collector.task.+"))
            .await
            .expect("sub");
        let mut on_b = cb
            .subscribe(Subscribe::new("control.collector.task.+"))
            .await
            .expect("sub");
        let central = async_nats::connect(nats.url()).await.expect("central");
        central
            .publish(
                "daemoneye.h1.control.collector.task.process",
                Bytes::from("only h1"),
            )
            .await
            .expect("publish");
        central.flush().await.expect("flush");
        let d = tokio::time::timeout(T, on_a.recv())
            .await
            .expect("h1 gets its task")
            .expect("open");
        assert_eq!(&d.payload[..], b"only h1");
        // Then one for all hosts: h2's first task must be that one.
        central
            .publish(
                "daemoneye.all.control.collector.task.process",
                Bytes::from("all"),
            )
            .await
            .expect("publish");
        central.flush().await.expect("flush");
        let d = tokio::time::timeout(T, on_b.recv())
            .await
            .expect("h2 gets the broadcast")
            .expect("open");
        assert_eq!(&d.payload[..], b"all", "h2 never sees h1's task");
    });
    eventually("h2 imported exactly one", T, || {
        b.bridge_status()["imported"] == 1
    });
    assert_eq!(a.bridge_status()["imported"], 2);
}

#[test]
fn qos1_exports_survive_nats_server_killed_and_restarted_mid_stream() {
    const N: usize = 600;
    let mut nats = NatsServer::start();
    let agent = agent(&nats.url(), "h1", "");
    wait_healthy(&agent);
    runtime().block_on(async {
        let client = local(&agent, "detector").await;
        for i in 0..N {
            if i == N / 3 {
                nats.kill();
                eventually("the bridge sees the outage", T, || {
                    agent.bridge_status()["state"] == "degraded"
                });
            }
            if i == 2 * N / 3 {
                // The local bus never waited for NATS: these were acknowledged while it
                // was down (the disk queue holds them).
                let s = agent.bridge_status();
                assert!(s["queued"].as_u64().unwrap_or(0) > 0, "{s}");
                nats.restart();
            }
            let started = Instant::now();
            publish(&client, "alerts.high", &format!("{i:05}"), QoS::AtLeastOnce).await;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a local publish waited {:?}",
                started.elapsed()
            );
        }
    });
    eventually("everything exported", Duration::from_secs(60), || {
        let s = agent.bridge_status();
        s["state"] == "healthy" && s["queued"] == 0
    });
    assert_eq!(agent.bridge_status()["dropped"], 0);
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        let js = async_nats::jetstream::new(central);
        let mut stream = js.get_stream("DAEMONEYE_h1").await.expect("the stream");
        let info = stream.info().await.expect("info");
        assert_eq!(
            info.state.messages, N as u64,
            "every export stored once (deduplicated by Nats-Msg-Id)"
        );
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut payloads = Vec::new();
        while payloads.len() < N {
            let m = tokio::time::timeout(T, messages.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("a message");
            payloads.push(String::from_utf8_lossy(&m.payload).into_owned());
            let _ = m.ack().await;
        }
        let expected: Vec<String> = (0..N).map(|i| format!("{i:05}")).collect();
        assert_eq!(payloads, expected, "in order, none missing, none twice");
    });
}

#[test]
fn bad_credentials_give_one_line_error_and_degraded_health_while_the_local_bus_works() {
    let nats = NatsServer::start_with(&["--auth", "right-token"]);
    let mut agent = agent(&nats.url(), "h1", "token = \"wrong-token\"");
    eventually("the bridge reports the refusal", T, || {
        let s = agent.bridge_status();
        s["state"] == "degraded"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("authorization"))
    });
    let (_, out, _) = agent.run_cli(&["health", "--json"]);
    let health: Value = serde_json::from_str(&out).expect("health JSON");
    assert_eq!(health["bridge"], "degraded", "{health}");
    let logged = agent
        .stderr
        .wait_for("authorization", T)
        .expect("the error is logged");
    assert!(
        logged.contains("bridge:"),
        "one line, from the bridge: {logged}"
    );
    runtime().block_on(async {
        let client = local(&agent, "bus").await;
        let mut sub = client
            .subscribe(Subscribe::new("alerts.#"))
            .await
            .expect("sub");
        for i in 0..100 {
            let started = Instant::now();
            publish(&client, "alerts.high", &i.to_string(), QoS::AtLeastOnce).await;
            let _ = tokio::time::timeout(T, sub.recv())
                .await
                .expect("delivered")
                .expect("open");
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    });
    eventually("the exports wait on disk", T, || {
        agent.bridge_status()["queued"] == 100
    });
    let errors = agent
        .stderr
        .seen
        .iter()
        .filter(|l| l.contains("authorization"))
        .count();
    assert!(
        errors <= 2,
        "logged once, not at every retry: {:?}",
        agent.stderr.seen
    );
    let _ = agent.terminate();
}

#[test]
fn a_server_without_jetstream_takes_qos1_exports_as_plain_publishes() {
    let nats = NatsServer::start_without_jetstream();
    let mut agent = agent(&nats.url(), "h1", "");
    wait_healthy(&agent);
    let s = agent.bridge_status();
    assert_eq!(s["mode"], "plain", "{s}");
    agent
        .stderr
        .wait_for("no JetStream", T)
        .expect("the fallback is logged");
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        let mut sub = central.subscribe("daemoneye.h1.>").await.expect("sub");
        central.flush().await.expect("flush");
        let client = local(&agent, "publisher").await;
        for i in 0..50 {
            publish(&client, "alerts.high", &i.to_string(), QoS::AtLeastOnce).await;
        }
        for i in 0..50 {
            let m = next_nats(&mut sub).await;
            assert_eq!(m.subject.as_str(), "daemoneye.h1.alerts.high");
            assert_eq!(
                String::from_utf8_lossy(&m.payload),
                i.to_string(),
                "in order"
            );
            assert_eq!(header(&m, "DaemonEye-Origin"), "h1");
        }
    });
    eventually("every export acknowledged", T, || {
        let s = agent.bridge_status();
        s["exported"] == 50 && s["queued"] == 0 && s["in_flight"] == 0
    });
}

/// Every message JetStream stream `name` holds, in order, as payload strings; checks it
/// holds exactly `n`.
async fn stored(nats: &str, name: &str, n: usize) -> Vec<String> {
    let central = async_nats::connect(nats).await.expect("central");
    let js = async_nats::jetstream::new(central);
    let mut stream = js.get_stream(name).await.expect("the stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, n as u64, "stream {name} holds {n}");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut payloads = Vec::new();
    while payloads.len() < n {
        let m = tokio::time::timeout(T, messages.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("a message");
        payloads.push(String::from_utf8_lossy(&m.payload).into_owned());
        let _ = m.ack().await;
    }
    payloads
}

#[test]
fn a_stream_overlapping_the_exports_without_covering_them_degrades_the_bridge_until_removed() {
    const N: usize = 50;
    let nats = NatsServer::start();
    // A stream on one of the subjects `alerts.#` exports to (`daemoneye.h1.alerts` and
    // `daemoneye.h1.alerts.>`), covering neither.
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        async_nats::jetstream::new(central)
            .create_stream(async_nats::jetstream::stream::Config {
                name: "NARROW".into(),
                subjects: vec!["daemoneye.h1.alerts.high".into()],
                ..Default::default()
            })
            .await
            .expect("create the overlapping stream");
    });
    let agent = agent(&nats.url(), "h1", "");
    let mut last = Value::Null;
    eventually("the bridge reports the conflict", T, || {
        last = agent.bridge_status();
        last["state"] == "degraded"
            && last["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("NARROW") && !e.contains('\n'))
    });
    assert_eq!(last["mode"], "", "no stream chosen: {last}");
    // The local bus works; the exports wait on disk.
    runtime().block_on(async {
        let client = local(&agent, "detector").await;
        let mut sub = client
            .subscribe(Subscribe::new("alerts.#"))
            .await
            .expect("sub");
        for i in 0..N {
            publish(&client, "alerts.high", &format!("{i:05}"), QoS::AtLeastOnce).await;
            let d = tokio::time::timeout(T, sub.recv())
                .await
                .expect("delivered locally")
                .expect("open");
            assert_eq!(d.payload, Bytes::from(format!("{i:05}")));
        }
    });
    eventually("the exports wait on disk", T, || {
        agent.bridge_status()["queued"] == N
    });
    let s = agent.bridge_status();
    assert_eq!(s["state"], "degraded", "{s}");
    assert_eq!(s["exported"], 0, "{s}");
    // An operator removes the stream: the bridge looks again by itself, creates its own
    // and sends what waited, in order.
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        async_nats::jetstream::new(central)
            .delete_stream("NARROW")
            .await
            .expect("delete the overlapping stream");
    });
    eventually("the bridge recovers and sends the queue", T, || {
        let s = agent.bridge_status();
        s["state"] == "healthy" && s["queued"] == 0 && s["exported"] == N
    });
    let s = agent.bridge_status();
    assert_eq!(s["mode"], "jetstream DAEMONEYE_h1", "{s}");
    assert_eq!(s["last_error"], "", "{s}");
    let payloads = runtime().block_on(stored(&nats.url(), "DAEMONEYE_h1", N));
    let expected: Vec<String> = (0..N).map(|i| format!("{i:05}")).collect();
    assert_eq!(payloads, expected, "in order, none missing, none twice");
}

/// QoS1 exports acknowledged locally while NATS is down, the agent stopped by `sig`, then
/// NATS up and the agent restarted on the same state directory: JetStream gets each once,
/// in order.
fn qos1_exports_on_disk_survive_an_agent_stopped_by(sig: Signal) {
    const N: usize = 200;
    let mut nats = NatsServer::stopped();
    let home = tempfile::tempdir().expect("tempdir");
    let socket = home.path().join("run").join("broker.sock");
    let state = home.path().join("state");
    let config = format!(
        "[agent]\nstate_dir = \"{}\"\n{}",
        state.display(),
        bridge_config(&nats.url(), "h1", "")
    );
    let start = || {
        Agent::start_at(
            &bins(),
            Some(&config),
            tempfile::tempdir().expect("tempdir"),
            socket.clone(),
        )
    };
    let mut first = start();
    eventually("the bridge sees no server", T, || {
        first.bridge_status()["state"] == "degraded"
    });
    runtime().block_on(async {
        let client = local(&first, "detector").await;
        for i in 0..N {
            // Returns with the local PubAck: the export is on disk.
            publish(&client, "alerts.high", &format!("{i:05}"), QoS::AtLeastOnce).await;
        }
    });
    // The status is a snapshot refreshed after each turn of the bridge's loop: it may lag
    // the PubAcks a moment.
    eventually("the exports counted on disk", T, || {
        first.bridge_status()["queued"] == N
    });
    assert_eq!(first.bridge_status()["exported"], 0);
    signal(&first.child, sig);
    wait_exit(&mut first.child, T).expect("the agent exits");
    drop(first);

    nats.restart();
    let second = start();
    eventually("the exports from the last run are sent", T, || {
        let s = second.bridge_status();
        s["state"] == "healthy" && s["queued"] == 0 && s["exported"] == N
    });
    assert_eq!(second.bridge_status()["dropped"], 0);
    let payloads = runtime().block_on(stored(&nats.url(), "DAEMONEYE_h1", N));
    let expected: Vec<String> = (0..N).map(|i| format!("{i:05}")).collect();
    assert_eq!(payloads, expected, "in order, none missing, none twice");
}

#[test]
fn qos1_exports_on_disk_survive_an_agent_terminated_and_restarted() {
    qos1_exports_on_disk_survive_an_agent_stopped_by(Signal::SIGTERM);
}

#[test]
fn qos1_exports_on_disk_survive_an_agent_killed_and_restarted() {
    qos1_exports_on_disk_survive_an_agent_stopped_by(Signal::SIGKILL);
}

#[test]
fn the_stream_the_bridge_creates_takes_the_configured_deduplication_window() {
    let nats = NatsServer::start();
    let window = |nats: &NatsServer| {
        runtime().block_on(async {
            let central = async_nats::connect(nats.url()).await.expect("central");
            let js = async_nats::jetstream::new(central);
            let mut stream = js.get_stream("DAEMONEYE_h1").await.expect("the stream");
            stream.info().await.expect("info").config.duplicate_window
        })
    };
    let agent1 = agent(&nats.url(), "h1", "duplicate_window = \"2h\"");
    wait_healthy(&agent1);
    assert_eq!(window(&nats), Duration::from_secs(7200));
    drop(agent1);
    // Its own stream follows a changed setting on the next connection.
    let agent2 = agent(&nats.url(), "h1", "duplicate_window = \"30m\"");
    wait_healthy(&agent2);
    assert_eq!(window(&nats), Duration::from_secs(1800));
}

#[test]
fn a_stream_with_a_short_max_age_keeps_working_with_the_window_shortened_to_it() {
    let nats = NatsServer::start();
    // This host's stream as an operator set it up, keeping a minute of exports.
    runtime().block_on(async {
        let central = async_nats::connect(nats.url()).await.expect("central");
        async_nats::jetstream::new(central)
            .create_stream(async_nats::jetstream::stream::Config {
                name: "DAEMONEYE_h1".into(),
                subjects: vec!["daemoneye.h1.alerts".into(), "daemoneye.h1.alerts.>".into()],
                max_age: Duration::from_secs(60),
                duplicate_window: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .expect("create the stream");
    });
    let agent = agent(&nats.url(), "h1", "");
    wait_healthy(&agent);
    assert_eq!(agent.bridge_status()["mode"], "jetstream DAEMONEYE_h1");
    runtime().block_on(async {
        let client = local(&agent, "publisher").await;
        publish(&client, "alerts.high", "kept", QoS::AtLeastOnce).await;
    });
    eventually("the export stored", T, || {
        agent.bridge_status()["exported"] == 1
    });
    runtime().block_on(async {
        let payloads = stored(&nats.url(), "DAEMONEYE_h1", 1).await;
        assert_eq!(payloads, vec!["kept".to_string()]);
        let central = async_nats::connect(nats.url()).await.expect("central");
        let js = async_nats::jetstream::new(central);
        let mut stream = js.get_stream("DAEMONEYE_h1").await.expect("the stream");
        let config = stream.info().await.expect("info").config.clone();
        assert_eq!(
            config.duplicate_window,
            Duration::from_secs(60),
            "the configured 10 minutes, within the stream's max age"
        );
    });
}
