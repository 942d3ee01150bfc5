//! Every fault both simulations inject, in one place: the [`Fault`] type, how each layer
//! samples faults from its seed, and what injecting and healing one does in each layer.
//!
//! To add a fault: a variant of [`Fault`] (saying which layers it applies to), a draw in
//! [`FaultRates::inject_step`] and/or [`NetFaultRates::inject_step`] (after the existing
//! draws, or every trace changes), and its arm in both [`FaultLayer`] impls below.

#[cfg(test)]
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use daemoneye_core::rng::SeededRng;

use crate::layer1::World;
use crate::layer2::{COLLECTORS, DRIVER_HOSTS, Driver};
use crate::link::{LinkConfig, chance};

/// Who a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The broker (layer 2: the agent's host, with its broker and process manager).
    Broker,
    /// A client of the broker: layer 1's client `i`; layer 2's host `i` in the host list
    /// (publishers, subscribers, then the supervised collectors; 0 is the broker).
    Client(usize),
}

/// A fault. The variant order is the order layer 2 heals faults due at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A process dies. Both layers. `restart_after: None`: its supervisor decides when it
    /// comes back (layer 1's clients, layer 2's collectors); `Some(d)`: it is restarted
    /// after `d` (layer 1's broker at once, layer 2's other hosts after a while). Layer 1: a
    /// crashed client's WAL keeps its synced prefix and a torn tail; a crashed broker takes
    /// the agent with it and every link resets. Layer 2: the agent's collectors die with it.
    Crash {
        /// Who.
        target: Target,
        /// When the driver restarts it, if the driver does.
        restart_after: Option<Duration>,
    },
    /// Layer 2 only: the link between `target` and the broker drops every segment for
    /// `duration`, then is repaired.
    Partition {
        /// Whose link.
        target: Target,
        /// How long.
        duration: Duration,
    },
    /// Bytes towards `target` stop moving for `duration`, then flow again. Layer 1: the
    /// client end of its link stalls. Layer 2: turmoil holds the host's link to the broker.
    Stall {
        /// Whose link.
        target: Target,
        /// How long.
        duration: Duration,
    },
    /// Layer 1 only: the connection resets; both ends see it die, and the client
    /// reconnects after a random delay.
    Reset {
        /// Whose connection.
        target: Target,
    },
}

/// A layer faults are injected into.
pub(crate) trait FaultLayer {
    /// Carries out `fault`; false when it did not apply (its target was already down).
    fn inject(&mut self, fault: Fault) -> bool;
    /// Undoes `fault` (a fault that heals on its own, such as a crash, needs nothing).
    fn heal(&mut self, fault: Fault);
}

// ----- layer 1: the core machines over fake links -----

/// Layer 1's fault rates, chosen per seed (swarm testing): each run stresses a different
/// mix.
#[derive(Debug, Clone)]
pub struct FaultRates {
    /// Probability that a read delivers only part of what is buffered.
    pub partial: f64,
    /// Per-step probability that a link's reader stalls for a while.
    pub stall: f64,
    /// Per-step probability that a link resets.
    pub reset: f64,
    /// Probability that a chunk sent to the broker has one bit flipped (see
    /// [`LinkConfig::corrupt`]). The corrupting client is then dropped.
    pub corrupt: f64,
    /// Per-step probability that the broker crashes.
    pub broker_crash: f64,
    /// Per-step probability that a client crashes.
    pub client_crash: f64,
    /// Probability that a crash leaves garbage after the surviving part of a WAL.
    pub wal_garbage: f64,
    /// Bytes a link buffers towards a client.
    pub link_capacity: usize,
}

impl FaultRates {
    /// The rates of a run: the first draws of its seed.
    pub(crate) fn swarm(rng: &mut SeededRng) -> Self {
        let pick = |rng: &mut SeededRng, options: &[f64]| {
            options[rng.below(options.len() as u64) as usize]
        };
        FaultRates {
            partial: pick(rng, &[0.0, 0.3, 0.9]),
            stall: pick(rng, &[0.0, 0.005, 0.02]),
            reset: pick(rng, &[0.0, 0.001, 0.005]),
            corrupt: pick(rng, &[0.0, 0.0, 0.001]),
            broker_crash: pick(rng, &[0.0, 0.0, 0.0005]),
            client_crash: pick(rng, &[0.0, 0.0005, 0.002]),
            wal_garbage: pick(rng, &[0.0, 0.3]),
            link_capacity: [512, 4096, 65536][rng.below(3) as usize],
        }
    }

    /// How a new link misbehaves.
    pub(crate) fn link_config(&self) -> LinkConfig {
        LinkConfig {
            partial: self.partial,
            corrupt: self.corrupt,
            capacity: self.link_capacity,
        }
    }

    /// The faults of one step at client `client`: each is drawn and injected before the
    /// next is drawn (injecting draws from the same stream, so this order is part of every
    /// trace).
    pub(crate) fn inject_step(&self, world: &mut World, client: usize) {
        let target = Target::Client(client);
        if chance(world.rng(), self.stall) {
            let duration = Duration::from_millis(world.rng().below(2000));
            world.inject(Fault::Stall { target, duration });
        }
        if chance(world.rng(), self.reset) {
            world.inject(Fault::Reset { target });
        }
        if chance(world.rng(), self.client_crash) {
            world.inject(Fault::Crash {
                target,
                restart_after: None,
            });
        }
        if chance(world.rng(), self.broker_crash) {
            world.inject(Fault::Crash {
                target: Target::Broker,
                restart_after: Some(Duration::ZERO),
            });
        }
    }
}

impl fmt::Display for FaultRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partial={} stall={} reset={} corrupt={} broker_crash={} client_crash={} wal_garbage={} link_capacity={}",
            self.partial,
            self.stall,
            self.reset,
            self.corrupt,
            self.broker_crash,
            self.client_crash,
            self.wal_garbage,
            self.link_capacity
        )
    }
}

impl FaultLayer for World {
    fn inject(&mut self, fault: Fault) -> bool {
        match fault {
            Fault::Stall {
                target: Target::Client(i),
                duration,
            } => {
                let now = self.now();
                self.link_mut(i).stall(now, duration);
                self.log(format!("stall c{i}"));
            }
            Fault::Reset {
                target: Target::Client(i),
            } => self.reset(i, "link reset"),
            Fault::Crash {
                target: Target::Client(i),
                ..
            } => self.crash_client(i),
            Fault::Crash {
                target: Target::Broker,
                ..
            } => self.crash_broker(),
            Fault::Partition { .. }
            | Fault::Stall {
                target: Target::Broker,
                ..
            }
            | Fault::Reset {
                target: Target::Broker,
            } => return false,
        }
        true
    }

    fn heal(&mut self, fault: Fault) {
        if let Fault::Stall {
            target: Target::Client(i),
            ..
        } = fault
        {
            self.link_mut(i).heal_stall();
        }
    }
}

// ----- layer 2: the real io crate over turmoil -----

/// Layer 2's fault rates, chosen per seed.
#[derive(Debug, Clone)]
pub(crate) struct NetFaultRates {
    /// Per-millisecond probability of a crash, drawn twice: a collector, then another host.
    pub(crate) crash: f64,
    /// Per-millisecond probability that a host's link is partitioned or held.
    pub(crate) link: f64,
}

impl NetFaultRates {
    pub(crate) fn swarm(rng: &mut SeededRng) -> Self {
        NetFaultRates {
            crash: [0.0, 0.0002, 0.001][rng.below(3) as usize],
            link: [0.0, 0.0005, 0.002][rng.below(3) as usize],
        }
    }

    /// The faults of one millisecond, each drawn and injected in turn. Returns how many
    /// took effect.
    pub(crate) fn inject_step(&self, driver: &mut Driver<'_>) -> u64 {
        let mut injected = 0;
        if chance(driver.rng(), self.crash) {
            // A supervised collector dies; its supervisor decides what happens next.
            let k = driver.rng().below(COLLECTORS.len() as u64) as usize;
            let fault = Fault::Crash {
                target: Target::Client(driver.collector_host(k)),
                restart_after: None,
            };
            injected += u64::from(driver.inject(fault));
        }
        if chance(driver.rng(), self.crash) {
            let h = driver.rng().below(DRIVER_HOSTS as u64) as usize;
            if !driver.is_down(h) {
                let restart_after = Duration::from_millis(50 + driver.rng().below(2000));
                let target = if h == 0 {
                    Target::Broker
                } else {
                    Target::Client(h)
                };
                let fault = Fault::Crash {
                    target,
                    restart_after: Some(restart_after),
                };
                injected += u64::from(driver.inject(fault));
            }
        }
        if chance(driver.rng(), self.link) {
            let hosts = driver.hosts() as u64;
            let h = 1 + driver.rng().below(hosts - 1) as usize;
            if !driver.is_cut(h) {
                let target = Target::Client(h);
                let fault = if driver.rng().below(2) == 0 {
                    // turmoil drops the segments of a partitioned TCP stream without
                    // resetting it, a gap inside a connection that a local socket can never
                    // have. A partition therefore lasts past the broker's idle timeout
                    // (three heartbeats), so that both ends have given the connection up by
                    // the time the link heals.
                    let duration = Duration::from_millis(4000 + driver.rng().below(4000));
                    Fault::Partition { target, duration }
                } else {
                    let duration = Duration::from_millis(10 + driver.rng().below(3000));
                    Fault::Stall { target, duration }
                };
                injected += u64::from(driver.inject(fault));
            }
        }
        injected
    }
}

/// Layer 2's host index of a target.
fn host(target: Target) -> usize {
    match target {
        Target::Broker => 0,
        Target::Client(h) => h,
    }
}

impl FaultLayer for Driver<'_> {
    fn inject(&mut self, fault: Fault) -> bool {
        match fault {
            Fault::Crash {
                target,
                restart_after: None,
            } => self.kill_supervised(host(target)),
            Fault::Crash {
                target,
                restart_after: Some(after),
            } => {
                let h = host(target);
                if h == 0 {
                    self.agent_died();
                }
                self.sim.crash(self.names[h].as_str());
                self.injected.down.insert(h);
                self.schedule_heal(after, fault);
                self.log(format!("crash {}", self.names[h]));
                true
            }
            Fault::Partition { target, duration } => {
                let h = host(target);
                self.injected.cut.insert(h);
                self.sim.partition(self.names[h].as_str(), "broker");
                self.schedule_heal(duration, fault);
                self.log(format!("partition {}", self.names[h]));
                true
            }
            Fault::Stall { target, duration } => {
                let h = host(target);
                self.injected.cut.insert(h);
                self.sim.hold(self.names[h].as_str(), "broker");
                self.schedule_heal(duration, fault);
                self.log(format!("hold {}", self.names[h]));
                true
            }
            Fault::Reset { .. } => false,
        }
    }

    fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::Crash {
                target,
                restart_after: Some(_),
            } => {
                let h = host(target);
                self.sim.bounce(self.names[h].as_str());
                self.injected.down.remove(&h);
                self.log(format!("bounce {}", self.names[h]));
            }
            Fault::Partition { target, .. } => {
                let h = host(target);
                self.sim.repair(self.names[h].as_str(), "broker");
                self.injected.cut.remove(&h);
                self.log(format!("repair {}", self.names[h]));
            }
            Fault::Stall { target, .. } => {
                let h = host(target);
                self.sim.release(self.names[h].as_str(), "broker");
                self.injected.cut.remove(&h);
                self.log(format!("release {}", self.names[h]));
            }
            Fault::Crash {
                restart_after: None,
                ..
            }
            | Fault::Reset { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer1::{Canary, SimConfig};
    use crate::link::Timer as LinkTimer;

    fn world(seed: u64) -> World {
        World::new(&SimConfig {
            seed,
            steps: 0,
            verbose: false,
            canary: Canary::None,
        })
    }

    fn stall(i: usize, ms: u64) -> Fault {
        Fault::Stall {
            target: Target::Client(i),
            duration: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_layer1_stall_holds_the_client_link_until_healed() {
        let mut w = world(1);
        let now = w.now();
        assert!(w.inject(stall(0, 1500)));
        assert_eq!(
            w.link_mut(0).poll_timeout(),
            Some((now + Duration::from_millis(1500), LinkTimer::StallEnds))
        );
        assert_eq!(w.link_mut(1).poll_timeout(), None, "only its target");
        w.heal(stall(0, 1500));
        assert_eq!(w.link_mut(0).poll_timeout(), None);
    }

    #[test]
    fn layer1_refuses_the_faults_of_layer2_alone() {
        let mut w = world(2);
        let partition = Fault::Partition {
            target: Target::Client(0),
            duration: Duration::from_secs(1),
        };
        assert!(!w.inject(partition));
        assert!(!w.inject(Fault::Stall {
            target: Target::Broker,
            duration: Duration::from_secs(1),
        }));
    }

    fn no_faults() -> FaultRates {
        FaultRates {
            partial: 0.0,
            stall: 0.0,
            reset: 0.0,
            corrupt: 0.0,
            broker_crash: 0.0,
            client_crash: 0.0,
            wal_garbage: 0.0,
            link_capacity: 512,
        }
    }

    #[test]
    fn with_every_rate_zero_a_step_draws_nothing_and_injects_nothing() {
        let mut w = world(3);
        let before = w.rng().clone();
        no_faults().inject_step(&mut w, 0);
        assert_eq!(w.rng().next_u64(), before.clone().next_u64());
        assert_eq!(w.link_mut(0).poll_timeout(), None);
    }

    #[test]
    fn with_a_certain_stall_a_step_stalls_the_steps_client() {
        let mut w = world(4);
        let rates = FaultRates {
            stall: 1.0,
            ..no_faults()
        };
        rates.inject_step(&mut w, 1);
        assert!(w.link_mut(1).poll_timeout().is_some());
        assert_eq!(w.link_mut(0).poll_timeout(), None);
    }

    #[test]
    fn swarm_rates_are_a_function_of_the_seed() {
        let rates = |seed| FaultRates::swarm(&mut SeededRng::new(seed)).to_string();
        assert_eq!(rates(5), rates(5));
        let mixes: BTreeSet<String> = (0..50).map(rates).collect();
        assert!(mixes.len() > 10, "seeds choose different mixes");
    }

    #[test]
    fn heals_due_together_run_crashes_then_partitions_then_holds_broker_first() {
        let crash = |target| Fault::Crash {
            target,
            restart_after: Some(Duration::from_millis(70)),
        };
        let partition = Fault::Partition {
            target: Target::Client(1),
            duration: Duration::from_secs(5),
        };
        let due: BTreeSet<(u64, Fault)> = [
            (9, stall(2, 10)),
            (9, partition),
            (9, crash(Target::Client(3))),
            (9, crash(Target::Broker)),
            (8, stall(6, 10)),
        ]
        .into_iter()
        .collect();
        let order: Vec<Fault> = due.into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            order,
            [
                stall(6, 10),
                crash(Target::Broker),
                crash(Target::Client(3)),
                partition,
                stall(2, 10)
            ]
        );
    }
}
