//! User and group names by id, cached: a process's uid and gid turn into names without a
//! lookup per event. A hit is kept until the cache is cleared; a miss (an id without a
//! name) is retried after [`MISS_RETRY`], so a user created later gets its name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group, Uid, User};

/// How long an id without a name stays unnamed before it is looked up again.
pub const MISS_RETRY: Duration = Duration::from_secs(30);

/// Most ids of each kind kept; past it the cache starts over (ids are few in practice).
const MAX_ENTRIES: usize = 4096;

/// Names of users and groups (NSS through `nix`, so `/etc/passwd`, `/etc/group` or
/// whatever the host configures), cached per id.
#[derive(Debug, Default)]
pub struct NameCache {
    users: Mutex<HashMap<u32, Entry>>,
    groups: Mutex<HashMap<u32, Entry>>,
}

#[derive(Debug, Clone)]
enum Entry {
    Named(String),
    Unnamed(Instant),
}

impl NameCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name of user `uid`, if it has one.
    pub fn user(&self, uid: u32) -> Option<String> {
        lookup(&self.users, uid, |id| {
            User::from_uid(Uid::from_raw(id))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
    }

    /// The name of group `gid`, if it has one.
    pub fn group(&self, gid: u32) -> Option<String> {
        lookup(&self.groups, gid, |id| {
            Group::from_gid(Gid::from_raw(id))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
    }
}

fn lookup(
    map: &Mutex<HashMap<u32, Entry>>,
    id: u32,
    resolve: impl FnOnce(u32) -> Option<String>,
) -> Option<String> {
    if let Ok(map) = map.lock() {
        match map.get(&id) {
            Some(Entry::Named(name)) => return Some(name.clone()),
            Some(Entry::Unnamed(at)) if at.elapsed() < MISS_RETRY => return None,
            _ => {}
        }
    }
    // Resolved outside the lock: NSS may be slow (LDAP) and must not stall other readers.
    let resolved = resolve(id);
    if let Ok(mut map) = map.lock() {
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let entry = match &resolved {
            Some(name) => Entry::Named(name.clone()),
            None => Entry::Unnamed(Instant::now()),
        };
        map.insert(id, entry);
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_an_unused_id_is_not() {
        let names = NameCache::new();
        assert_eq!(names.user(0).as_deref(), Some("root"));
        assert_eq!(names.group(0).as_deref(), Some("root"));
        assert_eq!(names.user(3_999_999_999), None);
        // From the cache the second time.
        assert_eq!(names.user(0).as_deref(), Some("root"));
    }
}
