//! Topics and NATS subjects: the mapping both ways under a prefix.
//!
//! Both namespaces separate levels with `.`. NATS's `*` is our `+`; NATS's `>` matches one
//! *or more* trailing tokens where our `#` matches zero or more, so a filter `a.#` becomes
//! the two subscriptions `a` and `a.>`, and a bare `#` becomes `<prefix>` and
//! `<prefix>.>` (under a prefix there is always a level before the `#`).
//!
//! A topic level that NATS cannot carry (whitespace, or exactly `*` or `>`, which would be
//! wildcards there) makes the topic unexportable: [`subject_for`] says `None` and the
//! bridge counts it, rather than publish to a subject that means something else.
//! Reserved `$` topics (the broker's own) are never exported.

use crate::topic::{FilterLevel, TopicFilter, TopicName};

/// Whether `level` may be one NATS token of a subject that is published to.
fn is_nats_token(level: &str) -> bool {
    !level.is_empty()
        && level != "*"
        && level != ">"
        && !level.chars().any(|c| c.is_whitespace() || c == '\0')
}

/// Whether `prefix` is a valid subject prefix: one or more literal tokens.
pub fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty() && prefix.split('.').all(is_nats_token)
}

/// The NATS subject that `topic` is exported to under `prefix`, or `None` when the topic
/// cannot be carried (a reserved topic, or a level NATS would misread).
pub fn subject_for(prefix: &str, topic: &TopicName) -> Option<String> {
    if topic.is_reserved() || !topic.levels().all(is_nats_token) {
        return None;
    }
    // Built by hand: `format!` costs more than the copy on this per-message path.
    let mut subject = String::with_capacity(prefix.len() + 1 + topic.as_str().len());
    subject.push_str(prefix);
    subject.push('.');
    subject.push_str(topic.as_str());
    Some(subject)
}

/// The NATS subscriptions that together match exactly what `filter` matches under
/// `prefix` (one, or two for a trailing `#`).
pub fn subscriptions_for(prefix: &str, filter: &TopicFilter) -> Vec<String> {
    let mut head = String::from(prefix);
    for level in filter.levels() {
        match level {
            FilterLevel::Literal(text) => {
                head.push('.');
                head.push_str(text);
            }
            FilterLevel::Single => head.push_str(".*"),
            FilterLevel::Multi => {
                // `#` also matches its parent level itself: `a.#` is `a` and `a.>`.
                let more = format!("{head}.>");
                return vec![head, more];
            }
        }
    }
    vec![head]
}

/// The topic that `subject` carries under `prefix`: the levels after the prefix, if the
/// subject is under it and they make a valid topic name.
pub fn topic_under(prefix: &str, subject: &str) -> Option<TopicName> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let topic = TopicName::parse(rest).ok()?;
    (!topic.is_reserved()).then_some(topic)
}

/// Whether the NATS subject filter `pattern` (with `*` and `>`) matches `subject`.
pub fn nats_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both NATS filters `a` and `b` (two streams whose subjects
/// overlap would both claim a message).
pub fn nats_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether the NATS filter `outer` matches every subject `inner` matches.
pub fn nats_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).expect("filter")
    }
    fn t(s: &str) -> TopicName {
        TopicName::parse(s).expect("name")
    }

    #[test]
    fn trailing_hash_is_the_parent_and_everything_below() {
        assert_eq!(
            subscriptions_for("de.h1", &f("alerts.#")),
            vec!["de.h1.alerts", "de.h1.alerts.>"]
        );
        assert_eq!(
            subscriptions_for("de.h1", &f("#")),
            vec!["de.h1", "de.h1.>"]
        );
        assert_eq!(
            subscriptions_for("de.h1", &f("events.+.new")),
            vec!["de.h1.events.*.new"]
        );
    }

    #[test]
    fn unexportable_topics_have_no_subject() {
        assert_eq!(subject_for("p", &t("a.b")), Some("p.a.b".into()));
        assert_eq!(subject_for("p", &t("a.*")), None);
        assert_eq!(subject_for("p", &t("a.x y")), None);
        assert_eq!(subject_for("p", &t("$sys.broker.stats")), None);
    }

    #[test]
    fn reverse_mapping_needs_the_whole_prefix() {
        assert_eq!(
            topic_under("de.h1", "de.h1.alerts.high"),
            Some(t("alerts.high"))
        );
        assert_eq!(topic_under("de.h1", "de.h10.alerts.high"), None);
        assert_eq!(topic_under("de.h1", "de.h1"), None);
    }

    #[test]
    fn nats_filters_overlap_and_cover() {
        assert!(nats_overlap("de.h1.>", "de.*.alerts"));
        assert!(!nats_overlap("de.h1.>", "de.h2.>"));
        assert!(nats_covers("de.>", "de.h1.>"));
        assert!(nats_covers("de.*.>", "de.h1.alerts.>"));
        assert!(!nats_covers("de.h1.alerts.>", "de.h1.>"));
        assert!(nats_matches("de.*.alerts.>", "de.h1.alerts.high"));
        assert!(!nats_matches("de.*.alerts.>", "de.h1.alerts"));
    }
}
