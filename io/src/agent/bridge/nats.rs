//! The NATS side of the bridge: the connection (options, credentials, TLS, and the cause
//! of a failure in words), and the JetStream stream the exports go into.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use daemoneye_core::bridge::subject::{nats_covers, nats_overlap};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{BridgeError, MAX_BATCH};
use crate::config::{NatsAuth, NatsSettings};
/// How QoS1 exports reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mode {
    /// Not decided yet (not connected).
    Unknown,
    /// JetStream, into this stream.
    JetStream(String),
    /// The server has no JetStream: plain publishes.
    Plain,
    /// A stream conflicts with the export subjects.
    Conflict(String),
}

/// What the NATS side reports to the loop.
pub(super) enum NatsEvent {
    Connected,
    Disconnected,
    Error(String),
}

/// The options every connection to NATS shares: name, TLS (and its CA), credentials.
async fn base_options(settings: &NatsSettings) -> Result<async_nats::ConnectOptions, BridgeError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("daemoneye-agent {}", settings.bridge.host_id))
        .connection_timeout(Duration::from_secs(2))
        .require_tls(settings.tls);
    if let Some((cert, key)) = &settings.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    Ok(match &settings.auth {
        NatsAuth::None => options,
        NatsAuth::Token(t) => options.token(t.clone()),
        NatsAuth::Credentials(path) => options
            .credentials_file(path)
            .await
            .map_err(|e| BridgeError::Nats(format!("credentials {}: {e}", path.display())))?,
    })
}

fn server_addrs(settings: &NatsSettings) -> Vec<async_nats::ServerAddr> {
    settings
        .servers
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Why connecting fails, in full. The client's reconnect events carry only the kind of a
/// failed attempt ("IO error", "TLS error"), not its cause (no TLS on the server, a
/// certificate from an unknown issuer): one attempt of its own, without retries, has it.
async fn why_connecting_fails(settings: &NatsSettings) -> Option<String> {
    let attempt = async {
        let options = base_options(settings).await.map_err(|e| e.to_string())?;
        options
            .connect(server_addrs(settings))
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Err(why)) => Some(why),
        // It connected this time, or took too long to say.
        Ok(Ok(_)) | Err(_) => None,
    }
}

/// A connection failure with what it most likely means, where the TLS library's words
/// (`InvalidContentType`, `UnknownIssuer`) would leave an operator guessing.
fn explain(cause: &str) -> String {
    if cause.contains("InvalidContentType") {
        format!("{cause} (the server does not answer in TLS: does it have TLS enabled?)")
    } else if cause.contains("UnknownIssuer") {
        format!(
            "{cause} (the server's certificate is not signed by a CA in bridge.nats.tls_ca, or the system's roots without it)"
        )
    } else {
        cause.to_string()
    }
}

/// What the bridge knows of why connecting fails: the client error's kind and its cause
/// in full, found by a probe (at most one at a time).
#[derive(Debug, Default)]
struct Explained {
    known: Option<(String, String)>,
    probing: bool,
}

/// Connects to NATS with the configured servers and credentials; the client retries in the
/// background, reporting its connection changes to `events`.
pub(super) async fn connect_nats(
    settings: &NatsSettings,
    events: mpsc::UnboundedSender<NatsEvent>,
) -> Result<async_nats::Client, BridgeError> {
    // A failed attempt's kind and its cause, found once per kind (not at every retry).
    let explained: Arc<Mutex<Explained>> = Arc::default();
    let probe = Arc::new(settings.clone());
    base_options(settings)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(5)).min(2000))
        })
        // Publishes handed to the client and not yet written. Deep enough for a batch
        // (MAX_BATCH) and its successor; a deeper one (65,536 was tried) lets the exports
        // waiting in it fall out of the cache and cost twice the CPU per export.
        .client_capacity(2 * MAX_BATCH)
        .event_callback(move |event| {
            let events = events.clone();
            let explained = explained.clone();
            let probe = probe.clone();
            async move {
                let e = match event {
                    async_nats::Event::Connected => {
                        if let Ok(mut x) = explained.lock() {
                            *x = Explained::default();
                        }
                        NatsEvent::Connected
                    }
                    async_nats::Event::Disconnected => NatsEvent::Disconnected,
                    async_nats::Event::ServerError(e) => NatsEvent::Error(format!("server: {e}")),
                    async_nats::Event::ClientError(e) => {
                        let kind = e.to_string();
                        let Ok(mut x) = explained.lock() else { return };
                        if let Some((k, why)) = &x.known
                            && *k == kind
                        {
                            NatsEvent::Error(why.clone())
                        } else {
                            // The cause is found by an attempt of its own, in a task of
                            // its own: the client waits for this callback before it hands
                            // over its next event, a Connected among them. One at a time;
                            // its answer comes as an event.
                            if !x.probing {
                                x.probing = true;
                                let (events, explained, probe) =
                                    (events.clone(), explained.clone(), probe.clone());
                                tokio::spawn(async move {
                                    let why = match why_connecting_fails(&probe).await {
                                        Some(cause) => format!("connecting: {}", explain(&cause)),
                                        None => format!("client: {kind}"),
                                    };
                                    if let Ok(mut x) = explained.lock() {
                                        x.probing = false;
                                        x.known = Some((kind, why.clone()));
                                    }
                                    let _ = events.send(NatsEvent::Error(why));
                                });
                            }
                            return;
                        }
                    }
                    other => NatsEvent::Error(other.to_string()),
                };
                let _ = events.send(e);
            }
        })
        .connect(server_addrs(settings))
        .await
        .map_err(|e| BridgeError::Nats(e.to_string()))
}

/// Whether a JetStream API error says the server has no JetStream (for this account):
/// nobody answers its API (async-nats words "no responders" as "requested JetStream
/// resource does not exist"), or it answers that JetStream is not enabled.
fn is_no_jetstream(error: &str) -> bool {
    let e = error.to_lowercase();
    e.contains("no responders")
        || e.contains("resource does not exist")
        || e.contains("not enabled")
        || e.contains("503")
}

/// `window`, shortened to the stream's max age where it has one (JetStream refuses a
/// deduplication window longer than what the stream keeps).
fn window_within(window: Duration, config: &jetstream::stream::Config) -> Duration {
    if config.max_age.is_zero() {
        window
    } else {
        window.min(config.max_age)
    }
}

/// Finds (or creates) the stream for `subjects`: one that covers them all, else a new one
/// named after the host. A stream that overlaps without covering is an error.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    host: &str,
    subjects: &[String],
    duplicate_window: Duration,
) -> Result<Mode, String> {
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = match info {
            Ok(info) => info,
            // No JetStream on the server: nobody answers its API.
            Err(e) if is_no_jetstream(&e.to_string()) => {
                tracing::warn!(error = %e, "bridge: the NATS server has no JetStream: QoS1 exports use plain publishes");
                return Ok(Mode::Plain);
            }
            Err(e) => return Err(format!("listing JetStream streams: {e}")),
        };
        let theirs = &info.config.subjects;
        let covers = subjects
            .iter()
            .all(|s| theirs.iter().any(|t| nats_covers(t, s)));
        if covers {
            // This host's own stream follows the configured window, within its max age
            // (the server refuses a longer one). Not being allowed to change it (a user
            // who may only publish) is worth a warning, not a stop: the stream works.
            let window = window_within(duplicate_window, &info.config);
            if info.config.name == format!("DAEMONEYE_{host}")
                && info.config.duplicate_window != window
            {
                let mut config = info.config.clone();
                config.duplicate_window = window;
                if let Err(e) = js.update_stream(config).await {
                    tracing::warn!(stream = %info.config.name, error = %e,
                        "bridge: could not set the deduplication window of this host's JetStream stream; it keeps its own");
                }
            }
            return Ok(Mode::JetStream(info.config.name.clone()));
        }
        if subjects
            .iter()
            .any(|s| theirs.iter().any(|t| nats_overlap(t, s)))
        {
            return Err(format!(
                "JetStream stream {} (subjects {}) overlaps the bridge's export subjects ({}) without covering them all: widen that stream or change bridge.nats.prefix/export",
                info.config.name,
                theirs.join(", "),
                subjects.join(", ")
            ));
        }
    }
    let name = format!("DAEMONEYE_{host}");
    let config = jetstream::stream::Config {
        name: name.clone(),
        subjects: subjects.to_vec(),
        duplicate_window,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => {
            tracing::info!(stream = %name, subjects = %subjects.join(", "),
                "bridge: created a JetStream stream for this host's exports");
        }
        // This host's own stream, from an earlier export list: it takes the new subjects
        // and the configured window too (what it holds stays).
        Err(e) if e.to_string().contains("already in use") => {
            let stream = js
                .get_stream(&name)
                .await
                .map_err(|e| format!("reading JetStream stream {name}: {e}"))?;
            let mut config = stream.cached_info().config.clone();
            config.duplicate_window = window_within(duplicate_window, &config);
            for s in subjects {
                if !config.subjects.contains(s) {
                    config.subjects.push(s.clone());
                }
            }
            js.update_stream(config).await.map_err(|e| {
                format!("adding the export subjects to JetStream stream {name}: {e}")
            })?;
            tracing::info!(stream = %name, subjects = %subjects.join(", "),
                "bridge: added the export subjects to this host's JetStream stream");
        }
        Err(e) => return Err(format!("creating JetStream stream {name}: {e}")),
    }
    Ok(Mode::JetStream(name))
}
