//! procmond under broker backpressure, end to end. In a test binary of its own: the
//! process connector is host-wide, so the bursts this test makes would reach every other
//! procmond a parallel test runs.

use std::process::Command;
use std::time::Duration;

use daemoneye_tests::{Agent, Bins, eventually, signal};

const T: Duration = Duration::from_secs(45);

/// The interval in force, as procmond's detail line in `collectors list` says it.
fn interval(agent: &Agent) -> u64 {
    let (_, out, _) = agent.run_cli(&["collectors", "list", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let detail = all
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "procmond"))
        .and_then(|c| c["detail"].as_str().map(str::to_string))
        .unwrap_or_default();
    detail
        .split("reconciling every ")
        .nth(1)
        .and_then(|r| r.split('s').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_subscriber_falling_behind_stretches_procmonds_interval_until_it_clears() {
    let state = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[broker]\nheartbeat_interval_ms = 200\n[[collectors]]\nname = \"procmond\"\nbinary = {:?}\nargs = [\"--interval\", \"5\", \"--wal\", {:?}]\n",
        env!("CARGO_BIN_EXE_procmond"),
        state.path().join("procmond.wal"),
    );
    let bins = Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    };
    let agent = Agent::start(&bins, Some(&config));
    eventually("procmond runs in real time", T, || interval(&agent) == 5);
    // A subscriber with a small queue that stops reading: once its socket is full, its
    // queue reaches 80% and the broker tells procmond to slow down (x1.5 a signal).
    let mut slow = agent.subscriber(&[
        "events.process.#",
        "--capacity",
        "10",
        "--overflow",
        "drop-newest",
    ]);
    signal(&slow.child, nix::sys::signal::Signal::SIGSTOP);
    eventually("procmond stretches its interval", T, || {
        let burst: Vec<_> = (0..200)
            .filter_map(|_| Command::new("/bin/true").spawn().ok())
            .collect();
        for mut c in burst {
            let _ = c.wait();
        }
        interval(&agent) >= 7
    });
    // The subscriber goes: after two quiet intervals in force (at most 8 x 5 s each), the
    // interval comes back.
    signal(&slow.child, nix::sys::signal::Signal::SIGKILL);
    let _ = slow.child.wait();
    eventually(
        "procmond's interval comes back to 5s",
        Duration::from_secs(2 * 8 * 5 + 30),
        || interval(&agent) == 5,
    );
}
