//! The enrichment simulation in CI: a fixed seed range plus one random seed (printed),
//! determinism, and that runs exercise what they claim to (timeouts, late and duplicate
//! answers, the pending bound, crashes).
//!
//! `DAEMONEYE_SIM_ENRICH_SEEDS=N` runs more seeds.

use daemoneye_sim::{EnrichSimConfig, run_enrich};

fn check(seed: u64) {
    if let Err(v) = run_enrich(&EnrichSimConfig::new(seed)) {
        panic!("enrich seed {seed} failed:\n{v}");
    }
}

#[test]
fn fixed_seed_range_keeps_every_invariant() {
    let n: u64 = daemoneye_sim::seeds_from_env("DAEMONEYE_SIM_ENRICH_SEEDS", 500);
    for seed in 0..n {
        check(seed);
    }
}

#[test]
fn one_random_seed_keeps_every_invariant() {
    let seed = daemoneye_sim::clock_seed();
    println!(
        "random enrich seed {seed}; replay: cargo run -p daemoneye-sim --release -- --enrich --seed {seed}"
    );
    check(seed);
}

#[test]
fn runs_time_out_drop_late_and_duplicate_answers_fill_up_and_crash() {
    let outs: Vec<_> = (0..40)
        .map(|seed| run_enrich(&EnrichSimConfig::new(seed)).expect("passes"))
        .collect();
    let seeds_with =
        |f: &dyn Fn(&daemoneye_sim::EnrichOutcome) -> bool| outs.iter().filter(|o| f(o)).count();
    assert!(
        seeds_with(&|o| o.published > 10) >= 30,
        "alerts are enriched"
    );
    assert!(
        seeds_with(&|o| o.complete > 0) >= 30,
        "complete enrichments"
    );
    assert!(seeds_with(&|o| o.timed_out > 0) >= 30, "deadlines pass");
    assert!(seeds_with(&|o| o.late > 0) >= 20, "late answers");
    assert!(seeds_with(&|o| o.duplicates > 0) >= 10, "duplicate answers");
    assert!(seeds_with(&|o| o.full > 0) >= 5, "the pending bound");
    assert!(seeds_with(&|o| o.crashes > 0) >= 5, "collector crashes");
}

#[test]
fn same_seed_gives_the_same_trace() {
    for seed in [3, 17] {
        let a = run_enrich(&EnrichSimConfig::new(seed)).expect("passes");
        let b = run_enrich(&EnrichSimConfig::new(seed)).expect("passes");
        assert_eq!((a.trace, a.steps), (b.trace, b.steps), "seed {seed}");
    }
    let x = run_enrich(&EnrichSimConfig::new(1)).expect("passes");
    let y = run_enrich(&EnrichSimConfig::new(2)).expect("passes");
    assert_ne!(x.trace, y.trace, "different seeds explore different runs");
}
