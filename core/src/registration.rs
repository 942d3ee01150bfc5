//! A collector's registration with the agent (DESIGN.md section 7), collector side.
//!
//! Unregistered -> Registering -> Registered -> Deregistering -> Unregistered, or Failed
//! after `max_attempts` unanswered or refused attempts. Retries wait an exponential backoff
//! with jitter (from the seeded RNG passed in, so runs replay). A registered collector
//! heartbeats every interval (the agent may set the interval in its answer). When the
//! connection to the broker is lost, registration starts over once it is back.
//!
//! The machine decides what to send and when; the collector runtime sends it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Instant;
use crate::rng::SeededRng;
use crate::time::earlier;

/// Why a [`Registration`] wants [`handle_timeout`](Registration::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The agent has not answered a request in time.
    Answer,
    /// A registration retry's backoff has run out.
    Retry,
    /// The next heartbeat is due.
    Heartbeat,
}

/// Timing of registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// Heartbeat interval until the agent says otherwise.
    pub heartbeat_interval: Duration,
    /// How long to wait for the agent's answer.
    pub request_timeout: Duration,
    /// Attempts before Failed.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            max_attempts: 10,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Registration state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegState {
    /// Not registered.
    Unregistered,
    /// A RegisterRequest is out, or a retry is scheduled.
    Registering {
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// Registered; heartbeating.
    Registered,
    /// A Deregister is out.
    Deregistering,
    /// Gave up after too many attempts.
    Failed,
}

/// What the collector runtime must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegAction {
    /// A RegisterRequest.
    Register,
    /// A Heartbeat with this sequence.
    Heartbeat {
        /// Increasing per registration.
        sequence: u64,
    },
    /// A Deregister.
    Deregister,
}

/// The registration machine.
#[derive(Debug)]
pub struct Registration {
    config: RegistrationConfig,
    rng: SeededRng,
    state: RegState,
    heartbeat_interval: Duration,
    /// Answer deadline of the request in flight.
    answer_by: Option<Instant>,
    /// A scheduled retry.
    retry_at: Option<Instant>,
    next_heartbeat: Option<Instant>,
    sequence: u64,
    actions: VecDeque<RegAction>,
}

impl Registration {
    /// An unregistered machine; `seed` drives the retry jitter.
    pub fn new(config: RegistrationConfig, seed: u64) -> Self {
        let heartbeat_interval = config.heartbeat_interval;
        Self {
            config,
            rng: SeededRng::new(seed),
            state: RegState::Unregistered,
            heartbeat_interval,
            answer_by: None,
            retry_at: None,
            next_heartbeat: None,
            sequence: 0,
            actions: VecDeque::new(),
        }
    }

    /// Current state.
    pub fn state(&self) -> RegState {
        self.state
    }

    /// The heartbeat interval in force.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn send_register(&mut self, now: Instant, attempt: u32) {
        self.state = RegState::Registering { attempt };
        self.retry_at = None;
        self.answer_by = Some(now + self.config.request_timeout);
        self.actions.push_back(RegAction::Register);
    }

    /// Starts registering (also after the broker connection came back).
    pub fn start(&mut self, now: Instant) {
        self.next_heartbeat = None;
        self.send_register(now, 1);
    }

    /// The broker connection is gone: nothing can be sent until `start` again.
    pub fn handle_disconnect(&mut self, _now: Instant) {
        if self.state != RegState::Failed {
            self.state = RegState::Unregistered;
        }
        self.answer_by = None;
        self.retry_at = None;
        self.next_heartbeat = None;
    }

    /// The agent answered the registration.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        accepted: bool,
        heartbeat_interval: Option<Duration>,
    ) {
        let RegState::Registering { attempt } = self.state else {
            return;
        };
        self.answer_by = None;
        if accepted {
            if let Some(hb) = heartbeat_interval.filter(|d| !d.is_zero()) {
                self.heartbeat_interval = hb;
            }
            self.state = RegState::Registered;
            self.sequence = 0;
            self.next_heartbeat = Some(now + self.heartbeat_interval);
        } else {
            self.retry(now, attempt);
        }
    }

    fn retry(&mut self, now: Instant, attempt: u32) {
        if attempt >= self.config.max_attempts {
            self.state = RegState::Failed;
            self.retry_at = None;
            return;
        }
        // Exponential, capped, with full jitter over its upper half: many collectors
        // restarted together do not all knock at once.
        let exp = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << (attempt - 1).min(20));
        let cap = exp.min(self.config.backoff_max);
        let delay = cap.mul_f64(0.5 + 0.5 * self.rng.unit());
        self.state = RegState::Registering {
            attempt: attempt + 1,
        };
        self.retry_at = Some(now + delay);
    }

    /// A heartbeat now, out of cadence (the collector was asked for its health); the next
    /// one stays on time. Nothing while not registered.
    pub fn heartbeat_now(&mut self, _now: Instant) {
        if self.state == RegState::Registered {
            self.sequence += 1;
            self.actions.push_back(RegAction::Heartbeat {
                sequence: self.sequence,
            });
        }
    }

    /// Stops: tells the agent, then Unregistered (also if it does not answer in time).
    pub fn deregister(&mut self, now: Instant) {
        if self.state == RegState::Registered {
            self.state = RegState::Deregistering;
            self.next_heartbeat = None;
            self.answer_by = Some(now + self.config.request_timeout);
            self.actions.push_back(RegAction::Deregister);
        }
    }

    /// The agent confirmed the deregistration.
    pub fn handle_deregistered(&mut self, _now: Instant) {
        if self.state == RegState::Deregistering {
            self.state = RegState::Unregistered;
            self.answer_by = None;
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            RegState::Registering { attempt } => {
                if let Some(at) = self.retry_at
                    && at <= now
                {
                    self.send_register(now, attempt);
                } else if let Some(by) = self.answer_by
                    && by <= now
                {
                    self.answer_by = None;
                    self.retry(now, attempt);
                }
            }
            RegState::Registered => {
                if let Some(at) = self.next_heartbeat
                    && at <= now
                {
                    self.sequence += 1;
                    self.actions.push_back(RegAction::Heartbeat {
                        sequence: self.sequence,
                    });
                    // Keep the cadence; after a long gap, one heartbeat, then on time again.
                    let mut next = at + self.heartbeat_interval;
                    if next <= now {
                        next = now + self.heartbeat_interval;
                    }
                    self.next_heartbeat = Some(next);
                }
            }
            RegState::Deregistering => {
                if self.answer_by.is_some_and(|by| by <= now) {
                    self.state = RegState::Unregistered;
                    self.answer_by = None;
                }
            }
            RegState::Unregistered | RegState::Failed => {}
        }
    }

    /// The next thing to send.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<RegAction> {
        self.actions.pop_front()
    }

    /// The next deadline and what it is for.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        let answer = self.answer_by.map(|at| (at, Timer::Answer));
        let retry = self.retry_at.map(|at| (at, Timer::Retry));
        let heartbeat = self.next_heartbeat.map(|at| (at, Timer::Heartbeat));
        earlier(earlier(answer, retry), heartbeat)
    }
}
