//! Durable subscriptions outlive a crash of the agent (issue 11, item 15).

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

#[test]
fn a_durable_subscription_survives_a_killed_agent_and_gets_the_publish_sent_after() {
    let home = tempfile::tempdir().expect("tempdir");
    let socket = home.path().join("run").join("broker.sock");
    let state = home.path().join("state");
    let config = format!("[agent]\nstate_dir = {:?}\n", state.display().to_string());
    let args = ["orders", "--qos", "1", "--durable", "fwd"];

    let mut first = Agent::start_at(
        &bins(),
        Some(&config),
        tempfile::tempdir().expect("tempdir"),
        socket.clone(),
    );
    // The durable subscription is created, then its owner goes away.
    let sub = first.subscriber(&args);
    drop(sub);
    signal(&first.child, Signal::SIGKILL);
    wait_exit(&mut first.child, T).expect("agent killed");
    assert!(exists(&socket), "a killed agent leaves its socket behind");

    let second = Agent::start_at(
        &bins(),
        Some(&config),
        tempfile::tempdir().expect("tempdir"),
        socket.clone(),
    );
    // Published while the subscriber is still away: held for it, not "no interest".
    let mut publisher = second
        .cli(&["pub", "orders", "o-after-crash", "--qos", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pub");
    let mut back = second.subscriber(&[&args[..], &["--count", "1"]].concat());
    let lines = back.stdout.wait_count(1, T).to_vec();
    assert_eq!(lines.len(), 1, "the returning owner gets it: {lines:?}");
    assert!(lines[0].ends_with("o-after-crash"), "{lines:?}");
    let status = wait_exit(&mut publisher, T).expect("publisher gets its PubAck");
    assert!(status.success(), "delivered to the durable subscriber");
    wait_exit(&mut back.child, T).expect("sub --count 1 exits");
}
