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
//!   (topic, publisher, sequence, payload; id and time come from the key). The key is the
//!   time index: a window is one range scan, oldest first, and retention pops the front;
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
pub mod retention;
#[cfg(test)]
mod tests;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_proto::pb::store::{EventQuery, EventQueryResponse, StoredEvent};
use prost::Message;
use redb::{
    Builder, ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition, TableError, TableHandle,
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

const META_FORMAT: &str = "format_version";
const META_NEXT_ID: &str = "next_id";
const META_RECORD_BYTES: &str = "record_bytes";

/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Pages redb may cache in memory (it reads the rest from the OS's page cache).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Oldest events removed per commit at least (more when a batch is large), so that a
/// store over its bounds (limits lowered, clock jumped) shrinks over a few commits
/// instead of one long one.
const EVICT_PER_COMMIT: u64 = 10_000;

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

/// An open event store: a writer ([`EventStore::open`], one process at a time) or a
/// reader ([`EventStore::open_read_only`], any number, beside the writer).
pub struct EventStore {
    path: PathBuf,
    db: Handle,
    limits: Limits,
    next_id: u64,
    record_bytes: u64,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("path", &self.path)
            .field("writer", &matches!(self.db, Handle::Writer(_)))
            .field("limits", &self.limits)
            .field("next_id", &self.next_id)
            .field("record_bytes", &self.record_bytes)
            .finish()
    }
}

/// FNV-1a of a publisher id: stable across builds and platforms, as a key on disk must be.
fn publisher_hash(publisher: &str) -> u64 {
    publisher.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Bytes a record takes: its key and value, and its dedup entry when it has one.
fn record_cost(value_len: usize, sequenced: bool) -> u64 {
    16 + value_len as u64 + if sequenced { 32 } else { 0 }
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

/// The counters kept in the metadata table, after checking it is ours and of our version.
fn read_meta(path: &Path, txn: &ReadTransaction) -> Result<Option<(u64, u64)>, StoreError> {
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
    Ok(Some((
        get(META_NEXT_ID)?.unwrap_or(1),
        get(META_RECORD_BYTES)?.unwrap_or(0),
    )))
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
        let (next_id, record_bytes) = match counters {
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
                }
                txn.commit().map_err(at(path, "initializing"))?;
                tracing::info!(store = %path.display(), "event store created");
                (1, 0)
            }
        };
        Ok(EventStore {
            path: path.into(),
            db: Handle::Writer(db),
            limits: Limits {
                max_bytes: config.max_bytes,
                max_age: config.max_age,
            },
            next_id,
            record_bytes,
        })
    }

    /// Opens an existing store read-only: beside its running writer (it reads the last
    /// commit), or after its writer was killed (no repair needed to read).
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
        let db = guarded(path, || {
            builder().open_read_only(path).map_err(at(path, "opening"))
        })?;
        let (next_id, record_bytes) = guarded(path, || {
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
            next_id,
            record_bytes,
        })
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
            Handle::Writer(db) => Ok(db),
            Handle::Reader(_) => Err(StoreError::ReadOnly {
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

    /// Stores `events`, received at `now_ms` (Unix ms), in one transaction: a sequenced
    /// event whose (publisher, sequence) is already kept is skipped as a duplicate. The
    /// same commit removes the oldest events the retention rule no longer keeps. Once this
    /// returns, the events survive a crash.
    pub fn append_batch(
        &mut self,
        now_ms: u64,
        events: &[NewEvent],
    ) -> Result<Appended, StoreError> {
        let db = self.writer()?;
        let mut next_id = self.next_id;
        let mut bytes = self.record_bytes;
        let mut appended = Appended::default();
        let txn = db.begin_write().map_err(self.redb("writing"))?;
        {
            let mut table = txn.open_table(EVENTS).map_err(self.redb("writing"))?;
            let mut sequences = txn.open_table(SEQUENCES).map_err(self.redb("writing"))?;
            for e in events {
                let dedup_key = (publisher_hash(&e.publisher), e.sequence);
                if e.is_sequenced() {
                    let kept = sequences
                        .get(dedup_key)
                        .map_err(self.redb("reading"))?
                        .map(|k| k.value());
                    if let Some(key) = kept
                        && let Some(v) = table.get(key).map_err(self.redb("reading"))?
                        && StoredEvent::decode(v.value()).is_ok_and(|r| r.publisher == e.publisher)
                    {
                        appended.duplicates += 1;
                        continue;
                    }
                }
                let value = StoredEvent {
                    id: 0,
                    time_ms: 0,
                    topic: e.topic.clone(),
                    publisher: e.publisher.clone(),
                    sequence: e.sequence,
                    payload: e.payload.clone(),
                }
                .encode_to_vec();
                let key = (now_ms, next_id);
                table
                    .insert(key, value.as_slice())
                    .map_err(self.redb("writing"))?;
                if e.is_sequenced() {
                    sequences
                        .insert(dedup_key, key)
                        .map_err(self.redb("writing"))?;
                }
                bytes += record_cost(value.len(), e.is_sequenced());
                next_id += 1;
                appended.stored += 1;
            }
            let cap = EVICT_PER_COMMIT.max(4 * events.len() as u64);
            appended.evicted = self.evict(&mut table, &mut sequences, &mut bytes, now_ms, cap)?;
            let mut meta = txn.open_table(META).map_err(self.redb("writing"))?;
            meta.insert(META_NEXT_ID, next_id)
                .map_err(self.redb("writing"))?;
            meta.insert(META_RECORD_BYTES, bytes)
                .map_err(self.redb("writing"))?;
        }
        txn.commit().map_err(self.redb("committing"))?;
        self.next_id = next_id;
        self.record_bytes = bytes;
        Ok(appended)
    }

    /// Removes, in one commit, the oldest events the retention rule no longer keeps at
    /// `now_ms` (up to a bounded number: call again while it removes some). For a store
    /// that receives nothing for a while.
    pub fn enforce_retention(&mut self, now_ms: u64) -> Result<Evicted, StoreError> {
        let oldest = self.stats_inner(false)?.oldest_ms;
        if retention::evict_oldest(&self.limits, self.record_bytes, oldest, now_ms).is_none() {
            return Ok(Evicted::default());
        }
        let db = self.writer()?;
        let mut bytes = self.record_bytes;
        let txn = db.begin_write().map_err(self.redb("writing"))?;
        let evicted = {
            let mut table = txn.open_table(EVENTS).map_err(self.redb("writing"))?;
            let mut sequences = txn.open_table(SEQUENCES).map_err(self.redb("writing"))?;
            let evicted = self.evict(
                &mut table,
                &mut sequences,
                &mut bytes,
                now_ms,
                EVICT_PER_COMMIT,
            )?;
            let mut meta = txn.open_table(META).map_err(self.redb("writing"))?;
            meta.insert(META_RECORD_BYTES, bytes)
                .map_err(self.redb("writing"))?;
            evicted
        };
        txn.commit().map_err(self.redb("committing"))?;
        self.record_bytes = bytes;
        Ok(evicted)
    }

    /// Pops the oldest events while the retention rule says so, at most `cap`.
    fn evict(
        &self,
        table: &mut redb::Table<(u64, u64), &[u8]>,
        sequences: &mut redb::Table<(u64, u64), (u64, u64)>,
        bytes: &mut u64,
        now_ms: u64,
        cap: u64,
    ) -> Result<Evicted, StoreError> {
        let mut evicted = Evicted::default();
        while evicted.total() < cap {
            let oldest = table
                .first()
                .map_err(self.redb("reading"))?
                .map(|(k, v)| (k.value(), v.value().to_vec()));
            let Some((key, value)) = oldest else { break };
            let Some(why) = retention::evict_oldest(&self.limits, *bytes, Some(key.0), now_ms)
            else {
                break;
            };
            table.remove(key).map_err(self.redb("writing"))?;
            let record = StoredEvent::decode(value.as_slice()).unwrap_or_default();
            let sequenced = !record.publisher.is_empty() && record.sequence != 0;
            if sequenced {
                let dedup_key = (publisher_hash(&record.publisher), record.sequence);
                let points_here = sequences
                    .get(dedup_key)
                    .map_err(self.redb("reading"))?
                    .is_some_and(|k| k.value() == key);
                if points_here {
                    sequences.remove(dedup_key).map_err(self.redb("writing"))?;
                }
            }
            *bytes = bytes.saturating_sub(record_cost(value.len(), sequenced));
            match why {
                Evict::Age => evicted.by_age += 1,
                Evict::Size => evicted.by_size += 1,
            }
        }
        Ok(evicted)
    }

    /// Answers `query`: the matching events, oldest first, at most `limit` (0: all).
    pub fn query(&self, query: &EventQuery) -> Result<EventQueryResponse, StoreError> {
        self.query_within(query, usize::MAX)
    }

    /// Like [`query`](Self::query), but the answer's events take at most about
    /// `max_bytes` encoded (a reply must fit a frame): when more match, the answer is
    /// marked truncated and the next page starts after its last event (`since_ms` = its
    /// time, `after_id` = its id). A single event over the budget is an error in the
    /// answer.
    pub fn query_within(
        &self,
        query: &EventQuery,
        max_bytes: usize,
    ) -> Result<EventQueryResponse, StoreError> {
        let mut filter = filter::EventFilter::compile(query)?;
        guarded(&self.path, || {
            let mut out = EventQueryResponse::default();
            let txn = self.begin_read()?;
            let table = match txn.open_table(EVENTS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(out),
                Err(e) => return Err(self.redb("reading")(e)),
            };
            let start = (
                query.since_ms,
                query.after_id.saturating_add(u64::from(query.after_id > 0)),
            );
            let end = match query.until_ms {
                0 => Bound::Unbounded,
                until => Bound::Excluded((until, 0)),
            };
            let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
            let mut used = 0usize;
            for entry in table
                .range::<(u64, u64)>((Bound::Included(start), end))
                .map_err(self.redb("reading"))?
            {
                let (k, v) = entry.map_err(self.redb("reading"))?;
                let (time_ms, id) = k.value();
                let mut event =
                    StoredEvent::decode(v.value()).map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        why: format!("event {id} does not decode: {e}"),
                    })?;
                if !filter.matches(&event.topic, &event.payload) {
                    continue;
                }
                if limit != 0 && out.events.len() == limit {
                    out.truncated = true;
                    break;
                }
                event.id = id;
                event.time_ms = time_ms;
                let size = event.encoded_len() + 8;
                if used + size > max_bytes {
                    if out.events.is_empty() {
                        out.error = format!(
                            "event {id} ({size} bytes) is larger than a reply can carry: \
                             read it with --database"
                        );
                    }
                    out.truncated = true;
                    break;
                }
                used += size;
                out.events.push(event);
            }
            Ok(out)
        })
    }

    /// Counts and bounds of what is kept.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        self.stats_inner(true)
    }

    fn stats_inner(&self, count: bool) -> Result<StoreStats, StoreError> {
        let txn = self.begin_read()?;
        let mut stats = StoreStats {
            record_bytes: self.record_bytes,
            ..StoreStats::default()
        };
        match txn.open_table(EVENTS) {
            Ok(table) => {
                let time =
                    |e: Option<(redb::AccessGuard<'_, (u64, u64)>, _)>| e.map(|(k, _)| k.value().0);
                stats.oldest_ms = time(table.first().map_err(self.redb("reading"))?);
                stats.newest_ms = time(table.last().map_err(self.redb("reading"))?);
                if count {
                    stats.events = table.len().map_err(self.redb("reading"))?;
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.redb("reading")(e)),
        }
        if count {
            stats.file_bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        }
        Ok(stats)
    }
}
