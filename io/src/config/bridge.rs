//! `[bridge.nats]`: the agent's bridge to a NATS cluster (DESIGN.md section 14). No
//! section, no bridge.
//!
//! ```toml
//! [bridge.nats]
//! servers = ["nats://nats1.example:4222", "nats://nats2.example:4222"]
//! # Authentication: a .creds file (JWT + nkey seed) or a token, not both.
//! credentials = "/etc/daemoneye/nats.creds"
//! # token = "s3cret"
//! # Require TLS (also implied by tls:// URLs and by tls_ca).
//! tls = true
//! # The CA that signed the servers' certificates, PEM (default: the system's roots).
//! tls_ca = "/etc/daemoneye/nats-ca.pem"
//! # A client certificate and its key, PEM, for servers that verify clients (both or
//! # neither; implies TLS).
//! tls_cert = "/etc/daemoneye/nats-client.pem"
//! tls_key = "/etc/daemoneye/nats-client.key"
//! # This host's id (default: /etc/machine-id).
//! host_id = "web-17"
//! # Exports go to <prefix>.<topic> (default "daemoneye.<host_id>").
//! prefix = "daemoneye.web-17"
//! # Tasks for every host come from <all_prefix>.<topic>.
//! all_prefix = "daemoneye.all"
//! # Local topic filters exported (default: alerts).
//! export = ["alerts.#"]
//! # Local topic filters imported from <prefix>.<filter> and <all_prefix>.<filter>
//! # (default: the collectors' tasks).
//! import = ["control.collector.task.#"]
//! # Imports from other subject prefixes, as full NATS-side filters "<prefix>:<filter>"
//! # (for example another host's alerts: "daemoneye.web-18:alerts.#").
//! import_from = []
//! # QoS1 exports kept on disk while NATS is unreachable; beyond it the oldest go.
//! max_queued = 100000
//! # The deduplication window of the JetStream stream the bridge creates: a QoS1 export
//! # JetStream stored but whose acknowledgement was lost is stored again when resent
//! # after a longer outage. Longer costs the server memory for each id in the window.
//! duplicate_window = "10m"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemoneye_core::bridge::BridgeConfig;
use daemoneye_core::bridge::subject::{is_valid_prefix, subscriptions_for};
use daemoneye_core::topic::{FilterLevel, TopicFilter};
use serde::{Deserialize, Serialize};

use super::{ConfigError, HumaneDuration};

/// The default deduplication window of the stream the bridge creates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Where the machine id is read from when `host_id` is not set.
pub const MACHINE_ID: &str = "/etc/machine-id";

/// `[bridge]`: bridges to other buses (only NATS so far).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// `[bridge.nats]`; absent: no bridge.
    pub nats: Option<NatsSection>,
}

/// `[bridge.nats]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// `nats://` (or `tls://`) URLs.
    pub servers: Vec<String>,
    /// A .creds file (exclusive with `token`).
    pub credentials: Option<PathBuf>,
    /// A token (exclusive with `credentials`).
    pub token: Option<String>,
    /// Require TLS.
    pub tls: bool,
    /// The CA certificates (PEM) the servers' certificates must chain to, instead of the
    /// system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM), with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// This host's id (default: the machine id).
    pub host_id: Option<String>,
    /// Subject prefix of the exports (default `daemoneye.<host_id>`).
    pub prefix: Option<String>,
    /// Subject prefix of the tasks addressed to every host.
    pub all_prefix: String,
    /// Local topic filters exported.
    pub export: Vec<String>,
    /// Local topic filters imported from `<prefix>` and `<all_prefix>`.
    pub import: Vec<String>,
    /// Extra imports: `"<subject prefix>:<topic filter>"`.
    pub import_from: Vec<String>,
    /// QoS1 exports held on disk at most.
    pub max_queued: u64,
    /// QoS1 exports sent and not yet acknowledged at most.
    pub max_in_flight: u64,
    /// The deduplication window of the stream the bridge creates.
    pub duplicate_window: HumaneDuration,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            credentials: None,
            token: None,
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            host_id: None,
            prefix: None,
            all_prefix: "daemoneye.all".into(),
            export: vec!["alerts.#".into()],
            import: vec!["control.collector.task.#".into()],
            import_from: Vec::new(),
            max_queued: 100_000,
            max_in_flight: 256,
            duplicate_window: HumaneDuration::new(DUPLICATE_WINDOW, "10m"),
        }
    }
}

/// How the bridge authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// A .creds file.
    Credentials(PathBuf),
    /// A token.
    Token(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Credentials(p) => write!(f, "Credentials({})", p.display()),
            NatsAuth::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// `[bridge.nats]`, checked.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The servers.
    pub servers: Vec<String>,
    /// Authentication.
    pub auth: NatsAuth,
    /// Require TLS.
    pub tls: bool,
    /// CA certificates (PEM) trusted instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// The client certificate and its key (PEM), for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// The deduplication window of the stream the bridge creates.
    pub duplicate_window: Duration,
    /// The machine's settings (host, prefix, filters, limits).
    pub bridge: BridgeConfig,
}

fn invalid(key: &str, value: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("bridge.nats.{key}"),
        value: value.into(),
        why: why.into(),
    }
}

/// A filter the bridge can carry: valid, not reserved, every literal level a NATS token.
fn bridge_filter(key: &str, text: &str) -> Result<TopicFilter, ConfigError> {
    let f = TopicFilter::parse(text).map_err(|e| invalid(key, text, e.to_string()))?;
    let bad = f.levels().iter().any(|l| match l {
        FilterLevel::Literal(t) => {
            t.starts_with('$') || t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>')
        }
        _ => false,
    });
    if bad {
        return Err(invalid(
            key,
            text,
            "a level holds whitespace, '*', '>' or a reserved '$' name, which NATS cannot carry",
        ));
    }
    Ok(f)
}

/// A host id: one NATS token without `.` (it is one level of the prefix and of message ids).
fn check_host_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            key,
            id,
            "must be 1 to 128 letters, digits, '-' or '_'",
        ));
    }
    Ok(())
}

/// A .creds file that can be read and holds a user JWT and an nkey seed (what the NATS
/// client parses when it connects): a bad one is a config error naming the file, not a
/// bridge that stops at start-up.
fn check_credentials(path: &Path) -> Result<(), ConfigError> {
    let bad = |why: String| invalid("credentials", path.display().to_string(), why);
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
    async_nats::ConnectOptions::new()
        .credentials(&text)
        .map(|_| ())
        .map_err(|e| {
            bad(format!(
                "not a NATS .creds file (user JWT and nkey seed): {e}"
            ))
        })
}

/// A PEM file with at least one CA certificate, all of them parsable.
fn check_tls_ca(path: &Path) -> Result<(), ConfigError> {
    let certs = check_certificates("tls_ca", path)?;
    let bad = |why: String| invalid("tls_ca", path.display().to_string(), why);
    let mut roots = async_nats::rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate does not parse: {e}")))?;
    }
    Ok(())
}

/// Why a PEM file does not parse, in words.
fn pem_error(e: async_nats::rustls::pki_types::pem::Error) -> String {
    use async_nats::rustls::pki_types::pem;
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("a bad line {:?}", String::from_utf8_lossy(&line))
        }
        other => other.to_string(),
    }
}

/// The PEM certificates in the file `key` names (at least one).
fn check_certificates(
    key: &str,
    path: &Path,
) -> Result<Vec<async_nats::rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use async_nats::rustls::pki_types::CertificateDer;
    use async_nats::rustls::pki_types::pem::PemObject;
    let bad = |why: String| invalid(key, path.display().to_string(), why);
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {}", pem_error(e))))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The file `tls_key` names holds a PEM private key.
fn check_private_key(path: &Path) -> Result<(), ConfigError> {
    use async_nats::rustls::pki_types::PrivateKeyDer;
    use async_nats::rustls::pki_types::pem::PemObject;
    let bad = |why: String| invalid("tls_key", path.display().to_string(), why);
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map(|_| ())
        .map_err(|e| bad(format!("not a PEM private key: {}", pem_error(e))))
}

/// The machine id at `path`, trimmed.
pub fn read_machine_id(path: &Path) -> Option<String> {
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

impl BridgeSection {
    /// Checks `[bridge.nats]`; `None` when there is none. The host id defaults to the
    /// machine id at `machine_id`.
    pub fn resolve(&self, machine_id: &Path) -> Result<Option<NatsSettings>, ConfigError> {
        let Some(n) = &self.nats else {
            return Ok(None);
        };
        if n.servers.is_empty() {
            return Err(invalid("servers", "[]", "needs at least one nats:// URL"));
        }
        for s in &n.servers {
            let scheme_ok = ["nats://", "tls://"].iter().any(|p| s.starts_with(p));
            if !scheme_ok || s.len() <= "nats://".len() {
                return Err(invalid(
                    "servers",
                    s.clone(),
                    "must be a nats://host:port (or tls://host:port) URL",
                ));
            }
        }
        let auth = match (&n.credentials, &n.token) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "token",
                    "(hidden)",
                    "credentials and token are exclusive: give one",
                ));
            }
            (Some(path), None) => {
                check_credentials(path)?;
                NatsAuth::Credentials(path.clone())
            }
            (None, Some(t)) if t.is_empty() => {
                return Err(invalid("token", "\"\"", "must not be empty"));
            }
            (None, Some(t)) => NatsAuth::Token(t.clone()),
            (None, None) => NatsAuth::None,
        };
        if let Some(path) = &n.tls_ca {
            check_tls_ca(path)?;
        }
        let tls_client = match (&n.tls_cert, &n.tls_key) {
            (Some(cert), Some(key)) => {
                check_certificates("tls_cert", cert)?;
                check_private_key(key)?;
                Some((cert.clone(), key.clone()))
            }
            (Some(cert), None) => {
                return Err(invalid(
                    "tls_key",
                    "(absent)",
                    format!("tls_cert = {} needs the key beside it", cert.display()),
                ));
            }
            (None, Some(key)) => {
                return Err(invalid(
                    "tls_cert",
                    "(absent)",
                    format!(
                        "tls_key = {} needs the certificate beside it",
                        key.display()
                    ),
                ));
            }
            (None, None) => None,
        };
        let host_id = match &n.host_id {
            Some(id) => {
                check_host_id("host_id", id)?;
                id.clone()
            }
            None => {
                let id = read_machine_id(machine_id).ok_or_else(|| {
                    invalid(
                        "host_id",
                        "",
                        format!(
                            "not set and {} is unreadable or empty",
                            machine_id.display()
                        ),
                    )
                })?;
                check_host_id("host_id", &id)?;
                id
            }
        };
        let mut bridge = BridgeConfig::new(&host_id);
        if let Some(p) = &n.prefix {
            if !is_valid_prefix(p) {
                return Err(invalid(
                    "prefix",
                    p.clone(),
                    "must be '.'-separated NATS tokens without wildcards or whitespace",
                ));
            }
            bridge.prefix = p.clone();
        }
        if !is_valid_prefix(&n.all_prefix) {
            return Err(invalid(
                "all_prefix",
                n.all_prefix.clone(),
                "must be '.'-separated NATS tokens without wildcards or whitespace",
            ));
        }
        if n.all_prefix == bridge.prefix {
            return Err(invalid(
                "all_prefix",
                n.all_prefix.clone(),
                "must differ from prefix",
            ));
        }
        bridge.export = n
            .export
            .iter()
            .map(|f| bridge_filter("export", f))
            .collect::<Result<_, _>>()?;
        let mut import = Vec::new();
        for f in &n.import {
            let filter = bridge_filter("import", f)?;
            import.push((bridge.prefix.clone(), filter.clone()));
            import.push((n.all_prefix.clone(), filter));
        }
        for entry in &n.import_from {
            let Some((prefix, f)) = entry.split_once(':') else {
                return Err(invalid(
                    "import_from",
                    entry.clone(),
                    "must be \"<subject prefix>:<topic filter>\"",
                ));
            };
            if !is_valid_prefix(prefix) {
                return Err(invalid(
                    "import_from",
                    entry.clone(),
                    "the subject prefix must be '.'-separated NATS tokens",
                ));
            }
            import.push((prefix.to_string(), bridge_filter("import_from", f)?));
        }
        bridge.import = import;
        // Importing what we export would only be refused message by message: say so now.
        for s in bridge.export_subjects() {
            if let Some((p, f)) = bridge
                .import
                .iter()
                .find(|(p, f)| subscriptions_for(p, f).contains(&s))
            {
                tracing::warn!(subject = %s, import = %format!("{p}:{}", f.as_str()),
                    "the bridge imports a subject it exports; its own messages are not imported back");
            }
        }
        if !(1..=10_000_000).contains(&n.max_queued) {
            return Err(invalid(
                "max_queued",
                n.max_queued.to_string(),
                "must be between 1 and 10000000",
            ));
        }
        if !(1..=65_536).contains(&n.max_in_flight) {
            return Err(invalid(
                "max_in_flight",
                n.max_in_flight.to_string(),
                "must be between 1 and 65536",
            ));
        }
        let window = n.duplicate_window.duration;
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&window) {
            return Err(invalid(
                "duplicate_window",
                n.duplicate_window.to_string(),
                "must be between 1 second and 7 days",
            ));
        }
        bridge.max_queued = n.max_queued as usize;
        bridge.max_in_flight = n.max_in_flight as usize;
        Ok(Some(NatsSettings {
            servers: n.servers.clone(),
            auth,
            // A CA to trust means TLS: never the credentials in clear beside it.
            tls: n.tls || n.tls_ca.is_some() || tls_client.is_some(),
            tls_ca: n.tls_ca.clone(),
            tls_client,
            duplicate_window: window,
            bridge,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    fn resolve(text: &str) -> Result<Option<super::NatsSettings>, String> {
        let c = AgentConfig::parse(std::path::Path::new("agent.toml"), text)
            .map_err(|e| e.to_string())?;
        c.bridge
            .resolve(std::path::Path::new("/nonexistent/machine-id"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn no_section_no_bridge() {
        assert!(resolve("").expect("valid").is_none());
    }

    #[test]
    fn defaults_export_alerts_and_import_tasks_for_this_host_and_all() {
        let s = resolve("[bridge.nats]\nhost_id = \"h1\"\n")
            .expect("valid")
            .expect("a bridge");
        assert_eq!(s.bridge.prefix, "daemoneye.h1");
        assert_eq!(
            s.bridge.export_subjects(),
            vec!["daemoneye.h1.alerts", "daemoneye.h1.alerts.>"]
        );
        let subs: Vec<String> = s
            .bridge
            .import_subscriptions()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert!(subs.contains(&"daemoneye.h1.control.collector.task.>".to_string()));
        assert!(subs.contains(&"daemoneye.all.control.collector.task.>".to_string()));
        assert_eq!(s.duplicate_window, super::DUPLICATE_WINDOW);
        let s = resolve("[bridge.nats]\nhost_id = \"h1\"\nduplicate_window = \"2h\"\n")
            .expect("valid")
            .expect("a bridge");
        assert_eq!(s.duplicate_window, std::time::Duration::from_secs(7200));
    }

    #[test]
    fn bad_values_name_their_key_on_one_line() {
        for (text, key) in [
            (
                "[bridge.nats]\nhost_id = \"h1\"\nservers = []\n",
                "bridge.nats.servers",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nservers = [\"http://x\"]\n",
                "bridge.nats.servers",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\ntoken = \"a\"\ncredentials = \"/etc/passwd\"\n",
                "bridge.nats.token",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\ncredentials = \"/no/such.creds\"\n",
                "bridge.nats.credentials",
            ),
            ("[bridge.nats]\nhost_id = \"a.b\"\n", "bridge.nats.host_id"),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nduplicate_window = \"0s\"\n",
                "bridge.nats.duplicate_window",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nduplicate_window = \"8d\"\n",
                "bridge.nats.duplicate_window",
            ),
            ("[bridge.nats]\n", "bridge.nats.host_id"),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nexport = [\"a.#.b\"]\n",
                "bridge.nats.export",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nprefix = \"a.*\"\n",
                "bridge.nats.prefix",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nmax_queued = 0\n",
                "bridge.nats.max_queued",
            ),
            (
                "[bridge.nats]\nhost_id = \"h1\"\nimport_from = [\"nocolon\"]\n",
                "bridge.nats.import_from",
            ),
            ("[bridge.nats]\nhost_id = \"h1\"\nservrs = []\n", "servrs"),
            (
                "[bridge.nats]\nhost_id = \"h1\"\ntls_ca = \"/no/such-ca.pem\"\n",
                "bridge.nats.tls_ca",
            ),
        ] {
            let err = resolve(text).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
            // A value error is one line (toml's own parse errors quote the line below).
            if key.starts_with("bridge.nats.") {
                assert!(!err.contains('\n'), "one line: {err}");
            }
        }
    }

    #[test]
    fn a_creds_or_ca_file_that_does_not_parse_names_its_key_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "-----BEGIN NATS USER JWT-----\nnot a jwt\n").expect("write");
        let bad_pem = dir.path().join("bad.pem");
        std::fs::write(
            &bad_pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (key, path) in [
            ("credentials", &junk),
            ("tls_ca", &junk),
            ("tls_ca", &bad_pem),
        ] {
            let text = format!(
                "[bridge.nats]\nhost_id = \"h1\"\n{key} = \"{}\"\n",
                path.display()
            );
            let err = resolve(&text).expect_err(&text);
            assert!(err.contains(&format!("bridge.nats.{key}")), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
