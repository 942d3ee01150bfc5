//! Property tests of the collector runtime's policies: the batcher against a naive
//! reference (a list of arrival times cut by the rule as written), and the pacing machine's
//! bounds and its return to the configured interval.

use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::collector::{
    BatchConfig, Batcher, FlushReason, Pacing, PacingConfig, Pressure,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum BatchOp {
    /// Time moves on by this many ms, then the driver serves the batcher's deadline.
    Wait(u64),
    /// `n` events arrive now.
    Events(usize),
    /// The owner flushes.
    Flush,
    /// A new batch size.
    Resize(usize),
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        4 => (0u64..150).prop_map(BatchOp::Wait),
        4 => (1usize..40).prop_map(BatchOp::Events),
        1 => Just(BatchOp::Flush),
        1 => (1usize..30).prop_map(BatchOp::Resize),
    ]
}

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

/// The rule as written, on plain data: events (id, arrival) in order, cut into batches.
#[derive(Default)]
struct Reference {
    held: Vec<(u64, Instant)>,
    out: Vec<(Vec<u64>, FlushReason)>,
    /// Arrival of the last event that went out.
    previous: Option<Instant>,
    /// The held batch opened after a quiet spell of `idle`.
    quiet: bool,
}

impl Reference {
    fn event(&mut self, id: u64, now: Instant, max: usize, idle: Duration) {
        if self.held.is_empty() {
            self.quiet = self.previous.is_none_or(|p| p + idle <= now);
        }
        self.held.push((id, now));
        if self.held.len() >= max {
            self.cut(FlushReason::Full);
        }
    }
    fn tick(&mut self, now: Instant, delay: Duration, idle: Duration) {
        if self.held.first().is_some_and(|(_, at)| *at + delay <= now) {
            self.cut(FlushReason::Deadline);
        } else if self.quiet && self.held.first().is_some_and(|(_, at)| *at <= now) {
            self.cut(FlushReason::Quiet);
        } else if self.held.last().is_some_and(|(_, at)| *at + idle <= now) {
            self.cut(FlushReason::Idle);
        }
    }
    fn resize(&mut self, max: usize) {
        let over = self.held.len() >= max;
        while self.held.len() > max {
            let rest = self.held.split_off(max);
            let full = std::mem::replace(&mut self.held, rest);
            self.out
                .push((full.iter().map(|e| e.0).collect(), FlushReason::Requested));
        }
        // What was held when the bound came down goes out too (its arrival times are
        // not kept, so no deadline could be promised for a remainder).
        if over {
            self.cut(FlushReason::Requested);
        }
    }
    fn cut(&mut self, reason: FlushReason) {
        self.quiet = false;
        if let Some((_, last)) = self.held.last() {
            self.previous = Some(*last);
            let ids = self.held.drain(..).map(|e| e.0).collect();
            self.out.push((ids, reason));
        }
    }
}

proptest! {
    #[test]
    fn batches_match_the_reference_never_exceed_the_bound_and_nothing_waits_past_its_deadline(
        max in 1usize..50,
        delay_ms in 1u64..200,
        idle_ms in 1u64..300,
        ops in proptest::collection::vec(batch_op(), 1..200),
    ) {
        let delay = Duration::from_millis(delay_ms);
        let idle = Duration::from_millis(idle_ms);
        let mut max = max;
        let mut b = Batcher::new(BatchConfig { max_events: max, max_delay: delay, max_idle: idle });
        let mut r = Reference::default();
        let mut now_ms = 0u64;
        let mut next_id = 0u64;
        let mut got: Vec<(Vec<u64>, FlushReason)> = Vec::new();
        let mut sent = Vec::new();
        let mut checked = 0;
        for op in ops {
            let op_was_wait = matches!(op, BatchOp::Wait(_));
            match op {
                BatchOp::Wait(d) => {
                    // A driver wakes at the deadline, not later: go there first if it is
                    // sooner.
                    let target = now_ms + d;
                    while let Some((due, _)) = b.poll_timeout() {
                        let due_ms = due.as_nanos().div_ceil(1_000_000);
                        if due_ms > target { break; }
                        now_ms = now_ms.max(due_ms);
                        b.handle_timeout(ms(now_ms));
                        r.tick(ms(now_ms), delay, idle);
                        got.extend(std::iter::from_fn(|| b.poll_output()).map(|x| (x.items, x.reason)));
                    }
                    now_ms = target;
                    b.handle_timeout(ms(now_ms));
                    r.tick(ms(now_ms), delay, idle);
                }
                BatchOp::Events(n) => {
                    for _ in 0..n {
                        b.handle_event(ms(now_ms), next_id);
                        r.event(next_id, ms(now_ms), max, idle);
                        sent.push(next_id);
                        next_id += 1;
                    }
                }
                BatchOp::Flush => { b.flush(ms(now_ms)); r.cut(FlushReason::Requested); }
                BatchOp::Resize(m) => {
                    max = m;
                    b.set_config(ms(now_ms), BatchConfig { max_events: m, max_delay: delay, max_idle: idle });
                    r.resize(m);
                    r.tick(ms(now_ms), delay, idle);
                }
            }
            got.extend(std::iter::from_fn(|| b.poll_output()).map(|x| (x.items, x.reason)));
            // Invariants after every step: the batches of this step respect the bound in
            // force, and a full one is exactly that long.
            for (items, reason) in &got[checked..] {
                prop_assert!(!items.is_empty());
                prop_assert!(items.len() <= max, "a batch of {} over the bound {max}", items.len());
                if *reason == FlushReason::Full { prop_assert_eq!(items.len(), max); }
            }
            checked = got.len();
            if let Some(oldest) = b.oldest() {
                prop_assert!(oldest + delay > ms(now_ms), "an event held past its flush deadline");
            }
            if let Some((_, last)) = r.held.last() {
                prop_assert!(*last + idle > ms(now_ms), "a batch held after its sources went quiet");
            }
            if op_was_wait {
                prop_assert!(!r.quiet || r.held.is_empty(), "a batch opened after a quiet spell is held");
            }
            prop_assert!(b.pending() < max, "a full batch is still held");
            prop_assert_eq!(&got, &r.out);
        }
        b.flush(ms(now_ms));
        got.extend(std::iter::from_fn(|| b.poll_output()).map(|x| (x.items, x.reason)));
        let all: Vec<u64> = got.iter().flat_map(|(i, _)| i.iter().copied()).collect();
        prop_assert_eq!(all, sent, "every event goes out once, in arrival order");
    }

    #[test]
    fn the_interval_stays_within_configured_and_cap_and_returns_after_a_clear(
        interval_s in 5u64..100,
        stretch in 1u32..10,
        signals in proptest::collection::vec((0u8..6, 0u64..400), 1..100),
    ) {
        let mut p = Pacing::new(PacingConfig {
            interval: Duration::from_secs(interval_s),
            max_stretch: stretch,
            ..PacingConfig::default()
        });
        let mut now = Instant::ZERO;
        // Reference in f64 seconds.
        let mut model = interval_s as f64;
        let mut configured = interval_s as f64;
        for (kind, wait_s) in signals {
            now = now + Duration::from_secs(wait_s);
            let lapsed = p.poll_timeout().is_some_and(|(due, _)| due <= now);
            p.handle_timeout(now);
            if lapsed { model = configured; }
            match kind {
                0 | 1 => { p.handle_pressure(now, Pressure::SlowDown); model = (model * 1.5).min(configured * f64::from(stretch)); }
                2 => { p.handle_pressure(now, Pressure::Blocked); model = (model * 1.5).min(configured * f64::from(stretch)); }
                3 => {
                    p.handle_pressure(now, Pressure::None);
                    model = configured;
                    prop_assert_eq!(p.interval(), p.configured(), "back to configured after a clear");
                }
                4 => {
                    let asked = Duration::from_secs(5 + wait_s % 200);
                    p.set_interval(now, asked).expect("within bounds");
                    configured = asked.as_secs_f64();
                    model = if p.pressure() == Pressure::None { configured } else { model.clamp(configured, configured * f64::from(stretch)) };
                }
                _ => {
                    prop_assert!(p.set_interval(now, Duration::from_secs(4000)).is_err());
                    prop_assert!(p.set_interval(now, Duration::from_secs(1)).is_err());
                }
            }
            let got = p.interval();
            prop_assert!(got >= p.configured() && got <= p.cap(), "interval {got:?} outside [{:?}, {:?}]", p.configured(), p.cap());
            if p.pressure() == Pressure::None { prop_assert_eq!(got, p.configured()); }
            prop_assert!((got.as_secs_f64() - model).abs() < 1e-3 * model.max(1.0), "{got:?} vs reference {model}");
        }
        let drained: Vec<_> = std::iter::from_fn(|| p.poll_output()).collect();
        prop_assert!(drained.windows(2).all(|w| w[0] != w[1]), "a change is reported only when it is one");
    }
}
