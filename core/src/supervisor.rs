//! Supervision of one collector process (DESIGN.md section 7), as a pure state machine.
//!
//! The supervisor decides; the io crate's process manager executes its [`Action`]s (spawn,
//! signal the process group, kill) and reports back what the OS says (spawned with a pid,
//! spawn failed, exited). States: Stopped, Starting, Running, Paused, Stopping, Failed.
//!
//! Restart policy: when the process exits without being asked to, and `auto_restart` is on,
//! it is spawned again after a backoff that starts at `backoff_initial` and doubles up to
//! `backoff_max`; more than `max_restarts` restarts within `window` end in Failed, where it
//! stays until an operator starts it again. A restart because the collector stopped
//! heartbeating ([`Supervisor::restart_unhealthy`]) counts like a crash. A run that lasted
//! `stable_after` resets both the count and the backoff, and so does an operator's start or
//! restart. Graceful stop is SIGTERM, then SIGKILL once `stop_timeout` passes.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::Instant;

/// Restart and stop settings of one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restart after an unexpected exit.
    pub auto_restart: bool,
    /// Most restarts within `window` before giving up.
    pub max_restarts: u32,
    /// The window in which restarts are counted.
    pub window: Duration,
    /// First restart delay.
    pub backoff_initial: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
    /// A run this long counts as stable: restart count and backoff start over. Keep it at
    /// least `window`: a shorter one lets a reset forget restarts still inside the window,
    /// and more than `max_restarts` could then happen in one window (the agent's config
    /// refuses it).
    pub stable_after: Duration,
    /// Time between SIGTERM and SIGKILL on a graceful stop.
    pub stop_timeout: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            auto_restart: true,
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the collector is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Not running, not wanted.
    Stopped,
    /// A spawn is requested or scheduled (after a backoff) and not yet confirmed.
    Starting,
    /// Running.
    Running,
    /// Stopped with SIGSTOP; exempt from heartbeat checks.
    Paused,
    /// SIGTERM sent; waiting for the exit (SIGKILL after the stop timeout).
    Stopping,
    /// Gave up after too many restarts, until an operator starts it.
    Failed,
}

impl State {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signals the supervisor sends (to the collector's process group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Graceful stop.
    Term,
    /// Immediate stop.
    Kill,
    /// Pause.
    Stop,
    /// Resume.
    Cont,
}

/// What the process manager must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start the process; report `handle_spawned` or `handle_spawn_failed`.
    Spawn,
    /// Send a signal to the process group.
    Signal(Signal),
}

/// Why an operator's command was refused; each has a stable code on the wire
/// (`daemoneye.control.v1.LifecycleErrorCode`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// No collector with that name.
    #[error("no collector named {0:?}")]
    ProcessNotFound(String),
    /// Start of a collector that runs.
    #[error("collector {0:?} is already running")]
    AlreadyRunning(String),
    /// The OS could not start it.
    #[error("collector {name:?} could not be spawned: {reason}")]
    SpawnFailed {
        /// The collector.
        name: String,
        /// The OS error.
        reason: String,
    },
    /// A signal could not be delivered.
    #[error("collector {name:?} could not be stopped: {reason}")]
    TerminateFailed {
        /// The collector.
        name: String,
        /// The OS error.
        reason: String,
    },
    /// The command does not apply in the current state.
    #[error("collector {name:?} is {state}: cannot {command}")]
    InvalidState {
        /// The collector.
        name: String,
        /// Its state.
        state: State,
        /// The command refused.
        command: &'static str,
    },
    /// The platform has no such mechanism (e.g. SIGSTOP).
    #[error("{0} is not supported on this platform")]
    PlatformNotSupported(&'static str),
    /// The operation did not finish in time.
    #[error("collector {0:?} did not answer in time")]
    Timeout(String),
    /// Any other OS error.
    #[error("collector {name:?}: {reason}")]
    Io {
        /// The collector.
        name: String,
        /// The OS error.
        reason: String,
    },
}

impl LifecycleError {
    /// The stable wire code.
    pub fn code(&self) -> daemoneye_proto::pb::control::LifecycleErrorCode {
        use daemoneye_proto::pb::control::LifecycleErrorCode as C;
        match self {
            LifecycleError::ProcessNotFound(_) => C::ProcessNotFound,
            LifecycleError::AlreadyRunning(_) => C::AlreadyRunning,
            LifecycleError::SpawnFailed { .. } => C::SpawnFailed,
            LifecycleError::TerminateFailed { .. } => C::TerminateFailed,
            LifecycleError::InvalidState { .. } => C::InvalidState,
            LifecycleError::PlatformNotSupported(_) => C::PlatformNotSupported,
            LifecycleError::Timeout(_) => C::Timeout,
            LifecycleError::Io { .. } => C::Io,
        }
    }
}

/// Why a [`Supervisor`] wants [`handle_timeout`](Supervisor::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// A restart's backoff has run out.
    Restart,
    /// A graceful stop's grace period has run out: SIGKILL.
    Kill,
}

/// The supervisor of one collector.
#[derive(Debug)]
pub struct Supervisor {
    name: String,
    policy: RestartPolicy,
    state: State,
    pid: Option<u32>,
    /// When the current run started (spawn confirmed).
    started_at: Option<Instant>,
    /// Restarts within the window, oldest first.
    restarts: VecDeque<Instant>,
    total_restarts: u32,
    backoff: Duration,
    /// A scheduled spawn (restart after backoff).
    spawn_at: Option<Instant>,
    /// SIGKILL deadline of a graceful stop.
    kill_at: Option<Instant>,
    kill_sent: bool,
    /// After the current stop completes, start again (operator restart).
    start_after_stop: bool,
    /// The current stop is a health-driven restart: its end counts as a crash (restart
    /// count, window and backoff), with this reason.
    crash_after_stop: Option<String>,
    last_exit: Option<String>,
    actions: VecDeque<Action>,
}

impl Supervisor {
    /// A stopped supervisor.
    pub fn new(name: impl Into<String>, policy: RestartPolicy) -> Self {
        let backoff = policy.backoff_initial;
        Self {
            name: name.into(),
            policy,
            state: State::Stopped,
            pid: None,
            started_at: None,
            restarts: VecDeque::new(),
            total_restarts: 0,
            backoff,
            spawn_at: None,
            kill_at: None,
            kill_sent: false,
            start_after_stop: false,
            crash_after_stop: None,
            last_exit: None,
            actions: VecDeque::new(),
        }
    }

    /// The collector's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }
    /// Pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
    /// When its current process started (`None` while it has none).
    pub fn running_since(&self) -> Option<Instant> {
        self.pid.and(self.started_at)
    }
    /// Automatic restarts so far.
    pub fn restarts(&self) -> u32 {
        self.total_restarts
    }
    /// How the last run ended.
    pub fn last_exit(&self) -> Option<&str> {
        self.last_exit.as_deref()
    }
    /// The policy.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    fn invalid(&self, command: &'static str) -> LifecycleError {
        LifecycleError::InvalidState {
            name: self.name.clone(),
            state: self.state,
            command,
        }
    }

    fn spawn_now(&mut self) {
        self.state = State::Starting;
        self.spawn_at = None;
        self.actions.push_back(Action::Spawn);
    }

    /// Operator: start. From Failed this also forgets the restart history.
    pub fn start(&mut self, _now: Instant) -> Result<(), LifecycleError> {
        match self.state {
            State::Stopped | State::Failed => {
                self.restarts.clear();
                self.backoff = self.policy.backoff_initial;
                self.spawn_now();
                Ok(())
            }
            State::Starting | State::Running | State::Paused => {
                Err(LifecycleError::AlreadyRunning(self.name.clone()))
            }
            State::Stopping => Err(self.invalid("start")),
        }
    }

    /// Operator: graceful stop (SIGTERM, SIGKILL after the stop timeout).
    pub fn stop(&mut self, now: Instant) -> Result<(), LifecycleError> {
        match self.state {
            State::Running | State::Paused => {
                // A stopped process cannot act on SIGTERM until it runs again.
                let cont = self.state == State::Paused;
                self.begin_stop(now, cont, None);
                Ok(())
            }
            State::Stopping if self.start_after_stop || self.crash_after_stop.is_some() => {
                // A restart under way becomes a plain stop.
                self.start_after_stop = false;
                self.crash_after_stop = None;
                Ok(())
            }
            State::Starting if self.spawn_at.is_some() => {
                // Only a scheduled restart: cancel it.
                self.spawn_at = None;
                self.state = State::Stopped;
                Ok(())
            }
            State::Starting | State::Stopping | State::Stopped | State::Failed => {
                Err(self.invalid("stop"))
            }
        }
    }

    /// Operator: stop, then start again.
    pub fn restart(&mut self, now: Instant) -> Result<(), LifecycleError> {
        match self.state {
            State::Running | State::Paused => {
                self.stop(now)?;
                self.start_after_stop = true;
                Ok(())
            }
            State::Stopped | State::Failed => self.start(now),
            State::Starting | State::Stopping => Err(self.invalid("restart")),
        }
    }

    /// The agent found the collector unhealthy (it stopped heartbeating): stop it (SIGCONT
    /// first, so a frozen process can act on SIGTERM; SIGKILL after the stop timeout) and
    /// treat its end as a crash. Unlike an operator's restart this counts toward
    /// `max_restarts` and waits out the backoff, so a collector that keeps hanging ends in
    /// Failed. Only a Running collector is restarted (a Paused one is exempt).
    pub fn restart_unhealthy(&mut self, now: Instant, reason: &str) -> Result<(), LifecycleError> {
        if self.state != State::Running {
            return Err(self.invalid("restart an unhealthy"));
        }
        self.begin_stop(now, true, Some(reason.to_string()));
        Ok(())
    }

    /// SIGTERM (after SIGCONT when `cont`), SIGKILL at the stop timeout; the end counts as a
    /// crash with `crash_after` when given.
    fn begin_stop(&mut self, now: Instant, cont: bool, crash_after: Option<String>) {
        if cont {
            self.actions.push_back(Action::Signal(Signal::Cont));
        }
        self.actions.push_back(Action::Signal(Signal::Term));
        self.state = State::Stopping;
        self.kill_at = Some(now + self.policy.stop_timeout);
        self.kill_sent = false;
        self.start_after_stop = false;
        self.crash_after_stop = crash_after;
    }

    /// Operator: SIGSTOP.
    pub fn pause(&mut self, _now: Instant) -> Result<(), LifecycleError> {
        if self.state != State::Running {
            return Err(self.invalid("pause"));
        }
        self.actions.push_back(Action::Signal(Signal::Stop));
        self.state = State::Paused;
        Ok(())
    }

    /// Operator: SIGCONT.
    pub fn resume(&mut self, _now: Instant) -> Result<(), LifecycleError> {
        if self.state != State::Paused {
            return Err(self.invalid("resume"));
        }
        self.actions.push_back(Action::Signal(Signal::Cont));
        self.state = State::Running;
        Ok(())
    }

    /// The process manager started the process.
    pub fn handle_spawned(&mut self, now: Instant, pid: u32) {
        if self.state == State::Starting {
            self.state = State::Running;
            self.pid = Some(pid);
            self.started_at = Some(now);
        }
    }

    /// The process manager could not start the process: counts as a crash.
    pub fn handle_spawn_failed(&mut self, now: Instant, reason: &str) {
        if self.state == State::Starting {
            self.pid = None;
            self.started_at = Some(now);
            self.crashed(now, format!("spawn failed: {reason}"));
        }
    }

    /// The process exited (reaped by the process manager), with how.
    pub fn handle_exited(&mut self, now: Instant, how: &str) {
        self.pid = None;
        match self.state {
            State::Stopping => {
                self.kill_at = None;
                if let Some(reason) = self.crash_after_stop.take() {
                    self.crashed(now, format!("{reason}; {how}"));
                    return;
                }
                self.last_exit = Some(how.to_string());
                self.state = State::Stopped;
                if std::mem::take(&mut self.start_after_stop) {
                    self.restarts.clear();
                    self.backoff = self.policy.backoff_initial;
                    self.spawn_now();
                }
            }
            State::Running | State::Paused | State::Starting => self.crashed(now, how.to_string()),
            State::Stopped | State::Failed => {}
        }
    }

    fn crashed(&mut self, now: Instant, how: String) {
        self.last_exit = Some(how);
        if self
            .started_at
            .is_some_and(|t| now.saturating_since(t) >= self.policy.stable_after)
        {
            self.restarts.clear();
            self.backoff = self.policy.backoff_initial;
        }
        self.started_at = None;
        if !self.policy.auto_restart {
            self.state = State::Stopped;
            return;
        }
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_since(*t) >= self.policy.window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u32 >= self.policy.max_restarts {
            self.state = State::Failed;
            return;
        }
        self.state = State::Starting;
        self.spawn_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
    }

    /// Time passed: a scheduled restart is due, or a stop timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.spawn_at
            && at <= now
            && self.state == State::Starting
        {
            self.restarts.push_back(now);
            self.total_restarts += 1;
            self.spawn_now();
        }
        if let Some(at) = self.kill_at
            && at <= now
            && self.state == State::Stopping
            && !self.kill_sent
        {
            self.kill_sent = true;
            self.actions.push_back(Action::Signal(Signal::Kill));
        }
    }

    /// The next action for the process manager.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next deadline and what it is for: a scheduled restart or the SIGKILL of a stop.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let kill = self
            .kill_at
            .filter(|_| !self.kill_sent && self.state == State::Stopping)
            .map(|at| (at, Timer::Kill));
        crate::time::earlier(self.spawn_at.map(|at| (at, Timer::Restart)), kill)
    }
}
