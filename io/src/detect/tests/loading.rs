//! Loading rule files: what is active, inactive or refused, and why.

use proptest::prelude::*;

use super::{Ev, builtin_only, creation, process};
use crate::detect::{Level, RuleSet, RuleSources, builtin};
use daemoneye_proto::pb::control::RuleState;

const GOOD: &str = "title: Whoami\nid: t-good\nlogsource: {product: linux, category: process_creation}\n\
                    detection:\n  s:\n    Image|endswith: /whoami\n  condition: s\nlevel: low\n";

fn load_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, RuleSet) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let set = RuleSet::load(&RuleSources {
        builtin: false,
        directories: vec![dir.path().into()],
    });
    (dir, set)
}

fn state_of<'a>(
    set: &'a [daemoneye_proto::pb::control::RuleStatus],
    file: &str,
) -> &'a daemoneye_proto::pb::control::RuleStatus {
    set.iter()
        .find(|s| s.file.ends_with(file))
        .unwrap_or_else(|| panic!("{file} not in {set:?}"))
}

#[test]
fn a_broken_file_is_refused_with_one_line_and_the_others_load() {
    let (_d, set) = load_dir(&[
        ("a_good.yml", GOOD),
        ("b_broken.yml", "title: [unclosed\n  detection: {\n"),
        (
            "c_modifier.yml",
            &GOOD
                .replace("t-good", "t-mod")
                .replace("|endswith", "|sideways"),
        ),
        (
            "d_condition.yml",
            &GOOD
                .replace("t-good", "t-cond")
                .replace("condition: s", "condition: s and nope"),
        ),
        ("e_empty.yml", ""),
        (
            "f_no_detection.yml",
            "title: x\nlogsource: {product: linux}\n",
        ),
    ]);
    let st = set.statuses();
    assert_eq!(state_of(&st, "a_good.yml").state(), RuleState::Active);
    for f in [
        "b_broken.yml",
        "c_modifier.yml",
        "d_condition.yml",
        "e_empty.yml",
        "f_no_detection.yml",
    ] {
        let s = state_of(&st, f);
        assert_eq!(s.state(), RuleState::Refused, "{f}: {s:?}");
        assert!(
            !s.reason.is_empty() && !s.reason.contains('\n'),
            "{f}: {:?}",
            s.reason
        );
    }
    assert!(
        state_of(&st, "c_modifier.yml").reason.contains("sideways"),
        "{st:?}"
    );
    assert!(
        state_of(&st, "d_condition.yml").reason.contains("nope"),
        "{st:?}"
    );
    assert_eq!(set.active(), 1);
    let hits = set.evaluate(&creation(process("/usr/bin/whoami", &["whoami"])));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].level, Level::Low);
}

#[test]
fn logsources_nothing_collects_are_inactive_with_the_reason() {
    let auditd = GOOD.replace("t-good", "t-audit").replace(
        "product: linux, category: process_creation",
        "product: linux, service: auditd",
    );
    let windows = GOOD
        .replace("t-good", "t-win")
        .replace("product: linux", "product: windows");
    let any_product = GOOD
        .replace("t-good", "t-any")
        .replace("product: linux, ", "");
    let (_d, set) = load_dir(&[
        ("auditd.yml", &auditd),
        ("windows.yml", &windows),
        ("any.yml", &any_product),
    ]);
    let st = set.statuses();
    let a = state_of(&st, "auditd.yml");
    assert_eq!(a.state(), RuleState::Inactive);
    assert_eq!(a.logsource, "linux/auditd");
    assert!(a.reason.contains("linux/auditd"), "{}", a.reason);
    assert_eq!(state_of(&st, "windows.yml").state(), RuleState::Inactive);
    assert_eq!(state_of(&st, "any.yml").state(), RuleState::Active);
    assert_eq!(set.active(), 1);
}

#[test]
fn directories_are_read_recursively_and_files_may_hold_several_rules() {
    let two = format!("{GOOD}---\n{}", GOOD.replace("t-good", "t-second"));
    let (_d, set) = load_dir(&[
        ("deep/er/two.yaml", &two),
        ("notes.txt", "not a rule"),
        ("one.yml", &GOOD.replace("t-good", "t-one")),
    ]);
    let st = set.statuses();
    assert_eq!(st.len(), 3, "{st:?}");
    assert!(st.iter().all(|s| s.state() == RuleState::Active));
    assert_eq!(set.active(), 3);
    let hits = set.evaluate(&creation(process("/usr/bin/whoami", &["whoami"])));
    assert_eq!(hits.len(), 3);
}

#[test]
fn correlations_and_duplicate_ids_are_refused() {
    let correlation = format!(
        "{GOOD}---\ntitle: Many\ncorrelation:\n  type: event_count\n  rules: [t-good]\n  \
         group-by: [User]\n  timespan: 60s\n  condition: {{gte: 3}}\n"
    );
    let (_d, set) = load_dir(&[
        ("a.yml", GOOD),
        ("b_dup.yml", GOOD),
        ("c_corr.yml", &correlation.replace("t-good", "t-c")),
    ]);
    let st = set.statuses();
    let dup = state_of(&st, "b_dup.yml");
    assert_eq!(dup.state(), RuleState::Refused);
    assert!(
        dup.reason.contains("t-good") && dup.reason.contains("a.yml"),
        "{}",
        dup.reason
    );
    let corr = state_of(&st, "c_corr.yml");
    assert_eq!(corr.state(), RuleState::Refused);
    assert!(corr.reason.contains("correlation"), "{}", corr.reason);
    assert_eq!(set.active(), 1);
}

#[test]
fn a_missing_directory_is_one_refused_entry() {
    let set = RuleSet::load(&RuleSources {
        builtin: true,
        directories: vec!["/nonexistent/daemoneye-rules".into()],
    });
    let st = set.statuses();
    let s = state_of(&st, "/nonexistent/daemoneye-rules");
    assert_eq!(s.state(), RuleState::Refused);
    assert_eq!(set.active(), builtin::RULES.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,400}") {
        let (_d, set) = load_dir(&[("x.yml", &text)]);
        prop_assert!(!set.statuses().is_empty());
    }

    #[test]
    fn rule_shaped_text_never_panics(
        field in "[A-Za-z|]{1,20}",
        value in "[ -~]{0,30}",
        cond in "[a-z ()|]{0,20}",
    ) {
        let text = format!(
            "title: t\nlogsource: {{product: linux, category: process_creation}}\n\
             detection:\n  s:\n    {field}: '{}'\n  condition: {cond}\n",
            value.replace('\'', "''")
        );
        let (_d, set) = load_dir(&[("x.yml", &text)]);
        prop_assert!(!set.statuses().is_empty());
        set.evaluate(&creation(process("/usr/bin/x", &["x", &value])));
    }
}

#[test]
fn sigma_modifiers_the_engine_supports_and_refuses() {
    let rule = |i: usize, item: &str| {
        (
            format!("m{i}.yml"),
            format!(
                "title: m{i}\nid: m-{i}\nlogsource: {{product: linux, category: process_creation}}\n\
                 detection:\n  s:\n    {item}\n  condition: s\n"
            ),
        )
    };
    let supported = [
        "CommandLine|contains|all: [a, b]",
        "CommandLine|startswith: x",
        "CommandLine|endswith: x",
        "CommandLine|re: '^x.*y$'",
        "CommandLine|re|i: '^x'",
        "CommandLine|cased: X",
        "CommandLine|base64offset|contains: secret",
        "CommandLine|windash|contains: ' -e '",
        "CommandLine|fieldref: Image",
        "CommandLine|exists: true",
        "ProcessId|gt: 100",
        "ProcessId|lte: 100",
        "CommandLine|contains: ['*x*', 'a?b']",
    ];
    let files: Vec<(String, String)> = supported
        .iter()
        .enumerate()
        .map(|(i, item)| rule(i, item))
        .chain([rule(100, "CommandLine|expand: '%x%'")])
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_d, set) = load_dir(&refs);
    let st = set.statuses();
    for (i, item) in supported.iter().enumerate() {
        let s = state_of(&st, &format!("/m{i}.yml"));
        assert_eq!(s.state(), RuleState::Active, "{item}: {}", s.reason);
    }
    // `expand` loads, but with no placeholder pipeline configured its `%name%` stays
    // literal text (the README says so).
    assert_eq!(state_of(&st, "/m100.yml").state(), RuleState::Active);
}

#[test]
fn a_directory_link_loop_is_read_once() {
    let (dir, _) = load_dir(&[("sub/one.yml", GOOD)]);
    std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/loop")).unwrap();
    let set = RuleSet::load(&RuleSources {
        builtin: false,
        directories: vec![dir.path().into()],
    });
    assert_eq!(set.active(), 1, "{:?}", set.statuses());
}

#[test]
fn a_rule_set_is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<RuleSet>();
    let set = std::sync::Arc::new(builtin_only());
    let ev = Ev("/usr/bin/cat", &["cat", "/etc/shadow"], false).event();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| assert_eq!(set.evaluate(&ev).len(), 1));
        }
    });
    let shadow = set
        .statuses()
        .into_iter()
        .find(|s| s.file == "builtin:credential_shadow_read.yml")
        .unwrap();
    assert_eq!(shadow.matches, 2);
}
