//! The NATS bridge's simulation in CI: a fixed seed range plus one random seed (printed),
//! determinism, and that the runs exercise what they claim to (outages, duplicates,
//! drops).
//!
//! `DAEMONEYE_SIM_BRIDGE_SEEDS=N` runs more seeds.

use daemoneye_sim::{BridgeOutcome, BridgeSimConfig, run_bridge};

fn check(seed: u64) -> BridgeOutcome {
    match run_bridge(&BridgeSimConfig::new(seed)) {
        Ok(out) => out,
        Err(v) => panic!("bridge seed {seed} failed:\n{v}"),
    }
}

#[test]
fn fixed_seed_range_keeps_every_invariant() {
    let n: u64 = daemoneye_sim::seeds_from_env("DAEMONEYE_SIM_BRIDGE_SEEDS", 80);
    for seed in 0..n {
        check(seed);
    }
}

#[test]
fn one_random_seed_keeps_every_invariant() {
    let seed = daemoneye_sim::clock_seed();
    println!(
        "random bridge seed {seed}; replay: cargo run -p daemoneye-sim --release -- --bridge --seed {seed}"
    );
    check(seed);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    assert_eq!(check(7).trace, check(7).trace);
}

#[test]
fn runs_have_outages_duplicates_and_drops() {
    let runs: Vec<BridgeOutcome> = (0..80).map(check).collect();
    assert!(runs.iter().any(|r| r.outages > 0), "no outage");
    assert!(
        runs.iter().any(|r| r.duplicates > 0),
        "no resend deduplicated"
    );
    assert!(runs.iter().any(|r| r.dropped > 0), "no drop of the oldest");
    assert!(runs.iter().any(|r| r.lost_acks > 0), "no lost ack");
    assert!(runs.iter().all(|r| r.offered > 0), "a run without exports");
}
