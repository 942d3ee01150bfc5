//! The alert-storm simulation in CI: a fixed seed range plus one random seed (printed),
//! determinism, and that the runs exercise what they claim to (storms, eviction,
//! restarts, folding).
//!
//! `DAEMONEYE_SIM_FOLD_SEEDS=N` runs more seeds.

use std::process::Command;

use daemoneye_sim::{FoldOutcome, FoldSimConfig, run_fold};

fn check(seed: u64) -> FoldOutcome {
    match run_fold(&FoldSimConfig::new(seed)) {
        Ok(out) => out,
        Err(v) => panic!("fold seed {seed} failed:\n{v}"),
    }
}

#[test]
fn fixed_seed_range_keeps_every_invariant() {
    let n: u64 = daemoneye_sim::seeds_from_env("DAEMONEYE_SIM_FOLD_SEEDS", 200);
    for seed in 0..n {
        check(seed);
    }
}

#[test]
fn one_random_seed_keeps_every_invariant() {
    let seed = daemoneye_sim::clock_seed();
    println!(
        "random fold seed {seed}; replay: cargo run -p daemoneye-sim --release -- --fold --seed {seed}"
    );
    check(seed);
}

#[test]
fn runs_storm_fold_evict_and_restart() {
    let outs: Vec<FoldOutcome> = (0..60).map(check).collect();
    let seeds_with = |f: &dyn Fn(&FoldOutcome) -> bool| outs.iter().filter(|o| f(o)).count();
    assert!(
        seeds_with(&|o| o.largest_burst >= 1000) >= 10,
        "storms of a thousand matches at one instant"
    );
    assert!(
        seeds_with(&|o| o.matches > 10 * o.raised) >= 8,
        "storms fold tenfold"
    );
    assert!(seeds_with(&|o| o.evicted > 0) >= 20, "eviction");
    assert!(seeds_with(&|o| o.flushes > 0) >= 5, "restarts");
    assert!(seeds_with(&|o| o.updates > 0) >= 40, "updates");
}

#[test]
fn same_seed_gives_the_same_trace_across_processes() {
    let last_line = || {
        let out = Command::new(env!("CARGO_BIN_EXE_daemoneye-sim"))
            .args(["--fold", "--seed", "42"])
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
    let a = check(7);
    let b = check(7);
    assert_eq!((a.trace, a.steps), (b.trace, b.steps));
    assert_ne!(
        check(8).trace,
        a.trace,
        "different seeds explore different runs"
    );
}
