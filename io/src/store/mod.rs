//! The event store: what crossed the bus (`events.#`, `alerts.#`), kept in one file with
//! bounded retention, and queried by time, process, user and topic.
//!
//! **Why redb.** It is pure Rust (no C library to build or audit), ACID with copy-on-write
//! pages and checksummed commits, so a process killed at any instant (kill -9, power loss
//! after a committed transaction) leaves the last committed state, and it is a single file
//! an operator can copy, move or delete. Its `SingleWriter` mode lets one process write
//! while others open the file read-only (byte-range locks, Linux/macOS/Windows), which is
//! how `daemoneye-cli events query --database` reads a store the agent has open.
//!
//! **Layout** (format [`FORMAT_VERSION`], kept in the metadata table; another version is
//! refused with a clear error):
//! - `daemoneye.meta`: the format version, the next event id, the bytes the records take;
//! - `daemoneye.events`: key (received at, Unix ms; id), value: a `StoredEvent` protobuf
//!   (topic, publisher, sequence, payload; id and time come from the key), compressed
//!   against a dictionary of the store's recent records (see [`record`]). The key is the
//!   time index: a window is one range scan, oldest first, and retention pops the front;
//! - `daemoneye.dictionaries`: id to the dictionary's bytes;
//! - `daemoneye.sequences`: (hash of the publisher id, sequence) to the event's key, for
//!   sequenced (QoS1) messages, so that a publisher's resend after a crash is kept once.
//!   A hash match is confirmed against the stored event's publisher.
//!
//! **Writes** come in batches, one transaction each (the agent drains what its subscription
//! has queued, commits once, then acks). Each commit also applies the retention rule
//! ([`retention::evict_oldest`]) to the oldest events, a bounded number per commit, so the
//! file stays bounded without a pause; [`EventStore::enforce_retention`] does the same when
//! no event arrives. Freed pages are reused by later commits, so the file stops growing
//! once retention removes as much as arrives.
//!
//! The store keeps no clock: callers pass the time (`now_ms`, Unix milliseconds).

mod error;
mod filter;
mod read;
mod record;
pub mod retention;
#[cfg(test)]
mod tests;
mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    TableDefinition, TableError, TableHandle,
};

pub use error::StoreError;
pub use filter::DEFAULT_TOPIC_FILTER;
pub use retention::{Evict, Limits};

/// The store's format version; a file of another version is refused.
pub const FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("daemoneye.meta");
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("daemoneye.events");
const SEQUENCES: TableDefinition<(u64, u64), (u64, u64)> =
    TableDefinition::new("daemoneye.sequences");
const DICTIONARIES: TableDefinition<u64, &[u8]> = TableDefinition::new("daemoneye.dictionaries");

const META_FORMAT: &str = "format_version";
const META_NEXT_ID: &str = "next_id";
const META_RECORD_BYTES: &str = "record_bytes";
const META_DICTIONARY: &str = "dictionary";
const META_DICTIONARY_WRITTEN: &str = "dictionary_written";

/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Pages redb may cache in memory (it reads the rest from the OS's page cache).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Default bound on the file's size: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default bound on an event's age: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a store is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// The file stays about this size or smaller (see [`retention::RECORD_SHARE_PERCENT`]).
    pub max_bytes: u64,
    /// Events older than this are removed.
    pub max_age: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// A message to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The topic it was published on.
    pub topic: String,
    /// Its publisher id, empty for an unsequenced (QoS0) message.
    pub publisher: String,
    /// Its publisher's sequence, 0 for an unsequenced message.
    pub sequence: u64,
    /// The payload as published.
    pub payload: Bytes,
}

impl NewEvent {
    fn is_sequenced(&self) -> bool {
        !self.publisher.is_empty() && self.sequence != 0
    }
}

/// What one [`EventStore::append_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Events stored.
    pub stored: u64,
    /// Events already in the store (same publisher and sequence), not stored again.
    pub duplicates: u64,
    /// Oldest events removed by the retention rule in the same commit.
    pub evicted: Evicted,
}

/// Events removed by the retention rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Older than `max_age`.
    pub by_age: u64,
    /// Over the size bound.
    pub by_size: u64,
}

impl Evicted {
    /// Both counts together.
    pub fn total(&self) -> u64 {
        self.by_age + self.by_size
    }
}

/// A store's contents at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events kept.
    pub events: u64,
    /// Bytes their records take (keys, values, dedup entries).
    pub record_bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// When the oldest and newest kept events were received (Unix ms).
    pub oldest_ms: Option<u64>,
    /// See `oldest_ms`.
    pub newest_ms: Option<u64>,
}

enum Handle {
    Writer(Database),
    Reader(ReadOnlyDatabase),
}

/// What the metadata table keeps between commits, and the writer's dictionary.
#[derive(Debug, Default)]
struct Counters {
    next_id: u64,
    record_bytes: u64,
    /// The dictionary new records are compressed against (id, bytes).
    dictionary: Option<(u64, Vec<u8>)>,
    /// Bytes of records written since that dictionary was made.
    dictionary_written: u64,
}

/// An open event store: a writer ([`EventStore::open`], one process at a time) or a
/// reader ([`EventStore::open_read_only`], any number, beside the writer).
pub struct EventStore {
    path: PathBuf,
    db: Handle,
    limits: Limits,
    counters: Counters,
    /// The latest records written, the material of the next dictionary.
    samples: record::Samples,
    /// For a reader of a file its writer left unclean: the private, repaired copy it
    /// reads (removed on drop, after `db`).
    copy: Option<TempCopy>,
}

/// A file removed when dropped.
struct TempCopy(PathBuf);

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("path", &self.path)
            .field("writer", &matches!(self.db, Handle::Writer(_)))
            .field("limits", &self.limits)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Refuses, before redb reads it, a file that is not a redb database at all.
fn sniff(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let mut head = [0u8; REDB_MAGIC.len()];
    let mut file = std::fs::File::open(path).map_err(|source| StoreError::Io {
        what: "opening",
        path: path.into(),
        source,
    })?;
    let n = file.read(&mut head).map_err(|source| StoreError::Io {
        what: "reading",
        path: path.into(),
        source,
    })?;
    if n == REDB_MAGIC.len() && head == REDB_MAGIC {
        return Ok(());
    }
    let text = head[..n]
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    Err(StoreError::NotAStore {
        path: path.into(),
        why: if n == 0 {
            "the file is empty".into()
        } else if text {
            "it holds text, not a redb database".into()
        } else {
            "it is not a redb database".into()
        },
    })
}

/// Runs `f`, turning a panic into a damaged-store error: redb checks some invariants of
/// what it reads with debug assertions, which a damaged file can trip.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "redb could not read it".into());
        Err(StoreError::Corrupt {
            path: path.into(),
            why,
        })
    })
}

fn builder() -> Builder {
    let mut b = Builder::new();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter)
        .set_cache_size(CACHE_BYTES);
    b
}

/// Sorts a redb error met while `what` on `path`.
fn at<'p, E: Into<redb::Error>>(
    path: &'p Path,
    what: &'static str,
) -> impl FnOnce(E) -> StoreError + 'p {
    move |e| StoreError::from_redb(path, what, e)
}

/// The counters kept in the metadata table, after checking it is ours and of our version;
/// `None` for a database without it.
fn read_meta(path: &Path, txn: &ReadTransaction) -> Result<Option<Counters>, StoreError> {
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(at(path, "reading its metadata")(e)),
    };
    let get = |key: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta
            .get(key)
            .map_err(at(path, "reading its metadata"))?
            .map(|v| v.value()))
    };
    let Some(version) = get(META_FORMAT)? else {
        return Ok(None);
    };
    if version != FORMAT_VERSION {
        return Err(StoreError::Version {
            path: path.into(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let dictionary = match get(META_DICTIONARY)?.unwrap_or(0) {
        0 => None,
        id => {
            let table = txn
                .open_table(DICTIONARIES)
                .map_err(at(path, "reading its dictionaries"))?;
            let bytes = table
                .get(id)
                .map_err(at(path, "reading its dictionaries"))?
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.into(),
                    why: format!("dictionary {id} is missing"),
                })?
                .value()
                .to_vec();
            Some((id, bytes))
        }
    };
    Ok(Some(Counters {
        next_id: get(META_NEXT_ID)?.unwrap_or(1),
        record_bytes: get(META_RECORD_BYTES)?.unwrap_or(0),
        dictionary,
        dictionary_written: get(META_DICTIONARY_WRITTEN)?.unwrap_or(0),
    }))
}

/// A redb database that is not ours: what it holds, for the error.
fn foreign(path: &Path, txn: &ReadTransaction) -> StoreError {
    let tables: Vec<String> = txn
        .list_tables()
        .map(|t| t.map(|h| h.name().to_string()).collect())
        .unwrap_or_default();
    StoreError::NotAStore {
        path: path.into(),
        why: if tables.is_empty() {
            "an empty redb database".into()
        } else {
            format!(
                "a redb database of another program (tables: {})",
                tables.join(", ")
            )
        },
    }
}

impl EventStore {
    /// Opens the store at `path` for writing, creating it (and its directory, mode 0700)
    /// when missing. After a crash redb first repairs the file (it walks every page; this
    /// is logged). Another writer holding it, a foreign or damaged file, or another format
    /// version is an error naming the path.
    pub fn open(path: &Path, config: StoreConfig) -> Result<EventStore, StoreError> {
        let io = |what| {
            move |source| StoreError::Io {
                what,
                path: path.into(),
                source,
            }
        };
        let exists = match std::fs::metadata(path) {
            Ok(m) => m.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io("reading its metadata")(e)),
        };
        if exists {
            sniff(path)?;
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating its directory"))?;
        }
        let shown = path.display().to_string();
        let db = guarded(path, || {
            let mut b = builder();
            b.set_repair_callback(move |session| {
                if session.progress() == 0.0 {
                    tracing::warn!(store = %shown, "event store was not closed cleanly: repairing it");
                }
            });
            b.create(path)
                .map_err(|e| StoreError::from_redb(path, "opening", e))
        })?;
        let counters = guarded(path, || {
            let txn = db.begin_read().map_err(at(path, "reading"))?;
            match read_meta(path, &txn)? {
                Some(c) => Ok(Some(c)),
                None if txn
                    .list_tables()
                    .map_err(at(path, "reading"))?
                    .next()
                    .is_some() =>
                {
                    Err(foreign(path, &txn))
                }
                None => Ok(None),
            }
        })?;
        let counters = match counters {
            Some(c) => c,
            None => {
                let txn = db.begin_write().map_err(at(path, "initializing"))?;
                {
                    let mut meta = txn.open_table(META).map_err(at(path, "initializing"))?;
                    for (k, v) in [
                        (META_FORMAT, FORMAT_VERSION),
                        (META_NEXT_ID, 1),
                        (META_RECORD_BYTES, 0),
                    ] {
                        meta.insert(k, v).map_err(at(path, "initializing"))?;
                    }
                    txn.open_table(EVENTS).map_err(at(path, "initializing"))?;
                    txn.open_table(SEQUENCES)
                        .map_err(at(path, "initializing"))?;
                    txn.open_table(DICTIONARIES)
                        .map_err(at(path, "initializing"))?;
                }
                txn.commit().map_err(at(path, "initializing"))?;
                tracing::info!(store = %path.display(), "event store created");
                Counters {
                    next_id: 1,
                    ..Counters::default()
                }
            }
        };
        Ok(EventStore {
            path: path.into(),
            db: Handle::Writer(db),
            limits: Limits {
                max_bytes: config.max_bytes,
                max_age: config.max_age,
            },
            counters,
            samples: record::Samples::default(),
            copy: None,
        })
    }

    /// Opens an existing store read-only: beside its running writer (it reads the last
    /// commit), or after its writer was killed. Such a file needs redb's repair before it
    /// can be read, and only a writer repairs: the reader repairs and reads a private copy
    /// instead ([`repaired_copy`](Self::repaired_copy)), so the file itself is left as
    /// it was found (the agent repairs it when it starts).
    pub fn open_read_only(path: &Path) -> Result<EventStore, StoreError> {
        match std::fs::metadata(path) {
            Ok(_) => sniff(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { path: path.into() });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    what: "reading its metadata",
                    path: path.into(),
                    source,
                });
            }
        }
        let opened = guarded(path, || match builder().open_read_only(path) {
            Ok(db) => Ok(Some(db)),
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(e) => Err(StoreError::from_redb(path, "opening", e)),
        })?;
        let Some(db) = opened else {
            return Self::open_repaired_copy(path);
        };
        let counters = guarded(path, || {
            let txn = db.begin_read().map_err(at(path, "reading"))?;
            read_meta(path, &txn)?.ok_or_else(|| foreign(path, &txn))
        })?;
        Ok(EventStore {
            path: path.into(),
            db: Handle::Reader(db),
            limits: Limits {
                max_bytes: u64::MAX,
                max_age: Duration::MAX,
            },
            counters,
            samples: record::Samples::default(),
            copy: None,
        })
    }

    /// Copies an unclean store (its writer was killed) to the temporary directory, repairs
    /// the copy and opens it; the copy goes when the store is dropped.
    fn open_repaired_copy(path: &Path) -> Result<EventStore, StoreError> {
        static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let copy = TempCopy(
            std::env::temp_dir().join(format!("daemoneye-store-{}-{n}.redb", std::process::id())),
        );
        tracing::warn!(
            store = %path.display(),
            copy = %copy.0.display(),
            "event store was not closed cleanly and no agent holds it: reading a repaired copy"
        );
        {
            use std::os::unix::fs::OpenOptionsExt;
            let io = |what, path: &Path| {
                let path = path.to_path_buf();
                move |source| StoreError::Io { what, path, source }
            };
            let mut from = std::fs::File::open(path).map_err(io("reading it", path))?;
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy.0)
                .map_err(io("copying it to repair the copy", &copy.0))?;
            std::io::copy(&mut from, &mut to)
                .map_err(io("copying it to repair the copy", &copy.0))?;
        }
        let mut store = EventStore::open(&copy.0, StoreConfig::default()).map_err(|e| match e {
            // Name the file the user gave, not the copy.
            StoreError::Corrupt { why, .. } => StoreError::Corrupt {
                path: path.into(),
                why,
            },
            other => other,
        })?;
        store.path = path.into();
        store.limits = Limits {
            max_bytes: u64::MAX,
            max_age: Duration::MAX,
        };
        store.copy = Some(copy);
        Ok(store)
    }

    /// True when this reader reads a repaired copy of a file its writer left unclean.
    pub fn repaired_copy(&self) -> bool {
        self.copy.is_some()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn redb<E: Into<redb::Error>>(&self, what: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::from_redb(&self.path, what, e)
    }

    fn writer(&self) -> Result<&Database, StoreError> {
        match &self.db {
            Handle::Writer(db) if self.copy.is_none() => Ok(db),
            Handle::Writer(_) | Handle::Reader(_) => Err(StoreError::ReadOnly {
                path: self.path.clone(),
            }),
        }
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            Handle::Writer(db) => db.begin_read(),
            Handle::Reader(db) => db.begin_read(),
        }
        .map_err(self.redb("reading"))
    }
}
