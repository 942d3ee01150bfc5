//! The collector runtime: runs up to 16 [`EventSource`]s and does everything else a
//! collector needs (DESIGN.md section 8).
//!
//! - **Identity and config**: [`CollectorSettings`] from defaults, a TOML file, the
//!   `DAEMONEYE_<COMPONENT>_*` environment and the binary's own flags; the id from the
//!   agent's `DAEMONEYE_COLLECTOR_ID`.
//! - **Broker**: two connections with the client library. The control connection
//!   registers and heartbeats ([`super::keep_registered_with`], carrying the collector's
//!   numbers), takes `control.collector.config.<id>` and the tasks, and publishes task
//!   results. The events connection publishes only what the WAL accepted, under the
//!   collector id as its stable publisher id and the WAL's sequences, so a resend after a
//!   restart is recognised; nothing else ever takes one of those sequences.
//! - **Events**: sources send `(topic, payload)` into a bounded queue; the core
//!   [`Batcher`] cuts batches (100 events or 100 ms); each batch is appended to the WAL and
//!   synced once (group commit) before it is published at QoS1; a record leaves the WAL at
//!   its PubAck.
//! - **Backpressure**: at most `backpressure_threshold` (800) events are held between the
//!   sources and the WAL's sync; a source's send waits at the threshold up to
//!   `send_timeout_ms` (500), then the event is dropped and counted (see [`super::source`]).
//!   The broker's Backpressure signals to the events connection feed the core [`Pacing`]
//!   machine, whose interval the sources read in their [`SourceConfig`].
//! - **Control** (`CollectorControl`): HealthCheck (answered with the real numbers, and a
//!   heartbeat now), UpdateConfig (interval, max events in flight, compute_hashes; into the
//!   sources' `SourceConfig` without a restart), GracefulShutdown, BeginMonitoring (a
//!   collector with `wait_for_begin_monitoring` starts its sources only then),
//!   AdjustInterval. A request (with a reply topic) is answered with a `TaskResult`: `ok`,
//!   one line, and the collector's `Heartbeat` as payload.
//! - **Shutdown** (SIGTERM, SIGINT, GracefulShutdown), within `shutdown_timeout_ms` (500):
//!   the sources' shutdown signal and `stop`, then what they sent is batched, logged and
//!   published, the registration says Deregister, and the connections close.
//!
//! The WAL's appends and syncs block the runtime's thread for the length of one
//! `fdatasync` per batch; the sources' own threads and tasks go on meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use daemoneye_core::collector::{BatchConfig, Batcher, Pacing, PacingConfig, Pressure};
use daemoneye_core::registration::RegistrationConfig;
use daemoneye_core::topic::topics;
use daemoneye_core::wal::{DEFAULT_RESERVE_BLOCK, WalConfig};
use daemoneye_proto::frame::{CollectorIdentity, Role, Subscribe};
use daemoneye_proto::pb::control as pbc;
use tokio::sync::{mpsc, watch};

use super::config::{CollectorSettings, MAX_EVENT_SOURCES, env_prefix};
use super::metrics::{Metrics, MetricsSnapshot};
use super::publisher::publish_batches;
use super::running::Running;
use super::source::{BoxFuture, EventSource, SourceCaps, SourceConfig};
use super::tasks;
use super::wal::{WalFile, WalFileError};
use crate::client::{AckMode, Client, ClientError, ClientOptions};
use crate::clock::MonotonicClock;
use crate::config::ConfigError;

/// Why a collector could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Its settings are invalid (the message names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It has no source.
    #[error("a collector needs at least one source")]
    NoSources,
    /// It has more sources than a collector runs.
    #[error("{0} sources: a collector runs at most {MAX_EVENT_SOURCES}")]
    TooManySources(usize),
    /// Two sources share a name.
    #[error("two sources are named {0:?}")]
    DuplicateSource(String),
    /// No broker socket was given.
    #[error(
        "no broker: set DAEMONEYE_BROKER_SOCKET, broker_socket in the config, or run it under daemoneye-agent"
    )]
    NoBroker,
    /// The broker could not be reached or refused it.
    #[error("broker {path}: {source}")]
    Broker {
        /// The socket.
        path: PathBuf,
        /// The client's error.
        source: ClientError,
    },
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalFileError),
    /// A signal handler could not be installed.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The numbers at the end.
    pub metrics: MetricsSnapshot,
    /// The shutdown took longer than its budget.
    pub shutdown_overran: bool,
}

/// A change the binary makes to the settings (its flags).
type SettingsEdit = Box<dyn FnOnce(&mut CollectorSettings) + Send>;

/// Builds a [`Collector`]; see [`Collector::builder`].
pub struct CollectorBuilder {
    component: String,
    collector_type: String,
    sources: Vec<Arc<dyn EventSource>>,
    config_file: Option<PathBuf>,
    configure: Vec<SettingsEdit>,
    interval_bounds: (Duration, Duration),
    allowed_env: Vec<String>,
    env: Option<Vec<(String, String)>>,
    shutdown: Option<BoxFuture<'static, ()>>,
    on_thread_start: fn(),
}

impl std::fmt::Debug for CollectorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorBuilder")
            .field("component", &self.component)
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl CollectorBuilder {
    /// Its type when registering (default: the component name).
    pub fn collector_type(mut self, kind: impl Into<String>) -> Self {
        self.collector_type = kind.into();
        self
    }

    /// Adds a source (at most 16).
    pub fn source(mut self, source: impl EventSource) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    /// Reads this TOML file after the defaults (else `DAEMONEYE_<COMPONENT>_CONFIG`).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Sets settings after the file and the environment (the binary's flags).
    pub fn configure(mut self, f: impl FnOnce(&mut CollectorSettings) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// The range of `interval_secs` (default 5 to 3600 s).
    pub fn interval_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.interval_bounds = (min, max);
        self
    }

    /// Keys the binary reads itself (its own settings, keys without the prefix), not
    /// refused as unknown: as `DAEMONEYE_<COMPONENT>_<KEY>` variables and in the settings
    /// file (where [`CollectorBuilder::own_settings`] gives them).
    pub fn allow_env(mut self, keys: &[&str]) -> Self {
        self.allowed_env.extend(keys.iter().map(|k| k.to_string()));
        self
    }

    /// Reads these variables instead of the process's environment (tests).
    pub fn env(mut self, vars: Vec<(String, String)>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Runs `f` first on every thread the runtime starts (the WAL's): capabilities belong
    /// to threads, so a collector that drops its own per thread drops them there too.
    pub fn on_thread_start(mut self, f: fn()) -> Self {
        self.on_thread_start = f;
        self
    }

    /// Stops when `signal` resolves, besides SIGTERM, SIGINT and GracefulShutdown.
    pub fn shutdown_on(
        mut self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// The settings file: the one given, else `DAEMONEYE_<COMPONENT>_CONFIG`.
    fn file(&self, env: &[(String, String)]) -> Option<PathBuf> {
        let variable = format!("{}CONFIG", env_prefix(&self.component));
        self.config_file.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| *k == variable)
                .map(|(_, v)| PathBuf::from(v))
        })
    }

    fn environment(&self) -> Vec<(String, String)> {
        self.env
            .clone()
            .unwrap_or_else(|| std::env::vars().collect())
    }

    /// The binary's own keys (those of [`CollectorBuilder::allow_env`]) as the settings
    /// file sets them, lower case; empty without a file.
    pub fn own_settings(&self) -> Result<toml::Table, RuntimeError> {
        match self.file(&self.environment()) {
            Some(path) => Ok(CollectorSettings::load_with(&path, &self.allowed_env)?.1),
            None => Ok(toml::Table::new()),
        }
    }

    /// The settings alone, resolved and checked as [`CollectorBuilder::build`] does (for a
    /// binary that also runs without a broker).
    pub fn settings(mut self) -> Result<CollectorSettings, RuntimeError> {
        self.resolve()
    }

    /// Defaults, the file, the environment, the binary's flags; then the bounds.
    fn resolve(&mut self) -> Result<CollectorSettings, RuntimeError> {
        let env = self.environment();
        let mut settings = match self.file(&env) {
            Some(path) => CollectorSettings::load_with(&path, &self.allowed_env)?.0,
            None => CollectorSettings::default(),
        };
        settings.apply_env(&env_prefix(&self.component), &self.allowed_env, env)?;
        for f in std::mem::take(&mut self.configure) {
            f(&mut settings);
        }
        settings.validate(self.interval_bounds)?;
        Ok(settings)
    }

    /// Resolves and checks the settings.
    pub fn build(mut self) -> Result<Collector, RuntimeError> {
        let n = self.sources.len();
        if n == 0 {
            return Err(RuntimeError::NoSources);
        }
        if n > MAX_EVENT_SOURCES {
            return Err(RuntimeError::TooManySources(n));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if self.sources[..i].iter().any(|o| o.name() == s.name()) {
                return Err(RuntimeError::DuplicateSource(s.name().to_string()));
            }
        }
        let settings = self.resolve()?;
        Ok(Collector {
            id: settings
                .collector_id
                .clone()
                .unwrap_or_else(|| self.component.clone()),
            collector_type: settings
                .collector_type
                .clone()
                .unwrap_or(self.collector_type),
            component: self.component,
            settings,
            sources: self.sources,
            interval_bounds: self.interval_bounds,
            shutdown: self.shutdown,
            on_thread_start: self.on_thread_start,
        })
    }

    /// Builds and runs it until it stops.
    pub async fn run(self) -> Result<RunReport, RuntimeError> {
        self.build()?.run().await
    }

    /// For a collector's `main`: logging from its settings, a tokio runtime, a run, and a
    /// one-line error on stderr with a failure status.
    pub fn main(self) -> std::process::ExitCode {
        let component = self.component.clone();
        let fail = |e: &dyn std::fmt::Display| {
            eprintln!("{component}: {e}");
            std::process::ExitCode::FAILURE
        };
        let collector = match self.build() {
            Ok(c) => c,
            Err(e) => return fail(&e),
        };
        if let Err(e) = crate::init_logging(&collector.settings.log_level) {
            return fail(&e);
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => return fail(&e),
        };
        let outcome = runtime.block_on(collector.run());
        // A source's thread still blocked in a read must not hold the exit.
        runtime.shutdown_timeout(Duration::from_millis(50));
        match outcome {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    }
}

/// A collector ready to run: its sources and resolved settings.
pub struct Collector {
    component: String,
    id: String,
    collector_type: String,
    settings: CollectorSettings,
    sources: Vec<Arc<dyn EventSource>>,
    interval_bounds: (Duration, Duration),
    shutdown: Option<BoxFuture<'static, ()>>,
    on_thread_start: fn(),
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("id", &self.id)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A collector named `component` (its environment prefix `DAEMONEYE_<COMPONENT>_`,
    /// its default id and type, its WAL's file name).
    pub fn builder(component: impl Into<String>) -> CollectorBuilder {
        let component = component.into();
        CollectorBuilder {
            collector_type: component.clone(),
            component,
            sources: Vec::new(),
            config_file: None,
            configure: Vec::new(),
            interval_bounds: (Duration::from_secs(5), Duration::from_secs(3600)),
            allowed_env: Vec::new(),
            env: None,
            shutdown: None,
            on_thread_start: || {},
        }
    }

    /// The resolved settings.
    pub fn settings(&self) -> &CollectorSettings {
        &self.settings
    }

    /// The id it registers under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The union of its sources' capabilities.
    pub fn capabilities(&self) -> SourceCaps {
        self.sources
            .iter()
            .fold(SourceCaps::empty(), |c, s| c | s.capabilities())
    }

    /// Connects, registers, runs the sources until a shutdown, then stops within the
    /// shutdown budget.
    pub async fn run(self) -> Result<RunReport, RuntimeError> {
        let socket = self
            .settings
            .broker_socket
            .clone()
            .ok_or(RuntimeError::NoBroker)?;
        let broker_err = |source| RuntimeError::Broker {
            path: socket.clone(),
            source,
        };
        let caps = self.capabilities();
        let mut options = ClientOptions::new(self.id.clone());
        options.session.role = Role::Collector;
        options.session.collector = Some(CollectorIdentity {
            id: self.id.clone(),
            kind: self.collector_type.clone(),
            capabilities: caps.bits(),
        });
        options.connect_timeout = Duration::from_secs(self.settings.startup_timeout_secs);
        options.close_timeout = Duration::from_millis(self.settings.shutdown_timeout_ms / 4);
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let wal = if self.settings.no_wal {
            None
        } else {
            let path = self.settings.wal.clone().unwrap_or_else(|| {
                self.settings
                    .state_dir
                    .clone()
                    .unwrap_or_else(crate::paths::default_state_dir)
                    .join(format!("{}.wal", self.component))
            });
            let mut config = WalConfig::new(self.id.clone());
            config.max_pending =
                usize::try_from(self.settings.max_events_in_flight).unwrap_or(usize::MAX);
            // Events go out as soon as they are logged; the sync runs beside them.
            config.reserve_block = DEFAULT_RESERVE_BLOCK;
            let (mut wal, replayed) = WalFile::open(&path, config)?;
            wal.sync_in_background_with(sync_tx.clone(), self.on_thread_start)?;
            if wal.pending() > 0 {
                tracing::info!(wal = %path.display(), %replayed, "re-sending unacknowledged events");
            }
            Some(wal)
        };
        let client = Client::connect(&socket, options.clone())
            .await
            .map_err(broker_err)?;
        let events = match wal {
            Some(_) => {
                let mut o = options;
                o.session.client_name = format!("{}-events", self.id);
                o.session.publisher_id = Some(self.id.clone());
                // The broker routes a publish addressed to this collector id to the newest
                // connection that claims it: that must be the control connection, which
                // holds the task subscriptions. This one publishes events, as a client.
                o.session.collector = None;
                o.session.role = Role::Client;
                Client::connect(&socket, o).await.map_err(broker_err)?
            }
            None => client.clone(),
        };
        let control = client
            .subscribe(Subscribe::new(topics::config(&self.id)))
            .await
            .map_err(broker_err)?;
        let task_caps = self
            .sources
            .iter()
            .fold(SourceCaps::empty(), |c, s| c | s.task_capabilities());
        let task_subs: Vec<Subscribe> = tasks::subscriptions(task_caps)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let task_stream = if task_subs.is_empty() {
            None
        } else {
            Some(
                client
                    .subscribe_all(task_subs, AckMode::Manual)
                    .await
                    .map_err(broker_err)?,
            )
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(RuntimeError::Signal)?;
        let external = self.shutdown;
        let stop = async move {
            match external {
                Some(f) => tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                    _ = f => {}
                },
                None => tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                },
            }
        };
        let names = self.sources.iter().map(|s| s.name().to_string());
        let metrics = Arc::new(Metrics::new(names));
        let (events_tx, events_rx) = mpsc::channel(self.settings.event_buffer);
        let pacing = Pacing::new(PacingConfig {
            interval: Duration::from_secs(self.settings.interval_secs),
            min_interval: self.interval_bounds.0,
            max_interval: self.interval_bounds.1,
            ..PacingConfig::default()
        });
        let source_config = SourceConfig {
            interval: pacing.interval(),
            configured_interval: pacing.configured(),
            max_events_in_flight: self.settings.max_events_in_flight,
            compute_hashes: self.settings.compute_hashes,
            pressure: Pressure::None,
        };
        let (config_tx, _) = watch::channel(source_config);
        let (shutdown_tx, _) = watch::channel(false);
        let (heartbeat_now, heartbeat_rx) = mpsc::unbounded_channel();
        let (reg_stop_tx, reg_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let identity = pbc::RegisterRequest {
            collector_id: self.id.clone(),
            collector_type: self.collector_type.clone(),
            capabilities: caps.bits(),
            pid: std::process::id(),
            version: crate::VERSION.into(),
        };
        let hb_metrics = metrics.clone();
        let registration = tokio::spawn(super::keep_registered_with(
            client.clone(),
            identity,
            RegistrationConfig::default(),
            u64::from(std::process::id()),
            async move {
                let _ = reg_stop_rx.await;
            },
            Box::new(move || hb_metrics.heartbeat()),
            heartbeat_rx,
        ));
        let (detail_tx, detail_rx) = mpsc::unbounded_channel();
        metrics.set_detail_notifier(detail_tx);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let clock = MonotonicClock::default();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.settings.backpressure_threshold,
        ));
        let mut run = Running {
            id: self.id,
            batcher: Batcher::new(BatchConfig {
                max_events: self.settings.batch_max_events,
                max_delay: Duration::from_millis(self.settings.batch_max_delay_ms),
                max_idle: Duration::from_millis(self.settings.batch_max_idle_ms),
            }),
            settings: self.settings,
            sources: Arc::new(self.sources),
            client,
            events,
            wal,
            metrics,
            pacing,
            clock,
            events_tx: Some(events_tx),
            permits,
            events_rx,
            config_tx,
            shutdown_tx,
            heartbeat_now,
            detail_rx,
            ack_tx,
            ack_rx,
            sync_rx,
            unsynced_permits: std::collections::VecDeque::new(),
            done_tx,
            done_rx,
            results_tx,
            results_rx,
            started: Vec::new(),
            running: 0,
            budget: None,
        };
        if let Some(wal) = run.wal.as_mut() {
            let sent = publish_batches(
                &run.events,
                wal,
                &run.ack_tx,
                &run.id,
                run.batcher.config().max_events,
            )
            .await;
            run.metrics.count_published(sent);
        }
        if !run.settings.wait_for_begin_monitoring {
            run.start_sources();
        } else {
            tracing::info!("waiting for the agent's BeginMonitoring");
            run.metrics
                .set_detail(0, "waiting for BeginMonitoring".into());
        }
        let result = run.serve(control, task_stream, stop).await;
        let report = run.shut_down(registration, reg_stop_tx).await;
        result.map(|()| report)
    }
}
