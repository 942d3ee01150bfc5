//! A complete collector on the collector runtime: it samples `/proc/loadavg` every
//! interval (`DAEMONEYE_EXAMPLE_INTERVAL_SECS`, changed live by `daemoneye-cli collectors
//! config NAME --interval S`) and publishes `DAEMONEYE_EXAMPLE_BURST` events per round on
//! `events.performance.loadavg`, which the runtime batches, logs and publishes; it also
//! answers `performance` tasks with the current load (kind `sleep`: after sleeping the
//! number of milliseconds in the payload, a slow task for tests). Registration, heartbeats, batching,
//! the WAL, backpressure, control messages and shutdown are the runtime's.
//!
//! Run it under the agent with a `[[collectors]]` entry whose `binary` is this example.

use daemoneye_io::collector::{
    BoxFuture, Collector, EventSource, SourceCaps, SourceContext, SourceError, TaskOutcome,
};
use daemoneye_proto::pb::control::Task;

struct LoadAverage {
    burst: u64,
}

fn read_load() -> Result<String, SourceError> {
    let text = std::fs::read_to_string("/proc/loadavg").map_err(SourceError::new)?;
    Ok(text.trim().to_string())
}

impl EventSource for LoadAverage {
    fn name(&self) -> &str {
        "loadavg"
    }

    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PERFORMANCE | SourceCaps::SYSTEM_WIDE
    }

    fn task_capabilities(&self) -> SourceCaps {
        SourceCaps::PERFORMANCE
    }

    fn start(&self, mut ctx: SourceContext) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async move {
            let mut next = tokio::time::Instant::now();
            for round in 0u64.. {
                let interval = ctx.config.borrow_and_update().interval;
                let detail = format!("sampling /proc/loadavg every {}s", interval.as_secs());
                ctx.status.set_detail(detail);
                tokio::select! {
                    _ = ctx.shutdown.wait() => return Ok(()),
                    // A new interval applies to the wait in progress.
                    _ = ctx.config.changed() => continue,
                    _ = tokio::time::sleep_until(next) => {}
                }
                let load = read_load()?;
                for i in 0..self.burst {
                    let line = format!("round={round} sample={i} load={load}");
                    let _ = ctx
                        .events
                        .send("events.performance.loadavg", line.into())
                        .await;
                }
                next = tokio::time::Instant::now() + interval;
            }
            Ok(())
        })
    }

    fn handle_task(&self, task: Task) -> BoxFuture<'_, TaskOutcome> {
        Box::pin(async move {
            if task.kind == "sleep" {
                let Some(ms) = std::str::from_utf8(&task.payload)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                else {
                    return TaskOutcome::failed("a sleep task's payload is milliseconds");
                };
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            match read_load() {
                Ok(load) => TaskOutcome {
                    ok: true,
                    message: format!("task {}", task.task_id),
                    payload: load.into(),
                },
                Err(e) => TaskOutcome::failed(e.to_string()),
            }
        })
    }
}

fn main() -> std::process::ExitCode {
    let burst = std::env::var("DAEMONEYE_EXAMPLE_BURST")
        .ok()
        .and_then(|b| b.parse().ok());
    Collector::builder("example")
        .collector_type("performance")
        .allow_env(&["BURST"])
        .source(LoadAverage {
            burst: burst.unwrap_or(1),
        })
        .main()
}
