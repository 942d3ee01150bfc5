//! `daemoneye-sim`: run or replay deterministic simulations.
//!
//! ```sh
//! cargo run -p daemoneye-sim --release -- --seed 42            # one run
//! cargo run -p daemoneye-sim --release -- --seeds 0..10000     # a sweep
//! cargo run -p daemoneye-sim --release -- --seed 42 --verbose  # every event
//! cargo run -p daemoneye-sim --release -- --procmon --seeds 0..1000  # the process table
//! cargo run -p daemoneye-sim --release -- --enrich --seeds 0..1000   # alert enrichment
//! cargo run -p daemoneye-sim --release -- --fold --seeds 0..1000     # alert storms
//! cargo run -p daemoneye-sim --release -- --bridge --seeds 0..1000   # the NATS bridge's queue
//! ```
//!
//! The last line on stdout is `seed=N steps=S trace=<hash>` (for a sweep, of its last
//! seed); the same seed gives the same hash in any process. A failure prints the seed, the
//! invariant, the last events and the command that replays it, and exits 1.

use std::process::ExitCode;

use clap::Parser;
use daemoneye_sim::{
    BridgeSimConfig, Canary, CollectorSimConfig, EnrichSimConfig, FoldSimConfig, NetConfig,
    ProcmonConfig, SimConfig, run, run_bridge, run_collector, run_enrich, run_fold, run_net,
    run_procmon,
};

/// Deterministic simulation of the DaemonEye bus with injected faults and crashes.
#[derive(Debug, Parser)]
#[command(name = "daemoneye-sim")]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<(u64, u64)>,
    /// Steps of the safety phase per seed (layer 1), or milliseconds of virtual time with
    /// faults (layer 2, default 20000).
    #[arg(long)]
    steps: Option<u64>,
    /// 1: the core machines over fake links (fast). 2: the real io crate (broker server,
    /// client library) over turmoil's network. 3: the collector runtime's policies
    /// (batcher, pacing under backpressure) in virtual time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    layer: u8,
    /// Simulate the process collector's table over a virtual process world instead of the
    /// bus (its own invariants; `--steps` as in layer 1).
    #[arg(long, conflicts_with = "layer")]
    procmon: bool,
    /// Simulate the agent's alert enrichment (alerts, collectors' answers, deadlines)
    /// instead of the bus (its own invariants; `--steps` in virtual milliseconds).
    #[arg(long, conflicts_with_all = ["layer", "procmon", "canary"])]
    enrich: bool,
    /// Simulate alert storms against the detection engine's fold machine instead of the
    /// bus (its own invariants; `--steps` as in layer 1, default 2000).
    #[arg(long, conflicts_with_all = ["layer", "procmon", "canary"])]
    fold: bool,
    /// Simulate the NATS bridge's export queue against a fake NATS server with outages,
    /// lost and duplicated acks instead of the bus (its own invariants; `--steps` as in
    /// layer 1, default 3000).
    #[arg(long, conflicts_with_all = ["layer", "procmon", "canary", "enrich", "fold"])]
    bridge: bool,
    /// Print every event.
    #[arg(long)]
    verbose: bool,
    /// Run a deliberately broken variant, which must be caught: `early-puback` (a broker
    /// that acknowledges before delivering), `lying-sync` (a disk whose sync makes nothing
    /// durable), `duplicate-completion` (a task coordinator that completes a task again on
    /// a late duplicate result) or, with `--procmon`, `reuse-as-modified` (a process table that takes a
    /// reused pid's exec for a re-exec).
    #[arg(long, value_name = "VARIANT")]
    canary: Option<Canary>,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a: u64 = a.parse().map_err(|_| format!("bad start {a:?}"))?;
    let b: u64 = b.parse().map_err(|_| format!("bad end {b:?}"))?;
    if a >= b {
        return Err(format!("empty range {s:?}"));
    }
    Ok((a, b))
}

/// What a passing run reports: (steps, trace, a summary line for a single run).
type Passed = (u64, u64, String);

fn main() -> ExitCode {
    let args = Args::parse();
    let (start, end) = match (args.seed, args.seeds) {
        (Some(s), _) => (s, s + 1),
        (None, Some(r)) => r,
        (None, None) => (0, 1),
    };
    if args.enrich {
        return sweep(start, end, 1000, |seed| {
            let cfg = EnrichSimConfig {
                seed,
                steps: args.steps.unwrap_or(5000),
                verbose: args.verbose,
            };
            run_enrich(&cfg).map(|out| {
                let summary = format!(
                    "alerts={} published={} complete={} timed out={} full={} late={} duplicates={} crashes={}",
                    out.alerts,
                    out.published,
                    out.complete,
                    out.timed_out,
                    out.full,
                    out.late,
                    out.duplicates,
                    out.crashes
                );
                (out.steps, out.trace, summary)
            })
        });
    }
    if args.bridge {
        return sweep(start, end, 1000, |seed| {
            let cfg = BridgeSimConfig {
                seed,
                steps: args.steps.unwrap_or(3000),
                verbose: args.verbose,
            };
            run_bridge(&cfg).map(|out| {
                let summary = format!(
                    "offered={} stored={} duplicates={} dropped={} outages={} lost acks={}",
                    out.offered,
                    out.stored,
                    out.duplicates,
                    out.dropped,
                    out.outages,
                    out.lost_acks
                );
                (out.steps, out.trace, summary)
            })
        });
    }
    if args.fold {
        return sweep(start, end, 1000, |seed| {
            let cfg = FoldSimConfig {
                seed,
                steps: args.steps.unwrap_or(2000),
                verbose: args.verbose,
            };
            run_fold(&cfg).map(|out| {
                let summary = format!(
                    "matches={} raised={} updates={} evicted={} flushes={} largest burst={}",
                    out.matches,
                    out.raised,
                    out.updates,
                    out.evicted,
                    out.flushes,
                    out.largest_burst
                );
                (out.steps, out.trace, summary)
            })
        });
    }
    if args.procmon {
        let canary = match args.canary {
            None => false,
            Some(Canary::ReuseAsModified) => true,
            Some(other) => {
                eprintln!(
                    "daemoneye-sim: canary {other:?} is not part of --procmon (reuse-as-modified is)"
                );
                return ExitCode::FAILURE;
            }
        };
        return sweep(start, end, 1000, |seed| {
            let cfg = ProcmonConfig {
                seed,
                steps: args.steps.unwrap_or(5000),
                verbose: args.verbose,
                canary,
            };
            run_procmon(&cfg).map(|out| {
                let s = &out.stats;
                let summary = format!(
                    "forks={} execs={} exits={} lost={} partial reads={} reuses={}\n\
                     new={} modified={} exit={} unseen exits={} snapshot parts={} overruns={} \
                     scans={} reconciled checks={}",
                    out.forks,
                    out.execs,
                    out.exits,
                    out.lost,
                    out.partial_reads,
                    out.reuses,
                    s.new,
                    s.modified,
                    s.exits,
                    s.unseen_exits,
                    s.snapshot_parts,
                    s.overruns,
                    s.scans_completed,
                    out.reconciled_checks
                );
                (out.steps, out.trace, summary)
            })
        });
    }

    if args.layer == 3 {
        if args.canary.is_some() {
            eprintln!("daemoneye-sim: layer 3 has no canary");
            return ExitCode::FAILURE;
        }
        return sweep(start, end, 1000, |seed| {
            let cfg = CollectorSimConfig {
                seed,
                steps: args.steps.unwrap_or(5000),
                verbose: args.verbose,
            };
            run_collector(&cfg).map(|out| {
                let summary = format!(
                    "events={} batches={} signals={} max interval={}ms",
                    out.events, out.batches, out.signals, out.max_interval_ms
                );
                (out.steps, out.trace, summary)
            })
        });
    }
    if args.canary == Some(Canary::ReuseAsModified) {
        eprintln!("daemoneye-sim: canary reuse-as-modified needs --procmon");
        return ExitCode::FAILURE;
    }
    if args.layer == 2 {
        let canary = match args.canary {
            None => false,
            Some(Canary::EarlyPubAck) => true,
            Some(other) => {
                eprintln!(
                    "daemoneye-sim: canary {other:?} is not part of layer 2 (early-puback is)"
                );
                return ExitCode::FAILURE;
            }
        };
        return sweep(start, end, 10, |seed| {
            let mut cfg = NetConfig::new(seed);
            cfg.verbose = args.verbose;
            cfg.canary = canary;
            if let Some(ms) = args.steps {
                cfg.fault_time = std::time::Duration::from_millis(ms);
            }
            run_net(&cfg).map(|out| {
                let summary = format!(
                    "faults={} published={} acked={} delivered={} collectors spawned={}",
                    out.faults, out.published, out.acked, out.delivered, out.spawned
                );
                (out.steps, out.trace, summary)
            })
        });
    }
    sweep(start, end, 1000, |seed| {
        let cfg = SimConfig {
            seed,
            steps: args.steps.unwrap_or(5000),
            verbose: args.verbose,
            canary: args.canary.unwrap_or_default(),
        };
        run(&cfg).map(|out| {
            let summary = format!(
                "faults: {}\npublished={} delivered={} pubacks={}",
                out.faults, out.published, out.delivered, out.pubacks
            );
            (out.steps, out.trace, summary)
        })
    })
}

/// Runs seeds `start..end`, reporting progress every `every` seeds; stops at the first
/// failure. The last line is `seed=N steps=S trace=<hash>` of the last seed.
fn sweep(
    start: u64,
    end: u64,
    every: u64,
    run_one: impl Fn(u64) -> Result<Passed, daemoneye_sim::Violation>,
) -> ExitCode {
    let mut last = None;
    for seed in start..end {
        match run_one(seed) {
            Ok(passed) => {
                if end - start > 1 && (seed - start) % every == every - 1 {
                    eprintln!("{} seeds passed", seed - start + 1);
                }
                last = Some((seed, passed));
            }
            Err(v) => {
                println!("seed={seed} FAILED");
                println!("{v}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some((seed, (steps, trace, summary))) = last {
        if end - start > 1 {
            println!("{} seeds passed ({start}..{end})", end - start);
        } else {
            println!("{summary}");
        }
        println!("seed={seed} steps={steps} trace={trace:016x}");
    }
    ExitCode::SUCCESS
}
