//! The NATS bridge's authentication and transport end to end: real agents and a real
//! nats-server started by the test. A .creds file (user JWT and nkey seed) against a server
//! in operator (JWT) mode, with the operator, accounts and users signed by the test; a
//! creds file for a user the server does not know or with the wrong seed (one-line error,
//! Degraded health, the local bus unaffected); a missing or garbled creds file (the agent
//! refuses its config, naming the key and the file). TLS with a CA and a server
//! certificate made by the test (openssl): exports over TLS with `tls_ca`, and TLS against
//! a server without it or with a certificate from another CA (one-line error, Degraded).
//!
//! Every wait is for a condition with a deadline, never a sleep.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_tests::{
    Agent, Bins, NatsOperator, NatsServer, TestCerts, bridge_config, eventually,
};
use futures_util::StreamExt;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An agent on host `host` bridged to `nats`, with `extra` lines in `[bridge.nats]`.
fn agent(nats: &str, host: &str, extra: &str) -> Agent {
    Agent::start(&bins(), Some(&bridge_config(nats, host, extra)))
}

fn wait_healthy(agent: &Agent) {
    eventually("the bridge connects", T, || {
        agent.bridge_status()["state"] == "healthy"
    });
}

async fn local(agent: &Agent, name: &str) -> Client {
    Client::connect(&agent.socket, ClientOptions::new(name))
        .await
        .expect("connect to the agent")
}

/// `key = "path"` for `[bridge.nats]`.
fn path_key(key: &str, path: &Path) -> String {
    format!("{key} = \"{}\"", path.display())
}

/// Publishes an alert locally at QoS1 and waits for it on `sub` (a central subscription).
async fn export_arrives(agent: &Agent, sub: &mut async_nats::Subscriber) {
    let client = local(agent, "detector").await;
    client
        .publish(Publish::new(
            "alerts.high",
            Bytes::from("over the bridge"),
            QoS::AtLeastOnce,
        ))
        .await
        .expect("publish");
    let m = tokio::time::timeout(T, sub.next())
        .await
        .expect("the export arrives in time")
        .expect("subscription open");
    assert_eq!(m.subject.as_str(), "daemoneye.h1.alerts.high");
    assert_eq!(&m.payload[..], b"over the bridge");
}

/// The bridge cannot get through: health Degraded with a last error `error` accepts, the
/// error logged by the bridge on one line (and once, not at every retry), and the local
/// bus unaffected (its QoS1 exports wait on disk).
fn refused(agent: &mut Agent, what: &str, error: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + T;
    let last = loop {
        let s = agent.bridge_status();
        let last = s["last_error"].as_str().unwrap_or_default().to_string();
        if s["state"] == "degraded" && error(&last) {
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the bridge to report {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!last.contains('\n'), "one line: {last:?}");
    let (_, out, _) = agent.run_cli(&["health", "--json"]);
    let health: Value = serde_json::from_str(&out).expect("health JSON");
    assert_eq!(health["bridge"], "degraded", "{health}");
    // The error in the log is the bridge's, on its own line.
    let first_words: String = last.chars().take(20).collect();
    let logged = agent
        .stderr
        .wait_for(&first_words, T)
        .expect("the error is logged");
    assert!(logged.contains("bridge:"), "from the bridge: {logged}");
    runtime().block_on(async {
        let client = local(agent, "bus").await;
        let mut sub = client
            .subscribe(Subscribe::new("alerts.#"))
            .await
            .expect("sub");
        for i in 0..50 {
            let started = Instant::now();
            client
                .publish(Publish::new(
                    "alerts.high",
                    Bytes::from(i.to_string()),
                    QoS::AtLeastOnce,
                ))
                .await
                .expect("publish");
            let d = tokio::time::timeout(T, sub.recv())
                .await
                .expect("delivered locally")
                .expect("open");
            assert_eq!(d.payload, Bytes::from(i.to_string()));
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    });
    eventually("the exports wait on disk", T, || {
        agent.bridge_status()["queued"] == 50
    });
    let s = agent.bridge_status();
    assert_eq!(s["state"], "degraded", "{s}");
    assert_eq!(s["exported"], 0, "{s}");
    let times = agent
        .stderr
        .seen
        .iter()
        .filter(|l| l.contains(&first_words))
        .count();
    assert!(
        times <= 2,
        "logged once, not at every retry: {:?}",
        agent.stderr.seen
    );
}

/// A nats-server in operator mode for `operator`, with JetStream.
fn operator_server(operator: &NatsOperator, dir: &Path) -> NatsServer {
    let conf = operator.server_config(dir);
    NatsServer::start_with(&["-c", conf.to_str().expect("a UTF-8 path")])
}

#[test]
fn a_credentials_file_authenticates_the_bridge_to_a_server_in_operator_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = NatsOperator::new();
    let nats = operator_server(&operator, dir.path());
    let creds = dir.path().join("h1.creds");
    operator.user_creds(&creds);
    let central_creds = dir.path().join("central.creds");
    operator.user_creds(&central_creds);
    let agent = agent(&nats.url(), "h1", &path_key("credentials", &creds));
    wait_healthy(&agent);
    assert_eq!(agent.bridge_status()["mode"], "jetstream DAEMONEYE_h1");
    runtime().block_on(async {
        // Without credentials the server turns the central client away: it needs them.
        let anonymous = async_nats::ConnectOptions::new()
            .connect(nats.url())
            .await
            .map(|_| ());
        assert!(anonymous.is_err(), "the server requires credentials");
        let central = async_nats::ConnectOptions::new()
            .credentials_file(&central_creds)
            .await
            .expect("central creds")
            .connect(nats.url())
            .await
            .expect("central");
        let mut sub = central.subscribe("daemoneye.h1.>").await.expect("sub");
        central.flush().await.expect("flush");
        export_arrives(&agent, &mut sub).await;
    });
    eventually("the export acknowledged", T, || {
        let s = agent.bridge_status();
        s["exported"] == 1 && s["queued"] == 0
    });
}

#[test]
fn a_creds_file_for_an_unknown_user_gives_one_line_error_and_degraded_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = NatsOperator::new();
    let nats = operator_server(&operator, dir.path());
    let creds = dir.path().join("stranger.creds");
    operator.unknown_user_creds(&creds);
    let mut agent = agent(&nats.url(), "h1", &path_key("credentials", &creds));
    refused(&mut agent, "the refusal", |e| {
        e.to_lowercase().contains("authorization")
    });
}

#[test]
fn a_creds_file_with_the_wrong_seed_gives_one_line_error_and_degraded_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = NatsOperator::new();
    let nats = operator_server(&operator, dir.path());
    let creds = dir.path().join("wrong-seed.creds");
    operator.wrong_seed_creds(&creds);
    let mut agent = agent(&nats.url(), "h1", &path_key("credentials", &creds));
    refused(&mut agent, "the refusal", |e| {
        e.to_lowercase().contains("authorization")
    });
}

#[test]
fn a_missing_or_garbled_creds_file_is_a_config_error_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.creds");
    let garbled = dir.path().join("garbled.creds");
    std::fs::write(&garbled, "-----BEGIN NATS USER JWT-----\nnot a jwt\n").expect("write");
    let truncated = dir.path().join("truncated.creds");
    let operator = NatsOperator::new();
    operator.user_creds(&truncated);
    let text = std::fs::read_to_string(&truncated).expect("read");
    let (jwt_only, _) = text
        .split_once("-----BEGIN USER NKEY SEED")
        .expect("a seed");
    std::fs::write(&truncated, jwt_only).expect("write");
    for path in [&missing, &garbled, &truncated] {
        let config = bridge_config(
            "nats://127.0.0.1:4222",
            "h1",
            &path_key("credentials", path),
        );
        let err = Agent::refuses_to_start(&bins(), &config);
        let line = err
            .lines()
            .find(|l| l.contains("bridge.nats.credentials"))
            .unwrap_or_else(|| panic!("an error naming the key: {err}"));
        assert!(
            line.contains(&path.display().to_string()),
            "and the file: {line}"
        );
    }
}

/// A nats-server that requires TLS with `certs`' server certificate.
fn tls_server(certs: &TestCerts) -> NatsServer {
    let (cert, key) = (
        certs.cert.to_str().expect("UTF-8"),
        certs.key.to_str().expect("UTF-8"),
    );
    NatsServer::start_with(&["--tls", "--tlscert", cert, "--tlskey", key])
}

#[test]
fn exports_arrive_over_tls_from_a_server_whose_certificate_the_configured_ca_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(dir.path(), "fleet");
    let nats = tls_server(&certs);
    let agent = agent(
        &nats.url(),
        "h1",
        &format!("tls = true\n{}", path_key("tls_ca", &certs.ca)),
    );
    wait_healthy(&agent);
    runtime().block_on(async {
        let central = async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(certs.ca.clone())
            .connect(nats.url())
            .await
            .expect("central over TLS");
        let mut sub = central.subscribe("daemoneye.h1.>").await.expect("sub");
        central.flush().await.expect("flush");
        export_arrives(&agent, &mut sub).await;
    });
    eventually("the export acknowledged", T, || {
        let s = agent.bridge_status();
        s["exported"] == 1 && s["queued"] == 0
    });
}

#[test]
fn tls_against_a_server_without_tls_gives_one_line_error_and_degraded_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(dir.path(), "fleet");
    let nats = NatsServer::start();
    // `tls_ca` alone means TLS: the credentials never go in clear to a server without it.
    let mut agent = agent(&nats.url(), "h1", &path_key("tls_ca", &certs.ca));
    refused(&mut agent, "the TLS failure", |e| {
        e.contains("does not answer in TLS")
    });
}

#[test]
fn a_server_certificate_from_another_ca_gives_one_line_error_and_degraded_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let theirs = TestCerts::new(dir.path(), "theirs");
    let ours = TestCerts::new(dir.path(), "ours");
    let nats = tls_server(&theirs);
    let mut agent = agent(
        &nats.url(),
        "h1",
        &format!("tls = true\n{}", path_key("tls_ca", &ours.ca)),
    );
    refused(&mut agent, "the untrusted certificate", |e| {
        e.contains("invalid peer certificate") && e.contains("bridge.nats.tls_ca")
    });
}

/// A nats-server that requires TLS and a client certificate signed by `certs`' CA.
fn verifying_server(certs: &TestCerts) -> NatsServer {
    let (cert, key, ca) = (
        certs.cert.to_str().expect("UTF-8"),
        certs.key.to_str().expect("UTF-8"),
        certs.ca.to_str().expect("UTF-8"),
    );
    NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        cert,
        "--tlskey",
        key,
        "--tlscacert",
        ca,
    ])
}

#[test]
fn a_client_certificate_gets_the_bridge_through_a_server_that_verifies_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(dir.path(), "fleet");
    let (bridge_cert, bridge_key) = certs.client(dir.path(), "bridge");
    let (central_cert, central_key) = certs.client(dir.path(), "central");
    let nats = verifying_server(&certs);
    let agent = agent(
        &nats.url(),
        "h1",
        &format!(
            "{}\n{}\n{}",
            path_key("tls_ca", &certs.ca),
            path_key("tls_cert", &bridge_cert),
            path_key("tls_key", &bridge_key)
        ),
    );
    wait_healthy(&agent);
    runtime().block_on(async {
        let central = async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(certs.ca.clone())
            .add_client_certificate(central_cert, central_key)
            .connect(nats.url())
            .await
            .expect("central with its client certificate");
        let mut sub = central.subscribe("daemoneye.h1.>").await.expect("sub");
        central.flush().await.expect("flush");
        export_arrives(&agent, &mut sub).await;
    });
    eventually("the export acknowledged", T, || {
        let s = agent.bridge_status();
        s["exported"] == 1 && s["queued"] == 0
    });
}

#[test]
fn without_a_client_certificate_a_verifying_server_refuses_the_bridge_on_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(dir.path(), "fleet");
    let nats = verifying_server(&certs);
    let mut agent = agent(&nats.url(), "h1", &path_key("tls_ca", &certs.ca));
    refused(&mut agent, "the refusal", |e| e.starts_with("connecting:"));
}

#[test]
fn a_client_certificate_without_its_key_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::new(dir.path(), "fleet");
    let (cert, key) = certs.client(dir.path(), "bridge");
    for (extra, named) in [
        (path_key("tls_cert", &cert), "bridge.nats.tls_key"),
        (path_key("tls_key", &key), "bridge.nats.tls_cert"),
        (
            format!(
                "{}\n{}",
                path_key("tls_cert", &key),
                path_key("tls_key", &key)
            ),
            "bridge.nats.tls_cert",
        ),
        (
            format!(
                "{}\n{}",
                path_key("tls_cert", &cert),
                path_key("tls_key", &cert)
            ),
            "bridge.nats.tls_key",
        ),
    ] {
        let config = bridge_config("nats://127.0.0.1:1", "h1", &extra);
        let why = Agent::refuses_to_start(&bins(), &config);
        assert!(why.contains(named), "{extra}: {why}");
    }
}
