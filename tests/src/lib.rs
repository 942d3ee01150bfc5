//! Harness for end-to-end tests of the real binaries: start an agent on a socket in a
//! temporary directory, run CLI commands against it, follow a child's output line by line.
//!
//! Cargo hands a package's binaries (`CARGO_BIN_EXE_*`) only to that package's own
//! integration tests, so the tests themselves live in `io/tests/` and pass the paths in.
//! Every wait here is for an observable event (a line printed, a process exiting) with a
//! deadline, never a fixed sleep.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Paths of the binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// daemoneye-agent.
    pub agent: PathBuf,
    /// daemoneye-cli.
    pub cli: PathBuf,
}

/// Lines a child prints on one stream, read on a thread.
#[derive(Debug)]
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Everything received so far.
    pub seen: Vec<String>,
}

impl Lines {
    /// Follows `stream` line by line.
    pub fn follow(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits until a line containing `needle` arrives; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "no line containing {needle:?} within {timeout:?}; saw {:?}",
                        self.seen
                    ));
                }
            }
        }
    }

    /// Waits until `n` lines have arrived in all (or the stream ends, or the deadline).
    pub fn wait_count(&mut self, n: usize, timeout: Duration) -> &[String] {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        &self.seen
    }

    /// Collects whatever remains until the stream closes (the child exited).
    pub fn drain(&mut self, timeout: Duration) -> &[String] {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        &self.seen
    }
}

/// A running agent in its own temporary directory.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its stderr.
    pub stderr: Lines,
    /// The binaries.
    pub bins: Bins,
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent with an optional TOML config and waits until it listens.
    pub fn start(bins: &Bins, config: Option<&str>) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run").join("broker.sock");
        Self::start_at(bins, config, dir, socket)
    }

    /// Starts an agent that logs at `level` (the others log at `warn`).
    pub fn start_logging(bins: &Bins, config: Option<&str>, level: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run").join("broker.sock");
        Self::start_inner(bins, config, dir, socket, level)
    }

    /// Starts an agent on a given socket path.
    pub fn start_at(
        bins: &Bins,
        config: Option<&str>,
        dir: tempfile::TempDir,
        socket: PathBuf,
    ) -> Agent {
        Self::start_inner(bins, config, dir, socket, "warn")
    }

    fn start_inner(
        bins: &Bins,
        config: Option<&str>,
        dir: tempfile::TempDir,
        socket: PathBuf,
        level: &str,
    ) -> Agent {
        let mut cmd = Command::new(&bins.agent);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--log-level")
            .arg(level);
        // Without [[collectors]] the agent would supervise a procmond found beside it:
        // tests get exactly the collectors they configure.
        let text = config.unwrap_or("");
        let text = if text.contains("[[collectors]]") {
            text.to_string()
        } else {
            format!("collectors = []\n{text}")
        };
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, &text).expect("write config");
        cmd.arg("--config").arg(path);
        // The agent's state stays in the test's directory unless the test names a root.
        if !text.contains("state_dir") {
            cmd.env("DAEMONEYE_AGENT_STATE_DIR", dir.path().join("state"));
        }
        cmd.env_remove("DAEMONEYE_BROKER_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn agent");
        let mut stderr = Lines::follow(child.stderr.take().expect("stderr"));
        stderr
            .wait_for("listening on", Duration::from_secs(10))
            .expect("agent listens");
        Agent {
            child,
            socket,
            stderr,
            bins: bins.clone(),
            dir,
        }
    }

    /// Runs an agent with a config it must refuse: waits (up to 10 s) for it to exit with
    /// an error and returns its stderr.
    pub fn refuses_to_start(bins: &Bins, config: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("collectors = []\n{config}")).expect("write config");
        let mut child = Command::new(&bins.agent)
            .arg("--socket")
            .arg(dir.path().join("broker.sock"))
            .arg("--config")
            .arg(&path)
            .env("DAEMONEYE_AGENT_STATE_DIR", dir.path().join("state"))
            .env_remove("DAEMONEYE_BROKER_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let mut stderr = Lines::follow(child.stderr.take().expect("stderr"));
        let status = wait_exit(&mut child, Duration::from_secs(10));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let lines = stderr.drain(Duration::from_secs(2)).join("\n");
        let status = status.unwrap_or_else(|| panic!("the agent started anyway: {lines}"));
        assert!(!status.success(), "the agent exits with an error: {lines}");
        lines
    }

    /// Waits until the agent's collector `name` runs and watches in real time (its
    /// `collectors list` detail says `realtime`, as procmond's does with the process
    /// connector); returns its pid.
    pub fn wait_realtime(&self, name: &str, timeout: Duration) -> u32 {
        let mut pid = 0;
        eventually(&format!("{name} watches in real time"), timeout, || {
            let (_, out, _) = self.run_cli(&["collectors", "list", "--json"]);
            let all: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let c = all
                .as_array()
                .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
                .unwrap_or_default();
            pid = c["pid"].as_u64().unwrap_or(0) as u32;
            c["state"] == "running" && c["detail"].as_str().is_some_and(|d| d.contains("realtime"))
        });
        pid
    }

    /// A CLI command against this agent (`--socket` appended).
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bins.cli);
        cmd.args(args).arg("--socket").arg(&self.socket);
        cmd.env_remove("DAEMONEYE_BROKER_SOCKET");
        cmd
    }

    /// Runs a CLI command to completion: (status, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = self
            .cli(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cli");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `daemoneye-cli sub ...` and waits until it is subscribed.
    pub fn subscriber(&self, args: &[&str]) -> Subscriber {
        let mut full = vec!["sub"];
        full.extend_from_slice(args);
        let mut child = self
            .cli(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sub");
        let stdout = Lines::follow(child.stdout.take().expect("stdout"));
        let mut stderr = Lines::follow(child.stderr.take().expect("stderr"));
        stderr
            .wait_for("subscribed", Duration::from_secs(10))
            .expect("subscriber ready");
        Subscriber {
            child,
            stdout,
            stderr,
        }
    }

    /// `daemoneye-cli bridge status --json`, parsed.
    pub fn bridge_status(&self) -> serde_json::Value {
        let (ok, out, err) = self.run_cli(&["bridge", "status", "--json"]);
        assert!(ok.success(), "bridge status: {err}");
        serde_json::from_str(&out).expect("bridge status is JSON")
    }

    /// Sends SIGTERM and waits for the exit; returns how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        let status =
            wait_exit(&mut self.child, Duration::from_secs(10)).expect("agent exits after SIGTERM");
        (status, start.elapsed())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A graceful stop first, so that the agent stops its collectors (and their children);
        // SIGKILL only if it does not exit in time.
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_exit(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A running `daemoneye-cli sub`.
#[derive(Debug)]
pub struct Subscriber {
    /// The process.
    pub child: Child,
    /// Its output, one message per line.
    pub stdout: Lines,
    /// Its stderr.
    pub stderr: Lines,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal child");
}

/// Waits for `child` to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a path exists.
pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Builds example `name` of the package in `manifest_dir` (`env!("CARGO_MANIFEST_DIR")`)
/// into the calling test's target directory, with the test's profile, and returns its path.
/// Cargo hands integration tests the paths of the package's binaries only, and does not
/// build examples for a filtered `cargo test --test`.
pub fn build_example(manifest_dir: &str, package: &str, name: &str) -> PathBuf {
    // .../target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("test path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--example", name])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(manifest_dir);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "building example {name} failed");
    profile_dir.join("examples").join(name)
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` when `timeout` passes.
pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// A nats-server (with JetStream) started for a test on a free loopback port, its store
/// in a temporary directory; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Extra arguments (authentication, say), kept for a restart.
    args: Vec<String>,
    /// JetStream's store (kept across a restart).
    pub store: tempfile::TempDir,
    /// Started with `-js`.
    jetstream: bool,
    /// While stopped from the start: its port, held so that no other test's server
    /// takes it (a client connecting meanwhile gets no answer, as from a dead server).
    hold: Option<std::net::TcpListener>,
}

/// An agent config bridged to `nats` as host `host`, with `extra` lines in
/// `[bridge.nats]` (detection and the store off: the bus and the bridge alone).
pub fn bridge_config(nats: &str, host: &str, extra: &str) -> String {
    format!(
        "[detection]\nenabled = false\n[store]\nenabled = false\n\
         [bridge.nats]\nservers = [\"{nats}\"]\nhost_id = \"{host}\"\n{extra}\n"
    )
}

/// The nats-server binary: `NATS_SERVER` if set, else `nats-server` on the PATH, else
/// Debian's `/usr/sbin/nats-server`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl NatsServer {
    /// Starts `nats-server -js` with no authentication.
    pub fn start() -> NatsServer {
        Self::start_with(&[])
    }

    /// Starts `nats-server -js` with extra arguments (e.g. `--auth TOKEN`).
    pub fn start_with(args: &[&str]) -> NatsServer {
        Self::start_as(args, true)
    }

    /// Starts `nats-server` without JetStream (plain publishes only).
    pub fn start_without_jetstream() -> NatsServer {
        Self::start_as(&[], false)
    }

    fn start_as(args: &[&str], jetstream: bool) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            store: tempfile::tempdir().expect("tempdir"),
            jetstream,
            hold: None,
        };
        server.spawn();
        server
    }

    /// A server not running yet (start it with [`restart`](Self::restart)), on a port
    /// held for it until then: the address a client can be given before the server is up.
    pub fn stopped() -> NatsServer {
        let hold = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        NatsServer {
            child: None,
            port: hold.local_addr().expect("local addr").port(),
            args: Vec::new(),
            store: tempfile::tempdir().expect("tempdir"),
            jetstream: true,
            hold: Some(hold),
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        // The port held while stopped is the server's now.
        self.hold = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(nats_server_binary())
                .args(self.jetstream.then_some("-js"))
                .args(["-a", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .arg("-sd")
                .arg(self.store.path())
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn nats-server (install the nats-server package)");
            let mut log = Lines::follow(child.stderr.take().expect("stderr"));
            match log.wait_for("Server is ready", Duration::from_secs(10)) {
                Ok(_) => {
                    // Keep draining its log so that it never blocks on a full pipe.
                    std::thread::spawn(move || while log.rx.recv().is_ok() {});
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // The port of a server just killed can linger for a moment.
                    assert!(
                        Instant::now() < deadline,
                        "nats-server did not become ready on port {}: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// SIGKILL: nothing flushed, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store (after [`kill`](Self::kill)),
    /// or for the first time (after [`stopped`](Self::stopped)).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// NATS's decentralised authentication for a test: an operator, its system account and one
/// account (with JetStream), all signed here; users of that account are written as .creds
/// files (a user JWT and its nkey seed), the format the bridge's `credentials` reads.
pub struct NatsOperator {
    operator: nkeys::KeyPair,
    operator_jwt: String,
    system: nkeys::KeyPair,
    system_jwt: String,
    account: nkeys::KeyPair,
    account_jwt: String,
}

impl std::fmt::Debug for NatsOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsOperator({})", self.operator.public_key())
    }
}

/// Base64url without padding, as JWTs are encoded.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with the NATS claims `nats`, for `subject`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("T{}{now}{n}", std::process::id()),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).expect("sign a JWT");
    format!("{signed}.{}", b64(&signature))
}

/// Account claims without limits, JetStream enabled when `jetstream`.
fn account_claims(jetstream: bool) -> serde_json::Value {
    let mut limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = (-1).into();
        }
    }
    serde_json::json!({ "limits": limits, "type": "account", "version": 2 })
}

/// A user of `account` as a .creds file's text; `seed` signs (normally the user's own).
fn creds_text(account: &nkeys::KeyPair, user: &nkeys::KeyPair, seed: &nkeys::KeyPair) -> String {
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        "daemoneye-test-user",
        serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        seed.seed().expect("a seed")
    )
}

impl NatsOperator {
    /// New keys for an operator, a system account and an account.
    pub fn new() -> NatsOperator {
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "daemoneye-test-operator",
            serde_json::json!({
                "system_account": system.public_key(), "type": "operator", "version": 2,
            }),
        );
        let system_jwt = nats_jwt(
            &operator,
            &system.public_key(),
            "SYS",
            account_claims(false),
        );
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            "FLEET",
            account_claims(true),
        );
        NatsOperator {
            operator,
            operator_jwt,
            system,
            system_jwt,
            account,
            account_jwt,
        }
    }

    /// Writes a nats-server configuration trusting this operator (its accounts preloaded in
    /// a memory resolver) into `dir`; returns its path, for `NatsServer::start_with(&["-c",
    /// path])`.
    pub fn server_config(&self, dir: &Path) -> PathBuf {
        let path = dir.join("nats-operator.conf");
        let text = format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            self.operator_jwt,
            self.system.public_key(),
            self.system.public_key(),
            self.system_jwt,
            self.account.public_key(),
            self.account_jwt,
        );
        std::fs::write(&path, text).expect("write the nats-server config");
        path
    }

    /// Writes a .creds file for a new user of the account at `path`.
    pub fn user_creds(&self, path: &Path) {
        let user = nkeys::KeyPair::new_user();
        std::fs::write(path, creds_text(&self.account, &user, &user)).expect("write creds");
    }

    /// Writes a .creds file for a user of an account this server does not know.
    pub fn unknown_user_creds(&self, path: &Path) {
        let stranger = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        std::fs::write(path, creds_text(&stranger, &user, &user)).expect("write creds");
    }

    /// Writes a .creds file whose user JWT is valid but whose seed is another user's.
    pub fn wrong_seed_creds(&self, path: &Path) {
        let user = nkeys::KeyPair::new_user();
        let other = nkeys::KeyPair::new_user();
        std::fs::write(path, creds_text(&self.account, &user, &other)).expect("write creds");
    }
}

impl Default for NatsOperator {
    fn default() -> Self {
        Self::new()
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI.
#[derive(Debug)]
pub struct TestCerts {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's key (PEM).
    pub key: PathBuf,
    /// The CA's key, for [`client`](Self::client) certificates.
    ca_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The arguments that make a new P-256 key without a passphrase.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl TestCerts {
    /// A new CA (`<name>-ca.pem`) and a server certificate for 127.0.0.1 and localhost
    /// signed by it, in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCerts {
        let (ca_key, ca) = (
            dir.join(format!("{name}-ca.key")),
            dir.join(format!("{name}-ca.pem")),
        );
        let subject = format!("/CN=DaemonEye test CA {name}");
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &EC_KEY,
                &[
                    "-keyout",
                    path_str(&ca_key),
                    "-out",
                    path_str(&ca),
                    "-days",
                    "2",
                    "-subj",
                    &subject,
                ],
            ]
            .concat(),
        );
        let mut certs = TestCerts {
            ca,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca_key,
        };
        (certs.cert, certs.key) = certs.issue(
            dir,
            &format!("{name}-server"),
            "/CN=127.0.0.1",
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
            "2",
        );
        certs
    }

    /// A client certificate signed by this CA (for servers that verify clients):
    /// (certificate, key), PEM, in `dir`.
    pub fn client(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue(
            dir,
            &format!("{name}-client"),
            &format!("/CN={name}"),
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
            "3",
        )
    }

    /// A new key and a certificate for `subject` with the extensions `ext`, signed by
    /// this CA: `<stem>.pem` and `<stem>.key` in `dir`.
    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        subject: &str,
        ext: &str,
        serial: &str,
    ) -> (PathBuf, PathBuf) {
        let (key, csr, cert, ext_file) = (
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.csr")),
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.ext")),
        );
        std::fs::write(&ext_file, ext).expect("write extensions");
        openssl(
            dir,
            &[
                &["req"][..],
                &EC_KEY,
                &[
                    "-keyout",
                    path_str(&key),
                    "-out",
                    path_str(&csr),
                    "-subj",
                    subject,
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.ca),
                "-CAkey",
                path_str(&self.ca_key),
                "-set_serial",
                serial,
                "-days",
                "2",
                "-out",
                path_str(&cert),
                "-extfile",
                path_str(&ext_file),
            ],
        );
        (cert, key)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
