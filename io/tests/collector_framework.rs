//! The collector runtime end to end: the example collector (`io/examples/example_collector.rs`)
//! supervised by a real agent, seen through the real CLI and the client library.
//!
//! The example is built here with `cargo build --example`
//! ([`daemoneye_tests::build_example`]); it lands in the same target directory as this test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_proto::frame::{Publish, QoS, Target};
use daemoneye_proto::pb::{bus as pbb, control as pbc};
use daemoneye_tests::{Agent, Bins};
use prost::Message;

const T: Duration = Duration::from_secs(20);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

/// The example's binary, built (or found fresh) in this test's target directory.
fn example() -> PathBuf {
    daemoneye_tests::build_example(
        env!("CARGO_MANIFEST_DIR"),
        "daemoneye-io",
        "example_collector",
    )
}

fn config(example: &std::path::Path) -> String {
    format!(
        "[broker]\nheartbeat_interval_ms = 200\n\
         [[collectors]]\nname = \"loadavg\"\nbinary = {:?}\ncapabilities = [\"performance\"]\n\
         stop_timeout_ms = 5000\nauto_restart = false\n\
         env = {{ DAEMONEYE_EXAMPLE_INTERVAL_SECS = \"5\", DAEMONEYE_EXAMPLE_BURST = \"250\", \
         DAEMONEYE_EXAMPLE_WAIT_FOR_BEGIN_MONITORING = \"true\", DAEMONEYE_EXAMPLE_LOG_LEVEL = \"info\", \
         DAEMONEYE_EXAMPLE_BATCH_MAX_IDLE_MS = \"100\" }}\n",
        example.display().to_string()
    )
}

fn collector(agent: &Agent) -> serde_json::Value {
    let (status, out, err) = agent.run_cli(&["collectors", "list", "--json"]);
    assert!(status.success(), "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("json list");
    list.as_array()
        .expect("array")
        .iter()
        .find(|c| c["name"] == "loadavg")
        .cloned()
        .expect("loadavg listed")
}

fn eventually(what: &str, cond: impl FnMut() -> bool) {
    daemoneye_tests::eventually(what, T, cond);
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn the_example_collector_registers_batches_takes_config_and_tasks_and_stops_in_time() {
    let example = example();
    let agent = Agent::start(&bins(), Some(&config(&example)));

    // Registered with its capabilities, collecting, with its detail line and real counts.
    eventually("the example heartbeats its detail and counts", || {
        let c = collector(&agent);
        c["detail"].as_str().is_some_and(|d| d.contains("every 5s"))
            && c["events_published"].as_u64().is_some_and(|n| n >= 250)
    });
    let c = collector(&agent);
    assert_eq!(c["state"], "running", "{c}");
    assert_eq!(
        c["capabilities"],
        serde_json::json!(["performance", "system_wide"]),
        "{c}"
    );
    assert_eq!(c["events_dropped"], 0, "{c}");
    let (ok, table, err) = agent.run_cli(&["collectors", "list"]);
    assert!(ok.success(), "{err}");
    let row = table
        .lines()
        .find(|l| l.starts_with("loadavg"))
        .expect("row");
    assert!(row.contains("sampling /proc/loadavg every 5s"), "{table}");
    let pid = c["pid"].as_u64().expect("pid") as i32;

    // A subscriber sees a round's 250 events in batches of at most 100: every event of a
    // batch carries the batch's correlation id. (The batches' idle flush is set to 100 ms
    // above, so a loaded machine's pause in the middle of the round cannot cut it short.)
    let mut sub = agent.subscriber(&["events.performance.loadavg", "--json", "--count", "250"]);
    let lines = sub.stdout.wait_count(250, Duration::from_secs(15)).to_vec();
    assert_eq!(lines.len(), 250, "one round arrives whole");
    let mut batches: Vec<(String, usize)> = Vec::new();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        assert_eq!(v["publisher_id"], "loadavg");
        let id = v["correlation_id"].as_str().expect("batch id").to_string();
        match batches.last_mut() {
            Some((last, n)) if *last == id => *n += 1,
            _ => batches.push((id, 1)),
        }
    }
    let sizes: Vec<usize> = batches.iter().map(|b| b.1).collect();
    assert!(
        sizes.iter().all(|n| *n <= 100),
        "a batch over 100: {sizes:?}"
    );
    // The subscription may begin in the middle of a round; whatever the cut, a whole
    // round of 250 holds a full batch.
    assert!(sizes.contains(&100), "no full batch: {sizes:?}");

    // The interval changes without a restart: the source's detail line says so, same pid.
    let (status, out, err) =
        agent.run_cli(&["collectors", "config", "loadavg", "--interval", "10"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("interval 10s"), "{out}");
    eventually("the source runs at the new interval", || {
        let c = collector(&agent);
        c["detail"]
            .as_str()
            .is_some_and(|d| d.contains("every 10s"))
            && c["pid"] == pid
    });
    let (status, _, err) = agent.run_cli(&["collectors", "config", "loadavg", "--interval", "4"]);
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("5 to 3600"), "{err}");

    // Tasks: by capability (a queue group) and direct to the collector; the result comes
    // back on the reply topic with the task's correlation. HealthCheck answers with the
    // real numbers.
    tokio().block_on(async {
        let client = Client::connect(&agent.socket, ClientOptions::new("framework-test"))
            .await
            .expect("connect");
        for target in [None, Some(Target::Collector("loadavg".into()))] {
            let task = pbc::Task {
                task_id: format!("t-{}", target.is_some()),
                capability: "performance".into(),
                kind: "load".into(),
                ..Default::default()
            };
            let correlation = pbb::Correlation {
                correlation_id: format!("corr-{}", task.task_id),
                root_id: "root-1".into(),
                workflow_stage: "enrich".into(),
                ..Default::default()
            };
            let p = Publish {
                correlation: Some(Box::new(correlation.clone())),
                target,
                ..Publish::new(
                    "control.collector.task.performance",
                    Bytes::from(task.encode_to_vec()),
                    QoS::AtLeastOnce,
                )
            };
            let reply = client.request(p, T).await.expect("task answered");
            let result = pbc::TaskResult::decode(reply.payload.clone()).expect("TaskResult");
            assert!(result.ok, "{result:?}");
            assert_eq!(result.task_id, task.task_id);
            assert_eq!(result.collector_id, "loadavg");
            assert!(!result.payload.is_empty(), "the load");
            assert_eq!(reply.correlation.as_deref(), Some(&correlation));
        }
        let health = pbc::CollectorControl {
            command: Some(pbc::collector_control::Command::HealthCheck(
                pbc::HealthCheck {},
            )),
        };
        let p = Publish::new(
            "control.collector.config.loadavg",
            Bytes::from(health.encode_to_vec()),
            QoS::AtLeastOnce,
        );
        let reply = client.request(p, T).await.expect("health answered");
        let answer = pbc::TaskResult::decode(reply.payload).expect("TaskResult");
        let hb = pbc::Heartbeat::decode(answer.payload).expect("heartbeat");
        assert!(answer.ok && hb.events_published >= 250, "{hb:?}");
        assert_eq!(hb.state, pbc::HealthState::Healthy as i32);
        client.close().await;
    });

    // Stop: the runtime stops its source, flushes, deregisters and exits within 500 ms.
    let asked = Instant::now();
    let (status, _, err) = agent.run_cli(&["collectors", "stop", "loadavg"]);
    assert!(status.success(), "{err}");
    let answered = Instant::now();
    let gone = || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    };
    while !gone() && answered.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = answered.elapsed();
    assert!(gone(), "still running after 5 s");
    assert!(
        took < Duration::from_millis(500),
        "stop took {took:?} after the agent answered ({:?} in all)",
        asked.elapsed()
    );
    eventually("the agent saw a clean exit", || {
        let c = collector(&agent);
        c["state"] == "stopped"
    });
}
