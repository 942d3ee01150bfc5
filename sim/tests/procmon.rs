//! The process collector's simulation in CI: a fixed seed range plus one random seed
//! (printed), determinism in one process and across processes, that runs exercise what
//! they claim to, and the canary.
//!
//! `DAEMONEYE_SIM_PROCMON_SEEDS=N` runs more seeds.

use std::process::Command;

use daemoneye_sim::{ProcmonConfig, run_procmon};

fn check(seed: u64) {
    if let Err(v) = run_procmon(&ProcmonConfig::new(seed)) {
        panic!("procmon seed {seed} failed:\n{v}");
    }
}

#[test]
fn fixed_seed_range_keeps_every_invariant() {
    let n: u64 = daemoneye_sim::seeds_from_env("DAEMONEYE_SIM_PROCMON_SEEDS", 1000);
    for seed in 0..n {
        check(seed);
    }
}

#[test]
fn one_random_seed_keeps_every_invariant() {
    let seed = daemoneye_sim::clock_seed();
    println!(
        "random procmon seed {seed}; replay: cargo run -p daemoneye-sim --release -- --procmon --seed {seed}"
    );
    check(seed);
}

#[test]
fn runs_reuse_pids_lose_events_read_partially_and_reconcile() {
    let outs: Vec<_> = (0..40)
        .map(|seed| run_procmon(&ProcmonConfig::new(seed)).expect("passes"))
        .collect();
    let seeds_with =
        |f: &dyn Fn(&daemoneye_sim::ProcmonOutcome) -> bool| outs.iter().filter(|o| f(o)).count();
    assert!(seeds_with(&|o| o.reuses > 100) >= 30, "pids are reused");
    assert!(
        seeds_with(&|o| o.lost > 0 && o.stats.overruns > 0) >= 10,
        "overruns"
    );
    assert!(seeds_with(&|o| o.partial_reads > 0) >= 20, "partial reads");
    assert!(
        seeds_with(&|o| o.stats.snapshot_parts > 1) >= 3,
        "snapshots in parts"
    );
    assert!(
        seeds_with(&|o| o.stats.unseen_exits > 0) >= 30,
        "unseen exits"
    );
    assert!(seeds_with(&|o| o.stats.modified > 0) >= 30, "modifications");
    assert!(
        outs.iter().all(|o| o.reconciled_checks > 0),
        "every run ends reconciled"
    );
}

#[test]
fn same_seed_gives_the_same_trace_in_one_process() {
    for seed in [4, 11] {
        let a = run_procmon(&ProcmonConfig::new(seed)).expect("passes");
        let b = run_procmon(&ProcmonConfig::new(seed)).expect("passes");
        assert_eq!((a.trace, a.steps), (b.trace, b.steps), "seed {seed}");
    }
    let x = run_procmon(&ProcmonConfig::new(1)).expect("passes");
    let y = run_procmon(&ProcmonConfig::new(2)).expect("passes");
    assert_ne!(x.trace, y.trace, "different seeds explore different runs");
}

#[test]
fn same_seed_gives_the_same_trace_across_processes() {
    let last_line = || {
        let out = Command::new(env!("CARGO_BIN_EXE_daemoneye-sim"))
            .args(["--procmon", "--seed", "42"])
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
fn canary_table_that_takes_a_reused_pid_for_a_re_exec_is_caught() {
    let caught = (0..20)
        .filter_map(|seed| {
            run_procmon(&ProcmonConfig {
                canary: true,
                ..ProcmonConfig::new(seed)
            })
            .err()
        })
        .find(|v| v.invariant == "procmon-pid-reuse");
    let v = caught.expect("the simulation must catch a MODIFIED across a pid reuse");
    assert!(
        v.to_string()
            .contains("replay: cargo run -p daemoneye-sim --release -- --procmon --seed")
    );
}
