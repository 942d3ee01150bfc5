//! Layer 2 in CI: the real io crate over turmoil. A fixed seed range plus one random seed
//! (printed), determinism in one process and across processes, and the canary.
//!
//! `DAEMONEYE_SIM_NET_SEEDS=N` runs more seeds.

use std::process::Command;

use daemoneye_sim::{NetConfig, run_net};

fn check(seed: u64) {
    if let Err(v) = run_net(&NetConfig::new(seed)) {
        panic!("layer 2 seed {seed} failed:\n{v}");
    }
}

#[test]
fn fixed_seed_range_keeps_every_invariant() {
    let n: u64 = daemoneye_sim::seeds_from_env("DAEMONEYE_SIM_NET_SEEDS", 30);
    for seed in 0..n {
        check(seed);
    }
}

#[test]
fn one_random_seed_keeps_every_invariant() {
    let seed = daemoneye_sim::clock_seed();
    println!(
        "random layer 2 seed {seed}; replay: cargo run -p daemoneye-sim --release -- --layer 2 --seed {seed}"
    );
    check(seed);
}

#[test]
fn runs_do_work_and_inject_faults() {
    let outs: Vec<_> = (0..10)
        .map(|seed| run_net(&NetConfig::new(seed)).expect("passes"))
        .collect();
    assert!(
        outs.iter()
            .all(|o| o.published > 0 && o.acked > 0 && o.delivered > 0)
    );
    assert!(
        outs.iter().filter(|o| o.faults > 0).count() >= 5,
        "most seeds inject faults"
    );
}

#[test]
fn same_seed_gives_the_same_trace_in_one_process() {
    for seed in [5, 17] {
        let a = run_net(&NetConfig::new(seed)).expect("passes");
        let b = run_net(&NetConfig::new(seed)).expect("passes");
        assert_eq!((a.trace, a.steps), (b.trace, b.steps), "seed {seed}");
    }
    let x = run_net(&NetConfig::new(1)).expect("passes");
    let y = run_net(&NetConfig::new(2)).expect("passes");
    assert_ne!(x.trace, y.trace);
}

#[test]
fn same_seed_gives_the_same_trace_across_processes() {
    let last_line = || {
        let out = Command::new(env!("CARGO_BIN_EXE_daemoneye-sim"))
            .args(["--layer", "2", "--seed", "9"])
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
    assert!(first.starts_with("seed=9 steps="), "{first}");
    assert_eq!(first, last_line());
    let direct = run_net(&NetConfig::new(9)).expect("passes");
    assert_eq!(
        first,
        format!("seed=9 steps={} trace={:016x}", direct.steps, direct.trace)
    );
}

#[test]
fn canary_broker_that_acks_before_delivery_is_caught() {
    let caught = (0..20).find_map(|seed| {
        run_net(&NetConfig {
            canary: true,
            ..NetConfig::new(seed)
        })
        .err()
    });
    let v = caught.expect("layer 2 must catch a broker that sends PubAck before delivery");
    assert_eq!(v.invariant, "puback-after-delivery");
    assert!(v.to_string().contains("--layer 2 --seed"));
}
