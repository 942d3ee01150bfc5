//! procmond: the process collector (first version).
//!
//! Actor mode (the only mode so far): connects to the broker at `--broker` or
//! `DAEMONEYE_BROKER_SOCKET`, registers as collector `--collector-id` (given by the agent in
//! `DAEMONEYE_COLLECTOR_ID`, its `[[collectors]]` name; default `procmond`) of type `process`
//! with the PROCESS and SYSTEM_WIDE capabilities, heartbeats, and every `--interval` seconds scans
//! `/proc`, publishing `events.process.new` and `events.process.exit` (ProcessEvent
//! protobuf, QoS1).
//!
//! Events go through a write-ahead log (`--wal`): each scan's events are appended and
//! synced once (group commit) before they count as accepted and are published; a record
//! leaves the log after its PubAck. A restarted procmond replays the log and re-sends what
//! was not acknowledged, under the stable publisher id (the collector id) and the original
//! sequences, so subscribers drop what they already saw. The WAL and its lock live in the
//! collector's own state directory (`DAEMONEYE_COLLECTOR_STATE_DIR`, given by the agent),
//! so two instances never collide.
//!
//! Not built yet: standalone mode with a local database, executable hashing, enhanced
//! metadata, and the config messages (UpdateConfig and friends).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use daemoneye_core::registration::RegistrationConfig;
use daemoneye_core::registry::SourceCaps;
use daemoneye_core::topic::topics;
use daemoneye_core::wal::WalConfig;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_io::collector::wal::WalFile;
use daemoneye_io::collector::{process, publisher};
use daemoneye_proto::frame::{CollectorIdentity, Publish, QoS, Role};
use daemoneye_proto::pb::{control as pbc, events as pbe};

/// procmond: DaemonEye's process collector.
///
/// Environment: DAEMONEYE_BROKER_SOCKET (the broker), DAEMONEYE_COLLECTOR_ID and
/// DAEMONEYE_COLLECTOR_STATE_DIR (set by the agent), DAEMONEYE_PROCMOND_INTERVAL,
/// DAEMONEYE_PROCMOND_WAL, DAEMONEYE_PROCMOND_LOG_LEVEL.
#[derive(Debug, Parser)]
#[command(name = "procmond", version)]
struct Args {
    /// Broker socket (actor mode). Default: DAEMONEYE_BROKER_SOCKET.
    #[arg(long, env = "DAEMONEYE_BROKER_SOCKET", value_name = "PATH")]
    broker: Option<PathBuf>,
    /// The id to register under (the agent passes the collector's `[[collectors]]` name).
    #[arg(long, env = "DAEMONEYE_COLLECTOR_ID", default_value = "procmond")]
    collector_id: String,
    /// This collector's state directory (the agent passes one inside its own).
    #[arg(long, env = "DAEMONEYE_COLLECTOR_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Seconds between scans (5 to 3600).
    #[arg(long, env = "DAEMONEYE_PROCMOND_INTERVAL", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    interval: u64,
    /// Most processes reported per scan.
    #[arg(long, default_value_t = 100_000)]
    max_processes: usize,
    /// Log filter.
    #[arg(long, env = "DAEMONEYE_PROCMOND_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Local database for standalone mode (not built yet).
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
    /// Write-ahead log of events not yet acknowledged by the broker. Default:
    /// procmond.wal in --state-dir, else in the default state directory
    /// (/var/lib/daemoneye for root, else $XDG_STATE_HOME/daemoneye or
    /// ~/.local/state/daemoneye).
    #[arg(
        long,
        env = "DAEMONEYE_PROCMOND_WAL",
        value_name = "PATH",
        conflicts_with = "no_wal"
    )]
    wal: Option<PathBuf>,
    /// Publish without a WAL: events not acknowledged when procmond dies are lost.
    #[arg(long)]
    no_wal: bool,
    /// Most events held in the WAL waiting for a PubAck; past it, new events are dropped
    /// (and counted in the log) until the broker catches up.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_events_in_flight: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = daemoneye_io::init_logging(&args.log_level) {
        eprintln!("procmond: {e}");
        return ExitCode::FAILURE;
    }
    let Some(socket) = args.broker.clone() else {
        eprintln!(
            "procmond: standalone mode (--database) is not built yet; run under daemoneye-agent or pass --broker PATH"
        );
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("procmond: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procmond: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, socket: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let caps = SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE;
    let id = args.collector_id.clone();
    daemoneye_proto::frame::validate_name("collector id", &id)?;
    let mut options = ClientOptions::new(id.clone());
    options.session.role = Role::Collector;
    options.session.collector = Some(CollectorIdentity {
        id: id.clone(),
        kind: "process".into(),
        capabilities: caps.bits(),
    });
    let mut wal = if args.no_wal {
        None
    } else {
        let path = args.wal.clone().unwrap_or_else(|| {
            args.state_dir
                .clone()
                .unwrap_or_else(daemoneye_io::paths::default_state_dir)
                .join("procmond.wal")
        });
        let mut config = WalConfig::new(id.clone());
        config.max_pending = args.max_events_in_flight as usize;
        let (wal, replayed) = WalFile::open(&path, config)?;
        if wal.pending() > 0 || replayed.tail.is_some() {
            tracing::info!(wal = %path.display(), %replayed, "re-sending unacknowledged events");
        }
        Some(wal)
    };
    // Registration and heartbeats: this process's own publisher id.
    let client = Client::connect(&socket, options.clone()).await?;
    // Logged events: resends are recognised by (publisher id, sequence), so they travel
    // under an id that outlives the process and whose sequences only the WAL assigns, on a
    // connection of their own (a heartbeat must never take a sequence a logged event gets).
    let events = match wal {
        Some(_) => {
            let mut o = options;
            o.session.client_name = format!("{id}-events");
            o.session.publisher_id = Some(id.clone());
            Client::connect(&socket, o).await?
        }
        None => client.clone(),
    };
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    if let Some(wal) = wal.as_mut() {
        publisher::publish_accepted(&events, wal, &ack_tx).await;
    }
    let identity = pbc::RegisterRequest {
        collector_id: id.clone(),
        collector_type: "process".into(),
        capabilities: caps.bits(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let registration = tokio::spawn(daemoneye_io::collector::keep_registered(
        client.clone(),
        identity,
        RegistrationConfig::default(),
        u64::from(std::process::id()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let reader = process::ProcessReader::new(process::ReadOptions::default());
    let mut known: BTreeMap<u32, pbe::ProcessInfo> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.interval));
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(sequence) = ack_rx.recv() => {
                if let Some(wal) = wal.as_mut()
                    && let Err(e) = wal.handle_puback(sequence)
                {
                    tracing::error!(error = %e, "WAL failed");
                    return Err(e.into());
                }
            }
            _ = tick.tick() => {
                let now: BTreeMap<u32, pbe::ProcessInfo> = process::scan(&reader, args.max_processes).into_iter().map(|p| (p.pid, p)).collect();
                let mut batch = Vec::new();
                for (pid, info) in &now {
                    if !known.contains_key(pid) {
                        batch.push((topics::PROCESS_NEW, event(&id, pbe::ProcessEventKind::New, info)));
                    }
                }
                for (pid, info) in &known {
                    if !now.contains_key(pid) {
                        batch.push((topics::PROCESS_EXIT, event(&id, pbe::ProcessEventKind::Exit, info)));
                    }
                }
                known = now;
                match wal.as_mut() {
                    Some(wal) => publisher::log_and_publish(&events, wal, &ack_tx, batch, now_ms).await?,
                    None => {
                        for (topic, payload) in batch {
                            let p = Publish::new(topic, payload, QoS::AtLeastOnce);
                            if let Err(e) = client.send(p).await {
                                tracing::warn!(error = %e, "could not publish a process event");
                            }
                        }
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = registration.await;
    if wal.is_some() {
        events.close().await;
    }
    client.close().await;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn event(id: &str, kind: pbe::ProcessEventKind, info: &pbe::ProcessInfo) -> Bytes {
    process::process_event(id, kind, info, now_ms())
}
