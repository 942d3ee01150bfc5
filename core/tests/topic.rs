//! Topic grammar, single-filter matching against a naive reference, and the trie index
//! against a scan of every filter.

use daemoneye_core::index::SubscriptionIndex;
use daemoneye_core::topic::{TopicError, TopicFilter, TopicName};
use proptest::prelude::*;

/// The reference matcher, written independently of the core, on raw strings.
use daemoneye_sim::world::naive_match;

#[test]
fn valid_names_parse() {
    for n in [
        "a",
        "events.process.new",
        "$sys.broker.stats",
        "a.b.c.d",
        "ünï.cødé",
    ] {
        assert_eq!(TopicName::parse(n).expect(n).as_str(), n);
    }
}

#[test]
fn invalid_names_are_rejected_with_the_rule_they_break() {
    assert_eq!(TopicName::parse(""), Err(TopicError::Empty));
    assert_eq!(TopicName::parse("a..b"), Err(TopicError::EmptyLevel(1)));
    assert_eq!(TopicName::parse(".a"), Err(TopicError::EmptyLevel(0)));
    assert_eq!(TopicName::parse("a."), Err(TopicError::EmptyLevel(1)));
    assert_eq!(TopicName::parse("a.+"), Err(TopicError::WildcardInName(1)));
    assert_eq!(TopicName::parse("a.b#"), Err(TopicError::WildcardInName(1)));
    assert_eq!(TopicName::parse("a\0b"), Err(TopicError::Nul));
    let long = "a".repeat(65_536);
    assert_eq!(TopicName::parse(&long), Err(TopicError::TooLong(65_536)));
    assert!(TopicName::parse(&"a".repeat(65_535)).is_ok());
    let levels = vec!["x"; 65].join(".");
    assert_eq!(
        TopicName::parse(&levels),
        Err(TopicError::TooManyLevels(65))
    );
    assert!(TopicName::parse(&vec!["x"; 64].join(".")).is_ok());
}

#[test]
fn invalid_filters_are_rejected_with_the_rule_they_break() {
    assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
    assert_eq!(
        TopicFilter::parse("a.#.b"),
        Err(TopicError::MultiLevelNotLast(1))
    );
    assert_eq!(
        TopicFilter::parse("a.b+"),
        Err(TopicError::WildcardNotWholeLevel(1))
    );
    assert_eq!(
        TopicFilter::parse("a#"),
        Err(TopicError::WildcardNotWholeLevel(0))
    );
    assert_eq!(TopicFilter::parse("a..#"), Err(TopicError::EmptyLevel(1)));
    assert_eq!(TopicFilter::parse("+\0"), Err(TopicError::Nul));
    assert_eq!(
        TopicFilter::parse(&vec!["+"; 65].join(".")),
        Err(TopicError::TooManyLevels(65))
    );
    for ok in ["#", "+", "+.+", "a.+.c", "a.#", "$sys.#"] {
        assert!(TopicFilter::parse(ok).is_ok(), "{ok}");
    }
}

#[test]
fn nats_wildcards_in_a_filter_are_refused_with_a_hint_to_use_mqtt_ones() {
    assert_eq!(
        TopicFilter::parse("events.*.new"),
        Err(TopicError::NatsWildcard {
            level: 1,
            found: '*',
            instead: '+'
        })
    );
    let err = TopicFilter::parse("events.>").expect_err("'>' is refused");
    assert_eq!(
        err,
        TopicError::NatsWildcard {
            level: 1,
            found: '>',
            instead: '#'
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("use '#'") && msg.contains("NATS"), "{msg}");
    assert!(
        TopicFilter::parse("*")
            .expect_err("'*' alone")
            .to_string()
            .contains("use '+'")
    );
    // Only a whole level is NATS syntax; inside a level they are ordinary characters, and
    // topic names may use them.
    for ok in ["a.b*", "a.>b", "x*y.#"] {
        assert!(TopicFilter::parse(ok).is_ok(), "{ok}");
    }
    assert!(TopicName::parse("events.*.>").is_ok());
}

#[test]
fn multi_level_wildcard_matches_the_parent_level() {
    let f = TopicFilter::parse("events.#").expect("filter");
    for (name, want) in [
        ("events", true),
        ("events.a", true),
        ("events.a.b", true),
        ("eventsx", false),
        ("other", false),
    ] {
        assert_eq!(
            f.matches(&TopicName::parse(name).expect("name")),
            want,
            "{name}"
        );
    }
}

#[test]
fn leading_wildcards_do_not_match_reserved_topics() {
    let stats = TopicName::parse("$sys.broker.stats").expect("name");
    assert!(!TopicFilter::parse("#").expect("f").matches(&stats));
    assert!(
        !TopicFilter::parse("+.broker.stats")
            .expect("f")
            .matches(&stats)
    );
    assert!(TopicFilter::parse("$sys.#").expect("f").matches(&stats));
    assert!(
        TopicFilter::parse("$sys.+.stats")
            .expect("f")
            .matches(&stats)
    );
}

#[test]
fn filter_coverage_decides_acl_scope() {
    let cov = |inner: &str, outer: &str| {
        TopicFilter::parse(inner)
            .expect("inner")
            .is_covered_by(&TopicFilter::parse(outer).expect("outer"))
    };
    assert!(cov("events.process.+", "events.#"));
    assert!(cov("events.#", "events.#"));
    assert!(cov("events", "events.#"));
    assert!(!cov("#", "events.#"));
    assert!(!cov("events.#", "events.+"));
    assert!(cov("a.b", "a.+"));
    assert!(!cov("a.b.c", "a.+"));
    assert!(!cov("$sys.x", "#"));
    assert!(cov("$sys.x", "$sys.#"));
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("$s".to_string())
    ]
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("."))
}

fn filter() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 0..4),
        any::<bool>(),
    )
        .prop_filter_map("non-empty", |(mut v, hash)| {
            if hash {
                v.push("#".into());
            }
            (!v.is_empty()).then(|| v.join("."))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn single_filter_match_agrees_with_naive_reference(f in filter(), n in name()) {
        let parsed = TopicFilter::parse(&f).expect("generated filters are valid");
        let name = TopicName::parse(&n).expect("generated names are valid");
        prop_assert_eq!(parsed.matches(&name), naive_match(&f, &n), "filter {} name {}", f, n);
    }

    #[test]
    fn trie_index_returns_exactly_what_a_scan_of_every_filter_returns(
        filters in proptest::collection::vec(filter(), 0..40),
        removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        names in proptest::collection::vec(name(), 1..10),
    ) {
        let mut index = SubscriptionIndex::new();
        let mut live: Vec<(u64, TopicFilter)> = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let f = TopicFilter::parse(f).expect("valid");
            index.insert(&f, i as u64);
            live.push((i as u64, f));
        }
        for r in removals {
            if live.is_empty() { break; }
            let (key, f) = live.remove(r.index(live.len()));
            prop_assert!(index.remove(&f, key));
            prop_assert!(!index.remove(&f, key), "second removal finds nothing");
        }
        prop_assert_eq!(index.len(), live.len());
        for n in names {
            let name = TopicName::parse(&n).expect("valid");
            let mut got = Vec::new();
            index.matches(&name, &mut got);
            let mut want: Vec<u64> = live.iter().filter(|(_, f)| naive_match(f.as_str(), &n)).map(|(k, _)| *k).collect();
            want.sort_unstable();
            prop_assert_eq!(got, want, "name {}", n);
        }
    }

    #[test]
    fn coverage_implies_every_covered_match_is_an_outer_match(inner in filter(), outer in filter(), n in name()) {
        let i = TopicFilter::parse(&inner).expect("valid");
        let o = TopicFilter::parse(&outer).expect("valid");
        let name = TopicName::parse(&n).expect("valid");
        if i.is_covered_by(&o) && i.matches(&name) {
            prop_assert!(o.matches(&name), "{} covered by {} but {} escapes", inner, outer, n);
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in ".{0,80}") {
        let _ = TopicName::parse(&s);
        let _ = TopicFilter::parse(&s);
    }
}
