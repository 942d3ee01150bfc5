//! The process manager: runs the core [`Fleet`] with real (or simulated) processes.
//!
//! It owns the collectors' specs and a [`Spawner`], feeds the fleet what happened (spawned,
//! exited, registrations, heartbeats, operators' commands, time) and carries out what the
//! fleet asks (spawn, signal). Every decision (restart, backoff, SIGKILL after the stop
//! timeout, health, who may speak for a collector, which collector takes a task, retries)
//! is the fleet's. Production spawns through the `exec-collector` shim ([`super::shim`]);
//! the task attempts the fleet's coordinator asks for go to the control client attached
//! with [`TaskRequest::Attach`], which publishes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::coordinator::{self, Output as TaskOutput, TaskState};
use daemoneye_core::fleet::{Event, Fleet, FleetConfig, Output};
use daemoneye_core::registry::Peer;
use daemoneye_core::supervisor::{RestartPolicy, Signal};
use daemoneye_proto::pb::control as pbc;
use tokio::sync::{mpsc, oneshot};

use super::shim::OsSpawner;
use super::tasks::{self, TaskRequest, Waiters};
use crate::clock::{Clock, MonotonicClock};

/// One collector to supervise.
#[derive(Debug, Clone)]
pub struct CollectorSpec {
    /// Unique name.
    pub name: String,
    /// Resolved executable.
    pub binary: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// Restart and stop policy.
    pub policy: RestartPolicy,
}

/// A collector binary that could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryNotFound {
    /// An explicit path names no file.
    #[error("binary {0} does not exist")]
    NoSuchFile(String),
    /// A bare name found nowhere it is looked for.
    #[error("binary {0:?} not found in the agent's directory or PATH")]
    NotOnPath(String),
}

/// Finds a collector binary: an explicit path (containing `/`), else the agent's own
/// directory, else `PATH`.
pub fn resolve_binary(name: &str) -> Result<PathBuf, BinaryNotFound> {
    let is_file = |p: &Path| p.is_file();
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_file(&p) {
            Ok(p)
        } else {
            Err(BinaryNotFound::NoSuchFile(name.to_string()))
        };
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && is_file(&dir.join(name))
    {
        return Ok(dir.join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if is_file(&dir.join(name)) {
                return Ok(dir.join(name));
            }
        }
    }
    Err(BinaryNotFound::NotOnPath(name.to_string()))
}

/// The broker's peer credentials of the connection a control message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCreds {
    /// The publisher's pid, when the OS says.
    pub pid: Option<u32>,
    /// The publisher's uid.
    pub uid: u32,
}

/// The answer to a registration, and whether to tell the collector to begin monitoring
/// (the fleet's [`Output::BeginMonitoring`]) once the answer is sent.
#[derive(Debug, Clone, Default)]
pub struct RegisterAnswer {
    /// The answer.
    pub response: pbc::RegisterResponse,
    /// Send it `BeginMonitoring` after the answer.
    pub begin_monitoring: bool,
}

/// Requests to the process manager.
#[derive(Debug)]
pub enum Request {
    /// A lifecycle RPC.
    Lifecycle {
        /// What to do.
        op: pbc::LifecycleOp,
        /// Which collector (empty with Status: all).
        name: String,
        /// The answer.
        reply: oneshot::Sender<pbc::LifecycleResponse>,
    },
    /// A collector registered (or re-registered).
    Register {
        /// What it said.
        request: pbc::RegisterRequest,
        /// Who said it.
        peer: PeerCreds,
        /// The answer to send back.
        reply: oneshot::Sender<RegisterAnswer>,
    },
    /// A heartbeat arrived.
    Heartbeat {
        /// The topic it came on (it names the collector too).
        topic: String,
        /// What it said.
        heartbeat: pbc::Heartbeat,
        /// Who sent it.
        peer: PeerCreds,
    },
    /// A collector that stops cleanly deregistered.
    Deregister {
        /// The collector's id.
        id: String,
        /// Who sent it.
        peer: PeerCreds,
    },
    /// The agent's health: the broker's report rolled up with the collectors'.
    Health {
        /// The broker's own report.
        broker: pbc::HealthReport,
        /// The agent's report.
        reply: oneshot::Sender<pbc::HealthReport>,
    },
    /// The task RPC and the collectors' results.
    Tasks(TaskRequest),
    /// Stop every collector (in parallel) within the fleet's stop budget, then answer.
    Shutdown {
        /// Answered once all are gone.
        reply: oneshot::Sender<()>,
    },
}

/// How a collector exited, once it has: "exited with status 3", "killed by signal 9".
pub type ExitFuture = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// Starts collectors and signals them. Production forks a process ([`OsSpawner`]); the
/// simulation starts a turmoil host.
pub trait Spawner: 'static {
    /// Starts `spec`, connecting to the broker at `socket`: its pid, and a future that
    /// resolves with how it exited.
    fn spawn(&mut self, spec: &CollectorSpec, socket: &Path) -> std::io::Result<(u32, ExitFuture)>;
    /// Sends `signal` to the collector with `pid` (and everything it started).
    fn signal(&mut self, pid: u32, signal: Signal) -> std::io::Result<()>;
    /// The ancestors of `pid`, parent first (for the identity check of a registration).
    /// Production reads `/proc`; a simulation has its own process tree.
    fn ancestors(&self, pid: u32) -> Vec<u32> {
        proc_ancestors(pid)
    }
}

/// The ancestors of `pid` from `/proc/<pid>/stat`, parent first, up to init (at most 64).
pub fn proc_ancestors(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut at = pid;
    while out.len() < 64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{at}/stat")) else {
            break;
        };
        let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            break;
        };
        if ppid == 0 {
            break;
        }
        out.push(ppid);
        if ppid == 1 {
            break;
        }
        at = ppid;
    }
    out
}

/// The process manager.
pub struct ProcessManager<S: Spawner = OsSpawner> {
    fleet: Fleet,
    specs: BTreeMap<String, CollectorSpec>,
    socket: PathBuf,
    /// The agent's own state directory: each collector gets one inside it.
    state_dir: Option<PathBuf>,
    spawner: S,
    clock: MonotonicClock,
    exits_tx: mpsc::UnboundedSender<(String, u32, String)>,
    exits_rx: mpsc::UnboundedReceiver<(String, u32, String)>,
    /// Processes the fleet asked to end (SIGTERM, SIGKILL): their exit is expected, any
    /// other is a crash or a kill from outside.
    ended_on_purpose: std::collections::BTreeSet<u32>,
    /// Collectors the fleet said to tell to begin monitoring, not yet told.
    begin_monitoring: Vec<String>,
    /// Where attempts go (the control client), once attached.
    task_sends: Option<mpsc::UnboundedSender<daemoneye_proto::frame::Publish>>,
    /// Submitters waiting for their task to end.
    waiters: Waiters,
}

impl<S: Spawner> std::fmt::Debug for ProcessManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessManager")
            .field("collectors", &self.specs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The wall clock in Unix milliseconds (shown beside core instants).
impl<S: Spawner> ProcessManager<S> {
    /// A manager for `specs`, whose collectors connect to `socket`, started with `spawner`
    /// ([`OsSpawner`] in production) and expected to heartbeat every `heartbeat_interval`.
    pub fn new(
        specs: Vec<CollectorSpec>,
        socket: PathBuf,
        spawner: S,
        heartbeat_interval: Duration,
    ) -> Self {
        let config = FleetConfig {
            heartbeat_interval,
            ..FleetConfig::default()
        };
        Self::with_config(specs, socket, spawner, config)
    }

    /// A manager like [`new`](Self::new), with the fleet's whole configuration (the task
    /// coordinator's defaults included).
    pub fn with_config(
        specs: Vec<CollectorSpec>,
        socket: PathBuf,
        spawner: S,
        config: FleetConfig,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let mut fleet = Fleet::new(config);
        for spec in &specs {
            fleet.supervise(spec.name.clone(), spec.policy.clone());
        }
        Self {
            fleet,
            specs: specs.into_iter().map(|s| (s.name.clone(), s)).collect(),
            socket,
            state_dir: None,
            spawner,
            clock: MonotonicClock::default(),
            exits_tx,
            exits_rx,
            ended_on_purpose: Default::default(),
            begin_monitoring: Vec::new(),
            task_sends: None,
            waiters: Waiters::default(),
        }
    }

    /// Gives each collector a state directory inside `dir` (the agent's own), passed in
    /// `DAEMONEYE_COLLECTOR_STATE_DIR`.
    pub fn with_state_dir(mut self, dir: PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }

    /// Collectors started elsewhere that may register, each only under its uid.
    pub fn with_externals(mut self, externals: impl IntoIterator<Item = (String, u32)>) -> Self {
        for (id, uid) in externals {
            self.fleet.accept_external(id, uid);
        }
        self
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The OS's word on who sent a control message: its credentials and ancestry.
    fn peer(&self, creds: PeerCreds) -> Peer {
        Peer {
            pid: creds.pid,
            uid: creds.uid,
            ancestors: creds
                .pid
                .map(|p| self.spawner.ancestors(p))
                .unwrap_or_default(),
        }
    }

    /// Carries out everything the fleet asks, in order.
    fn execute(&mut self) {
        let now = self.now();
        while let Some(output) = self.fleet.poll_output() {
            match output {
                Output::Spawn { collector } => self.spawn(now, &collector),
                Output::Signal {
                    collector,
                    pid,
                    signal,
                } => {
                    if matches!(signal, Signal::Term | Signal::Kill) {
                        self.ended_on_purpose.insert(pid);
                    }
                    if let Err(e) = self.spawner.signal(pid, signal) {
                        tracing::warn!(%collector, pid, ?signal, error = %e, "signal failed");
                    }
                }
                Output::BeginMonitoring { collector } => self.begin_monitoring.push(collector),
                Output::Task(out) => self.task_output(now, out),
                Output::Event(event) => {
                    let expected = match &event {
                        Event::Exited { pid, .. } => self.ended_on_purpose.remove(pid),
                        _ => false,
                    };
                    log(&event, expected);
                }
            }
        }
    }

    /// Carries out one of the coordinator's outputs: an attempt goes to the control
    /// client, an ended task answers whoever waits for it.
    fn task_output(&mut self, now: Instant, out: TaskOutput) {
        let unix_ms = crate::clock::unix_ms();
        match out {
            TaskOutput::Send(attempt) => {
                tracing::info!(task = %attempt.task, attempt = attempt.attempt, collector = %attempt.collector, "task sent");
                let p = tasks::attempt_publish(&attempt, now, unix_ms);
                let sent = self
                    .task_sends
                    .as_ref()
                    .is_some_and(|tx| tx.send(p).is_ok());
                if !sent {
                    tracing::warn!(task = %attempt.task, "no control connection to send the task on; its deadline will retry it");
                }
            }
            TaskOutput::Waiting { task, capability } => {
                tracing::info!(%task, %capability, "task waits for a collector");
            }
            TaskOutput::Ended(task) => {
                match task.state {
                    TaskState::Failed => {
                        tracing::warn!(task = %task.id, message = %task.message, "task failed")
                    }
                    _ => {
                        tracing::info!(task = %task.id, state = %task.state, owner = ?task.owner, "task ended")
                    }
                }
                self.waiters.ended(&task, now, unix_ms);
            }
        }
    }

    /// Serves one request of the task RPC (or a result).
    fn task_request(&mut self, request: TaskRequest) {
        let now = self.now();
        let unix_ms = crate::clock::unix_ms();
        match request {
            TaskRequest::Attach { sends } => self.task_sends = Some(sends),
            TaskRequest::Submit { submit, reply } => {
                let wait = submit.wait;
                let id = coordinator::spec_from_wire(&submit)
                    .and_then(|spec| self.fleet.submit_task(now, spec));
                let id = match id {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(pbc::TaskSubmitResponse {
                            error: e.to_string(),
                            ..Default::default()
                        });
                        return;
                    }
                };
                let record = self
                    .fleet
                    .coordinator()
                    .task(&id)
                    .map(|t| t.to_wire(now, unix_ms));
                if wait {
                    self.waiters.wait(id, reply);
                } else {
                    let _ = reply.send(pbc::TaskSubmitResponse {
                        error: String::new(),
                        task: record,
                        result: None,
                    });
                }
                self.execute();
            }
            TaskRequest::List {
                include_finished,
                reply,
            } => {
                let c = self.fleet.coordinator();
                let mut list: Vec<pbc::TaskRecord> = Vec::new();
                if include_finished {
                    list.extend(c.history().map(|t| t.to_wire(now, unix_ms)));
                }
                list.extend(c.active().into_iter().map(|t| t.to_wire(now, unix_ms)));
                let _ = reply.send(pbc::TaskListResponse { tasks: list });
            }
            TaskRequest::Cancel { task_id, reply } => {
                let error = self
                    .fleet
                    .cancel_task(now, &task_id)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                let task = self
                    .fleet
                    .coordinator()
                    .task(&task_id)
                    .map(|t| t.to_wire(now, unix_ms));
                self.execute();
                let _ = reply.send(pbc::TaskCancelResponse { error, task });
            }
            TaskRequest::Result { result, peer } => {
                let peer = self.peer(peer);
                let outcome = self.fleet.handle_task_result(now, &result, &peer);
                if outcome != coordinator::ResultOutcome::Accepted {
                    tracing::info!(task = %result.task_id, collector = %result.collector_id, ?outcome, "task result dropped");
                }
            }
        }
    }

    fn spawn(&mut self, now: Instant, name: &str) {
        let Some(spec) = self.specs.get(name) else {
            return;
        };
        let spec = collector_env(spec, self.state_dir.as_deref());
        match self.spawner.spawn(&spec, &self.socket) {
            Ok((pid, exit)) => {
                tracing::info!(collector = %name, pid, "collector started");
                self.fleet.handle_spawned(now, name, pid);
                let tx = self.exits_tx.clone();
                let name = name.to_string();
                tokio::spawn(async move {
                    let how = exit.await;
                    let _ = tx.send((name, pid, how));
                });
            }
            Err(e) => {
                tracing::warn!(collector = %name, error = %e, "collector could not be spawned");
                self.fleet.handle_spawn_failed(now, name, &e.to_string());
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.fleet.poll_timeout().map(|(at, _)| at)
    }

    fn lifecycle(&mut self, op: pbc::LifecycleOp, name: &str) -> pbc::LifecycleResponse {
        let now = self.now();
        // A status request without a name asks for every collector.
        if op == pbc::LifecycleOp::Status && name.is_empty() {
            return self.fleet.list_response(now, crate::clock::unix_ms());
        }
        let result = self.fleet.command(now, name, op.into());
        // The answer shows the command's effect (a started collector's pid).
        self.execute();
        self.fleet
            .command_response(name, result, now, crate::clock::unix_ms())
    }

    /// Stops every collector in parallel. Each gets SIGKILL after its own stop timeout (the
    /// fleet's timers keep running); `budget` caps the whole wait.
    async fn shutdown(&mut self, budget: Duration) {
        self.fleet.stop_all(self.now());
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            self.execute();
            if self.fleet.all_down() || tokio::time::Instant::now() >= deadline {
                break;
            }
            let next = self.deadline().map_or(deadline, |t| {
                tokio::time::Instant::from_std(self.clock.to_std(t)).min(deadline)
            });
            tokio::select! {
                biased;
                exit = self.exits_rx.recv() => {
                    if let Some((name, pid, how)) = exit {
                        self.fleet.handle_exited(self.clock.now(), &name, pid, &how);
                    }
                }
                _ = tokio::time::sleep_until(next) => self.fleet.handle_timeout(self.clock.now()),
            }
        }
        // Past the budget, whatever is left gets SIGKILL, and is reaped before the agent exits.
        self.fleet.kill_all();
        self.execute();
        let reap_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.fleet.all_down() && tokio::time::Instant::now() < reap_deadline {
            if let Ok(Some((name, pid, how))) =
                tokio::time::timeout_at(reap_deadline, self.exits_rx.recv()).await
            {
                self.fleet.handle_exited(self.now(), &name, pid, &how);
                self.execute();
            }
        }
    }

    /// Starts every collector, then serves requests until shut down.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        self.fleet.start_all(self.now());
        loop {
            self.execute();
            let sleep = match self.deadline() {
                Some(at) => tokio::time::sleep_until(self.clock.to_std(at).into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                biased;
                req = requests.recv() => match req {
                    Some(Request::Lifecycle { op, name, reply }) => {
                        let _ = reply.send(self.lifecycle(op, &name));
                    }
                    Some(Request::Register { request, peer, reply }) => {
                        let peer = self.peer(peer);
                        let response = self.fleet.handle_registration(self.now(), &request, &peer);
                        self.execute();
                        let begin = std::mem::take(&mut self.begin_monitoring);
                        let begin_monitoring = begin.contains(&request.collector_id);
                        let _ = reply.send(RegisterAnswer { response, begin_monitoring });
                    }
                    Some(Request::Heartbeat { topic, heartbeat, peer }) => {
                        let peer = self.peer(peer);
                        self.fleet.handle_heartbeat(self.now(), &topic, &heartbeat, &peer);
                    }
                    Some(Request::Deregister { id, peer }) => {
                        let peer = self.peer(peer);
                        self.fleet.handle_deregistration(self.now(), &id, &peer);
                    }
                    Some(Request::Tasks(request)) => self.task_request(request),
                    Some(Request::Health { broker, reply }) => {
                        let _ = reply.send(self.fleet.health_report(&broker, self.now(), crate::clock::unix_ms()));
                    }
                    Some(Request::Shutdown { reply }) => {
                        self.shutdown(self.fleet.stop_budget()).await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown(self.fleet.stop_budget()).await;
                        return;
                    }
                },
                exit = self.exits_rx.recv() => {
                    if let Some((name, pid, how)) = exit {
                        self.fleet.handle_exited(self.now(), &name, pid, &how);
                    }
                }
                _ = sleep => self.fleet.handle_timeout(self.now()),
            }
        }
    }
}

/// One log line per fleet event; `expected` says an exit was asked for (a stop, a restart):
/// any other exit is a crash or a kill from outside, a warning.
fn log(event: &Event, expected: bool) {
    match event {
        Event::Registered {
            collector,
            kind,
            pid,
        } => tracing::info!(%collector, %kind, pid, "collector registered"),
        Event::Deregistered { collector } => {
            tracing::info!(%collector, "collector deregistered");
        }
        Event::Refused {
            collector,
            claim,
            pid,
            uid,
            count,
            why,
        } => {
            tracing::warn!(%collector, ?pid, uid, refused = count, %why, "{} refused", claim.as_str())
        }
        Event::MisaddressedHeartbeat { topic, collector } => {
            tracing::warn!(%topic, id = %collector, "heartbeat whose topic names another collector ignored");
        }
        Event::Unhealthy { collector, missed } => {
            tracing::warn!(%collector, "missed {missed} heartbeats: unhealthy");
        }
        Event::RestartingUnhealthy { collector } => {
            tracing::warn!(%collector, "restarting the unhealthy collector");
        }
        Event::Recovered { collector } => tracing::info!(%collector, "heartbeats again"),
        Event::Exited {
            collector,
            pid,
            how,
        } if expected => tracing::info!(%collector, pid, %how, "collector stopped"),
        Event::Exited {
            collector,
            pid,
            how,
        } => tracing::warn!(%collector, pid, %how, "collector exited unexpectedly"),
    }
}

/// The spec a collector is started with: its own, plus its id and state directory.
fn collector_env(spec: &CollectorSpec, agent_state: Option<&Path>) -> CollectorSpec {
    let mut spec = spec.clone();
    spec.env
        .insert(crate::paths::COLLECTOR_ID_ENV.into(), spec.name.clone());
    if let Some(root) = agent_state {
        let dir = crate::paths::collector_state_dir(root, &spec.name);
        if let Err(e) = crate::paths::create_private_dir(&dir) {
            tracing::warn!(collector = %spec.name, error = %e, "no state directory");
        }
        spec.env.insert(
            crate::paths::COLLECTOR_STATE_DIR_ENV.into(),
            dir.display().to_string(),
        );
    }
    spec
}
