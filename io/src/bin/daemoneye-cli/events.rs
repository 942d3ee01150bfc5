//! `events query`: the event store, through the running agent or straight from its file.
//!
//! Where it reads (said on stderr each time):
//! - `--database PATH`: that file, opened read-only. This works while the agent has it
//!   open (the store shares its file with readers) and after the agent was killed;
//! - otherwise the agent on the socket (request/reply on `control.events.query`, paged so
//!   each reply fits a frame);
//! - when no agent listens there, the default store of the agent of that socket
//!   (`<state dir>/agents/<socket>/events.redb`, as an agent without `[agent] state_dir`
//!   or `[store] path` keeps it), if it exists.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use daemoneye_core::topic::{TopicFilter, topics};
use daemoneye_io::client::ClientError;
use daemoneye_io::config::{DEFAULT_STORE_FILE, parse_humane_duration};
use daemoneye_io::decode::{decode_payload, kind_name};
use daemoneye_io::paths;
use daemoneye_io::store::EventStore;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::events::ProcessEvent;
use daemoneye_proto::pb::store::{EventQuery, EventQueryResponse, StoredEvent};
use prost::Message;
use serde::Serialize;

use crate::connection::{connect, seconds};
use crate::error::CliError;

/// `events ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Events the agent kept (oldest first), filtered: one line each (time, kind, pid,
    /// user, exe, argv), or one JSON object each with --json.
    Query(QueryArgs),
}

/// `events query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Events received since WHEN: a duration ago (`10m`, `2h`, `7d`) or a time
    /// (`2026-12-01T05:00:00Z`); default: the oldest kept.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Events received before WHEN (same forms as --since); default: now.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Only process events of this pid.
    #[arg(long)]
    pid: Option<u32>,
    /// Only processes whose name (or executable's file name) matches this glob.
    #[arg(long, value_name = "GLOB")]
    name: Option<String>,
    /// Only processes whose executable path matches this glob (`*` crosses `/`).
    #[arg(long, value_name = "GLOB")]
    exe: Option<String>,
    /// Only processes of this user (name or uid, real or effective).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Only events whose topic matches this filter (default `events.#`; `alerts.#` for
    /// alerts).
    #[arg(long, value_name = "FILTER")]
    topic: Option<String>,
    /// Most events printed; 0 for all.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// One JSON object per event, with the payload decoded under "event".
    #[arg(long)]
    json: bool,
    /// Read this store file directly instead of asking the agent.
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
    /// Seconds to wait for each of the agent's answers.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `when` as Unix ms: a time, or a duration before `now`.
pub fn parse_when(flag: &'static str, when: &str, now: SystemTime) -> Result<u64, CliError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(when.trim()) {
        return Ok(unix_ms(t));
    }
    match parse_humane_duration(when) {
        Ok(ago) => Ok(unix_ms(now.checked_sub(ago).unwrap_or(UNIX_EPOCH))),
        Err(_) => Err(CliError::InvalidTime {
            flag,
            value: when.to_string(),
        }),
    }
}

impl QueryArgs {
    fn query(&self, now: SystemTime) -> Result<EventQuery, CliError> {
        if let Some(t) = &self.topic {
            TopicFilter::parse(t).map_err(|source| CliError::InvalidFilter {
                filter: t.clone(),
                source,
            })?;
        }
        let since = self
            .since
            .as_deref()
            .map(|w| parse_when("--since", w, now))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|w| parse_when("--until", w, now))
            .transpose()?;
        Ok(EventQuery {
            since_ms: since.unwrap_or(0),
            until_ms: until.unwrap_or(0),
            pid: self.pid,
            name_glob: self.name.clone().unwrap_or_default(),
            exe_glob: self.exe.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            limit: self.limit,
            topic_filter: self.topic.clone().unwrap_or_default(),
            after_id: 0,
        })
    }
}

/// Runs an `events` command.
pub async fn run(socket: Option<&Path>, command: EventsCommand) -> Result<(), CliError> {
    match command {
        EventsCommand::Query(args) => query(socket, args).await,
    }
}

async fn query(socket: Option<&Path>, args: QueryArgs) -> Result<(), CliError> {
    let query = args.query(SystemTime::now())?;
    let mut out = Printer::new(args.json);
    let timeout = seconds(args.timeout)?;
    let more = fetch(
        socket,
        args.database.as_deref(),
        &query,
        timeout,
        "events",
        |e| out.event(e),
    )
    .await?;
    out.more = more;
    out.finish()
}

/// Reads what `query` selects (oldest first) from `database`, else through the agent on
/// `socket` (paged, each answer within `timeout`), else from that agent's default store
/// file (see the module docs; `what` names the records on stderr), handing each to
/// `each`. Returns whether more matched than `query.limit` let through.
pub async fn fetch(
    socket: Option<&Path>,
    database: Option<&Path>,
    query: &EventQuery,
    timeout: Duration,
    what: &str,
    mut each: impl FnMut(&StoredEvent) -> Result<(), CliError>,
) -> Result<bool, CliError> {
    if let Some(path) = database {
        eprintln!("reading the event store {}", path.display());
        return from_file(path, query, each);
    }
    let socket_path = paths::resolve_socket_path(socket);
    let client = match connect(socket, "daemoneye-cli").await {
        Ok(c) => c,
        Err(e) => {
            let default = paths::agent_state_dir(&paths::default_state_dir(), &socket_path)
                .join(DEFAULT_STORE_FILE);
            if !default.exists() {
                return Err(CliError::NoStore {
                    socket: socket_path,
                    why: e.to_string(),
                    database: default,
                });
            }
            eprintln!(
                "no agent answers on {} ({e}); reading its event store {}",
                socket_path.display(),
                default.display()
            );
            return from_file(&default, query, each);
        }
    };
    eprintln!("{what} from the agent on {}", socket_path.display());
    let mut page = query.clone();
    let mut left = query.limit;
    let mut more = false;
    loop {
        page.limit = left;
        let request = Publish::new(
            topics::EVENTS_QUERY,
            Bytes::from(page.encode_to_vec()),
            QoS::AtLeastOnce,
        );
        let reply = match client.request(request, timeout).await {
            Ok(r) => r,
            Err(e @ ClientError::NoResponders { .. }) => {
                return Err(CliError::NoEventStore(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let answer = EventQueryResponse::decode(reply.payload).map_err(|source| {
            CliError::MalformedReply {
                what: "event query",
                source,
            }
        })?;
        if !answer.error.is_empty() {
            return Err(CliError::Refused(answer.error));
        }
        let shown = answer.events.len() as u32;
        for e in &answer.events {
            each(e)?;
        }
        let Some(last) = answer.events.last() else {
            break;
        };
        if !answer.truncated {
            break;
        }
        if query.limit != 0 {
            left -= shown.min(left);
            if left == 0 {
                more = true;
                break;
            }
        }
        page.since_ms = last.time_ms;
        page.after_id = last.id;
    }
    client.close().await;
    Ok(more)
}

fn from_file(
    path: &Path,
    query: &EventQuery,
    mut each: impl FnMut(&StoredEvent) -> Result<(), CliError>,
) -> Result<bool, CliError> {
    // A damaged file can trip redb's debug checks; the store turns that into an error,
    // and the default hook would print the panic above it.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let answer = EventStore::open_read_only(path).and_then(|s| {
        if s.repaired_copy() {
            eprintln!(
                "{}: not closed cleanly (its agent was killed): reading a repaired copy; \
                 the file is left as it is until the agent starts again",
                path.display()
            );
        }
        s.query(query)
    });
    std::panic::set_hook(hook);
    let answer = answer?;
    for e in &answer.events {
        each(e)?;
    }
    Ok(answer.truncated)
}

/// Writes events to stdout, one line each.
struct Printer {
    json: bool,
    out: std::io::BufWriter<std::io::Stdout>,
    /// More events matched than the limit let through.
    more: bool,
}

/// One line of `events query --json`.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    id: u64,
    time_ms: u64,
    time: String,
    topic: &'a str,
    publisher_id: &'a str,
    sequence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<serde_json::Value>,
}

pub fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// argv on one line: words as they are, a word with spaces or controls quoted.
pub fn argv_text(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
            {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An event's human line.
fn event_line(e: &StoredEvent) -> String {
    let time = time_text(e.time_ms);
    let process = e
        .topic
        .starts_with("events.process.")
        .then(|| ProcessEvent::decode(e.payload.clone()).ok())
        .flatten();
    let Some(p) = process else {
        let text = match std::str::from_utf8(&e.payload) {
            Ok(t) if !t.chars().any(char::is_control) => t.to_string(),
            _ => format!(
                "base64:{} ({} bytes)",
                base64::engine::general_purpose::STANDARD
                    .encode(&e.payload[..e.payload.len().min(32)]),
                e.payload.len()
            ),
        };
        return format!("{time} {} {text}", e.topic);
    };
    let kind = kind_name(p.kind);
    let Some(info) = &p.process else {
        return format!(
            "{time} {kind:<8} {} processes (part {}/{})",
            p.processes.len(),
            p.part,
            p.parts
        );
    };
    let user = if info.user.is_empty() {
        info.uid.to_string()
    } else {
        info.user.clone()
    };
    let exe = if info.exe.is_empty() { "-" } else { &info.exe };
    let mut line = format!(
        "{time} {kind:<8} {:>7} {user:<10} {exe} {}",
        info.pid,
        argv_text(&info.cmdline)
    );
    if p.has_exit_code {
        line.push_str(&format!(" (exit {})", p.exit_code));
    }
    if !p.changed.is_empty() {
        line.push_str(&format!(" (changed: {})", p.changed.join(", ")));
    }
    line
}

impl Printer {
    fn new(json: bool) -> Self {
        Printer {
            json,
            out: std::io::BufWriter::new(std::io::stdout()),
            more: false,
        }
    }

    fn event(&mut self, e: &StoredEvent) -> Result<(), CliError> {
        if self.json {
            let text = std::str::from_utf8(&e.payload).ok();
            let line = EventJson {
                id: e.id,
                time_ms: e.time_ms,
                time: time_text(e.time_ms),
                topic: &e.topic,
                publisher_id: &e.publisher,
                sequence: e.sequence,
                payload: text,
                payload_b64: text
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&e.payload)),
                event: decode_payload(&e.topic, &e.payload),
            };
            serde_json::to_writer(&mut self.out, &line)?;
            writeln!(self.out)?;
        } else {
            writeln!(self.out, "{}", event_line(e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), CliError> {
        self.out.flush()?;
        if self.more {
            eprintln!("more events matched: raise --limit (0 for all) or narrow the query");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_proto::pb::events::{ProcessEventKind, ProcessInfo};

    #[test]
    fn since_takes_a_duration_ago_or_a_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_when("--since", "10m", now).expect("duration"),
            (1_000_000 - 600) * 1000
        );
        assert_eq!(
            parse_when("--since", "1970-01-02T00:00:00Z", now).expect("time"),
            86_400_000
        );
        let err = parse_when("--since", "yesterday-ish", now).expect_err("bad");
        assert!(err.to_string().contains("--since"), "{err}");
    }

    #[test]
    fn a_process_event_line_shows_time_kind_pid_user_exe_and_argv() {
        let e = StoredEvent {
            id: 1,
            time_ms: 86_400_000,
            topic: "events.process.exit".into(),
            publisher: String::new(),
            sequence: 0,
            payload: Bytes::from(
                ProcessEvent {
                    kind: ProcessEventKind::Exit as i32,
                    process: Some(ProcessInfo {
                        pid: 42,
                        exe: "/usr/bin/sh".into(),
                        cmdline: vec!["sh".into(), "-c".into(), "sleep 1".into()],
                        user: "alice".into(),
                        ..Default::default()
                    }),
                    exit_code: 3,
                    has_exit_code: true,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        };
        assert_eq!(
            event_line(&e),
            "1970-01-02T00:00:00.000Z exit          42 alice      /usr/bin/sh sh -c \"sleep 1\" (exit 3)"
        );
        let text = StoredEvent {
            topic: "events.custom".into(),
            payload: Bytes::from_static(b"hello"),
            ..e
        };
        assert_eq!(
            event_line(&text),
            "1970-01-02T00:00:00.000Z events.custom hello"
        );
    }
}
