//! The subscriber side's memory of recent sequences, per (subscription, publisher), that
//! turns the broker's at-least-once QoS1 into exactly once for the application.

use std::collections::BTreeSet;

/// Remembers recent sequences of one publisher on one subscription.
#[derive(Debug, Default)]
pub(super) struct DedupWindow {
    seen: BTreeSet<u64>,
}

impl DedupWindow {
    /// Records `seq`; returns whether it was new. Keeps at most `cap` sequences (the
    /// highest); a sequence below all of a full window counts as seen.
    pub(super) fn insert(&mut self, seq: u64, cap: usize) -> bool {
        if self.seen.len() >= cap && self.seen.first().is_some_and(|&lo| seq < lo) {
            return false;
        }
        if !self.seen.insert(seq) {
            return false;
        }
        while self.seen.len() > cap {
            self.seen.pop_first();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::DedupWindow;

    #[test]
    fn a_sequence_is_new_once() {
        let mut w = DedupWindow::default();
        assert!(w.insert(5, 4));
        assert!(!w.insert(5, 4));
        assert!(w.insert(3, 4), "out of order but unseen");
    }

    #[test]
    fn a_full_window_keeps_the_highest_and_treats_older_ones_as_seen() {
        let mut w = DedupWindow::default();
        for s in 1..=4 {
            assert!(w.insert(s, 3));
        }
        // 1 was evicted; anything below the window's lowest counts as a duplicate.
        assert!(!w.insert(1, 3));
        assert!(!w.insert(4, 3));
        assert!(w.insert(10, 3));
    }
}
