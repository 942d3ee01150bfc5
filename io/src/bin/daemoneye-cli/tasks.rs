//! `tasks submit|list|cancel`: the agent's task coordinator, over `control.tasks.submit`,
//! `control.tasks.list` and `control.tasks.cancel`.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use daemoneye_core::registry::SourceCaps;
use daemoneye_core::topic::topics;
use daemoneye_io::client::{Client, ClientError};
use daemoneye_io::config::parse_humane_duration;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::{control as pbc, events as pbe};
use prost::Message as _;
use serde::Serialize;

use crate::connection::connect;
use crate::error::CliError;

/// The `tasks` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// Submit a task for a collector with CAPABILITY; prints the task (with --wait, once it
    /// has ended, with the collector's result). Exit status 1 when it failed or was
    /// cancelled.
    Submit(SubmitArgs),
    /// Tasks waiting or assigned (with --all, also the ones that ended recently).
    List {
        /// Also the tasks that ended (the agent keeps `[tasks] history` of them).
        #[arg(long)]
        all: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task that has not ended.
    Cancel {
        /// The task's id (from `submit` or `list`).
        id: String,
    },
}

/// `tasks submit CAPABILITY PAYLOAD ...`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The capability a collector must have: process, network, filesystem, performance,
    /// realtime, kernel_level or system_wide.
    pub capability: String,
    /// The request: text, or @FILE for a file's bytes. For `process`, a JSON object with
    /// ProcessTaskRequest's fields (`{"pid":123}`, also `start_ticks`, `exe`).
    pub payload: String,
    /// What is wanted (the capability's task kind: for `process`, hash, ancestry or
    /// open_files).
    #[arg(long, default_value = "")]
    pub kind: String,
    /// 0 to 255, higher first.
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub priority: u32,
    /// Only this collector (its id) may take it.
    #[arg(long, value_name = "COLLECTOR")]
    pub target: Option<String>,
    /// How long one attempt may take (10s, 500ms, 2m); default: the agent's `[tasks]
    /// timeout`.
    #[arg(long, value_name = "DUR", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Attempts before the task fails; default: the agent's `[tasks] max_attempts`.
    #[arg(long, value_name = "N")]
    pub attempts: Option<u32>,
    /// Wait until the task has ended and print its result.
    #[arg(long)]
    pub wait: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_humane_duration(text)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// How long a plain request may take.
const ASK: Duration = Duration::from_secs(5);

/// Runs a `tasks` command.
pub async fn run(socket: Option<&Path>, command: TasksCommand) -> Result<(), CliError> {
    match command {
        TasksCommand::Submit(args) => submit(socket, args).await,
        TasksCommand::List { all, json } => list(socket, all, json).await,
        TasksCommand::Cancel { id } => cancel(socket, &id).await,
    }
}

/// The payload the task carries: a file's bytes, a `process` request encoded, or the text.
fn payload(capability: &str, text: &str) -> Result<Bytes, CliError> {
    if let Some(path) = text.strip_prefix('@') {
        return std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| CliError::Refused(format!("cannot read the payload file {path}: {e}")));
    }
    if capability == "process" {
        return process_request(text).map(|r| Bytes::from(r.encode_to_vec()));
    }
    Ok(Bytes::from(text.to_string()))
}

/// `{"pid":123,"start_ticks":0,"exe":"/bin/sh"}` as a ProcessTaskRequest.
fn process_request(text: &str) -> Result<pbe::ProcessTaskRequest, CliError> {
    let bad = |why: String| CliError::Refused(format!("process task payload {text:?}: {why}"));
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected a JSON object such as {\"pid\":123}".into()))?;
    let mut r = pbe::ProcessTaskRequest::default();
    for (key, value) in obj {
        match key.as_str() {
            "pid" => {
                r.pid = value
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| bad("pid must be a number".into()))?;
            }
            "start_ticks" => {
                r.start_ticks = value
                    .as_u64()
                    .ok_or_else(|| bad("start_ticks must be a number".into()))?;
            }
            "exe" => {
                r.exe = value
                    .as_str()
                    .ok_or_else(|| bad("exe must be a string".into()))?
                    .to_string();
            }
            other => {
                return Err(bad(format!(
                    "unknown field {other:?} (pid, start_ticks, exe)"
                )));
            }
        }
    }
    Ok(r)
}

/// Sends `message` to `topic` and waits up to `timeout` for the agent's answer.
async fn ask(
    client: &Client,
    topic: &str,
    message: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, CliError> {
    client
        .request(
            Publish::new(topic, Bytes::from(message), QoS::AtLeastOnce),
            timeout,
        )
        .await
        .map(|d| d.payload)
        .map_err(|e| match e {
            ClientError::NoResponders { .. } => CliError::Refused(
                "the agent does not answer task requests (is it running, and this version?)".into(),
            ),
            ClientError::Timeout(t) => CliError::Refused(format!(
                "no answer from the agent's coordinator within {t:?}"
            )),
            other => CliError::Client(other),
        })
}

fn malformed(what: &'static str) -> impl Fn(prost::DecodeError) -> CliError {
    move |source| CliError::MalformedReply { what, source }
}

async fn submit(socket: Option<&Path>, args: SubmitArgs) -> Result<(), CliError> {
    if SourceCaps::from_capability(&args.capability).is_none() {
        let known: Vec<&str> = SourceCaps::NAMED.iter().map(|(n, _)| *n).collect();
        return Err(CliError::Refused(format!(
            "unknown capability {:?} (known: {})",
            args.capability,
            known.join(", ")
        )));
    }
    if args.priority > 255 {
        return Err(CliError::InvalidArgument(
            "--priority is out of range: 0 to 255",
        ));
    }
    if args.attempts == Some(0) {
        return Err(CliError::InvalidArgument("--attempts must be at least 1"));
    }
    let request = pbc::TaskSubmit {
        capability: args.capability.clone(),
        kind: args.kind.clone(),
        payload: payload(&args.capability, &args.payload)?,
        priority: args.priority,
        target: args.target.clone().unwrap_or_default(),
        timeout_ms: args
            .timeout
            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        max_attempts: args.attempts.unwrap_or(0),
        wait: args.wait,
        correlation_id: String::new(),
    };
    let client = connect(socket, "daemoneye-cli").await?;
    // A waiting submit is answered when the task ends: long enough for every attempt
    // (as far as the CLI knows them) and its wait for a collector.
    let timeout = if args.wait {
        let per = args.timeout.unwrap_or(Duration::from_secs(60));
        let n = args.attempts.unwrap_or(10);
        (per * n * 2).max(Duration::from_secs(60))
    } else {
        ASK
    };
    let reply = ask(
        &client,
        topics::TASKS_SUBMIT,
        request.encode_to_vec(),
        timeout,
    )
    .await?;
    client.close().await;
    let answer = pbc::TaskSubmitResponse::decode(reply).map_err(malformed("task submit"))?;
    if !answer.error.is_empty() {
        return Err(CliError::Refused(answer.error));
    }
    let task = answer.task.unwrap_or_default();
    if args.json {
        let json = SubmitJson {
            task: TaskJson::from(&task),
            result: answer
                .result
                .as_ref()
                .map(|r| ResultJson::new(&task.capability, &task.kind, r)),
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!("{}", task_line(&task));
        if let Some(r) = &answer.result {
            let shown = ResultJson::new(&task.capability, &task.kind, r);
            println!("result from {}: {}", r.collector_id, shown.text());
        }
    }
    match pbc::TaskState::try_from(task.state) {
        Ok(pbc::TaskState::Failed) => Err(CliError::Refused(format!(
            "task {} failed: {}",
            task.task_id, task.message
        ))),
        Ok(pbc::TaskState::Cancelled) => Err(CliError::Refused(format!(
            "task {} was cancelled",
            task.task_id
        ))),
        _ => Ok(()),
    }
}

async fn list(socket: Option<&Path>, all: bool, json: bool) -> Result<(), CliError> {
    let client = connect(socket, "daemoneye-cli").await?;
    let request = pbc::TaskListRequest {
        include_finished: all,
    };
    let reply = ask(&client, topics::TASKS_LIST, request.encode_to_vec(), ASK).await?;
    client.close().await;
    let answer = pbc::TaskListResponse::decode(reply).map_err(malformed("task list"))?;
    if json {
        let list: Vec<TaskJson> = answer.tasks.iter().map(TaskJson::from).collect();
        println!("{}", serde_json::to_string(&list)?);
    } else if answer.tasks.is_empty() {
        println!("no tasks");
    } else {
        for t in &answer.tasks {
            println!("{}", task_line(t));
        }
    }
    Ok(())
}

async fn cancel(socket: Option<&Path>, id: &str) -> Result<(), CliError> {
    let client = connect(socket, "daemoneye-cli").await?;
    let request = pbc::TaskCancel {
        task_id: id.to_string(),
    };
    let reply = ask(&client, topics::TASKS_CANCEL, request.encode_to_vec(), ASK).await?;
    client.close().await;
    let answer = pbc::TaskCancelResponse::decode(reply).map_err(malformed("task cancel"))?;
    if !answer.error.is_empty() {
        return Err(CliError::Refused(answer.error));
    }
    println!("{}", task_line(&answer.task.unwrap_or_default()));
    Ok(())
}

fn state_name(value: i32) -> &'static str {
    match pbc::TaskState::try_from(value) {
        Ok(pbc::TaskState::Waiting) => "waiting",
        Ok(pbc::TaskState::Assigned) => "assigned",
        Ok(pbc::TaskState::Completed) => "completed",
        Ok(pbc::TaskState::Failed) => "failed",
        Ok(pbc::TaskState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn time_text(ms: u64) -> Option<String> {
    (ms > 0).then(|| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    })
}

/// One task on one line: id, state, capability/kind, owner, attempts, message.
fn task_line(t: &pbc::TaskRecord) -> String {
    let mut line = format!(
        "{} {} {}{} prio {} attempt {}/{}",
        t.task_id,
        state_name(t.state),
        t.capability,
        if t.kind.is_empty() {
            String::new()
        } else {
            format!("/{}", t.kind)
        },
        t.priority,
        t.attempts,
        t.max_attempts
    );
    if !t.owner.is_empty() {
        line.push_str(&format!(" on {}", t.owner));
    }
    if !t.target.is_empty() {
        line.push_str(&format!(" (target {})", t.target));
    }
    if !t.message.is_empty() {
        line.push_str(&format!(": {}", t.message));
    }
    line
}

/// A task in `--json` output.
#[derive(Debug, Serialize)]
struct TaskJson<'a> {
    id: &'a str,
    state: &'static str,
    capability: &'a str,
    kind: &'a str,
    priority: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    target: &'a str,
    /// `null` while nobody has it.
    owner: Option<&'a str>,
    attempts: u32,
    max_attempts: u32,
    submitted: Option<String>,
    deadline: Option<String>,
    finished: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    correlation_id: &'a str,
}

impl<'a> From<&'a pbc::TaskRecord> for TaskJson<'a> {
    fn from(t: &'a pbc::TaskRecord) -> Self {
        TaskJson {
            id: &t.task_id,
            state: state_name(t.state),
            capability: &t.capability,
            kind: &t.kind,
            priority: t.priority,
            target: &t.target,
            owner: (!t.owner.is_empty()).then_some(t.owner.as_str()),
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            submitted: time_text(t.submitted_ms),
            deadline: time_text(t.deadline_ms),
            finished: time_text(t.finished_ms),
            message: &t.message,
            correlation_id: &t.correlation_id,
        }
    }
}

/// `submit --json`.
#[derive(Debug, Serialize)]
struct SubmitJson<'a> {
    task: TaskJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<ResultJson>,
}

/// A collector's result: a `process` result decoded, text as text, anything else in
/// base64.
#[derive(Debug, Serialize)]
struct ResultJson {
    collector: String,
    ok: bool,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<serde_json::Value>,
}

impl ResultJson {
    fn new(capability: &str, _kind: &str, r: &pbc::TaskResult) -> Self {
        let process = (capability == "process" && r.ok)
            .then(|| pbe::ProcessTaskResult::decode(r.payload.clone()).ok())
            .flatten()
            .map(|p| process_json(&p));
        let text = std::str::from_utf8(&r.payload)
            .ok()
            .filter(|t| !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        let (payload, payload_b64) = match (&process, text) {
            (Some(_), _) => (None, None),
            (None, Some(t)) => (Some(t.to_string()), None),
            (None, None) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&r.payload)),
            ),
        };
        ResultJson {
            collector: r.collector_id.clone(),
            ok: r.ok,
            message: r.message.clone(),
            payload,
            payload_b64,
            process,
        }
    }

    /// The result as a human reads it.
    fn text(&self) -> String {
        let body = match (&self.process, &self.payload, &self.payload_b64) {
            (Some(p), _, _) => p.to_string(),
            (None, Some(t), _) => t.clone(),
            (None, None, Some(b)) => format!("base64:{b}"),
            (None, None, None) => String::new(),
        };
        if self.ok {
            body
        } else {
            format!("failed: {}", self.message)
        }
    }
}

/// A ProcessTaskResult as JSON.
fn process_json(p: &pbe::ProcessTaskResult) -> serde_json::Value {
    let ancestry: Vec<serde_json::Value> = p
        .ancestry
        .iter()
        .map(|a| {
            serde_json::json!({
                "pid": a.pid,
                "ppid": a.ppid,
                "name": a.name,
                "exe": a.exe,
                "argv": a.cmdline,
                "user": a.user,
            })
        })
        .collect();
    let sockets: Vec<serde_json::Value> = p
        .sockets
        .iter()
        .map(|s| {
            serde_json::json!({
                "protocol": s.protocol,
                "local": s.local,
                "remote": s.remote,
                "state": s.state,
                "inode": s.inode,
            })
        })
        .collect();
    serde_json::json!({
        "exe_sha256": p.exe_sha256,
        "ancestry": ancestry,
        "open_files": p.open_files,
        "sockets": sockets,
        "gone": p.gone,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_process_payload_is_encoded_from_json_and_a_bad_one_is_named() {
        let bytes = payload("process", r#"{"pid":123,"exe":"/bin/sh"}"#).unwrap();
        let r = pbe::ProcessTaskRequest::decode(bytes).unwrap();
        assert_eq!((r.pid, r.exe.as_str()), (123, "/bin/sh"));
        let e = payload("process", r#"{"pid":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pid must be a number"), "{e}");
        let e = payload("process", r#"{"uid":1}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field \"uid\""), "{e}");
        assert_eq!(payload("performance", "load").unwrap(), "load");
    }

    #[test]
    fn a_process_result_is_shown_decoded() {
        let result = pbe::ProcessTaskResult {
            exe_sha256: "ab".into(),
            ..Default::default()
        };
        let r = pbc::TaskResult {
            collector_id: "procmond".into(),
            ok: true,
            payload: Bytes::from(result.encode_to_vec()),
            ..Default::default()
        };
        let shown = ResultJson::new("process", "hash", &r);
        assert_eq!(shown.process.as_ref().unwrap()["exe_sha256"], "ab");
        assert!(shown.payload.is_none() && shown.payload_b64.is_none());
    }
}
