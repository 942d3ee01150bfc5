//! A queue group: subscriptions that share one stream of messages, each message going to
//! one member, picked by the group's strategy (DESIGN.md section 6).
//!
//! The group owns its members and its round-robin position; the broker tells it how loaded
//! each member is ([`MemberLoad`]) and records the member it actually served
//! ([`QueueGroup::served`]), so that a pick the broker gives up on (a stalled publish) does
//! not move the rotation. A new strategy is one more arm in [`QueueGroup::pick`].

use std::collections::BTreeSet;

use daemoneye_proto::frame::QueueStrategy;

use crate::rng::SeededRng;

/// How loaded a member's queue is, as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberLoad {
    /// Copies queued and handed out unacknowledged.
    pub occupancy: usize,
    /// At capacity: a pick skips it while another member has room.
    pub full: bool,
}

/// One queue group.
#[derive(Debug)]
pub(crate) struct QueueGroup {
    strategy: QueueStrategy,
    /// Key of the member that got the last message (round robin continues after it).
    last: u64,
    members: BTreeSet<u64>,
}

impl QueueGroup {
    /// An empty group that hands out messages by `strategy`.
    pub fn new(strategy: QueueStrategy) -> Self {
        Self {
            strategy,
            last: 0,
            members: BTreeSet::new(),
        }
    }

    /// The strategy the group was created with (its first member's).
    pub fn strategy(&self) -> QueueStrategy {
        self.strategy
    }

    /// Adds a member (by subscription key).
    pub fn join(&mut self, key: u64) {
        self.members.insert(key);
    }

    /// Removes a member; returns whether the group is now empty (and should go).
    pub fn leave(&mut self, key: u64) -> bool {
        self.members.remove(&key);
        self.members.is_empty()
    }

    /// `key` got a message: round robin continues after it.
    pub fn served(&mut self, key: u64) {
        self.last = key;
    }

    /// The member that gets the next message among `matched` (subscription keys that
    /// matched the message, in the index's order; keys of other groups or of no group are
    /// ignored), or `None` when no member matched. Members that are full are passed over
    /// while another has room; when all are full, the strategy's plain choice is returned
    /// and that member's overflow strategy decides.
    ///
    /// - round robin: the first member after the last one served, in `matched` order among
    ///   keys above it, then from the start;
    /// - least loaded: the lowest occupancy, ties to the lowest key (a full member is the
    ///   most loaded, so it is chosen only when all are);
    /// - random: uniform over the members with room, drawn from the broker's seeded `rng`.
    pub fn pick(
        &self,
        matched: &[u64],
        load: impl Fn(u64) -> MemberLoad,
        rng: &mut SeededRng,
    ) -> Option<u64> {
        // Round robin and least loaded walk the candidates in place: this runs for every
        // publish a group gets, so it allocates nothing.
        let candidates = || matched.iter().copied().filter(|k| self.members.contains(k));
        let has_room = |k: &u64| !load(*k).full;
        let chosen = match self.strategy {
            QueueStrategy::RoundRobin => {
                // The order is the candidates after the last served, then the others; the
                // first with room, else the first in that order.
                let mut first = None;
                for after in [true, false] {
                    for k in candidates().filter(|k| (*k > self.last) == after) {
                        first.get_or_insert(k);
                        if has_room(&k) {
                            return Some(k);
                        }
                    }
                }
                first?
            }
            QueueStrategy::LeastLoaded => candidates().min_by_key(|k| (load(*k).occupancy, *k))?,
            QueueStrategy::Random => {
                let candidates: Vec<u64> = candidates().collect();
                if candidates.is_empty() {
                    return None;
                }
                let roomy: Vec<u64> = candidates.iter().copied().filter(has_room).collect();
                let pool = if roomy.is_empty() {
                    &candidates
                } else {
                    &roomy
                };
                pool[rng.below(pool.len() as u64) as usize]
            }
        };
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn group(strategy: QueueStrategy, members: &[u64]) -> QueueGroup {
        let mut g = QueueGroup::new(strategy);
        for &k in members {
            g.join(k);
        }
        g
    }

    /// Loads by key: (occupancy, full); missing keys are empty.
    fn loads(of: &[(u64, usize, bool)]) -> impl Fn(u64) -> MemberLoad {
        let map: BTreeMap<u64, MemberLoad> = of
            .iter()
            .map(|&(k, occupancy, full)| (k, MemberLoad { occupancy, full }))
            .collect();
        move |k| {
            map.get(&k).copied().unwrap_or(MemberLoad {
                occupancy: 0,
                full: false,
            })
        }
    }

    /// Picks `n` times, recording each pick as served.
    fn picks(g: &mut QueueGroup, matched: &[u64], n: usize, rng: &mut SeededRng) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let k = g.pick(matched, loads(&[]), rng).expect("a member");
                g.served(k);
                k
            })
            .collect()
    }

    #[test]
    fn round_robin_cycles_through_the_members_in_order() {
        let mut g = group(QueueStrategy::RoundRobin, &[3, 5, 9]);
        let mut rng = SeededRng::new(1);
        assert_eq!(
            picks(&mut g, &[3, 5, 9], 7, &mut rng),
            [3, 5, 9, 3, 5, 9, 3]
        );
    }

    #[test]
    fn round_robin_skips_full_members_and_falls_back_to_the_next_when_all_are_full() {
        let mut g = group(QueueStrategy::RoundRobin, &[1, 2, 3]);
        let mut rng = SeededRng::new(1);
        g.served(1);
        let two_full = loads(&[(2, 4, true)]);
        assert_eq!(g.pick(&[1, 2, 3], &two_full, &mut rng), Some(3));
        let all_full = loads(&[(1, 4, true), (2, 4, true), (3, 4, true)]);
        assert_eq!(g.pick(&[1, 2, 3], &all_full, &mut rng), Some(2));
    }

    #[test]
    fn a_pick_that_is_not_served_does_not_move_the_rotation() {
        let g = group(QueueStrategy::RoundRobin, &[1, 2]);
        let mut rng = SeededRng::new(1);
        assert_eq!(g.pick(&[1, 2], loads(&[]), &mut rng), Some(1));
        assert_eq!(g.pick(&[1, 2], loads(&[]), &mut rng), Some(1));
    }

    #[test]
    fn least_loaded_picks_the_lowest_occupancy_ties_to_the_lowest_key() {
        let g = group(QueueStrategy::LeastLoaded, &[1, 2, 3]);
        let mut rng = SeededRng::new(1);
        let l = loads(&[(1, 5, false), (2, 2, false), (3, 2, false)]);
        assert_eq!(g.pick(&[1, 2, 3], &l, &mut rng), Some(2));
        let l = loads(&[(1, 5, false), (2, 9, true), (3, 6, false)]);
        assert_eq!(g.pick(&[3, 2, 1], &l, &mut rng), Some(1));
    }

    #[test]
    fn random_is_seeded_uses_every_member_and_skips_full_ones() {
        let members = [1, 2, 3, 4];
        let mut g = group(QueueStrategy::Random, &members);
        let a = picks(&mut g, &members, 200, &mut SeededRng::new(7));
        let b = picks(&mut g, &members, 200, &mut SeededRng::new(7));
        assert_eq!(a, b, "the same seed picks the same members");
        for k in members {
            assert!(a.contains(&k), "member {k} never picked");
        }
        let mut rng = SeededRng::new(7);
        let full = loads(&[(1, 1, true), (2, 1, true), (4, 1, true)]);
        for _ in 0..50 {
            assert_eq!(g.pick(&members, &full, &mut rng), Some(3));
        }
        let all_full = loads(&[(1, 1, true), (2, 1, true), (3, 1, true), (4, 1, true)]);
        assert!(g.pick(&members, &all_full, &mut rng).is_some());
    }

    #[test]
    fn keys_that_are_not_members_are_never_picked() {
        let mut g = group(QueueStrategy::RoundRobin, &[2]);
        let mut rng = SeededRng::new(1);
        assert_eq!(g.pick(&[1, 3], loads(&[]), &mut rng), None);
        assert_eq!(picks(&mut g, &[1, 2, 3], 3, &mut rng), [2, 2, 2]);
        assert!(!g.leave(7));
        assert!(g.leave(2), "the last member leaving empties the group");
        assert_eq!(g.pick(&[2], loads(&[]), &mut rng), None);
    }
}
