//! The agent's collectors as one machine (DESIGN.md sections 7 and 11): each supervised
//! collector's [`Supervisor`], the [`Registry`] of registered ones, the task
//! [`Coordinator`], and the rules that join them.
//!
//! A collector that misses its heartbeats is restarted through its supervisor (counting
//! toward `max_restarts`, so one that keeps hanging ends in Failed); pause and resume move
//! the supervisor and the registry's heartbeat checks together; a new process registers
//! anew; only the process the agent spawned (or one it started) may speak for a supervised
//! collector, and only its configured uid for one started elsewhere. A collector takes
//! tasks while it is registered, healthy, running and not paused: the fleet tells the
//! coordinator whenever that changes, so that the tasks of one that leaves, exits, misses
//! its heartbeats or is paused move on. The machine asks its
//! driver to spawn and signal ([`Output`]) and is told what happened (`handle_*`); it never
//! touches a process itself, so a simulation "spawns" a collector by starting a simulated
//! client.
//!
//! # Driving it
//!
//! 1. [`Fleet::new`], then [`supervise`](Fleet::supervise) each collector the agent starts
//!    and [`accept_external`](Fleet::accept_external) each one started elsewhere;
//!    [`start_all`](Fleet::start_all).
//! 2. After every input, drain [`poll_output`](Fleet::poll_output): on [`Output::Spawn`]
//!    start the process (or a simulated client) and report
//!    [`handle_spawned`](Fleet::handle_spawned) (or `handle_spawn_failed`) before polling
//!    again; on [`Output::Signal`] signal that pid's process group; carry out the
//!    coordinator's [`Output::Task`] (send an attempt, answer who waits for a task) and
//!    [`Output::BeginMonitoring`]; log events.
//! 3. Feed it what happens: exits ([`handle_exited`](Fleet::handle_exited)); registrations,
//!    heartbeats and deregistrations with the OS's word on their sender as a
//!    [`Peer`] (a registration's answer is returned, to be sent back); tasks submitted and
//!    cancelled, and their results ([`handle_task_result`](Fleet::handle_task_result)); operators'
//!    [`command`](Fleet::command)s (drain, then build the answer with
//!    [`command_response`](Fleet::command_response), so that it shows their effect).
//! 4. Sleep until [`poll_timeout`](Fleet::poll_timeout), then call
//!    [`handle_timeout`](Fleet::handle_timeout).

mod output;
mod view;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use daemoneye_proto::pb::control as pbc;

use crate::Instant;
use crate::broker::Health;
use crate::coordinator::{
    CancelError, Coordinator, CoordinatorConfig, ResultOutcome, SubmitError, TaskSpec,
};
use crate::registry::{self, CollectorHealth, Expected, Peer, Registry, RegistryEvent, SourceCaps};
use crate::supervisor::{self, Action, LifecycleError, RestartPolicy, Signal, State, Supervisor};
use crate::time::earlier;

pub use output::{Claim, Event, Output};
pub use view::{AgentHealth, CollectorReport, CollectorState, CollectorView};
pub use wire::{broker_health, wire_state};

/// The longest the agent's shutdown waits for its collectors' stop timeouts.
const MAX_STOP_BUDGET: Duration = Duration::from_secs(30);
/// Added to the stop budget for the exits to be reaped.
const REAP_MARGIN: Duration = Duration::from_millis(100);

/// Heartbeat expectations of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// How often a registered collector heartbeats (told to it when it registers).
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a collector is Unhealthy.
    pub missed_heartbeats: u32,
    /// The task coordinator's defaults.
    pub tasks: CoordinatorConfig,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats: 3,
            tasks: CoordinatorConfig::default(),
        }
    }
}

/// An operator's command for one supervised collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start it (from Failed, forgetting its restart history).
    Start,
    /// Graceful stop: SIGTERM, SIGKILL after its stop timeout.
    Stop,
    /// Stop, then start again.
    Restart,
    /// SIGSTOP; exempt from heartbeat checks until resumed.
    Pause,
    /// SIGCONT; heartbeat checks start over.
    Resume,
    /// Nothing: only asks about it.
    Status,
}

impl From<pbc::LifecycleOp> for Command {
    fn from(op: pbc::LifecycleOp) -> Self {
        match op {
            pbc::LifecycleOp::Start => Command::Start,
            pbc::LifecycleOp::Stop => Command::Stop,
            pbc::LifecycleOp::Restart => Command::Restart,
            pbc::LifecycleOp::Pause => Command::Pause,
            pbc::LifecycleOp::Resume => Command::Resume,
            pbc::LifecycleOp::Status | pbc::LifecycleOp::Unspecified => Command::Status,
        }
    }
}

/// Why a [`Fleet`] wants [`handle_timeout`](Fleet::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A supervisor's restart backoff or stop timeout.
    Supervisor(supervisor::Timer),
    /// A heartbeat check.
    Registry(registry::Timer),
    /// A task attempt's deadline.
    Task,
}

/// The fleet of collectors: supervised ones (each with its [`Supervisor`]) and ones started
/// elsewhere that the config names, with the registry of those registered.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    supervisors: BTreeMap<String, Supervisor>,
    /// Collectors started elsewhere, with the uid they must connect as.
    externals: BTreeMap<String, u32>,
    registry: Registry,
    coordinator: Coordinator,
    /// When each collector last registered or heartbeated, until it deregisters.
    last_seen: BTreeMap<String, Instant>,
    /// What each collector's last accepted heartbeat said of its work.
    reports: BTreeMap<String, CollectorReport>,
    /// Refused registrations, heartbeats and deregistrations, per claimed id.
    refused: BTreeMap<String, u64>,
    /// Outputs of the fleet's own; the supervisors' actions follow them.
    outputs: VecDeque<Output>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(config: FleetConfig) -> Self {
        let registry = Registry::new(config.heartbeat_interval, config.missed_heartbeats);
        let coordinator = Coordinator::new(config.tasks.clone());
        Self {
            config,
            supervisors: BTreeMap::new(),
            externals: BTreeMap::new(),
            registry,
            coordinator,
            last_seen: BTreeMap::new(),
            reports: BTreeMap::new(),
            refused: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Supervises collector `name` (stopped until started). A second call with the same
    /// name replaces its supervisor.
    pub fn supervise(&mut self, name: impl Into<String>, policy: RestartPolicy) {
        let name = name.into();
        self.supervisors
            .insert(name.clone(), Supervisor::new(name, policy));
    }

    /// Accepts collector `name`, started elsewhere, when it connects as `uid`.
    pub fn accept_external(&mut self, name: impl Into<String>, uid: u32) {
        self.externals.insert(name.into(), uid);
    }

    // ---- commands -------------------------------------------------------------------

    /// Starts every supervised collector (the agent's start).
    pub fn start_all(&mut self, now: Instant) {
        for sup in self.supervisors.values_mut() {
            // One already running needs nothing.
            let _ = sup.start(now);
        }
    }

    /// Stops every supervised collector in parallel (the agent's shutdown): scheduled
    /// restarts are cancelled, running ones get SIGTERM and SIGKILL after their own stop
    /// timeout.
    pub fn stop_all(&mut self, now: Instant) {
        for sup in self.supervisors.values_mut() {
            // One already down needs nothing.
            let _ = sup.stop(now);
        }
    }

    /// How long the agent's shutdown waits for its collectors: each gets its own stop
    /// timeout in parallel, so the longest of them (capped at 30 s), plus a moment to reap.
    pub fn stop_budget(&self) -> Duration {
        self.supervisors
            .values()
            .map(|s| s.policy().stop_timeout)
            .max()
            .unwrap_or_default()
            .min(MAX_STOP_BUDGET)
            + REAP_MARGIN
    }

    /// SIGKILL to every supervised process still running (a shutdown past its budget).
    pub fn kill_all(&mut self) {
        for (name, sup) in &self.supervisors {
            if let Some(pid) = sup.pid() {
                self.outputs.push_back(Output::Signal {
                    collector: name.clone(),
                    pid,
                    signal: Signal::Kill,
                });
            }
        }
    }

    /// An operator's command for supervised collector `name`.
    pub fn command(
        &mut self,
        now: Instant,
        name: &str,
        command: Command,
    ) -> Result<(), LifecycleError> {
        let Some(sup) = self.supervisors.get_mut(name) else {
            return Err(LifecycleError::ProcessNotFound(name.to_string()));
        };
        let result = match command {
            Command::Start => sup.start(now),
            Command::Stop => sup.stop(now),
            Command::Restart => sup.restart(now),
            Command::Pause => sup.pause(now).map(|()| {
                self.registry.set_paused(now, name, true);
            }),
            Command::Resume => sup.resume(now).map(|()| {
                self.registry.set_paused(now, name, false);
            }),
            Command::Status => Ok(()),
        };
        self.settle(now);
        result
    }

    // ---- tasks ----------------------------------------------------------------------

    /// A new task for the coordinator: its id, or why it is refused. Its first attempt
    /// (or its waiting) is in the outputs.
    pub fn submit_task(&mut self, now: Instant, spec: TaskSpec) -> Result<String, SubmitError> {
        let id = self.coordinator.submit(now, spec);
        self.settle(now);
        id
    }

    /// An operator cancels a task.
    pub fn cancel_task(&mut self, now: Instant, task: &str) -> Result<(), CancelError> {
        let done = self.coordinator.cancel(now, task);
        self.settle(now);
        done
    }

    /// A task's result arrived from `peer`. It counts only from the collector it names, from
    /// that collector's own process (a refusal is counted like a forged heartbeat's).
    pub fn handle_task_result(
        &mut self,
        now: Instant,
        result: &pbc::TaskResult,
        peer: &Peer,
    ) -> ResultOutcome {
        if !self.admit(&result.collector_id, peer, Claim::TaskResult) {
            return ResultOutcome::Unknown;
        }
        let outcome = self
            .coordinator
            .handle_result(now, &result.task_id, result.into());
        self.settle(now);
        outcome
    }

    // ---- inputs ---------------------------------------------------------------------

    /// The driver started collector `name`'s process. A new process registers anew: until
    /// then it is judged by its process state alone.
    pub fn handle_spawned(&mut self, now: Instant, name: &str, pid: u32) {
        if let Some(sup) = self.supervisors.get_mut(name) {
            self.registry.deregister(name);
            sup.handle_spawned(now, pid);
            self.settle(now);
        }
    }

    /// The driver could not start collector `name`'s process: counts as a crash.
    pub fn handle_spawn_failed(&mut self, now: Instant, name: &str, reason: &str) {
        if let Some(sup) = self.supervisors.get_mut(name) {
            sup.handle_spawn_failed(now, reason);
        }
    }

    /// Collector `name`'s process `pid` exited, with how. An exit of an older process
    /// (already replaced) is ignored.
    pub fn handle_exited(&mut self, now: Instant, name: &str, pid: u32, how: &str) {
        if let Some(sup) = self.supervisors.get_mut(name)
            && sup.pid() == Some(pid)
        {
            self.outputs.push_back(Output::Event(Event::Exited {
                collector: name.to_string(),
                pid,
                how: how.to_string(),
            }));
            sup.handle_exited(now, how);
            self.settle(now);
        }
    }

    /// A registration arrived from `peer` (the broker's credentials of its connection, with
    /// its ancestry): the answer to send back.
    pub fn handle_registration(
        &mut self,
        now: Instant,
        request: &pbc::RegisterRequest,
        peer: &Peer,
    ) -> pbc::RegisterResponse {
        let refused = |message: String| pbc::RegisterResponse {
            accepted: false,
            message,
            heartbeat_interval_ms: 0,
        };
        let id = &request.collector_id;
        if let Err(e) = daemoneye_proto::frame::validate_name("collector_id", id) {
            return refused(e.to_string());
        }
        if !self.admit(id, peer, Claim::Registration) {
            return refused(format!(
                "registration as {id:?} refused: not from the process the agent runs for it, nor from a configured external collector's uid"
            ));
        }
        self.outputs.push_back(Output::Event(Event::Registered {
            collector: id.clone(),
            kind: request.collector_type.clone(),
            pid: request.pid,
        }));
        self.registry.register(
            now,
            id,
            &request.collector_type,
            SourceCaps::from_bits_retain(request.capabilities),
            peer.pid.unwrap_or(request.pid),
        );
        self.last_seen.insert(id.clone(), now);
        if self
            .supervisors
            .get(id)
            .is_some_and(|s| s.state() == State::Paused)
        {
            self.registry.set_paused(now, id, true);
        }
        self.settle(now);
        // Only the collectors the agent runs are its to start; an external one was told
        // by whoever started it.
        if self.supervisors.contains_key(id) {
            self.outputs.push_back(Output::BeginMonitoring {
                collector: id.clone(),
            });
        }
        pbc::RegisterResponse {
            accepted: true,
            message: String::new(),
            heartbeat_interval_ms: u64::try_from(self.config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    /// A heartbeat arrived on `topic` from `peer`. It counts only for a registered
    /// collector, from its own process, on its own topic.
    pub fn handle_heartbeat(
        &mut self,
        now: Instant,
        topic: &str,
        heartbeat: &pbc::Heartbeat,
        peer: &Peer,
    ) {
        let id = &heartbeat.collector_id;
        let named = topic.rsplit('.').next().unwrap_or_default();
        if named != id {
            self.outputs
                .push_back(Output::Event(Event::MisaddressedHeartbeat {
                    topic: topic.to_string(),
                    collector: id.clone(),
                }));
            return;
        }
        if self.registry.get(id).is_some()
            && self.admit(id, peer, Claim::Heartbeat)
            && self.registry.heartbeat(now, id)
        {
            self.last_seen.insert(id.clone(), now);
            self.reports
                .insert(id.clone(), CollectorReport::from_heartbeat(heartbeat));
        }
        self.settle(now);
    }

    /// Collector `id` deregistered (it stops cleanly): its tasks move elsewhere.
    pub fn handle_deregistration(&mut self, now: Instant, id: &str, peer: &Peer) {
        if self.registry.get(id).is_some() && self.admit(id, peer, Claim::Deregistration) {
            self.outputs.push_back(Output::Event(Event::Deregistered {
                collector: id.to_string(),
            }));
            self.registry.deregister(id);
            self.last_seen.remove(id);
            self.reports.remove(id);
            self.settle(now);
        }
    }

    /// Time passed: restarts due, stop timeouts, heartbeat checks, task deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        for sup in self.supervisors.values_mut() {
            sup.handle_timeout(now);
        }
        self.registry.handle_timeout(now);
        self.coordinator.handle_timeout(now);
        self.settle(now);
    }

    // ---- outputs and time -----------------------------------------------------------

    /// The next thing to do: the fleet's own outputs, then each supervisor's actions (by
    /// collector name). Drain it after every input; a spawn's outcome reported before the
    /// next call is taken into account at once.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(out) = self.outputs.pop_front() {
            return Some(out);
        }
        for (name, sup) in &mut self.supervisors {
            while let Some(action) = sup.poll_output() {
                match action {
                    Action::Spawn => {
                        return Some(Output::Spawn {
                            collector: name.clone(),
                        });
                    }
                    // A signal for a process that is gone has nobody to reach.
                    Action::Signal(signal) => {
                        if let Some(pid) = sup.pid() {
                            return Some(Output::Signal {
                                collector: name.clone(),
                                pid,
                                signal,
                            });
                        }
                    }
                }
            }
        }
        None
    }

    /// The next deadline and what it is for.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let supervisors = self
            .supervisors
            .values()
            .filter_map(|s| s.poll_timeout())
            .map(|(at, why)| (at, Timer::Supervisor(why)))
            .fold(None, |a, b| earlier(a, Some(b)));
        let registry = self
            .registry
            .poll_timeout()
            .map(|(at, why)| (at, Timer::Registry(why)));
        let tasks = self.coordinator.poll_timeout().map(|at| (at, Timer::Task));
        earlier(earlier(supervisors, registry), tasks)
    }

    // ---- queries --------------------------------------------------------------------

    /// The heartbeat expectations.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The registry of registered collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The task coordinator.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The task coordinator, to switch on its canary (simulations only).
    pub fn coordinator_mut(&mut self) -> &mut Coordinator {
        &mut self.coordinator
    }

    /// Supervised collector `name`'s supervisor.
    pub fn supervisor(&self, name: &str) -> Option<&Supervisor> {
        self.supervisors.get(name)
    }

    /// Whether every supervised collector is down (stopped or failed, no process left).
    pub fn all_down(&self) -> bool {
        self.supervisors
            .values()
            .all(|s| matches!(s.state(), State::Stopped | State::Failed) && s.pid().is_none())
    }

    /// Supervised collector `name`, if the fleet supervises it.
    pub fn supervised(&self, name: &str) -> Option<CollectorView> {
        self.supervisors.get(name).map(|s| self.view_supervised(s))
    }

    /// Every collector: the supervised ones, then those started elsewhere, each by name.
    pub fn collectors(&self) -> Vec<CollectorView> {
        let supervised = self.supervisors.values().map(|s| self.view_supervised(s));
        let external = self.externals.keys().map(|id| self.view_external(id));
        supervised.chain(external).collect()
    }

    /// Refusals under ids the config does not name, as one line for an operator.
    pub fn unknown_refusals(&self) -> Option<String> {
        let unknown: Vec<String> = self
            .refused
            .iter()
            .filter(|(id, _)| {
                !self.supervisors.contains_key(*id) && !self.externals.contains_key(*id)
            })
            .map(|(id, n)| format!("{id} ({n})"))
            .collect();
        (!unknown.is_empty()).then(|| {
            format!(
                "refused registrations or heartbeats for collectors the config does not name: {}",
                unknown.join(", ")
            )
        })
    }

    /// The agent's health at `now`: the worst of the broker's (`None` when it did not
    /// say), the coordinator's and each collector's, with the broker's reasons, the
    /// coordinator's and the fleet's.
    pub fn health(
        &self,
        now: Instant,
        broker: Option<Health>,
        broker_reasons: Vec<String>,
    ) -> AgentHealth {
        let mut reasons = broker_reasons;
        reasons.extend(self.unknown_refusals());
        let (coordinator, why) = self.coordinator.health(now);
        reasons.extend(why);
        // A healthy coordinator says nothing: the overall state stays unknown when no
        // other part is known.
        let mut overall = broker;
        if coordinator != Health::Healthy {
            overall = overall.max(Some(coordinator));
        }
        for c in self.collectors() {
            let health = c.state.health();
            if health != Health::Healthy {
                reasons.push(format!("collector {} is {}", c.name, c.state));
            }
            if c.refused > 0 {
                reasons.push(format!(
                    "collector {}: {} registrations or heartbeats refused (not from its process)",
                    c.name, c.refused
                ));
            }
            overall = overall.max(Some(health));
        }
        AgentHealth {
            overall,
            coordinator,
            reasons,
        }
    }

    // ---- rules ----------------------------------------------------------------------

    /// Whether `peer` may speak for collector `id` (the registry's identity rule on the
    /// facts the fleet has); a refusal is counted and told.
    fn admit(&mut self, id: &str, peer: &Peer, claim: Claim) -> bool {
        let expected = match (self.supervisors.get(id), self.externals.get(id)) {
            (Some(sup), _) => Expected::Managed { pid: sup.pid() },
            (None, Some(&uid)) => Expected::External { uid },
            (None, None) => Expected::Unknown,
        };
        match registry::admit(&expected, peer) {
            Ok(()) => true,
            Err(why) => {
                let count = self.refused.entry(id.to_string()).or_default();
                *count += 1;
                self.outputs.push_back(Output::Event(Event::Refused {
                    collector: id.to_string(),
                    claim,
                    pid: peer.pid,
                    uid: peer.uid,
                    count: *count,
                    why,
                }));
                false
            }
        }
    }

    /// Acts on the registry's findings: an unhealthy running collector is restarted (a
    /// paused one is exempt, one started elsewhere only shows it); moved tasks go out.
    fn drain_registry(&mut self, now: Instant) {
        let missed = self.config.missed_heartbeats;
        while let Some(event) = self.registry.poll_output() {
            let out = match event {
                RegistryEvent::Unhealthy { id } => {
                    self.outputs.push_back(Output::Event(Event::Unhealthy {
                        collector: id.clone(),
                        missed,
                    }));
                    let Some(sup) = self
                        .supervisors
                        .get_mut(&id)
                        .filter(|s| s.state() == State::Running)
                    else {
                        continue;
                    };
                    // Counts toward max_restarts like a crash: one that keeps hanging ends
                    // in Failed.
                    let reason = format!("missed {missed} heartbeats");
                    if sup.restart_unhealthy(now, &reason).is_err() {
                        continue;
                    }
                    Output::Event(Event::RestartingUnhealthy { collector: id })
                }
                RegistryEvent::Recovered { id } => {
                    Output::Event(Event::Recovered { collector: id })
                }
            };
            self.outputs.push_back(out);
        }
    }

    /// After every input: acts on the registry's findings, tells the coordinator which
    /// collectors may take tasks now, and passes its outputs on.
    fn settle(&mut self, now: Instant) {
        self.drain_registry(now);
        let ids: std::collections::BTreeSet<String> = self
            .registry
            .collectors()
            .map(|(id, _)| id.clone())
            .chain(self.coordinator.members().keys().cloned())
            .collect();
        for id in ids {
            // A supervised collector's process must be up (not stopping, not gone); the
            // registry says whether it is registered, healthy and not paused.
            let running = self
                .supervisors
                .get(&id)
                .is_none_or(|s| s.state() == State::Running && s.pid().is_some());
            let caps = self.registry.available(&id).filter(|_| running);
            self.coordinator.set_member(now, &id, caps);
        }
        while let Some(out) = self.coordinator.poll_output() {
            self.outputs.push_back(Output::Task(out));
        }
    }

    fn view_supervised(&self, sup: &Supervisor) -> CollectorView {
        let name = sup.name();
        let registered = self.registry.get(name);
        let unhealthy = registered.is_some_and(|r| r.health == CollectorHealth::Unhealthy);
        let state = if unhealthy && sup.state() == State::Running {
            CollectorState::Unhealthy
        } else {
            sup.state().into()
        };
        CollectorView {
            name: name.to_string(),
            state,
            pid: sup.pid(),
            running_since: sup.running_since(),
            restarts: sup.restarts(),
            last_exit: sup.last_exit().map(str::to_string),
            last_heartbeat: self.last_seen.get(name).copied(),
            report: self.reports.get(name).cloned(),
            capabilities: registered.map_or(SourceCaps::empty(), |r| r.capabilities),
            refused: self.refused.get(name).copied().unwrap_or(0),
        }
    }

    fn view_external(&self, id: &str) -> CollectorView {
        let registered = self.registry.get(id);
        let state = match registered {
            None => CollectorState::Absent,
            Some(r) if r.health == CollectorHealth::Unhealthy => CollectorState::Unhealthy,
            Some(_) => CollectorState::External,
        };
        CollectorView {
            name: id.to_string(),
            state,
            pid: registered.map(|r| r.pid),
            running_since: None,
            restarts: 0,
            last_exit: None,
            last_heartbeat: self.last_seen.get(id).copied(),
            report: self.reports.get(id).cloned(),
            capabilities: registered.map_or(SourceCaps::empty(), |r| r.capabilities),
            refused: self.refused.get(id).copied().unwrap_or(0),
        }
    }
}
