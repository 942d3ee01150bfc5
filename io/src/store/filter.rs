//! A query's filters, compiled once and matched against each stored message.
//!
//! Globs are shell-style (`*`, `?`, `[...]`) through `globset`, where `*` also crosses `/`
//! (so `--exe '*/curl'` matches `/usr/bin/curl`). A process filter (pid, name, exe, user)
//! matches only process events (`events.process.*` payloads that decode as a
//! `ProcessEvent`); a snapshot matches when one of its processes matches them all.

use daemoneye_core::topic::{TopicFilter, TopicName};
use daemoneye_proto::pb::events::{ProcessEvent, ProcessInfo};
use daemoneye_proto::pb::store::EventQuery;
use globset::{Glob, GlobMatcher};
use prost::Message;

use super::StoreError;

/// The topic filter of a query that names none.
pub const DEFAULT_TOPIC_FILTER: &str = "events.#";

/// The prefix of process events' topics.
const PROCESS_TOPICS: &str = "events.process.";

/// A user, by name or by numeric id.
#[derive(Debug)]
enum UserFilter {
    Id(u32),
    Name(String),
}

/// One query's filters.
#[derive(Debug)]
pub(super) struct EventFilter {
    topic: TopicFilter,
    pid: Option<u32>,
    name: Option<GlobMatcher>,
    exe: Option<GlobMatcher>,
    user: Option<UserFilter>,
    /// The last topic seen and whether it matched: a run of one topic parses it once.
    last_topic: Option<(String, bool)>,
}

fn glob(flag: &str, pattern: &str) -> Result<Option<GlobMatcher>, StoreError> {
    if pattern.is_empty() {
        return Ok(None);
    }
    Glob::new(pattern)
        .map(|g| Some(g.compile_matcher()))
        .map_err(|e| StoreError::InvalidQuery(format!("{flag} {pattern:?}: {e}")))
}

impl EventFilter {
    /// Compiles `q`'s filters; a bad glob or topic filter is an error naming it.
    pub(super) fn compile(q: &EventQuery) -> Result<Self, StoreError> {
        let topic_text = if q.topic_filter.is_empty() {
            DEFAULT_TOPIC_FILTER
        } else {
            q.topic_filter.as_str()
        };
        let topic = TopicFilter::parse(topic_text)
            .map_err(|e| StoreError::InvalidQuery(format!("topic filter {topic_text:?}: {e}")))?;
        let user = match q.user.trim() {
            "" => None,
            u => Some(match u.parse::<u32>() {
                Ok(id) => UserFilter::Id(id),
                Err(_) => UserFilter::Name(u.to_string()),
            }),
        };
        Ok(EventFilter {
            topic,
            pid: q.pid,
            name: glob("name", &q.name_glob)?,
            exe: glob("exe", &q.exe_glob)?,
            user,
            last_topic: None,
        })
    }

    fn filters_processes(&self) -> bool {
        self.pid.is_some() || self.name.is_some() || self.exe.is_some() || self.user.is_some()
    }

    /// Whether the message published on `topic` with `payload` passes every filter.
    pub(super) fn matches(&mut self, topic: &str, payload: &[u8]) -> bool {
        if !self.topic_matches(topic) {
            return false;
        }
        if !self.filters_processes() {
            return true;
        }
        if !topic.starts_with(PROCESS_TOPICS) {
            return false;
        }
        let Ok(event) = ProcessEvent::decode(payload) else {
            return false;
        };
        event
            .process
            .iter()
            .chain(&event.processes)
            .any(|p| self.process_matches(p))
    }

    fn topic_matches(&mut self, topic: &str) -> bool {
        if let Some((last, matched)) = &self.last_topic
            && last == topic
        {
            return *matched;
        }
        let matched = TopicName::parse(topic).is_ok_and(|name| self.topic.matches(&name));
        self.last_topic = Some((topic.to_string(), matched));
        matched
    }

    fn process_matches(&self, p: &ProcessInfo) -> bool {
        if self.pid.is_some_and(|pid| pid != p.pid) {
            return false;
        }
        if let Some(name) = &self.name {
            // The kernel's name is cut to 15 bytes: the executable's file name counts too.
            let base = p.exe.rsplit('/').next().unwrap_or_default();
            if !name.is_match(&p.name) && (base.is_empty() || !name.is_match(base)) {
                return false;
            }
        }
        if self.exe.as_ref().is_some_and(|exe| !exe.is_match(&p.exe)) {
            return false;
        }
        match &self.user {
            None => true,
            Some(UserFilter::Id(id)) => p.uid == *id || p.euid == *id,
            Some(UserFilter::Name(name)) => p.user == *name || p.effective_user == *name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_proto::pb::events::ProcessEventKind;

    fn process(pid: u32, name: &str, exe: &str, user: &str, uid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            name: name.into(),
            exe: exe.into(),
            user: user.into(),
            uid,
            euid: uid,
            effective_user: user.into(),
            ..Default::default()
        }
    }

    fn event(p: ProcessInfo) -> Vec<u8> {
        ProcessEvent {
            kind: ProcessEventKind::New as i32,
            process: Some(p),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn filter(q: EventQuery) -> EventFilter {
        EventFilter::compile(&q).expect("valid query")
    }

    #[test]
    fn no_filter_takes_every_event_topic_and_nothing_else() {
        let mut f = filter(EventQuery::default());
        assert!(f.matches("events.process.new", b"anything"));
        assert!(f.matches("events.custom", b""));
        assert!(!f.matches("alerts.high", b""));
    }

    #[test]
    fn process_filters_decode_the_payload_and_refuse_other_events() {
        let curl = event(process(42, "curl", "/usr/bin/curl", "alice", 1000));
        let mut by_pid = filter(EventQuery {
            pid: Some(42),
            ..Default::default()
        });
        assert!(by_pid.matches("events.process.new", &curl));
        assert!(!by_pid.matches("events.network.connect", &curl));
        assert!(!by_pid.matches("events.process.new", b"\xff\xff not protobuf"));
        let mut other_pid = filter(EventQuery {
            pid: Some(43),
            ..Default::default()
        });
        assert!(!other_pid.matches("events.process.new", &curl));
    }

    #[test]
    fn name_matches_the_kernel_name_or_the_executables_file_name() {
        let long = event(process(
            1,
            "very-long-progr",
            "/opt/very-long-program-name",
            "root",
            0,
        ));
        for (glob, expected) in [
            ("very-long-progr", true),
            ("very-long-program-name", true),
            ("*program*", true),
            ("curl", false),
        ] {
            let mut f = filter(EventQuery {
                name_glob: glob.into(),
                ..Default::default()
            });
            assert_eq!(f.matches("events.process.new", &long), expected, "{glob}");
        }
    }

    #[test]
    fn exe_globs_cross_directories_and_users_match_by_name_or_uid() {
        let curl = event(process(42, "curl", "/usr/bin/curl", "alice", 1000));
        let matches = |q: EventQuery| filter(q).matches("events.process.exit", &curl);
        assert!(matches(EventQuery {
            exe_glob: "*/curl".into(),
            ..Default::default()
        }));
        assert!(matches(EventQuery {
            exe_glob: "/usr/bin/c[u]r?".into(),
            ..Default::default()
        }));
        assert!(!matches(EventQuery {
            exe_glob: "/bin/*".into(),
            ..Default::default()
        }));
        assert!(matches(EventQuery {
            user: "alice".into(),
            ..Default::default()
        }));
        assert!(matches(EventQuery {
            user: "1000".into(),
            ..Default::default()
        }));
        assert!(!matches(EventQuery {
            user: "0".into(),
            ..Default::default()
        }));
    }

    #[test]
    fn a_snapshot_matches_when_one_of_its_processes_does() {
        let snapshot = ProcessEvent {
            kind: ProcessEventKind::Snapshot as i32,
            processes: vec![
                process(1, "init", "/sbin/init", "root", 0),
                process(77, "sshd", "/usr/sbin/sshd", "root", 0),
            ],
            ..Default::default()
        }
        .encode_to_vec();
        let mut f = filter(EventQuery {
            pid: Some(77),
            name_glob: "sshd".into(),
            ..Default::default()
        });
        assert!(f.matches("events.process.snapshot", &snapshot));
        // Every filter must hold for the same process.
        let mut mixed = filter(EventQuery {
            pid: Some(1),
            name_glob: "sshd".into(),
            ..Default::default()
        });
        assert!(!mixed.matches("events.process.snapshot", &snapshot));
    }

    #[test]
    fn a_bad_glob_or_topic_filter_is_named() {
        let err = EventFilter::compile(&EventQuery {
            exe_glob: "[oops".into(),
            ..Default::default()
        })
        .expect_err("unclosed class");
        assert!(err.to_string().contains("exe \"[oops\""), "{err}");
        let err = EventFilter::compile(&EventQuery {
            topic_filter: "events.#.x".into(),
            ..Default::default()
        })
        .expect_err("bad filter");
        assert!(err.to_string().contains("events.#.x"), "{err}");
    }

    #[test]
    fn alerts_are_found_with_their_topic_filter() {
        let mut f = filter(EventQuery {
            topic_filter: "alerts.#".into(),
            ..Default::default()
        });
        assert!(f.matches("alerts.high", b"{}"));
        assert!(!f.matches("events.process.new", b""));
    }
}
