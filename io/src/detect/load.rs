//! Reading rule files: the shipped set, then the configured directories. Every file ends
//! active, inactive (nothing collects its logsource) or refused (one line: the reason);
//! nothing here panics or fails as a whole.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use daemoneye_proto::pb::control::{RuleState, RuleStatus};
use rsigma_eval::CompiledRule;
use rsigma_parser::{SigmaCollection, SigmaRule};

use super::{Level, RuleInfo, RuleSources, builtin};

/// One rule the engine evaluates, with its status's position.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub info: Arc<RuleInfo>,
    pub rule: CompiledRule,
    pub status: usize,
}

/// What loading produced.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub statuses: Vec<RuleStatus>,
    pub active: Vec<Compiled>,
}

/// Loads every file `sources` names, in order.
pub(crate) fn load(sources: &RuleSources) -> Loaded {
    let mut loaded = Loaded::default();
    let mut ids: HashMap<String, String> = HashMap::new();
    if sources.builtin {
        for (name, text) in builtin::RULES {
            load_text(&mut loaded, &mut ids, &format!("builtin:{name}"), text);
        }
    }
    for dir in &sources.directories {
        match rule_files(dir) {
            Ok(files) => {
                for file in files {
                    let label = file.display().to_string();
                    match std::fs::read_to_string(&file) {
                        Ok(text) => load_text(&mut loaded, &mut ids, &label, &text),
                        Err(e) => refuse(&mut loaded, &label, format!("cannot read: {e}")),
                    }
                }
            }
            Err(e) => refuse(
                &mut loaded,
                &dir.display().to_string(),
                format!("cannot read the rule directory: {e}"),
            ),
        }
    }
    let count = |s: RuleState| loaded.statuses.iter().filter(|r| r.state() == s).count();
    tracing::info!(
        active = count(RuleState::Active),
        inactive = count(RuleState::Inactive),
        refused = count(RuleState::Refused),
        directories = sources.directories.len(),
        builtin = sources.builtin,
        "detection rules loaded"
    );
    loaded
}

/// The `*.yml` and `*.yaml` files under `dir`, recursively, sorted by path. Symbolic links
/// are followed; a directory reached twice (a link loop) is read once.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        if !seen.insert(std::fs::canonicalize(&d)?) {
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One line: newlines and runs of blanks in a parser's message folded into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn refuse(loaded: &mut Loaded, file: &str, reason: String) {
    let reason = one_line(&reason);
    tracing::warn!("rule file {file} refused: {reason}");
    loaded.statuses.push(RuleStatus {
        file: file.to_string(),
        state: RuleState::Refused as i32,
        reason,
        ..Default::default()
    });
}

/// Parses with the crate's parser, turning a panic into an error.
fn parse(text: &str) -> Result<SigmaCollection, String> {
    match catch_unwind(AssertUnwindSafe(|| rsigma_parser::parse_sigma_yaml(text))) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the Sigma parser failed on this file".into()),
    }
}

fn compile(rule: &SigmaRule) -> Result<CompiledRule, String> {
    match catch_unwind(AssertUnwindSafe(|| rsigma_eval::compile_rule(rule))) {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the Sigma compiler failed on this rule".into()),
    }
}

/// Why nothing evaluates a rule with this logsource, or `None` when the engine does:
/// procmond's process events are Linux `process_creation`.
pub(crate) fn inactive_reason(rule: &SigmaRule) -> Option<String> {
    let ls = &rule.logsource;
    let product_ok = ls.product.as_deref().is_none_or(|p| p == "linux");
    if product_ok && ls.category.as_deref() == Some("process_creation") && ls.service.is_none() {
        return None;
    }
    Some(format!(
        "no collector provides the logsource {} (only linux/process_creation is collected)",
        logsource(rule)
    ))
}

/// The logsource as `product/category/service`, the absent parts left out.
pub(crate) fn logsource(rule: &SigmaRule) -> String {
    let ls = &rule.logsource;
    [&ls.product, &ls.category, &ls.service]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("/")
}

fn level(rule: &SigmaRule) -> Level {
    rule.level
        .as_ref()
        .and_then(|l| Level::from_name(l.as_str()))
        .unwrap_or(Level::Medium)
}

fn load_text(loaded: &mut Loaded, ids: &mut HashMap<String, String>, file: &str, text: &str) {
    let collection = match parse(text) {
        Ok(c) => c,
        Err(e) => return refuse(loaded, file, e),
    };
    if let Some(e) = collection.errors.first() {
        return refuse(loaded, file, e.clone());
    }
    if !collection.correlations.is_empty() {
        return refuse(
            loaded,
            file,
            "correlation rules are not supported (the engine evaluates one event at a time)".into(),
        );
    }
    if !collection.filters.is_empty() {
        return refuse(loaded, file, "filter rules are not supported".into());
    }
    if collection.rules.is_empty() {
        return refuse(loaded, file, "no Sigma rule in the file".into());
    }
    // A file is loaded whole or refused whole: compile every rule first.
    let mut compiled = Vec::with_capacity(collection.rules.len());
    for rule in &collection.rules {
        let id = rule.id.clone().unwrap_or_else(|| rule.title.clone());
        if let Some(first) = ids.get(&id) {
            return refuse(
                loaded,
                file,
                format!("rule id {id} is already loaded from {first}"),
            );
        }
        match compile(rule) {
            Ok(c) => compiled.push((id, c)),
            Err(e) => return refuse(loaded, file, format!("rule '{}': {e}", rule.title)),
        }
    }
    for (rule, (id, c)) in collection.rules.iter().zip(compiled) {
        ids.insert(id.clone(), file.to_string());
        let info = Arc::new(RuleInfo {
            id,
            title: rule.title.clone(),
            level: level(rule),
            tags: rule.tags.clone(),
            description: rule.description.clone().unwrap_or_default(),
            file: file.to_string(),
        });
        let inactive = inactive_reason(rule);
        let state = if inactive.is_some() {
            RuleState::Inactive
        } else {
            RuleState::Active
        };
        loaded.statuses.push(RuleStatus {
            file: file.to_string(),
            rule_id: info.id.clone(),
            title: info.title.clone(),
            level: info.level.as_str().to_string(),
            state: state as i32,
            reason: inactive.unwrap_or_default(),
            matches: 0,
            logsource: logsource(rule),
        });
        if state == RuleState::Active {
            loaded.active.push(Compiled {
                info,
                rule: c,
                status: loaded.statuses.len() - 1,
            });
        }
    }
}
