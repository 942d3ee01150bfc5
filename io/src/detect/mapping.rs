//! The field mapping: how a process event is presented to Sigma rules.
//!
//! One table, [`PROCESS_CREATION`], maps the fields of Sigma's Linux `process_creation`
//! taxonomy (plus a few DaemonEye fields, marked below) to [`ProcessInfo`]. A field the
//! collector could not read (it is listed in `ProcessInfo::unread`, or empty) is absent from
//! the event, never an empty string, so `Field: null` and `|exists` behave as Sigma means.
//! A new collector adds its own table the same way, for its own logsource.

use std::borrow::Cow;

use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use rsigma_eval::{Event, EventValue};

/// A mapped value: what a Sigma field holds for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Text.
    Str(Cow<'a, str>),
    /// A number.
    Int(i64),
    /// A flag (`true` / `false`; rules may write it as a string).
    Bool(bool),
}

/// One row of a mapping table.
#[derive(Debug, Clone, Copy)]
pub struct FieldMap {
    /// The Sigma field name.
    pub sigma: &'static str,
    /// Where it comes from (the `ProcessInfo` field, for the documentation).
    pub source: &'static str,
    /// How it is read; `None` when the collector did not read it.
    pub read: for<'a> fn(&'a ProcessInfo) -> Option<Value<'a>>,
}

/// Sigma's Linux `process_creation` taxonomy over procmond's [`ProcessInfo`]
/// (`product: linux`, `category: process_creation`).
pub const PROCESS_CREATION: &[FieldMap] = &[
    FieldMap {
        sigma: "Image",
        source: "exe",
        read: |p| text(p, "exe", &p.exe),
    },
    FieldMap {
        sigma: "CommandLine",
        source: "cmdline (argv joined by spaces, as ps shows it)",
        read: |p| command_line(p, "cmdline", &p.cmdline),
    },
    FieldMap {
        sigma: "ParentImage",
        source: "parent_exe",
        read: |p| text(p, "parent_exe", &p.parent_exe),
    },
    FieldMap {
        sigma: "ParentCommandLine",
        source: "parent_cmdline (joined as CommandLine)",
        read: |p| command_line(p, "parent_cmdline", &p.parent_cmdline),
    },
    FieldMap {
        sigma: "User",
        source: "user (the real user's name)",
        read: |p| text(p, "user", &p.user),
    },
    FieldMap {
        sigma: "CurrentDirectory",
        source: "cwd",
        read: |p| text(p, "cwd", &p.cwd),
    },
    FieldMap {
        sigma: "ProcessId",
        source: "pid",
        read: |p| Some(Value::Int(i64::from(p.pid))),
    },
    FieldMap {
        sigma: "ParentProcessId",
        source: "ppid",
        read: |p| number(p, "ppid", p.ppid),
    },
    FieldMap {
        sigma: "Hashes",
        source: "exe_sha256, as SHA256=<hex> (when computed)",
        read: |p| {
            text(p, "exe_sha256", &p.exe_sha256)
                .map(|_| Value::Str(Cow::Owned(format!("SHA256={}", p.exe_sha256))))
        },
    },
    FieldMap {
        sigma: "ProcessName",
        source: "name (the kernel's comm, at most 15 bytes; DaemonEye field)",
        read: |p| text(p, "name", &p.name),
    },
    FieldMap {
        sigma: "UserId",
        source: "uid (the real user id; DaemonEye field)",
        read: |p| number(p, "uid", p.uid),
    },
    FieldMap {
        sigma: "ImageDeleted",
        source: "exe_deleted (the executable was removed or replaced; DaemonEye field)",
        read: |p| {
            if unread(p, "exe") || p.exe.is_empty() {
                None
            } else {
                Some(Value::Bool(p.exe_deleted))
            }
        },
    },
];

fn unread(p: &ProcessInfo, field: &str) -> bool {
    p.unread.iter().any(|u| u == field)
}

fn text<'a>(p: &ProcessInfo, field: &str, value: &'a str) -> Option<Value<'a>> {
    (!value.is_empty() && !unread(p, field)).then_some(Value::Str(Cow::Borrowed(value)))
}

fn number<'a>(p: &ProcessInfo, field: &str, value: u32) -> Option<Value<'a>> {
    (!unread(p, field)).then_some(Value::Int(i64::from(value)))
}

fn command_line<'a>(p: &ProcessInfo, field: &str, argv: &'a [String]) -> Option<Value<'a>> {
    if argv.is_empty() || unread(p, field) {
        return None;
    }
    Some(Value::Str(Cow::Owned(argv.join(" "))))
}

/// argv as a shell would take it back: an argument is single-quoted when it holds anything
/// but letters, digits and `@%+=:,./-_` (as Python's `shlex.join`), so `sh -c 'a | b'`
/// reads as typed. For people (the CLI's tables); rules see `CommandLine` joined by plain
/// spaces, as `ps`, auditd's execve records and Sysmon for Linux show it, which is what
/// community rules are written against (`CommandLine|endswith: '| sh'`).
pub fn shell_join(argv: &[String]) -> String {
    let mut out = String::with_capacity(argv.iter().map(|a| a.len() + 1).sum());
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let safe = !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_alphanumeric() || "@%+=:,./-_".contains(c));
        if safe {
            out.push_str(arg);
        } else {
            out.push('\'');
            out.push_str(&arg.replace('\'', "'\"'\"'"));
            out.push('\'');
        }
    }
    out
}

/// True for the events Sigma's `process_creation` describes: a process started (`NEW`) or
/// exec'd into another program (`MODIFIED`).
pub fn is_process_creation(event: &ProcessEvent) -> bool {
    matches!(
        event.kind(),
        ProcessEventKind::New | ProcessEventKind::Modified
    ) && event.process.is_some()
}

/// One process presented with a table's Sigma fields (the values read once, up front).
#[derive(Debug)]
pub struct MappedEvent<'a> {
    fields: Vec<(&'static str, Value<'a>)>,
}

impl<'a> MappedEvent<'a> {
    /// Reads every field of `table` from `process`; unread fields are left out.
    pub fn new(table: &[FieldMap], process: &'a ProcessInfo) -> MappedEvent<'a> {
        let fields = table
            .iter()
            .filter_map(|f| (f.read)(process).map(|v| (f.sigma, v)))
            .collect();
        MappedEvent { fields }
    }

    /// The value of Sigma field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The present fields, in table order.
    pub fn fields(&self) -> &[(&'static str, Value<'a>)] {
        &self.fields
    }
}

fn event_value<'b>(v: &'b Value<'_>) -> EventValue<'b> {
    match v {
        Value::Str(s) => EventValue::Str(Cow::Borrowed(s.as_ref())),
        Value::Int(n) => EventValue::Int(*n),
        Value::Bool(b) => EventValue::Bool(*b),
    }
}

impl Event for MappedEvent<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        self.get(path).map(event_value)
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        self.fields.iter().any(|(_, v)| match v {
            Value::Str(s) => pred(s),
            _ => false,
        })
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        self.fields
            .iter()
            .filter_map(|(_, v)| match v {
                Value::Str(s) => Some(Cow::Borrowed(s.as_ref())),
                _ => None,
            })
            .collect()
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        for (_, v) in &self.fields {
            if let Value::Str(s) = v {
                visit(s);
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let map = self
            .fields
            .iter()
            .map(|(n, v)| {
                let j = match v {
                    Value::Str(s) => serde_json::Value::from(s.as_ref()),
                    Value::Int(i) => serde_json::Value::from(*i),
                    Value::Bool(b) => serde_json::Value::from(*b),
                };
                (n.to_string(), j)
            })
            .collect();
        serde_json::Value::Object(map)
    }

    fn top_level_keys(&self) -> Option<Vec<Cow<'_, str>>> {
        Some(self.fields.iter().map(|(n, _)| Cow::Borrowed(*n)).collect())
    }

    fn visit_top_level_keys(&self, visit: &mut dyn FnMut(&str)) -> bool {
        for (n, _) in &self.fields {
            visit(n);
        }
        true
    }
}
