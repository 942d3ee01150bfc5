//! Layer 2's scheduler: builds the turmoil simulation and its hosts, steps it one
//! millisecond at a time (the hosts run, due faults heal, the spawner's requests are
//! carried out, the invariants are checked), injects the seed's faults during the fault
//! phase, then waits out the liveness phase.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use daemoneye_core::rng::SeededRng;

use super::agent::{COLLECTORS, Ctl, SpawnCtl, agent, agent_died, drive_processes, kill_collector};
use super::model::{Model, Shared, check};
use super::transport::HOST_PIDS;
use super::workload::{probe, publisher, subscriber};
use super::{DRIVER_HOSTS, NetConfig, NetOutcome, PUBLISHERS, SUBSCRIBERS};
use crate::fault::{Fault, FaultLayer, NetFaultRates};
use crate::report::Violation;

/// Faults in force and when they are undone.
#[derive(Debug, Default)]
pub(crate) struct Injected {
    /// (when, fault): what heals when, in that order.
    healing: BTreeSet<(u64, Fault)>,
    /// Hosts crashed by the driver.
    pub(crate) down: BTreeSet<usize>,
    /// Hosts whose link to the agent is held or partitioned.
    pub(crate) cut: BTreeSet<usize>,
}

/// The turmoil simulation and everything the driver keeps beside it.
pub(crate) struct Driver<'a> {
    pub(crate) sim: turmoil::Sim<'a>,
    /// Hosts: the agent ("broker"), publishers and subscribers (crashed and bounced by the
    /// driver), then the supervised collectors (started, restarted and killed only through
    /// the agent's process manager; the driver may hold or partition their links).
    pub(crate) names: Vec<String>,
    model: Shared,
    ctl: Ctl,
    /// Collector hosts turmoil knows (a restart bounces them).
    started: BTreeSet<String>,
    pub(crate) injected: Injected,
    /// The fault schedule's stream.
    rng: SeededRng,
    /// Milliseconds of virtual time so far.
    step: u64,
}

impl Driver<'_> {
    pub(crate) fn rng(&mut self) -> &mut SeededRng {
        &mut self.rng
    }

    pub(crate) fn log(&self, event: String) {
        self.model.borrow_mut().log(event);
    }

    /// How many hosts there are.
    pub(crate) fn hosts(&self) -> usize {
        self.names.len()
    }

    /// The host of collector `k`.
    pub(crate) fn collector_host(&self, k: usize) -> usize {
        DRIVER_HOSTS + k
    }

    pub(crate) fn is_down(&self, h: usize) -> bool {
        self.injected.down.contains(&h)
    }

    pub(crate) fn is_cut(&self, h: usize) -> bool {
        self.injected.cut.contains(&h)
    }

    /// `fault` heals `after` from now.
    pub(crate) fn schedule_heal(&mut self, after: Duration, fault: Fault) {
        let at = self.step + after.as_millis() as u64;
        self.injected.healing.insert((at, fault));
    }

    /// The agent died: its collectors die with it.
    pub(crate) fn agent_died(&mut self) {
        agent_died(&mut self.sim, &self.ctl, &self.model);
    }

    /// Kills the supervised collector on host `h` (its supervisor decides what happens
    /// next). Returns whether one was running.
    pub(crate) fn kill_supervised(&mut self, h: usize) -> bool {
        let name = self.names[h].clone();
        let pid = self.ctl.borrow().running.get(&name).map(|r| r.0);
        if !kill_collector(&mut self.sim, &self.ctl, &name, "killed by signal 9") {
            return false;
        }
        let stopping = pid.is_some_and(|p| self.ctl.borrow().terminating.contains(&p));
        let mut m = self.model.borrow_mut();
        // A crash during a stop or restart the agent asked for is that stop's end, not a
        // crash the restart policy answers.
        if let Some(pid) = pid.filter(|_| !stopping) {
            m.crashed_at.insert(name.clone(), (self.step, pid));
        }
        m.log(format!("crash {name}"));
        true
    }

    /// One step of virtual time: the hosts run, due faults heal, the spawner's requests are
    /// carried out, and the invariants are checked.
    fn advance(&mut self) -> Result<(), Violation> {
        self.step += 1;
        let step = self.step;
        self.model.borrow_mut().step = step;
        self.sim
            .step()
            .map_err(|e| self.model.borrow().violation("simulation", e.to_string()))?;
        check(&self.model)?;
        self.heal_due();
        drive_processes(
            &mut self.sim,
            &self.ctl,
            &self.model,
            &mut self.started,
            step,
        );
        check(&self.model)
    }

    /// Undoes the faults that are due.
    fn heal_due(&mut self) {
        while let Some(&(at, fault)) = self.injected.healing.first() {
            if at > self.step {
                break;
            }
            self.injected.healing.pop_first();
            self.heal(fault);
        }
    }
}

/// Runs one seed of layer 2: a fault phase, then a liveness phase without faults.
pub fn run_net(cfg: &NetConfig) -> Result<NetOutcome, Violation> {
    HOST_PIDS.with(|p| p.borrow_mut().clear());
    let mut rng = SeededRng::new(cfg.seed ^ 0x7475_726d_6f69_6c32);
    let model: Shared = Rc::new(RefCell::new(Model::new(cfg)));
    let ctl: Ctl = Rc::new(RefCell::new(SpawnCtl::default()));
    let liveness = Duration::from_secs(60);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(cfg.fault_time + liveness + Duration::from_secs(10))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(50))
        .max_message_latency(Duration::from_millis(5))
        .build();
    let names: Vec<String> = std::iter::once("broker".to_string())
        .chain((0..PUBLISHERS).map(|i| format!("p{i}")))
        .chain((0..SUBSCRIBERS).map(|j| format!("s{j}")))
        .chain(COLLECTORS.iter().map(|c| c.to_string()))
        .collect();
    {
        let m = model.clone();
        let broker_seed = rng.next_u64();
        let canary = cfg.canary;
        let c = ctl.clone();
        sim.host("broker", move || {
            agent(m.clone(), broker_seed, canary, c.clone())
        });
    }
    for i in 0..PUBLISHERS {
        let m = model.clone();
        sim.host(names[1 + i].as_str(), move || publisher(m.clone(), i));
    }
    for j in 0..SUBSCRIBERS {
        let m = model.clone();
        sim.host(names[1 + PUBLISHERS + j].as_str(), move || {
            subscriber(m.clone(), j)
        });
    }
    {
        let m = model.clone();
        let c = ctl.clone();
        sim.host("probe", move || probe(m.clone(), c.clone()));
    }
    let rates = NetFaultRates::swarm(&mut rng);
    if cfg.verbose {
        println!(
            "seed={} layer=2 crash_rate={} link_rate={}",
            cfg.seed, rates.crash, rates.link
        );
    }
    let mut driver = Driver {
        sim,
        names,
        model: model.clone(),
        ctl,
        started: BTreeSet::new(),
        injected: Injected::default(),
        rng,
        step: 0,
    };
    let fault_steps = cfg.fault_time.as_millis() as u64;
    let mut faults = 0u64;
    while driver.step < fault_steps {
        driver.advance()?;
        faults += rates.inject_step(&mut driver);
    }
    // Liveness: no new faults; the last ones heal on schedule (a partition outlives the
    // idle timeout), then every publish must be acknowledged within a bounded time.
    {
        let mut m = model.borrow_mut();
        m.log("faults stop".into());
        m.status = None;
        m.faults_stopped = true;
    }
    let healed = driver
        .injected
        .healing
        .last()
        .map_or(driver.step, |&(at, _)| at.max(driver.step));
    let deadline = healed + liveness.as_millis() as u64;
    loop {
        driver.advance()?;
        let m = model.borrow();
        let current: Vec<String> = (0..PUBLISHERS)
            .map(|i| format!("p{i}.{}", m.pub_incarnation[i]))
            .collect();
        // Every collector runs and is registered (or its supervisor gave up on it).
        let collectors_up = m.status.as_ref().is_some_and(|st| {
            st.len() == COLLECTORS.len()
                && st.iter().all(|(_, state, registered)| {
                    (state == "running" && *registered) || state == "failed"
                })
        });
        let done = driver.injected.healing.is_empty()
            && collectors_up
            && current
                .iter()
                .all(|id| m.outstanding.get(id).is_some_and(|o| o.1 && o.0 == 0));
        if done {
            break;
        }
        if driver.step >= deadline {
            let pending: Vec<String> = current
                .iter()
                .map(|id| format!("{id}: {:?}", m.outstanding.get(id)))
                .collect();
            return Err(m.violation(
                "liveness",
                format!(
                    "after faults stopped: publishers {pending:?}; collectors {:?}",
                    m.status
                ),
            ));
        }
    }
    let m = model.borrow();
    Ok(NetOutcome {
        seed: cfg.seed,
        steps: driver.step,
        trace: m.events.hash,
        published: m.published,
        acked: m.acked,
        delivered: m.delivered,
        faults,
        spawned: m.spawned,
    })
}
