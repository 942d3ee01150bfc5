//! The subscription index: a trie over filter levels.
//!
//! Matching a topic walks one path per literal level plus the `+` branches, collecting the
//! subscriptions stored at `#` nodes and at the node where the name ends; it never scans the
//! whole subscription set. Results come back sorted by key, so that routing order never
//! depends on hashing. Child maps use a fixed hasher (FxHash): lookups only, no decision
//! depends on their iteration order.

use rustc_hash::FxHashMap;

use crate::topic::{FilterLevel, TopicFilter, TopicName};

#[derive(Debug, Default)]
struct Node {
    literal: FxHashMap<Box<str>, usize>,
    single: Option<usize>,
    /// Subscriptions whose filter ends with `#` at this node's child position.
    multi: Vec<u64>,
    /// Subscriptions whose filter ends exactly at this node.
    exact: Vec<u64>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.single.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }
}

/// A trie of topic filters mapping to subscription keys.
#[derive(Debug)]
pub struct SubscriptionIndex {
    nodes: Vec<Node>,
    free: Vec<usize>,
    len: usize,
}

impl Default for SubscriptionIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl SubscriptionIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::default()],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        }
    }

    /// Adds `key` under `filter`.
    pub fn insert(&mut self, filter: &TopicFilter, key: u64) {
        let mut node = 0;
        for level in filter.levels() {
            match level {
                FilterLevel::Multi => {
                    self.nodes[node].multi.push(key);
                    self.len += 1;
                    return;
                }
                FilterLevel::Single => {
                    node = match self.nodes[node].single {
                        Some(n) => n,
                        None => {
                            let n = self.alloc();
                            self.nodes[node].single = Some(n);
                            n
                        }
                    };
                }
                FilterLevel::Literal(lit) => {
                    node = match self.nodes[node].literal.get(lit) {
                        Some(&n) => n,
                        None => {
                            let n = self.alloc();
                            self.nodes[node].literal.insert(lit.clone(), n);
                            n
                        }
                    };
                }
            }
        }
        self.nodes[node].exact.push(key);
        self.len += 1;
    }

    /// Removes `key` from under `filter`; returns whether it was there.
    pub fn remove(&mut self, filter: &TopicFilter, key: u64) -> bool {
        let mut path: Vec<(usize, Option<&FilterLevel>)> =
            Vec::with_capacity(filter.levels().len());
        let mut node = 0;
        let mut removed = false;
        for level in filter.levels() {
            match level {
                FilterLevel::Multi => {
                    removed = remove_key(&mut self.nodes[node].multi, key);
                    break;
                }
                FilterLevel::Single => match self.nodes[node].single {
                    Some(n) => {
                        path.push((node, Some(level)));
                        node = n;
                    }
                    None => return false,
                },
                FilterLevel::Literal(lit) => match self.nodes[node].literal.get(lit) {
                    Some(&n) => {
                        path.push((node, Some(level)));
                        node = n;
                    }
                    None => return false,
                },
            }
        }
        if !matches!(filter.levels().last(), Some(FilterLevel::Multi)) {
            removed = remove_key(&mut self.nodes[node].exact, key);
        }
        if !removed {
            return false;
        }
        self.len -= 1;
        // Prune empty nodes bottom-up.
        while let Some((parent, level)) = path.pop() {
            if !self.nodes[node].is_empty() {
                break;
            }
            match level {
                Some(FilterLevel::Single) => self.nodes[parent].single = None,
                Some(FilterLevel::Literal(lit)) => {
                    self.nodes[parent].literal.remove(lit);
                }
                _ => {}
            }
            self.nodes[node] = Node::default();
            self.free.push(node);
            node = parent;
        }
        true
    }

    /// Appends every key whose filter matches `name` to `out`, sorted and without duplicates
    /// (a key stored under one filter appears once).
    pub fn matches(&self, name: &TopicName, out: &mut Vec<u64>) {
        let start = out.len();
        self.walk(0, name.levels(), true, name.is_reserved(), out);
        out[start..].sort_unstable();
    }

    /// `levels` is the rest of the name; cloning it at a `+` branch is a copy of two
    /// pointers, so no per-match buffer of levels is needed.
    fn walk<'a>(
        &self,
        node: usize,
        mut levels: std::str::Split<'a, char>,
        first: bool,
        reserved: bool,
        out: &mut Vec<u64>,
    ) {
        let nd = &self.nodes[node];
        let guard = first && reserved;
        if !guard {
            out.extend_from_slice(&nd.multi);
        }
        let Some(level) = levels.next() else {
            out.extend_from_slice(&nd.exact);
            return;
        };
        if !guard && let Some(child) = nd.single {
            self.walk(child, levels.clone(), false, reserved, out);
        }
        if let Some(&child) = nd.literal.get(level) {
            self.walk(child, levels, false, reserved, out);
        }
    }
}

fn remove_key(keys: &mut Vec<u64>, key: u64) -> bool {
    match keys.iter().position(|&k| k == key) {
        Some(i) => {
            keys.swap_remove(i);
            true
        }
        None => false,
    }
}
