//! Exec-to-alert latency on this host (Linux, as root): the real agent supervising the real
//! procmond in real time (the kernel's process connector), a Sigma rule on the command
//! line, and a subscriber on `alerts.#` through the client library. Each sample starts a
//! shell whose command line carries a unique marker and times from just before the spawn
//! (fork and exec included) to the alert's arrival; one sample at a time, paced, so each
//! measures the path rather than a queue.
//!
//! The same samples also time exec-to-event on the bus: the `events.process.new` event of
//! each shell reaching the same subscriber.
//!
//! `cargo bench -p daemoneye-io --bench exec_to_alert` prints p50, p99 and the worst;
//! `DAEMONEYE_BENCH_SAMPLES` sets the count (default 500); `DAEMONEYE_BENCH_VERBOSE=1`
//! prints each sample over 40 ms with when it happened.

use std::time::Duration;

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("exec_to_alert: Linux only");
}

#[cfg(target_os = "linux")]
fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("exec_to_alert: needs root (procmond's process connector)");
        return;
    }
    let samples: usize = std::env::var("DAEMONEYE_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (events, alerts) = linux::run(samples);
    println!("procmond real-time, {samples} commands one at a time:");
    for (what, r) in [("exec-to-event", events), ("exec-to-alert", alerts)] {
        println!(
            "  {what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, worst {:.2} ms; {} missing",
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.worst),
            r.missing
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(target_os = "linux")]
mod linux {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use daemoneye_io::client::{AckMode, Client, ClientOptions};
    use daemoneye_proto::frame::{QoS, Subscribe};
    use daemoneye_proto::pb::events::{Alert, ProcessEvent};
    use daemoneye_tests::{Agent, Bins};
    use prost::Message;

    const RULE_ID: &str = "5b1c9d7e-0000-4000-8000-00000000e2a0";

    pub struct Report {
        pub p50: Duration,
        pub p90: Duration,
        pub p99: Duration,
        pub worst: Duration,
        pub missing: usize,
    }

    /// The agent with procmond in real time and one rule on `marker`.
    fn agent(base: &std::path::Path, marker: &str) -> Agent {
        let rules = base.join("rules");
        std::fs::create_dir_all(&rules).expect("rules dir");
        std::fs::write(
            rules.join("bench.yml"),
            format!(
                "title: Bench marker\nid: {RULE_ID}\nstatus: test\nlevel: high\n\
                 logsource:\n  product: linux\n  category: process_creation\n\
                 detection:\n  sel:\n    CommandLine|contains: {marker}\n  condition: sel\n"
            ),
        )
        .expect("write rule");
        let config = format!(
            "[[collectors]]\nname = \"procmond\"\nbinary = {:?}\n\
             args = [\"--wal\", {:?}]\n\
             [detection]\nrules = [{:?}]\nenrich_level = \"none\"\n",
            env!("CARGO_BIN_EXE_procmond"),
            base.join("procmond.wal"),
            rules,
        );
        let bins = Bins {
            agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
            cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
        };
        let agent = Agent::start(&bins, Some(&config));
        agent.wait_realtime("procmond", Duration::from_secs(30));
        agent
    }

    /// Percentiles of `took`, sorted here.
    fn report(mut took: Vec<Duration>, missing: usize) -> Report {
        took.sort();
        let at = |q: f64| {
            took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Report {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            worst: took.last().copied().unwrap_or_default(),
            missing,
        }
    }

    /// Exec-to-event and exec-to-alert.
    pub fn run(samples: usize) -> (Report, Report) {
        let base = tempfile::tempdir().expect("tempdir");
        let marker = format!("E2ABENCH{}", std::process::id());
        let agent = agent(base.path(), &marker);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut took: Vec<Duration> = Vec::with_capacity(samples);
        let mut missing = 0;
        let mut event_took: Vec<Duration> = Vec::with_capacity(samples);
        let mut events_missing = 0;
        let base_start = Instant::now();
        rt.block_on(async {
            let client = Client::connect(&agent.socket, ClientOptions::new("exec-to-alert"))
                .await
                .expect("connect");
            // Each level's first alerts, not their enriched versions.
            let specs = ["alerts.high", "events.process.new"].map(|filter| Subscribe {
                qos: QoS::AtLeastOnce,
                ..Subscribe::new(filter)
            });
            let mut sub = client
                .subscribe_all(specs.to_vec(), AckMode::OnHandOver)
                .await
                .expect("subscribe");
            // A warm-up command, not counted: the first exec reads cold caches.
            for i in 0..samples + 1 {
                let tag = format!("{marker}-{i}");
                let started = Instant::now();
                let mut child = Command::new("/bin/sh")
                    .args(["-c", "sleep 0.02", &tag])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn sh");
                let deadline = started + Duration::from_secs(2);
                let mut seen = None;
                let mut event_seen = None;
                while let Ok(Some(d)) = tokio::time::timeout_at(deadline.into(), sub.recv()).await {
                    if d.topic == "events.process.new" {
                        let ours = ProcessEvent::decode(d.payload.clone())
                            .ok()
                            .and_then(|e| e.process)
                            .is_some_and(|p| p.cmdline.contains(&tag));
                        if ours {
                            event_seen = Some(started.elapsed());
                        }
                        continue;
                    }
                    let Ok(a) = Alert::decode(d.payload.clone()) else {
                        continue;
                    };
                    let ours = a
                        .event
                        .as_ref()
                        .and_then(|e| e.process.as_ref())
                        .is_some_and(|p| p.cmdline.contains(&tag));
                    if a.rule_id == RULE_ID && !a.update && ours {
                        seen = Some(started.elapsed());
                    }
                    if seen.is_some() && event_seen.is_some() {
                        break;
                    }
                }
                let _ = child.wait();
                match event_seen {
                    Some(t) if i > 0 => event_took.push(t),
                    Some(_) => {}
                    None => events_missing += 1,
                }
                match seen {
                    Some(t) if i > 0 => {
                        if std::env::var_os("DAEMONEYE_BENCH_VERBOSE").is_some()
                            && t > Duration::from_millis(40)
                        {
                            eprintln!("slow #{i}: {t:?} at {:?}", base_start.elapsed());
                        }
                        took.push(t)
                    }
                    Some(_) => {}
                    None => missing += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.close().await;
        });
        (report(event_took, events_missing), report(took, missing))
    }
}
