//! The agent's record of durable subscriptions, so they survive a broker crash.
//!
//! The broker core says what the definitions are and when they change; this module writes
//! them to one JSON file in the agent's state directory (temporary file, fsync, rename,
//! fsync of the directory, so a crash leaves the old or the new file, never a torn one) and
//! reads them back before the broker accepts connections. A publisher that re-sends after
//! the restart then finds each durable subscriber's queue waiting instead of "no interest".

use std::io::Write as _;
use std::path::{Path, PathBuf};

use daemoneye_core::Instant;
use daemoneye_core::broker::{Broker, DurableDefinition};
use daemoneye_proto::frame::{GroupSpec, Overflow, QueueStrategy};
use daemoneye_proto::names::UnknownName;
use serde::{Deserialize, Serialize};

/// File format version; a file of another version is refused, not misread.
const VERSION: u32 = 1;

/// A durable-subscription file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DurableStoreError {
    /// Reading or writing the file failed.
    #[error("durable subscriptions file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a durable-subscriptions file this agent understands.
    #[error("durable subscriptions file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct FileV1 {
    version: u32,
    durables: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    uid: u32,
    name: String,
    filter: String,
    capacity: u32,
    overflow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
}

impl From<&DurableDefinition> for Record {
    fn from(d: &DurableDefinition) -> Self {
        Record {
            uid: d.uid,
            name: d.name.clone(),
            filter: d.filter.clone(),
            capacity: d.capacity,
            overflow: d.overflow.as_str().to_string(),
            group: d.group.as_ref().map(|g| g.name.clone()),
            strategy: d.group.as_ref().map(|g| g.strategy.as_str().to_string()),
        }
    }
}

impl Record {
    fn into_definition(self) -> Result<DurableDefinition, String> {
        let unknown = |e: UnknownName| format!("durable {:?}: {e}", self.name);
        let overflow: Overflow = self.overflow.parse().map_err(unknown)?;
        let strategy = match self.strategy.as_deref() {
            None => QueueStrategy::default(),
            Some(s) => s.parse().map_err(unknown)?,
        };
        let group = self.group.map(|name| GroupSpec { name, strategy });
        Ok(DurableDefinition {
            uid: self.uid,
            name: self.name,
            filter: self.filter,
            capacity: self.capacity,
            overflow,
            group,
        })
    }
}

/// Where the agent keeps its durable subscriptions, and what it last wrote there.
#[derive(Debug)]
pub struct DurableStore {
    path: PathBuf,
    stored_generation: Option<u64>,
}

impl DurableStore {
    /// A store at `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            stored_generation: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the stored definitions; a missing file is none.
    pub fn load(&self) -> Result<Vec<DurableDefinition>, DurableStoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(DurableStoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let format = |reason: String| DurableStoreError::Format {
            path: self.path.clone(),
            reason,
        };
        let file: FileV1 = serde_json::from_slice(&text).map_err(|e| format(e.to_string()))?;
        if file.version != VERSION {
            return Err(format(format!(
                "version {} (this agent reads version {VERSION})",
                file.version
            )));
        }
        file.durables
            .into_iter()
            .map(|r| r.into_definition().map_err(format))
            .collect()
    }

    /// Restores every stored definition into `broker` (before it accepts connections).
    /// Returns how many were restored; one that the broker refuses is logged and skipped.
    pub fn restore_into(
        &mut self,
        broker: &mut Broker,
        now: Instant,
    ) -> Result<usize, DurableStoreError> {
        let mut restored = 0;
        for def in self.load()? {
            let name = def.name.clone();
            match broker.restore_durable(now, def) {
                Ok(()) => restored += 1,
                Err(e) => {
                    tracing::warn!(durable = %name, error = %e, "durable subscription not restored")
                }
            }
        }
        self.stored_generation = Some(broker.durables_generation());
        Ok(restored)
    }

    /// Writes the broker's definitions if they changed since the last write.
    pub fn save_if_changed(&mut self, broker: &Broker) -> Result<bool, DurableStoreError> {
        let generation = broker.durables_generation();
        if self.stored_generation == Some(generation) {
            return Ok(false);
        }
        let file = FileV1 {
            version: VERSION,
            durables: broker
                .durable_definitions()
                .iter()
                .map(Record::from)
                .collect(),
        };
        let io = |source| DurableStoreError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| DurableStoreError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
        out.sync_all().map_err(io)?;
        drop(out);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        self.stored_generation = Some(generation);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_core::acl::Acl;
    use daemoneye_core::broker::BrokerConfig;

    fn broker() -> Broker {
        Broker::new(
            BrokerConfig {
                owner_uid: 1000,
                ..Default::default()
            },
            Acl::owner_only(1000),
            1,
        )
    }

    #[test]
    fn definitions_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("durables.json");
        let mut b = broker();
        let defs = vec![
            DurableDefinition {
                uid: 1000,
                name: "fwd".into(),
                filter: "orders.#".into(),
                capacity: 50,
                overflow: Overflow::DropOldest,
                group: None,
            },
            DurableDefinition {
                uid: 1000,
                name: "workers".into(),
                filter: "jobs.+".into(),
                capacity: 1000,
                overflow: Overflow::Block,
                group: Some(GroupSpec {
                    name: "w".into(),
                    strategy: QueueStrategy::LeastLoaded,
                }),
            },
        ];
        for d in &defs {
            b.restore_durable(Instant::ZERO, d.clone())
                .expect("restore");
        }
        let mut store = DurableStore::new(&path);
        assert!(store.save_if_changed(&b).expect("save"));
        assert!(
            !store.save_if_changed(&b).expect("save"),
            "unchanged definitions are not rewritten"
        );
        let mut again = broker();
        let mut store2 = DurableStore::new(&path);
        assert_eq!(
            store2
                .restore_into(&mut again, Instant::ZERO)
                .expect("load"),
            2
        );
        assert_eq!(again.durable_definitions(), defs);
    }

    #[test]
    fn a_missing_file_is_no_durables_and_a_foreign_one_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("durables.json");
        assert!(DurableStore::new(&path).load().expect("missing").is_empty());
        std::fs::write(&path, b"not json").expect("write");
        let err = DurableStore::new(&path).load().expect_err("foreign");
        assert!(err.to_string().contains("durables.json"), "{err}");
        std::fs::write(&path, br#"{"version": 9, "durables": []}"#).expect("write");
        let err = DurableStore::new(&path).load().expect_err("version");
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn a_stored_strategy_name_is_the_canonical_one_and_an_unknown_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("durables.json");
        let file = |overflow: &str, strategy: &str| {
            format!(
                r#"{{"version": 1, "durables": [{{"uid": 1, "name": "d", "filter": "a", "capacity": 5,
                    "overflow": "{overflow}", "group": "g", "strategy": "{strategy}"}}]}}"#
            )
        };
        std::fs::write(&path, file("drop-newest", "least-loaded")).expect("write");
        let defs = DurableStore::new(&path)
            .load()
            .expect("canonical names load");
        assert_eq!(defs[0].overflow, Overflow::DropNewest);
        assert_eq!(
            defs[0].group.as_ref().map(|g| g.strategy),
            Some(QueueStrategy::LeastLoaded)
        );
        std::fs::write(&path, file("drop-all", "random")).expect("write");
        let err = DurableStore::new(&path)
            .load()
            .expect_err("unknown overflow");
        assert!(
            err.to_string()
                .contains(r#"durable "d": unknown overflow strategy "drop-all""#),
            "{err}"
        );
        std::fs::write(&path, file("block", "fastest")).expect("write");
        let err = DurableStore::new(&path)
            .load()
            .expect_err("unknown strategy");
        assert!(
            err.to_string()
                .contains(r#"unknown queue strategy "fastest""#),
            "{err}"
        );
    }
}
