//! daemoneye-agent: the long-running daemon with the embedded broker.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemoneye_core::broker::Broker;
use daemoneye_io::LogFilter;
use daemoneye_io::agent::bridge::{BridgeHealth, BridgeThread};
use daemoneye_io::agent::detection::{self, DetectionHealth, DetectionService};
use daemoneye_io::agent::process::{ProcessManager, Request};
use daemoneye_io::agent::shim::OsSpawner;
use daemoneye_io::agent::store::{self, StoreHealth, StoreService};
use daemoneye_io::clock::{Clock, MonotonicClock};
use daemoneye_io::config::AgentConfig;
use daemoneye_io::durables::DurableStore;
use daemoneye_io::paths;
use daemoneye_io::server::ServeOptions;
use daemoneye_io::transport::{UnixConnector, UnixTransport};

// The broker allocates a few small objects per message; mimalloc's thread-local free lists
// cost a fraction of glibc malloc's on this path (measured with the peers bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// DaemonEye agent: runs the local message broker that collectors and subscribers connect
/// to.
///
/// Configuration: --config FILE (TOML; every key is checked and a bad one is named), then
/// the DAEMONEYE_AGENT_<SECTION>_<KEY> environment variables listed below, then the flags. The socket path is --socket, else [broker] socket, else
/// DAEMONEYE_BROKER_SOCKET, else $XDG_RUNTIME_DIR/daemoneye/broker.sock, else
/// /tmp/daemoneye-<uid>/broker.sock. SIGINT or SIGTERM shuts down within 500 ms; SIGHUP
/// reloads the detection rules.
#[derive(Debug, Parser)]
#[command(name = "daemoneye-agent", version = daemoneye_io::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket path to listen on (its directory is created with mode 0700 if missing).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace, off) or directives such as
    /// `warn,daemoneye_io=debug`, overriding the config.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LogFilter>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Internal: the supervisor shim between the agent and a collector (it kills the
    /// collector's whole group when the agent dies); with --exec, the step that becomes the
    /// collector.
    #[command(hide = true)]
    ExecCollector {
        /// Become the collector (set the parent-death signal, then exec).
        #[arg(long)]
        exec: bool,
        /// The collector's executable.
        binary: PathBuf,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The environment variables the agent reads, for `--help`.
fn environment_help() -> String {
    let mut text = String::from("Environment:\n");
    let mut line = |name: &str, what: &str| text.push_str(&format!("  {name:<56} {what}\n"));
    line(
        "DAEMONEYE_BROKER_SOCKET",
        "socket path when neither --socket nor [broker] socket is given",
    );
    line("XDG_RUNTIME_DIR", "directory of the default socket");
    line(
        "XDG_STATE_HOME",
        "root of the default state directory (not as root)",
    );
    for o in daemoneye_io::config::env_overrides() {
        line(&o.variable, &format!("sets {}", o.dotted_key()));
    }
    text
}

fn main() -> ExitCode {
    use clap::CommandFactory;
    // mimalloc marks its arenas for transparent huge pages, so every 2 MiB it touches counts
    // whole in RSS: half of an idle agent's 15 MB. A host agent is judged by its memory and
    // its heap is small; collectors started from here inherit the setting.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let args: Args =
        daemoneye_io::args::parse_or_exit(Args::command().after_help(environment_help()));
    if let Some(AgentCommand::ExecCollector { exec, binary, args }) = &args.command {
        if !*exec {
            return ExitCode::from(daemoneye_io::agent::shim::collector_shim(binary, args));
        }
        let err = daemoneye_io::agent::shim::exec_collector(binary, args);
        eprintln!(
            "daemoneye-agent: cannot start collector {}: {err}",
            binary.display()
        );
        return ExitCode::from(127);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemoneye-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    config.apply_env(std::env::vars())?;
    let level = args
        .log_level
        .clone()
        .unwrap_or_else(|| config.logging.level.clone());
    daemoneye_io::init_logging(level.as_str())?;

    let uid = paths::current_uid();
    let (broker_config, acl) = config.broker_config(uid)?;
    let socket = args.socket.clone().or_else(|| config.broker.socket.clone());
    let socket = paths::resolve_socket_path(socket.as_deref());
    let specs = config.collector_specs()?;
    let configured_collectors = config.collectors.is_some();
    let externals = config.external_collectors();
    // One state directory per agent instance (named after its socket), one per collector
    // inside it: two agents on one host never share state.
    let state_dir = paths::agent_state_dir(&config.state_root(), &socket);
    let store_plan = config.store.resolve(&state_dir)?;
    let tasks = config.tasks.resolve()?;
    let detection_settings = config.detection.resolve()?;
    let bridge_settings = config
        .bridge
        .resolve(std::path::Path::new(daemoneye_io::config::MACHINE_ID))?;
    let shim = std::env::current_exe()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = paths::bind_socket(&socket).await?;
        // Created once the socket is ours: an agent refused its socket touches no state.
        paths::create_private_dir(&state_dir)?;
        // Installed before announcing the socket: a SIGTERM right after it is a shutdown.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        match (&configured_collectors, specs.is_empty()) {
            (true, true) => tracing::info!("collectors = []: starting with no collectors"),
            (false, true) => tracing::info!(
                "no [[collectors]] configured and no procmond binary beside the agent: starting with no collectors"
            ),
            (_, false) => {}
        }
        // The seed only steers the Random queue strategy; any value is fine in production.
        let seed = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        let mut broker = Broker::new(broker_config.clone(), acl, seed);
        // Durable subscriptions outlive a crash of the agent: their definitions are
        // restored before the first connection, so a publisher's resend finds their queues.
        let clock = MonotonicClock::default();
        let mut durables = DurableStore::new(state_dir.join("durables.json"));
        let restored = durables.restore_into(&mut broker, clock.now())?;
        if restored > 0 {
            tracing::info!(restored, file = %durables.path().display(), "durable subscriptions restored");
        }
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::task::spawn_local(daemoneye_io::server::serve_with(
            UnixTransport(listener),
            broker,
            clock,
            async move {
                let _ = server_stopped.await;
            },
            ServeOptions {
                durables: Some(durables),
            },
        ));
        // The event store keeps what crosses the bus, through a client of its own.
        let store_health = store_plan.as_ref().map(|_| StoreHealth::default());
        let (stop_store, store_stopped) = tokio::sync::oneshot::channel::<()>();
        let (store_ready, subscribed) = tokio::sync::oneshot::channel::<()>();
        let store = store_plan.map(|(path, config)| {
            let service = StoreService {
                path,
                config,
                reply_budget: store::reply_budget(broker_config.max_frame),
                health: store_health.clone().unwrap_or_default(),
            };
            let connector = UnixConnector(socket.clone());
            tokio::task::spawn_local(async move {
                let stopped = async move {
                    let _ = store_stopped.await;
                };
                if let Err(e) = store::serve_store(connector, store::client_options(), service, store_ready, stopped).await {
                    tracing::error!(error = %e, "event store service ended");
                }
            })
        });
        let enrich = daemoneye_io::agent::enrich::start(&config.detection, UnixConnector(socket.clone()))?;
        // Detection evaluates the process events through a client of its own, off the
        // broker's thread.
        let detection_health = detection_settings.as_ref().map(|_| DetectionHealth::default());
        let (stop_detection, detection_stopped) = tokio::sync::oneshot::channel::<()>();
        let (detection_ready, detection_subscribed) = tokio::sync::oneshot::channel::<()>();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel::<()>(4);
        let detection = {
            let service = DetectionService {
                settings: detection_settings,
                health: detection_health.clone().unwrap_or_default(),
            };
            let connector = UnixConnector(socket.clone());
            tokio::task::spawn_local(async move {
                let stopped = async move {
                    let _ = detection_stopped.await;
                };
                if let Err(e) = detection::serve_detection(connector, detection::client_options(), service, detection_ready, reload_rx, stopped).await {
                    tracing::error!(error = %e, "detection service ended");
                }
            })
        };
        // The collectors start once the store and detection subscribe, so that their
        // first events are kept and evaluated; one that cannot subscribe in time is not
        // waited for.
        let both = async {
            if store.is_some() {
                let _ = subscribed.await;
            }
            let _ = detection_subscribed.await;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(2), both).await.is_err() {
            tracing::warn!("the event store or detection did not subscribe within 2 s: starting without waiting");
        }
        // The NATS bridge runs on a thread of its own: a remote outage never reaches the
        // broker's loop.
        let bridge_health = bridge_settings.as_ref().map(|_| BridgeHealth::default());
        let bridge = match bridge_settings {
            Some(settings) => Some(BridgeThread::start(
                UnixConnector(socket.clone()),
                settings,
                state_dir.join("bridge").join("export.wal"),
                bridge_health.clone().unwrap_or_default(),
            )?),
            None => None,
        };
        eprintln!("listening on {}", socket.display());
        tracing::info!(socket = %socket.display(), state = %state_dir.display(), uid, "broker started");
        let (manager_tx, manager_rx) = tokio::sync::mpsc::channel(64);
        let fleet_config = daemoneye_core::fleet::FleetConfig {
            heartbeat_interval: broker_config.heartbeat_interval,
            tasks: daemoneye_core::coordinator::CoordinatorConfig {
                timeout: tasks.timeout,
                max_attempts: tasks.max_attempts,
                history: tasks.history,
                // Task ids of this run differ from a previous run's, so that a late result
                // for an old task is not taken for a new one.
                id_prefix: format!("{:04x}", (daemoneye_io::clock::unix_ms() / 1000) & 0xffff),
                ..Default::default()
            },
            ..Default::default()
        };
        let manager = tokio::task::spawn_local(
            ProcessManager::with_config(specs, socket.clone(), OsSpawner { shim }, fleet_config)
                .with_state_dir(state_dir)
                .with_externals(externals)
                .run(manager_rx),
        );
        let control = {
            let socket = socket.clone();
            let manager_tx = manager_tx.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = daemoneye_io::agent::serve_control_with(UnixConnector(socket), daemoneye_io::agent::control_options(), manager_tx, store_health, detection_health, bridge_health).await {
                    tracing::error!(error = %e, "lifecycle control unavailable");
                }
            })
        };
        loop {
            tokio::select! {
                biased;
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: shutting down");
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    break;
                }
                _ = hangup.recv() => {
                    let _ = reload_tx.try_send(());
                }
            }
        }
        // Collectors stop (in parallel, SIGKILL after their stop timeout) while detection
        // publishes its open fold windows' counts, then the store commits what it holds
        // and closes its file, then the broker goes.
        let _ = stop_detection.send(());
        let detection_then_store = async {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(300), detection).await;
            let _ = stop_store.send(());
        };
        let collectors = async {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            if manager_tx
                .send(Request::Shutdown { reply: done_tx })
                .await
                .is_ok()
            {
                let _ = done_rx.await;
            }
            let _ = manager.await;
        };
        // The bridge stops beside them (what waits on its disk queue stays there).
        let bridge_stopped = async {
            if let Some(bridge) = bridge {
                bridge.stop(std::time::Duration::from_millis(400)).await;
            }
        };
        tokio::join!(detection_then_store, collectors, bridge_stopped);
        if let Some(store) = store {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(450), store).await;
        }
        if let Some(enrich) = enrich { enrich.stop().await; }
        control.abort();
        let _ = stop_server.send(());
        let _ = server.await;
        if let Err(e) = std::fs::remove_file(&socket) {
            tracing::warn!(%e, socket = %socket.display(), "could not remove the socket");
        }
        tracing::info!("stopped");
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
