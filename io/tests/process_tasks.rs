//! procmond's `process` tasks against real processes: procmond runs under a real agent,
//! and each test sends `Task`s on `control.collector.task.process` (a QoS1 publish with a
//! reply topic, as the coordinator does) and reads the `TaskResult`.
//!
//! The child that holds a file and a listening socket is this test binary itself, run
//! again as the ignored test `helper_holds_a_file_and_a_listening_socket`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_io::client::{Client, ClientOptions};
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::control as pbc;
use daemoneye_proto::pb::events::{ProcessTaskRequest, ProcessTaskResult};
use daemoneye_tests::{Agent, Bins, eventually};
use prost::Message;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(15);
const HELPER_ENV: &str = "DAEMONEYE_TEST_HOLD_FILE";

fn bins() -> Bins {
    Bins {
        agent: env!("CARGO_BIN_EXE_daemoneye-agent").into(),
        cli: env!("CARGO_BIN_EXE_daemoneye-cli").into(),
    }
}

/// An agent supervising procmond.
fn agent(state: &tempfile::TempDir) -> Agent {
    let config = format!(
        "[broker]\nheartbeat_interval_ms = 200\n[[collectors]]\nname = \"procmond\"\nbinary = {:?}\nargs = [\"--interval\", \"5\", \"--wal\", {:?}]\ncapabilities = [\"process\"]\nstop_timeout_ms = 300\n",
        env!("CARGO_BIN_EXE_procmond"),
        state.path().join("procmond.wal"),
    );
    Agent::start(&bins(), Some(&config))
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Field 22 of `/proc/<pid>/stat`.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(") ").expect("comm") + 2..];
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("ticks")
}

/// Sends one task and returns procmond's result.
async fn ask(client: &Client, kind: &str, request: &ProcessTaskRequest) -> pbc::TaskResult {
    let task = pbc::Task {
        task_id: format!("task-{kind}-{}", request.pid),
        capability: "process".into(),
        kind: kind.into(),
        deadline_ms: unix_ms() + T.as_millis() as u64,
        payload: Bytes::from(request.encode_to_vec()),
        ..Default::default()
    };
    let p = Publish::new(
        "control.collector.task.process",
        Bytes::from(task.encode_to_vec()),
        QoS::AtLeastOnce,
    );
    let reply = client.request(p, T).await.expect("task answered");
    let result = pbc::TaskResult::decode(reply.payload).expect("TaskResult");
    assert_eq!(result.task_id, task.task_id);
    assert_eq!(result.collector_id, "procmond");
    result
}

/// [`ask`] for a task that must succeed: its payload.
async fn ask_ok(client: &Client, kind: &str, request: &ProcessTaskRequest) -> ProcessTaskResult {
    let result = ask(client, kind, request).await;
    assert!(result.ok, "{kind}: {}", result.message);
    ProcessTaskResult::decode(result.payload).expect("ProcessTaskResult")
}

fn request(pid: u32) -> ProcessTaskRequest {
    ProcessTaskRequest {
        pid,
        start_ticks: start_ticks(pid),
        ..Default::default()
    }
}

async fn connect(agent: &Agent) -> Client {
    Client::connect(&agent.socket, ClientOptions::new("process-tasks-test"))
        .await
        .expect("connect")
}

/// Kills and reaps a child.
fn end(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Run as a child (see the module documentation): opens the file named by the
/// environment, listens on a TCP port, prints `READY <port>` and waits for stdin to close.
#[test]
#[ignore = "a helper process for the other tests"]
fn helper_holds_a_file_and_a_listening_socket() {
    let Ok(path) = std::env::var(HELPER_ENV) else {
        return;
    };
    let _file = std::fs::File::open(&path).expect("open the file to hold");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    println!("READY {port}");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

#[test]
fn open_files_show_a_held_file_and_a_listening_tcp_socket() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = agent(&state);
    let held = state.path().join("held-file.txt");
    std::fs::write(&held, b"evidence").expect("write");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_holds_a_file_and_a_listening_socket",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, &held)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port: u16 = lines
        .find_map(|l| l.ok()?.strip_prefix("READY ")?.parse().ok())
        .expect("the helper listens");
    let pid = child.id();
    let files = tokio().block_on(async {
        let client = connect(&agent).await;
        let r = ask_ok(&client, "open_files", &request(pid)).await;
        client.close().await;
        r
    });
    end(child);
    assert!(!files.gone);
    assert!(
        files
            .open_files
            .iter()
            .any(|f| f == &held.display().to_string()),
        "{:?}",
        files.open_files
    );
    let listening = files
        .sockets
        .iter()
        .find(|s| s.protocol == "tcp" && s.local == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("no listening socket on {port}: {:?}", files.sockets));
    assert_eq!(listening.state, "LISTEN");
    assert_eq!(listening.remote, "0.0.0.0:0");
    assert!(listening.inode != 0);
}

#[test]
fn the_ancestry_of_a_grandchild_reaches_init_through_this_process() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = agent(&state);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 60 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("grandchild pid");
    let grandchild: u32 = line.trim().parse().expect("pid");
    let sh = child.id();
    let chain = tokio().block_on(async {
        let client = connect(&agent).await;
        let r = ask_ok(&client, "ancestry", &request(grandchild)).await;
        client.close().await;
        r
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(grandchild as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    end(child);
    let pids: Vec<u32> = chain.ancestry.iter().map(|p| p.pid).collect();
    assert_eq!(&pids[..2], &[grandchild, sh], "{pids:?}");
    assert_eq!(pids[2], std::process::id(), "{pids:?}");
    assert_eq!(pids.last(), Some(&1), "{pids:?}");
    assert_eq!(chain.ancestry[0].exe, "/usr/bin/sleep");
    assert_eq!(chain.ancestry[0].cmdline, ["sleep", "60"]);
    // Each link is its child's parent.
    for pair in chain.ancestry.windows(2) {
        assert_eq!(pair[0].ppid, pair[1].pid, "{pids:?}");
    }
}

#[test]
fn the_hash_is_the_binarys_sha256_also_after_it_is_deleted_and_reads_need_only_two_capabilities() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = agent(&state);
    // A copy of sleep in a directory another user can reach, run as nobody: procmond
    // reads another user's process through CAP_SYS_PTRACE alone.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let copy = dir.path().join("copied-sleep");
    std::fs::copy("/usr/bin/sleep", &copy).expect("copy sleep");
    let bytes = std::fs::read(&copy).expect("read");
    let expected: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let child = Command::new(&copy)
        .arg("60")
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("spawn the copy");
    let pid = child.id();
    eventually("the copy runs", T, || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == copy)
    });
    let req = request(pid);
    let procmond_pid = procmond_pid(&agent);
    let (before, after, files, chain) = tokio().block_on(async {
        let client = connect(&agent).await;
        let before = ask_ok(&client, "hash", &req).await;
        std::fs::remove_file(&copy).expect("delete the binary");
        let after = ask_ok(&client, "hash", &req).await;
        let files = ask_ok(&client, "open_files", &req).await;
        let chain = ask_ok(&client, "ancestry", &req).await;
        client.close().await;
        (before, after, files, chain)
    });
    end(child);
    assert_eq!(before.exe_sha256, expected);
    assert_eq!(
        after.exe_sha256, expected,
        "the deleted binary still hashes"
    );
    assert!(!before.gone && !after.gone);
    assert!(!files.gone && chain.ancestry[0].pid == pid);
    assert_eq!(chain.ancestry[0].uid, 65534);
    // Every thread of procmond, the ones that served the tasks included, holds
    // CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH only.
    let expected_caps = format!("{:016x}", (1u64 << 19) | (1 << 2));
    let tasks = std::fs::read_dir(format!("/proc/{procmond_pid}/task")).expect("threads");
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let Some(eff) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else {
            continue;
        };
        assert_eq!(eff.trim(), expected_caps, "thread {:?}", t.file_name());
    }
}

fn procmond_pid(agent: &Agent) -> u32 {
    agent.wait_realtime("procmond", T)
}

#[test]
fn a_process_that_exited_or_a_reused_pid_is_gone_and_bad_tasks_fail_clearly() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = agent(&state);
    let child = Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    let exited = request(pid);
    end(child);
    // This process's pid with another start: what a reused pid looks like.
    let mut reused = request(std::process::id());
    reused.start_ticks += 1;
    tokio().block_on(async {
        let client = connect(&agent).await;
        for kind in ["hash", "ancestry", "open_files"] {
            for req in [&exited, &reused] {
                let r = ask_ok(&client, kind, req).await;
                assert!(r.gone, "{kind} of {}: {r:?}", req.pid);
                assert!(
                    r.exe_sha256.is_empty()
                        && r.ancestry.is_empty()
                        && r.open_files.is_empty()
                        && r.sockets.is_empty(),
                    "{kind}: nothing of another process: {r:?}"
                );
            }
        }
        let r = ask(&client, "memory_map", &request(std::process::id())).await;
        assert!(
            !r.ok && r.message.contains("unknown process task kind"),
            "{}",
            r.message
        );
        let task = pbc::Task {
            task_id: "bad".into(),
            capability: "process".into(),
            kind: "hash".into(),
            payload: Bytes::from_static(&[0xff, 0x01]),
            ..Default::default()
        };
        let p = Publish::new(
            "control.collector.task.process",
            Bytes::from(task.encode_to_vec()),
            QoS::AtLeastOnce,
        );
        let reply = client.request(p, T).await.expect("answered");
        let r = pbc::TaskResult::decode(reply.payload).expect("TaskResult");
        assert!(
            !r.ok && r.message.contains("malformed ProcessTaskRequest"),
            "{}",
            r.message
        );
        client.close().await;
    });
}
