//! Payloads as a person reads them: the protobuf messages DaemonEye publishes, turned into
//! JSON by their topic, for `daemoneye-cli sub --json` and `events query --json`.
//!
//! - `events.process.*`: a `ProcessEvent` as `{"kind": "new", "pid": ..., "exe": ...,
//!   "argv": [...], ...}` (the process's fields beside the event's own; a snapshot lists
//!   its processes under `processes`);
//! - `control.health.heartbeat.<id>`: a collector's `Heartbeat`;
//! - `alerts.*`: an `Alert`, its event decoded as above (see [`alert`]);
//! - anything else, or a payload that does not decode as its topic says, is not decoded:
//!   the caller keeps it as text or base64.
//!
//! Field names follow the protobuf's, except `cmdline` and `parent_cmdline`, shown as
//! `argv` and `parent_argv`. Empty text and lists and zero counters are left out; ids
//! (pid, ppid, uid, gid, euid) are always there, since 0 is root.

use daemoneye_core::topic::topics;
use daemoneye_proto::pb::control::Heartbeat;
use daemoneye_proto::pb::events::{Alert, Enrichment, ProcessEvent, ProcessEventKind, ProcessInfo};
use prost::Message;
use serde_json::{Map, Value, json};

/// The prefix of process events' topics.
const PROCESS_TOPICS: &str = "events.process.";

/// The decoded form of `payload` published on `topic`, when DaemonEye knows that topic's
/// message and the payload decodes as it.
pub fn decode_payload(topic: &str, payload: &[u8]) -> Option<Value> {
    if topic.starts_with(PROCESS_TOPICS) {
        return ProcessEvent::decode(payload)
            .ok()
            .map(|e| Value::Object(process_event(&e)));
    }
    if topic
        .strip_prefix(topics::HEARTBEAT_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
    {
        return Heartbeat::decode(payload).ok().map(|h| heartbeat(&h));
    }
    if topic
        .strip_prefix(topics::ALERTS_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
    {
        return Alert::decode(payload)
            .ok()
            .map(|a| Value::Object(alert(&a)));
    }
    None
}

/// An alert as a JSON object: its fields, the event under `event` (as
/// [`process_event`]), and each enrichment with its result.
pub fn alert(a: &Alert) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("alert_id".into(), json!(a.alert_id));
    out.insert("rule_id".into(), json!(a.rule_id));
    out.insert("title".into(), json!(a.title));
    out.insert("level".into(), json!(a.level));
    list(&mut out, "tags", &a.tags);
    text(&mut out, "host", &a.host);
    out.insert("time_ms".into(), json!(a.time_ms));
    out.insert("last_ms".into(), json!(a.last_ms));
    out.insert("count".into(), json!(a.count));
    if a.update {
        out.insert("update".into(), json!(true));
    }
    text(&mut out, "rule_file", &a.rule_file);
    text(&mut out, "description", &a.description);
    text(&mut out, "event_topic", &a.event_topic);
    text(&mut out, "event_correlation_id", &a.event_correlation_id);
    if let Some(e) = &a.event {
        out.insert("event".into(), Value::Object(process_event(e)));
    }
    out.insert("enriched".into(), json!(a.enriched));
    if !a.enrichment.is_empty() {
        let list: Vec<Value> = a.enrichment.iter().map(enrichment).collect();
        out.insert("enrichment".into(), Value::Array(list));
    }
    out
}

fn enrichment(e: &Enrichment) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!(e.kind));
    out.insert("arrived".into(), json!(e.arrived));
    out.insert("ok".into(), json!(e.ok));
    text(&mut out, "message", &e.message);
    text(&mut out, "collector_id", &e.collector_id);
    text(&mut out, "task_id", &e.task_id);
    if let Some(r) = &e.result {
        let mut result = Map::new();
        text(&mut result, "exe_sha256", &r.exe_sha256);
        if !r.ancestry.is_empty() {
            let chain: Vec<Value> = r
                .ancestry
                .iter()
                .map(|p| Value::Object(process(p)))
                .collect();
            result.insert("ancestry".into(), Value::Array(chain));
        }
        list(&mut result, "open_files", &r.open_files);
        if !r.sockets.is_empty() {
            let sockets: Vec<Value> = r
                .sockets
                .iter()
                .map(|s| {
                    json!({"protocol": s.protocol, "local": s.local, "remote": s.remote,
                           "state": s.state, "inode": s.inode})
                })
                .collect();
            result.insert("sockets".into(), Value::Array(sockets));
        }
        if r.gone {
            result.insert("gone".into(), json!(true));
        }
        out.insert("result".into(), Value::Object(result));
    }
    Value::Object(out)
}

/// The name of a process event's kind: `new`, `exit`, `modified`, `snapshot`.
pub fn kind_name(kind: i32) -> &'static str {
    match ProcessEventKind::try_from(kind) {
        Ok(ProcessEventKind::New) => "new",
        Ok(ProcessEventKind::Exit) => "exit",
        Ok(ProcessEventKind::Modified) => "modified",
        Ok(ProcessEventKind::Snapshot) => "snapshot",
        Ok(ProcessEventKind::Unspecified) | Err(_) => "unspecified",
    }
}

/// A process event as a JSON object.
pub fn process_event(e: &ProcessEvent) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind_name(e.kind)));
    if let Some(p) = &e.process {
        out.extend(process(p));
    }
    if !e.changed.is_empty() {
        out.insert("changed".into(), json!(e.changed));
    }
    if e.has_exit_code {
        out.insert("exit_code".into(), json!(e.exit_code));
    }
    if e.observed_at_ms != 0 {
        out.insert("observed_at_ms".into(), json!(e.observed_at_ms));
    }
    text(&mut out, "collector_id", &e.collector_id);
    text(&mut out, "source", &e.source);
    if !e.processes.is_empty() || e.parts != 0 {
        out.insert(
            "processes".into(),
            Value::Array(
                e.processes
                    .iter()
                    .map(|p| Value::Object(process(p)))
                    .collect(),
            ),
        );
        out.insert("part".into(), json!(e.part));
        out.insert("parts".into(), json!(e.parts));
    }
    out
}

fn text(out: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        out.insert(key.into(), json!(value));
    }
}

fn number(out: &mut Map<String, Value>, key: &str, value: u64) {
    if value != 0 {
        out.insert(key.into(), json!(value));
    }
}

fn list(out: &mut Map<String, Value>, key: &str, value: &[String]) {
    if !value.is_empty() {
        out.insert(key.into(), json!(value));
    }
}

/// One process's fields as JSON.
pub fn process(p: &ProcessInfo) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("pid".into(), json!(p.pid));
    out.insert("ppid".into(), json!(p.ppid));
    text(&mut out, "name", &p.name);
    text(&mut out, "exe", &p.exe);
    out.insert("argv".into(), json!(p.cmdline));
    text(&mut out, "cwd", &p.cwd);
    out.insert("uid".into(), json!(p.uid));
    text(&mut out, "user", &p.user);
    out.insert("gid".into(), json!(p.gid));
    text(&mut out, "group", &p.group);
    out.insert("euid".into(), json!(p.euid));
    text(&mut out, "effective_user", &p.effective_user);
    number(&mut out, "start_time_ms", p.start_time_ms);
    if p.start_time_ms == 0 {
        number(&mut out, "start_time", p.start_time);
    }
    number(&mut out, "start_ticks", p.start_ticks);
    text(&mut out, "parent_exe", &p.parent_exe);
    list(&mut out, "parent_argv", &p.parent_cmdline);
    number(&mut out, "session_id", u64::from(p.session_id));
    text(&mut out, "tty", &p.tty);
    text(&mut out, "cgroup", &p.cgroup);
    text(&mut out, "container_id", &p.container_id);
    text(&mut out, "status", &p.status);
    number(&mut out, "memory_bytes", p.memory_bytes);
    number(&mut out, "cpu_time_ms", p.cpu_time_ms);
    if p.cpu_percent != 0.0 {
        out.insert("cpu_percent".into(), json!(p.cpu_percent));
    }
    text(&mut out, "exe_sha256", &p.exe_sha256);
    if p.exe_deleted {
        out.insert("exe_deleted".into(), json!(true));
    }
    number(&mut out, "exe_dev", p.exe_dev);
    number(&mut out, "exe_inode", p.exe_inode);
    list(&mut out, "env_names", &p.env_names);
    number(&mut out, "open_files", u64::from(p.open_files));
    number(&mut out, "cap_effective", p.cap_effective);
    number(&mut out, "cap_permitted", p.cap_permitted);
    list(&mut out, "unread", &p.unread);
    out
}

fn heartbeat(h: &Heartbeat) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!("heartbeat"));
    text(&mut out, "collector_id", &h.collector_id);
    out.insert("sequence".into(), json!(h.sequence));
    out.insert("state".into(), json!(h.state));
    out.insert("events_published".into(), json!(h.events_published));
    out.insert("events_dropped".into(), json!(h.events_dropped));
    out.insert("queue_depth".into(), json!(h.queue_depth));
    out.insert("tasks_in_flight".into(), json!(h.tasks_in_flight));
    text(&mut out, "last_error", &h.last_error);
    text(&mut out, "detail", &h.detail);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curl() -> ProcessEvent {
        ProcessEvent {
            kind: ProcessEventKind::Exit as i32,
            process: Some(ProcessInfo {
                pid: 4242,
                ppid: 1,
                name: "curl".into(),
                exe: "/usr/bin/curl".into(),
                cmdline: vec!["curl".into(), "-s".into(), "http://x".into()],
                user: "root".into(),
                start_time_ms: 1_700_000_000_123,
                exe_deleted: true,
                ..Default::default()
            }),
            exit_code: 0,
            has_exit_code: true,
            source: "netlink".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_process_event_decodes_with_its_kind_and_the_processs_fields() {
        let v = decode_payload("events.process.exit", &curl().encode_to_vec()).expect("decodes");
        assert_eq!(v["kind"], "exit");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["exe"], "/usr/bin/curl");
        assert_eq!(v["argv"], json!(["curl", "-s", "http://x"]));
        assert_eq!(v["uid"], 0, "root's uid is shown");
        assert_eq!(v["exit_code"], 0, "a known exit code of 0 is shown");
        assert_eq!(v["exe_deleted"], true);
        assert!(v.get("cwd").is_none() && v.get("memory_bytes").is_none());
    }

    #[test]
    fn a_snapshot_lists_its_processes() {
        let snapshot = ProcessEvent {
            kind: ProcessEventKind::Snapshot as i32,
            processes: vec![curl().process.expect("process")],
            part: 1,
            parts: 2,
            ..Default::default()
        };
        let v =
            decode_payload("events.process.snapshot", &snapshot.encode_to_vec()).expect("decodes");
        assert_eq!(v["kind"], "snapshot");
        assert_eq!(v["processes"][0]["pid"], 4242);
        assert_eq!(
            (v["part"].clone(), v["parts"].clone()),
            (json!(1), json!(2))
        );
    }

    #[test]
    fn other_topics_and_payloads_that_do_not_decode_stay_undecoded() {
        assert_eq!(decode_payload("orders", &curl().encode_to_vec()), None);
        assert_eq!(decode_payload("events.network.connect", b"x"), None);
        assert_eq!(decode_payload("events.process.new", b"\xff\xff\xff"), None);
        assert_eq!(decode_payload("control.health.heartbeatx", b""), None);
    }

    #[test]
    fn a_heartbeat_decodes() {
        let hb = Heartbeat {
            collector_id: "procmond".into(),
            sequence: 3,
            events_published: 10,
            ..Default::default()
        };
        let v = decode_payload("control.health.heartbeat.procmond", &hb.encode_to_vec())
            .expect("decodes");
        assert_eq!(v["kind"], "heartbeat");
        assert_eq!(v["events_published"], 10);
    }
}
