//! The process manager: carries out the core [`Supervisor`]s' actions with real processes.
//!
//! Each collector runs in its own process group (signals go to the group, so a collector's
//! children go with it), and a killed agent leaves nothing of the group behind. The agent
//! starts itself as a small supervisor shim (`daemoneye-agent exec-collector -- BINARY
//! ARGS...`, in a process group of its own) that asks for SIGTERM when the agent dies
//! (`prctl(PR_SET_PDEATHSIG)`, set on itself: no `unsafe`), then starts the collector as the
//! leader of a new group through a second step (`exec-collector --exec`) that asks for
//! SIGKILL when the shim dies and `exec`s the collector, keeping its pid. The shim reports
//! the collector's pid and, later, how it exited on a pipe (its stdin) and otherwise waits.
//! When the agent dies (SIGTERM, or its parent changes) the shim sends SIGKILL and SIGCONT
//! to the collector's whole group, so forked and stopped members die too, then exits. A
//! stopped process cannot act and a SIGKILLed one cannot clean up: that is why the part
//! that cleans up lives outside the collector's group and gets a catchable signal. Signals
//! (pause, resume, stop) go to the collector's group; the shim is not in it. Exits are
//! reaped by tokio (no zombies) and reported to the supervisor. Decisions (restart,
//! backoff, SIGKILL after the stop timeout) are all the supervisor's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::registry::{
    self, CollectorHealth, Expected, Peer, Registry, RegistryEvent, SourceCaps,
};
use daemoneye_core::supervisor::{
    Action, LifecycleError, RestartPolicy, Signal, State, Supervisor,
};
use daemoneye_proto::pb::control as pbc;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, MonotonicClock};

/// Environment prefixes that belong to the agent and never reach a collector.
const AGENT_ENV_PREFIX: &str = "DAEMONEYE_AGENT_";

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

/// Finds a collector binary: an explicit path (containing `/`), else the agent's own
/// directory, else `PATH`.
pub fn resolve_binary(name: &str) -> Result<PathBuf, String> {
    let is_file = |p: &Path| p.is_file();
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_file(&p) {
            Ok(p)
        } else {
            Err(format!("binary {name} does not exist"))
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
    Err(format!(
        "binary {name:?} not found in the agent's directory or PATH"
    ))
}

/// The broker's peer credentials of the connection a control message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCreds {
    /// The publisher's pid, when the OS says.
    pub pid: Option<u32>,
    /// The publisher's uid.
    pub uid: u32,
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
        reply: oneshot::Sender<pbc::RegisterResponse>,
    },
    /// A heartbeat arrived.
    Heartbeat {
        /// The collector's id.
        id: String,
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
    /// Stop every collector (in parallel) within the budget, then answer.
    Shutdown {
        /// Longest wait before SIGKILL.
        budget: Duration,
        /// Answered once all are gone.
        reply: oneshot::Sender<()>,
    },
}

struct Managed {
    spec: CollectorSpec,
    sup: Supervisor,
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

/// Real processes: each collector in its own process group, started through the agent's
/// `exec-collector` shim (parent-death signal), reaped by tokio.
#[derive(Debug, Clone)]
pub struct OsSpawner {
    /// The agent's own executable.
    pub shim: PathBuf,
}

impl Spawner for OsSpawner {
    fn spawn(&mut self, spec: &CollectorSpec, socket: &Path) -> std::io::Result<(u32, ExitFuture)> {
        use std::io::Read;
        use tokio::io::AsyncReadExt;
        let (report, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut shim = spawn(&self.shim, spec, socket, report_w)?;
        // The shim's first line is the collector's pid (or it exits at once: EOF). It comes
        // after two execs of the shim; the wait is that short, and bounded by the shim.
        let mut report = std::fs::File::from(report);
        let mut first = Vec::new();
        let mut byte = [0u8; 1];
        while first.len() < 64 && report.read(&mut byte)? == 1 && byte[0] != b'\n' {
            first.push(byte[0]);
        }
        let pid = String::from_utf8_lossy(&first)
            .strip_prefix("pid ")
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(pid) = pid else {
            let _ = shim.start_kill();
            return Err(std::io::Error::other(format!(
                "the collector shim did not start it: {}",
                String::from_utf8_lossy(&first)
            )));
        };
        let mut report = tokio::net::unix::pipe::Receiver::from_owned_fd(report.into())?;
        let exit = Box::pin(async move {
            let mut text = String::new();
            let _ = report.read_to_string(&mut text).await;
            let status = shim.wait().await;
            // The leader is gone; what it left in its group goes too, so a crashed collector
            // leaves no orphans behind (the shim did so already; this covers its own death).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            text.lines()
                .find_map(|l| l.strip_prefix("exit "))
                .map(str::to_string)
                .unwrap_or_else(|| format!("its supervisor shim {}", exit_text(status)))
        });
        Ok((pid, exit))
    }

    fn signal(&mut self, pid: u32, signal: Signal) -> std::io::Result<()> {
        let sig = match signal {
            Signal::Term => nix::sys::signal::Signal::SIGTERM,
            Signal::Kill => nix::sys::signal::Signal::SIGKILL,
            Signal::Stop => nix::sys::signal::Signal::SIGSTOP,
            Signal::Cont => nix::sys::signal::Signal::SIGCONT,
        };
        // The collector leads its own group: signal the whole group.
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig)
            .map_err(std::io::Error::from)
    }
}

/// The process manager.
pub struct ProcessManager<S: Spawner = OsSpawner> {
    collectors: BTreeMap<String, Managed>,
    registry: Registry,
    heartbeat_interval: Duration,
    /// Wall-clock time of each collector's last heartbeat, for display.
    last_seen: BTreeMap<String, std::time::SystemTime>,
    socket: PathBuf,
    /// The agent's own state directory: each collector gets one inside it.
    state_dir: Option<PathBuf>,
    /// Collectors started elsewhere that the config names, with their uid.
    externals: BTreeMap<String, u32>,
    /// Refused registrations, heartbeats and deregistrations, per claimed id.
    refused: BTreeMap<String, u64>,
    spawner: S,
    clock: MonotonicClock,
    exits_tx: mpsc::UnboundedSender<(String, u32, String)>,
    exits_rx: mpsc::UnboundedReceiver<(String, u32, String)>,
}

impl<S: Spawner> std::fmt::Debug for ProcessManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessManager")
            .field("collectors", &self.collectors.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// "exited with status 3", "killed by signal 9".
pub fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

impl ProcessManager<OsSpawner> {
    /// A manager for `specs`, whose collectors connect to `socket`. `shim` is the agent's
    /// own executable (for `exec-collector`).
    pub fn new(
        specs: Vec<CollectorSpec>,
        socket: PathBuf,
        shim: PathBuf,
        heartbeat_interval: Duration,
    ) -> Self {
        Self::with_spawner(specs, socket, OsSpawner { shim }, heartbeat_interval)
    }
}

impl<S: Spawner> ProcessManager<S> {
    /// A manager that starts collectors with `spawner`.
    pub fn with_spawner(
        specs: Vec<CollectorSpec>,
        socket: PathBuf,
        spawner: S,
        heartbeat_interval: Duration,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let collectors = specs
            .into_iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    Managed {
                        sup: Supervisor::new(spec.name.clone(), spec.policy.clone()),
                        spec,
                    },
                )
            })
            .collect();
        Self {
            collectors,
            registry: Registry::new(heartbeat_interval, 3),
            heartbeat_interval,
            last_seen: BTreeMap::new(),
            socket,
            state_dir: None,
            externals: BTreeMap::new(),
            refused: BTreeMap::new(),
            spawner,
            clock: MonotonicClock::default(),
            exits_tx,
            exits_rx,
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
        self.externals = externals.into_iter().collect();
        self
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Whether `peer` may speak for collector `id` (the core's rule, on the OS's facts);
    /// a refusal is counted and logged.
    fn admit(&mut self, id: &str, peer: PeerCreds, what: &str) -> bool {
        let expected = match (self.collectors.get(id), self.externals.get(id)) {
            (Some(m), _) => Expected::Managed { pid: m.sup.pid() },
            (None, Some(&uid)) => Expected::External { uid },
            (None, None) => Expected::Unknown,
        };
        let facts = Peer {
            pid: peer.pid,
            uid: peer.uid,
            ancestors: peer
                .pid
                .map(|p| self.spawner.ancestors(p))
                .unwrap_or_default(),
        };
        match registry::admit(&expected, &facts) {
            Ok(()) => true,
            Err(why) => {
                let n = self.refused.entry(id.to_string()).or_default();
                *n += 1;
                tracing::warn!(collector = %id, pid = ?peer.pid, uid = peer.uid, refused = *n, %why, "{what} refused");
                false
            }
        }
    }

    /// Carries out every pending supervisor action.
    fn execute(&mut self) {
        let now = self.now();
        for m in self.collectors.values_mut() {
            while let Some(action) = m.sup.poll_output() {
                match action {
                    Action::Spawn => match self.spawner.spawn(
                        &collector_env(&m.spec, self.state_dir.as_deref()),
                        &self.socket,
                    ) {
                        Ok((pid, exit)) => {
                            tracing::info!(collector = %m.spec.name, pid, "collector started");
                            // A new process registers anew; until then it is judged by its
                            // process state alone.
                            self.registry.deregister(&m.spec.name);
                            m.sup.handle_spawned(now, pid);
                            let tx = self.exits_tx.clone();
                            let name = m.spec.name.clone();
                            tokio::spawn(async move {
                                let how = exit.await;
                                let _ = tx.send((name, pid, how));
                            });
                        }
                        Err(e) => {
                            tracing::warn!(collector = %m.spec.name, error = %e, "collector could not be spawned");
                            m.sup.handle_spawn_failed(now, &e.to_string());
                        }
                    },
                    Action::Signal(sig) => {
                        if let Some(pid) = m.sup.pid()
                            && let Err(e) = self.spawner.signal(pid, sig)
                        {
                            tracing::warn!(collector = %m.spec.name, pid, ?sig, error = %e, "signal failed");
                        }
                    }
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let sups = self
            .collectors
            .values()
            .filter_map(|m| m.sup.poll_timeout().map(|(at, _)| at));
        sups.chain(self.registry.poll_timeout().map(|(at, _)| at))
            .min()
    }

    fn register(&mut self, r: pbc::RegisterRequest, peer: PeerCreds) -> pbc::RegisterResponse {
        let now = self.now();
        if let Err(e) = daemoneye_proto::frame::validate_name("collector_id", &r.collector_id) {
            return pbc::RegisterResponse {
                accepted: false,
                message: e.to_string(),
                heartbeat_interval_ms: 0,
            };
        }
        if !self.admit(&r.collector_id, peer, "registration") {
            return pbc::RegisterResponse {
                accepted: false,
                message: format!(
                    "registration as {:?} refused: not from the process the agent runs for it, nor from a configured external collector's uid",
                    r.collector_id
                ),
                heartbeat_interval_ms: 0,
            };
        }
        tracing::info!(collector = %r.collector_id, kind = %r.collector_type, pid = r.pid, "collector registered");
        self.registry.register(
            now,
            &r.collector_id,
            &r.collector_type,
            SourceCaps(r.capabilities),
            peer.pid.unwrap_or(r.pid),
        );
        self.last_seen
            .insert(r.collector_id.clone(), std::time::SystemTime::now());
        if let Some(m) = self.collectors.get(&r.collector_id)
            && m.sup.state() == State::Paused
        {
            self.registry.set_paused(now, &r.collector_id, true);
        }
        pbc::RegisterResponse {
            accepted: true,
            message: String::new(),
            heartbeat_interval_ms: u64::try_from(self.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    /// Acts on the registry's findings: an unhealthy supervised collector is restarted.
    fn registry_events(&mut self) {
        let now = self.now();
        while let Some(event) = self.registry.poll_output() {
            match event {
                RegistryEvent::Unhealthy { id } => {
                    tracing::warn!(collector = %id, "missed 3 heartbeats: unhealthy");
                    if let Some(m) = self.collectors.get_mut(&id)
                        && m.sup.state() == State::Running
                    {
                        tracing::warn!(collector = %id, "restarting the unhealthy collector");
                        // Counts toward max_restarts like a crash: one that keeps hanging
                        // ends in Failed.
                        let _ = m.sup.restart_unhealthy(now, "missed 3 heartbeats");
                    }
                }
                RegistryEvent::Recovered { id } => {
                    tracing::info!(collector = %id, "heartbeats again")
                }
                other => tracing::info!(?other, "task moved"),
            }
        }
    }

    fn last_heartbeat_ms(&self, id: &str) -> u64 {
        self.last_seen
            .get(id)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn status(&self, m: &Managed) -> pbc::CollectorStatus {
        let reg = self.registry.get(&m.spec.name);
        let unhealthy = reg.is_some_and(|r| r.health == CollectorHealth::Unhealthy);
        let state = if unhealthy && m.sup.state() == State::Running {
            "unhealthy"
        } else {
            m.sup.state().as_str()
        };
        pbc::CollectorStatus {
            name: m.spec.name.clone(),
            state: state.to_string(),
            pid: m.sup.pid().unwrap_or(0),
            restarts: m.sup.restarts(),
            last_heartbeat_ms: self.last_heartbeat_ms(&m.spec.name),
            capabilities: reg.map_or(0, |r| r.capabilities.0),
            health: m.sup.last_exit().unwrap_or("").to_string(),
            refused: self.refused.get(&m.spec.name).copied().unwrap_or(0),
        }
    }

    /// The collectors the config names as started elsewhere: "external" while registered,
    /// "absent" when not.
    fn external(&self) -> Vec<pbc::CollectorStatus> {
        self.externals
            .keys()
            .map(|id| {
                let r = self.registry.get(id);
                pbc::CollectorStatus {
                    name: id.clone(),
                    state: match r {
                        None => "absent",
                        Some(r) if r.health == CollectorHealth::Unhealthy => "unhealthy",
                        Some(_) => "external",
                    }
                    .to_string(),
                    pid: r.map_or(0, |r| r.pid),
                    restarts: 0,
                    last_heartbeat_ms: self.last_heartbeat_ms(id),
                    capabilities: r.map_or(0, |r| r.capabilities.0),
                    health: String::new(),
                    refused: self.refused.get(id).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// Refusals under ids the config does not name, for the health report.
    fn unknown_refusals(&self) -> String {
        let unknown: Vec<String> = self
            .refused
            .iter()
            .filter(|(id, _)| {
                !self.collectors.contains_key(*id) && !self.externals.contains_key(*id)
            })
            .map(|(id, n)| format!("{id} ({n})"))
            .collect();
        if unknown.is_empty() {
            String::new()
        } else {
            format!(
                "refused registrations or heartbeats for collectors the config does not name: {}",
                unknown.join(", ")
            )
        }
    }

    fn lifecycle(&mut self, op: pbc::LifecycleOp, name: &str) -> pbc::LifecycleResponse {
        let now = self.now();
        if op == pbc::LifecycleOp::Status && name.is_empty() {
            let mut collectors: Vec<_> = self.collectors.values().map(|m| self.status(m)).collect();
            collectors.extend(self.external());
            return pbc::LifecycleResponse {
                error: 0,
                message: self.unknown_refusals(),
                collectors,
            };
        }
        let Some(m) = self.collectors.get_mut(name) else {
            let e = LifecycleError::ProcessNotFound(name.to_string());
            return pbc::LifecycleResponse {
                error: e.code() as i32,
                message: e.to_string(),
                collectors: Vec::new(),
            };
        };
        let result = match op {
            pbc::LifecycleOp::Start => m.sup.start(now),
            pbc::LifecycleOp::Stop => m.sup.stop(now),
            pbc::LifecycleOp::Restart => m.sup.restart(now),
            pbc::LifecycleOp::Pause => m.sup.pause(now),
            pbc::LifecycleOp::Resume => m.sup.resume(now),
            pbc::LifecycleOp::Status | pbc::LifecycleOp::Unspecified => Ok(()),
        };
        match (op, &result) {
            (pbc::LifecycleOp::Pause, Ok(())) => self.registry.set_paused(now, name, true),
            (pbc::LifecycleOp::Resume, Ok(())) => self.registry.set_paused(now, name, false),
            _ => {}
        }
        self.execute();
        let m = &self.collectors[name];
        let (error, message) = match result {
            Ok(()) => (0, String::new()),
            Err(e) => (e.code() as i32, e.to_string()),
        };
        pbc::LifecycleResponse {
            error,
            message,
            collectors: vec![self.status(m)],
        }
    }

    fn all_down(&self) -> bool {
        self.collectors.values().all(|m| {
            matches!(m.sup.state(), State::Stopped | State::Failed) && m.sup.pid().is_none()
        })
    }

    /// Stops every collector in parallel. Each gets SIGKILL after its own stop timeout (the
    /// supervisors' timers keep running); `budget` caps the whole wait.
    async fn shutdown(&mut self, budget: Duration) {
        let now = self.now();
        for m in self.collectors.values_mut() {
            // Scheduled restarts are cancelled; running ones get SIGTERM.
            let _ = m.sup.stop(now);
        }
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            self.execute();
            if self.all_down() || tokio::time::Instant::now() >= deadline {
                break;
            }
            let next = self.deadline().map_or(deadline, |t| {
                tokio::time::Instant::from_std(self.clock.to_std(t)).min(deadline)
            });
            tokio::select! {
                biased;
                exit = self.exits_rx.recv() => {
                    if let Some((name, pid, how)) = exit {
                        self.exited(&name, pid, &how);
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    let now = self.now();
                    for m in self.collectors.values_mut() {
                        m.sup.handle_timeout(now);
                    }
                }
            }
        }
        // Past the budget, whatever is left gets SIGKILL, and is reaped before the agent exits.
        for m in self.collectors.values() {
            if let Some(pid) = m.sup.pid() {
                let _ = self.spawner.signal(pid, Signal::Kill);
            }
        }
        let reap_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.all_down() && tokio::time::Instant::now() < reap_deadline {
            if let Ok(Some((name, pid, how))) =
                tokio::time::timeout_at(reap_deadline, self.exits_rx.recv()).await
            {
                self.exited(&name, pid, &how);
            }
        }
    }

    fn exited(&mut self, name: &str, pid: u32, how: &str) {
        let now = self.now();
        if let Some(m) = self.collectors.get_mut(name)
            && m.sup.pid() == Some(pid)
        {
            tracing::info!(collector = name, pid, how, "collector exited");
            m.sup.handle_exited(now, how);
        }
    }

    /// Starts every collector, then serves requests until shut down.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let now = self.now();
        for m in self.collectors.values_mut() {
            let _ = m.sup.start(now);
        }
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
                        let _ = reply.send(self.register(request, peer));
                    }
                    Some(Request::Heartbeat { id, peer }) => {
                        let now = self.now();
                        if self.registry.get(&id).is_some()
                            && self.admit(&id, peer, "heartbeat")
                            && self.registry.heartbeat(now, &id)
                        {
                            self.last_seen.insert(id, std::time::SystemTime::now());
                        }
                    }
                    Some(Request::Deregister { id, peer }) => {
                        if self.registry.get(&id).is_some() && self.admit(&id, peer, "deregistration") {
                            tracing::info!(collector = %id, "collector deregistered");
                            self.registry.deregister(&id);
                            self.last_seen.remove(&id);
                        }
                    }
                    Some(Request::Shutdown { budget, reply }) => {
                        self.shutdown(budget).await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown(Duration::from_secs(5)).await;
                        return;
                    }
                },
                exit = self.exits_rx.recv() => {
                    if let Some((name, pid, how)) = exit {
                        self.exited(&name, pid, &how);
                    }
                }
                _ = sleep => {
                    let now = self.now();
                    for m in self.collectors.values_mut() {
                        m.sup.handle_timeout(now);
                    }
                    self.registry.handle_timeout(now);
                }
            }
            self.registry_events();
        }
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

fn spawn(
    shim: &Path,
    spec: &CollectorSpec,
    socket: &Path,
    report: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(shim);
    cmd.arg("exec-collector")
        .arg("--")
        .arg(&spec.binary)
        .args(&spec.args);
    // The agent's own settings are never inherited by accident.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(AGENT_ENV_PREFIX) {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(&spec.env).env(crate::paths::SOCKET_ENV, socket);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    // The shim's stdin is the write end of its report pipe; it leads a group of its own,
    // outside the collector's (which it creates).
    cmd.process_group(0)
        .stdin(Stdio::from(report))
        .kill_on_drop(false);
    cmd.spawn()
}

/// The `exec-collector` supervisor shim, run by the agent: starts the collector in a new
/// process group (through `exec-collector --exec`), reports its pid and its exit on stdin
/// (a pipe from the agent), and when the agent dies kills the collector's whole group.
/// Returns the shim's exit code.
pub fn collector_shim(binary: &Path, args: &[String]) -> u8 {
    use std::io::Write;
    use std::os::fd::AsFd;
    let report = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    let Ok(mut report) = report else {
        eprintln!("daemoneye-agent exec-collector: no report pipe on stdin");
        return 127;
    };
    let parent = nix::unistd::getppid();
    #[cfg(target_os = "linux")]
    {
        // Catchable, so the shim can take the collector's group with it.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
            let _ = writeln!(report, "error cannot set the parent-death signal: {e}");
            return 127;
        }
    }
    // The agent may have died before the signal was set: then nobody would ever send it.
    if nix::unistd::getppid() != parent {
        return 127;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(report, "error {e}");
            return 127;
        }
    };
    runtime.block_on(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    let _ = writeln!(report, "error {e}");
                    return 127;
                }
            };
        let me = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(report, "error {e}");
                return 127;
            }
        };
        let mut cmd = tokio::process::Command::new(me);
        cmd.arg("exec-collector")
            .arg("--exec")
            .arg("--")
            .arg(binary)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(report, "error {e}");
                return 127;
            }
        };
        let pid = child.id().unwrap_or(0);
        let group = nix::unistd::Pid::from_raw(pid as i32);
        if writeln!(report, "pid {pid}").is_err() {
            // The agent is gone already.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait().await;
            return 0;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                status = child.wait() => {
                    // What the collector left in its group goes with it.
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    let _ = writeln!(report, "exit {}", exit_text(status));
                    return 0;
                }
                _ = term.recv() => break,
                // Belt and braces: the parent-death signal is Linux's; a new parent means
                // the agent died.
                _ = tick.tick() => {
                    if nix::unistd::getppid() != parent {
                        break;
                    }
                }
            }
        }
        // The agent died: the collector's whole group goes, stopped members too.
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGCONT);
        let _ = child.wait().await;
        0
    })
}

/// The second step of the shim (`exec-collector --exec`), run as the new group's leader:
/// ask for SIGKILL when the supervisor shim dies, then become the collector. Returns only
/// on failure.
pub fn exec_collector(binary: &Path, args: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    #[cfg(target_os = "linux")]
    {
        let parent = nix::unistd::getppid();
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
            return std::io::Error::other(format!("cannot set the parent-death signal: {e}"));
        }
        // The agent may have died between fork and prctl: then nobody would ever signal us.
        if nix::unistd::getppid() != parent {
            return std::io::Error::other("the agent exited before the collector started");
        }
    }
    std::process::Command::new(binary).args(args).exec()
}
