//! The simulation in CI: a fixed seed range plus one random seed (printed), the determinism
//! of traces in one process and across processes, and the canary.
//!
//! `DAEMONEYE_SIM_SEEDS=N` runs more seeds.

use std::process::Command;

use daemoneye_sim::{Canary, SimConfig, run};

const STEPS: u64 = 5000;

fn config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        steps: STEPS,
        verbose: false,
        canary: Canary::None,
    }
}

fn check(seed: u64) {
    if let Err(v) = run(&config(seed)) {
        panic!("seed {seed} failed:\n{v}");
    }
}

#[test]
fn fixed_seed_range_keeps_every_invariant() {
    let n: u64 = daemoneye_sim::seeds_from_env("DAEMONEYE_SIM_SEEDS", 1000);
    for seed in 0..n {
        check(seed);
    }
}

#[test]
fn one_random_seed_keeps_every_invariant() {
    let seed = daemoneye_sim::clock_seed();
    println!("random seed {seed}; replay: cargo run -p daemoneye-sim --release -- --seed {seed}");
    check(seed);
}

#[test]
fn same_seed_gives_the_same_trace_in_one_process() {
    for seed in [3, 77, 1234] {
        let a = run(&config(seed)).expect("passes");
        let b = run(&config(seed)).expect("passes");
        assert_eq!((a.trace, a.steps), (b.trace, b.steps), "seed {seed}");
    }
    let x = run(&config(1)).expect("passes");
    let y = run(&config(2)).expect("passes");
    assert_ne!(x.trace, y.trace, "different seeds explore different runs");
}

#[test]
fn same_seed_gives_the_same_trace_across_processes() {
    let last_line = || {
        let out = Command::new(env!("CARGO_BIN_EXE_daemoneye-sim"))
            .args(["--seed", "42", "--steps", "2000"])
            .output()
            .expect("run daemoneye-sim");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let first = last_line();
    assert!(
        first.starts_with("seed=42 steps=") && first.contains(" trace="),
        "{first}"
    );
    assert_eq!(first, last_line());
}

#[test]
fn canary_broker_that_acks_before_delivery_is_caught() {
    let caught = (0..20)
        .filter_map(|seed| {
            run(&SimConfig {
                canary: Canary::EarlyPubAck,
                ..config(seed)
            })
            .err()
        })
        .find(|v| v.invariant == "puback-after-delivery");
    let v = caught.expect("the simulation must catch a broker that sends PubAck before delivery");
    assert!(
        v.to_string()
            .contains("replay: cargo run -p daemoneye-sim --release -- --seed")
    );
}

#[test]
fn canary_disk_whose_sync_lies_is_caught() {
    let caught = (0..100)
        .filter_map(|seed| {
            run(&SimConfig {
                canary: Canary::LyingSync,
                ..config(seed)
            })
            .err()
        })
        // Either an accepted record is missing from the replay, or one that was lost after
        // its PubAck lets the restarted collector hand its sequence to a new event.
        .find(|v| v.invariant == "wal-accepted-lost" || v.invariant == "sequence-reuse");
    assert!(
        caught.is_some(),
        "the simulation must catch a WAL that counts unsynced records as accepted"
    );
}

#[test]
fn canary_coordinator_that_completes_a_late_duplicate_is_caught() {
    let caught = (0..20)
        .filter_map(|seed| {
            run(&SimConfig {
                canary: Canary::DuplicateCompletion,
                ..config(seed)
            })
            .err()
        })
        .find(|v| v.invariant == "task-ends-once");
    assert!(
        caught.is_some(),
        "the simulation must catch a coordinator that completes a task twice"
    );
}
