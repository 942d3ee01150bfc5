//! Topic access control from peer credentials (DESIGN.md section 6).
//!
//! A connection's principal is the uid the OS reports for the peer (never what the client
//! claims), plus the role from its Hello for rules that bind a role to a uid. The agent's own
//! uid and root may do everything. Any other uid is refused at connect unless a rule names
//! it; a rule lists the filters that uid (optionally only in one role) may publish to and
//! subscribe to. A subscription is allowed when its filter is covered by an allowed filter,
//! so `events.#` allowed means `events.process.+` is allowed but `#` is not.
//!
//! The TOML shape (parsed by the io crate; this module validates and decides):
//!
//! ```toml
//! [[rules]]
//! uid = 1001
//! role = "client"          # optional: only for connections that say this role
//! publish = ["events.#"]
//! subscribe = ["events.#", "control.health.status"]
//! ```

use serde::Deserialize;

use daemoneye_proto::frame::Role;

use crate::topic::{TopicError, TopicFilter, TopicName};

/// One ACL rule as written in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// The uid the rule applies to.
    pub uid: u32,
    /// Only connections in this role ("client", "collector" or "agent").
    #[serde(default)]
    pub role: Option<String>,
    /// Filters of topics the principal may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters the principal's subscriptions must stay within.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// The ACL section of a config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// The rules, in any order (a request is allowed if any rule allows it).
    #[serde(default)]
    pub rules: Vec<AclRule>,
}

/// Why an ACL config is invalid; names the rule and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// A filter in a rule does not parse.
    #[error("acl rule {rule} ({field}): invalid filter {filter:?}: {source}")]
    BadFilter {
        /// Index of the rule.
        rule: usize,
        /// "publish" or "subscribe".
        field: &'static str,
        /// The text.
        filter: String,
        /// Why.
        source: TopicError,
    },
    /// The role is not one of client, collector, agent.
    #[error("acl rule {rule}: unknown role {role:?} (expected client, collector or agent)")]
    BadRole {
        /// Index of the rule.
        rule: usize,
        /// The text.
        role: String,
    },
}

/// Who is asking: the OS-reported uid and the role from the Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// Peer uid from the OS.
    pub uid: u32,
    /// Role from the Hello (`Client` before the handshake).
    pub role: Role,
}

#[derive(Debug, Clone)]
struct Rule {
    uid: u32,
    role: Option<Role>,
    publish: Vec<TopicFilter>,
    subscribe: Vec<TopicFilter>,
}

/// A compiled ACL.
#[derive(Debug, Clone)]
pub struct Acl {
    owner_uid: u32,
    rules: Vec<Rule>,
}

fn parse_role(rule: usize, role: &str) -> Result<Role, AclError> {
    match role {
        "client" => Ok(Role::Client),
        "collector" => Ok(Role::Collector),
        "agent" => Ok(Role::Agent),
        other => Err(AclError::BadRole {
            rule,
            role: other.to_string(),
        }),
    }
}

impl Acl {
    /// The default: only `owner_uid` (the agent's uid) and root, with every right.
    pub fn owner_only(owner_uid: u32) -> Self {
        Acl {
            owner_uid,
            rules: Vec::new(),
        }
    }

    /// Validates `config` for a broker running as `owner_uid`.
    pub fn compile(owner_uid: u32, config: &AclConfig) -> Result<Self, AclError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.iter().enumerate() {
            let parse =
                |field: &'static str, list: &[String]| -> Result<Vec<TopicFilter>, AclError> {
                    list.iter()
                        .map(|f| {
                            TopicFilter::parse(f).map_err(|source| AclError::BadFilter {
                                rule: i,
                                field,
                                filter: f.clone(),
                                source,
                            })
                        })
                        .collect()
                };
            rules.push(Rule {
                uid: r.uid,
                role: r.role.as_deref().map(|s| parse_role(i, s)).transpose()?,
                publish: parse("publish", &r.publish)?,
                subscribe: parse("subscribe", &r.subscribe)?,
            });
        }
        Ok(Acl { owner_uid, rules })
    }

    fn is_superuser(&self, uid: u32) -> bool {
        uid == self.owner_uid || uid == 0
    }

    fn rules_for(&self, p: Principal) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| r.uid == p.uid && r.role.is_none_or(|role| role == p.role))
    }

    /// Whether a peer with this uid may connect at all.
    pub fn allows_connect(&self, uid: u32) -> bool {
        self.is_superuser(uid) || self.rules.iter().any(|r| r.uid == uid)
    }

    /// Whether `p` may publish to `topic`.
    pub fn allows_publish(&self, p: Principal, topic: &TopicName) -> bool {
        self.is_superuser(p.uid)
            || self
                .rules_for(p)
                .any(|r| r.publish.iter().any(|f| f.matches(topic)))
    }

    /// Whether `p` may subscribe with `filter`.
    pub fn allows_subscribe(&self, p: Principal, filter: &TopicFilter) -> bool {
        self.is_superuser(p.uid)
            || self
                .rules_for(p)
                .any(|r| r.subscribe.iter().any(|f| filter.is_covered_by(f)))
    }
}
