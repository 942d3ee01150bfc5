//! Layer 1's scheduler: one step (a random client's link end reads, or it acts, or time
//! passes; then faults, the supervisors, reconnects, WAL syncs, registration, and the
//! drains), and the liveness phase (faults off, everyone acks: everything must drain).

use std::time::Duration;

use super::World;
use crate::fault::{Fault, FaultLayer, Target};
use crate::report::Violation;

impl World {
    // ----- the step -----

    /// The timer contract: once a machine has handled the time `now`, nothing it reports
    /// is still due (a deadline it forgot to clear, or one the broker's deadline structure
    /// kept stale, would otherwise show up here).
    pub(super) fn check_nothing_due<T: std::fmt::Debug>(
        &self,
        machine: &str,
        next: Option<(daemoneye_core::Instant, T)>,
    ) -> Result<(), Violation> {
        match next {
            Some((at, why)) if at <= self.now => Err(self.violation(
                "timer-contract",
                format!(
                    "{machine} still has {why:?} due at {at:?} after handling {:?}",
                    self.now
                ),
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn step_once(&mut self, faults_on: bool) -> Result<(), Violation> {
        self.step += 1;
        let n = self.clients.len();
        let i = self.rng.below(n as u64) as usize;
        match self.rng.below(10) {
            0..=2 => self.deliver_to_client(i)?,
            3..=5 => self.deliver_to_broker(i)?,
            6..=7 => self.client_act(i)?,
            _ => {
                let dt = Duration::from_millis(self.rng.below(50));
                self.now = self.now + dt;
                self.broker.handle_timeout(self.now);
                self.shadow.broker.handle_timeout(self.now);
                let next = self.broker.poll_timeout();
                self.check_nothing_due("broker", next)?;
                self.drain_broker()?;
                self.agent_timeout()?;
                let next = self.fleet.poll_timeout();
                self.check_nothing_due("fleet", next)?;
                for i in 0..n {
                    self.clients[i].session.handle_timeout(self.now);
                    if self.clients[i].conn.is_some() && self.clients[i].session.is_closed() {
                        // The client gave a silent broker up: it drops the connection.
                        self.reset(i, "broker silent");
                    }
                }
            }
        }
        if faults_on {
            let rates = self.faults.clone();
            rates.inject_step(self, i);
            self.task_workload();
            self.drive_fleet()?;
        }
        self.supervise()?;
        for j in 0..n {
            if self.clients[j].conn.is_none()
                && !self.clients[j].process_down
                && self.clients[j].down_until <= self.now
            {
                self.connect(j);
            }
            self.complete_syncs(j)?;
            self.drive_registration(j)?;
            self.client_transmit(j);
            self.client_events(j)?;
        }
        self.drain_broker()?;
        self.agent_pump()?;
        self.write_to_links();
        self.drain_broker()?;
        self.check_tasks()?;
        self.check_bounds()
    }

    /// Faults off, everyone acks: everything pending must drain within a bounded time.
    pub(super) fn liveness(&mut self) -> Result<(), Violation> {
        for i in 0..self.clients.len() {
            self.heal(Fault::Stall {
                target: Target::Client(i),
                duration: Duration::ZERO,
            });
            let c = &mut self.clients[i];
            c.ack_rate = 1.0;
            c.publish_rate = 0.0;
        }
        self.faults.partial = 0.0;
        let config = self.faults.link_config();
        for c in &mut self.clients {
            c.link.reconfigure(config.clone());
        }
        let deadline = self.now + Duration::from_secs(120);
        while self.now < deadline {
            for _ in 0..200 {
                self.step_once(false)?;
            }
            // Collectors commit what they have batched.
            for c in &mut self.clients {
                if let Some(w) = c.wal.as_mut() {
                    w.machine.commit();
                    w.batch = 0;
                }
            }
            for i in 0..self.clients.len() {
                self.drive_wal(i)?;
            }
            // A client whose supervisor gave up is gone for good, and so are its unacknowledged
            // publishes (never acknowledged, so nothing acknowledged is lost).
            let pending: usize = self
                .clients
                .iter()
                .filter(|c| !c.process_down)
                .map(|c| {
                    c.session.pending_publishes()
                        + c.wal.as_ref().map_or(0, |w| {
                            w.machine.pending() + w.machine.unsynced() + w.syncing.len()
                        })
                })
                .sum();
            if pending == 0
                && self.broker.pending_pubacks() == 0
                && self.unregistered().is_empty()
                && self.tasks_pending().is_empty()
            {
                return Ok(());
            }
        }
        let pending: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.process_down)
            .map(|(i, c)| {
                format!(
                    "c{i}: {} pending, WAL {:?}, connected={}",
                    c.session.pending_publishes(),
                    c.wal
                        .as_ref()
                        .map(|w| (w.machine.pending(), w.machine.unsynced())),
                    c.session.is_connected()
                )
            })
            .collect();
        Err(self.violation(
            "liveness",
            format!(
                "after faults stopped, still pending: {pending:?}; broker pending PubAcks {}; not registered: {:?}; tasks not ended: {:?}",
                self.broker.pending_pubacks(),
                self.unregistered(),
                self.tasks_pending()
            ),
        ))
    }
}
