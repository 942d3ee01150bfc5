//! Alert folding: every match counted once, one raise per (key, window), nothing raised
//! or updated twice, memory bounded; and, with room for every window, exactly the alerts
//! a naive reference computes from the whole match history.

use std::collections::BTreeMap;
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::detect::fold::{FoldConfig, FoldOutput};
use daemoneye_sim::fold::{FoldLedger, SimFolder, SimOutput};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// `n` matches of `key` after `gap` ms.
    Matches { gap: u64, key: u32, n: u32 },
    /// The driver wakes `late` ms after the folder's deadline (or after `late` ms when
    /// none is set).
    Timeout { late: u64 },
    /// The agent restarts.
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..300u64, 0..12u32, 1..20u32).prop_map(|(gap, key, n)| Op::Matches { gap, key, n }),
        3 => (0..200u64).prop_map(|late| Op::Timeout { late }),
        1 => Just(Op::Flush),
    ]
}

fn at(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn drain(f: &mut SimFolder) -> Vec<SimOutput> {
    std::iter::from_fn(|| f.poll_output()).collect()
}

/// What a run gave: every output, the ledger at the end (after time ran past every
/// deadline), and the time after each op (Unix ms and virtual ms are the same here).
type Ran = (Vec<SimOutput>, FoldLedger, Vec<u64>);

/// Runs `ops`, checking the ledger's invariants after every step.
fn run(config: FoldConfig, ops: &[Op]) -> Result<Ran, TestCaseError> {
    let mut f = SimFolder::new(config);
    let mut ledger = FoldLedger::new(config);
    let mut now = 0u64;
    let mut all = Vec::new();
    let mut id = 0u64;
    let mut times = Vec::new();
    for op in ops {
        match *op {
            Op::Matches { gap, key, n } => {
                now += gap;
                for _ in 0..n {
                    f.handle_match(at(now), key, id, now);
                    id += 1;
                    let out = drain(&mut f);
                    ledger
                        .on_match(at(now), key, &out, &f)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    all.extend(out);
                }
            }
            Op::Timeout { late } => {
                let due = f
                    .poll_timeout()
                    .map_or(at(now + late), |d| d + Duration::from_millis(late));
                now = now.max(due.as_nanos() / 1_000_000);
                f.handle_timeout(at(now));
                let out = drain(&mut f);
                ledger
                    .on_timeout(at(now), false, &out, &f)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert!(f.poll_timeout().is_none_or(|d| d > at(now)));
                all.extend(out);
            }
            Op::Flush => {
                f.flush(at(now));
                let out = drain(&mut f);
                ledger
                    .on_timeout(at(now), true, &out, &f)
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(f.open_windows(), 0);
                all.extend(out);
            }
        }
        ledger
            .check(&f)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        times.push(now);
    }
    while let Some(d) = f.poll_timeout() {
        f.handle_timeout(d);
        let out = drain(&mut f);
        ledger
            .on_timeout(d, false, &out, &f)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        all.extend(out);
    }
    ledger
        .check_drained(&f)
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    Ok((all, ledger, times))
}

/// The naive reference: from the whole history, each key's matches split into windows
/// greedily (a window starts at a match and takes the key's matches before start +
/// window, unless a flush came between), at the times the run took: (key, first ms,
/// count), sorted.
fn reference(window_ms: u64, ops: &[Op], times: &[u64]) -> Vec<(u32, u64, u64)> {
    let mut open: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut done = Vec::new();
    for (op, &now) in ops.iter().zip(times) {
        match *op {
            Op::Matches { key, n, .. } => {
                for _ in 0..n {
                    match open.get_mut(&key) {
                        Some((start, count)) if now < *start + window_ms => *count += 1,
                        _ => {
                            if let Some((start, count)) = open.insert(key, (now, 1)) {
                                done.push((key, start, count));
                            }
                        }
                    }
                }
            }
            // A timeout only tells the time; the reference needs none.
            Op::Timeout { .. } => {}
            Op::Flush => {
                for (key, (start, count)) in std::mem::take(&mut open) {
                    done.push((key, start, count));
                }
            }
        }
    }
    for (key, (start, count)) in open {
        done.push((key, start, count));
    }
    done.sort_unstable();
    done
}

/// The outputs as (key, first ms, final count), sorted.
fn alerts(outputs: &[SimOutput]) -> Vec<(u32, u64, u64)> {
    let mut by_serial = BTreeMap::new();
    for o in outputs {
        match o {
            FoldOutput::Raise {
                serial,
                key,
                time_ms,
                ..
            } => {
                by_serial.insert(*serial, (*key, *time_ms, 1));
            }
            FoldOutput::Update { serial, count, .. } => {
                if let Some(a) = by_serial.get_mut(serial) {
                    a.2 = *count;
                }
            }
        }
    }
    let mut all: Vec<_> = by_serial.into_values().collect();
    all.sort_unstable();
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn counts_are_conserved_and_alerts_raised_once_under_any_bound(
        window in 1..500u64,
        max_open in 1..6usize,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let config = FoldConfig { window: Duration::from_millis(window), max_open };
        let (outputs, ledger, _) = run(config, &ops)?;
        let updates = outputs.iter().filter(|o| matches!(o, FoldOutput::Update { .. })).count();
        prop_assert!(updates <= ledger.raised());
        prop_assert_eq!(ledger.total(), ledger.matches());
    }

    #[test]
    fn with_room_for_every_window_the_alerts_are_the_references(
        window in 1..500u64,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let config = FoldConfig { window: Duration::from_millis(window), max_open: 64 };
        let (outputs, _, times) = run(config, &ops)?;
        prop_assert_eq!(alerts(&outputs), reference(window, &ops, &times));
    }
}
