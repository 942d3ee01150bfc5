//! The writer's side: a batch in one transaction (dedup, compression, retention) and
//! retention alone when nothing arrives.

use daemoneye_proto::pb::store::StoredEvent;
use prost::Message;
use redb::{ReadableTable, Table};

use super::record::{self, Codec, Dictionaries};
use super::retention::{self, Evict};
use super::{
    Appended, DICTIONARIES, EVENTS, EventStore, Evicted, META, META_DICTIONARY,
    META_DICTIONARY_WRITTEN, META_NEXT_ID, META_RECORD_BYTES, NewEvent, SEQUENCES, StoreError,
};

/// Oldest events removed per commit at least (more when a batch is large), so that a
/// store over its bounds (limits lowered, clock jumped) shrinks over a few commits
/// instead of one long one.
const EVICT_PER_COMMIT: u64 = 10_000;

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

fn sequenced(publisher: &str, sequence: u64) -> bool {
    !publisher.is_empty() && sequence != 0
}

/// The tables one write transaction works on.
struct Tables<'t> {
    events: Table<'t, (u64, u64), &'static [u8]>,
    sequences: Table<'t, (u64, u64), (u64, u64)>,
    dictionaries: Table<'t, u64, &'static [u8]>,
}

impl Tables<'_> {
    /// Decodes a stored record, loading its dictionary from this transaction.
    fn decode(&self, dicts: &mut Dictionaries, value: &[u8]) -> Result<StoredEvent, String> {
        let table = &self.dictionaries;
        dicts.decode(value, |id| {
            table
                .get(id)
                .map(|d| d.map(|d| d.value().to_vec()))
                .map_err(|e| e.to_string())
        })
    }
}

impl EventStore {
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
        let txn = db.begin_write().map_err(self.redb("writing"))?;
        let mut appended = Appended::default();
        let mut next_id = self.counters.next_id;
        let mut bytes = self.counters.record_bytes;
        let mut dictionary = self.counters.dictionary.clone();
        let mut written = self.counters.dictionary_written;
        {
            let mut t = Tables {
                events: txn.open_table(EVENTS).map_err(self.redb("writing"))?,
                sequences: txn.open_table(SEQUENCES).map_err(self.redb("writing"))?,
                dictionaries: txn.open_table(DICTIONARIES).map_err(self.redb("writing"))?,
            };
            let mut dicts = Dictionaries::default();
            // A dictionary of the latest records when there is none yet, or the current
            // one has served long enough (the first batch of a store is kept raw).
            let stale = written >= record::DICTIONARY_EVERY;
            if (dictionary.is_none() || stale) && self.samples.len() >= record::DICTIONARY_MIN {
                let id = dictionary.as_ref().map_or(1, |(id, _)| id + 1);
                let made = self.samples.dictionary();
                t.dictionaries
                    .insert(id, made.as_slice())
                    .map_err(self.redb("writing"))?;
                bytes += made.len() as u64;
                dictionary = Some((id, made));
                written = 0;
            }
            let mut in_batch = std::collections::BTreeSet::new();
            for e in events {
                if e.is_sequenced()
                    && (!in_batch.insert((e.publisher.as_str(), e.sequence))
                        || self.is_kept(&t, &mut dicts, e)?)
                {
                    appended.duplicates += 1;
                    continue;
                }
                let plain = StoredEvent {
                    id: 0,
                    time_ms: 0,
                    topic: e.topic.clone(),
                    publisher: e.publisher.clone(),
                    sequence: e.sequence,
                    payload: e.payload.clone(),
                }
                .encode_to_vec();
                let value = record::encode(
                    &plain,
                    dictionary.as_ref().map(|(id, d)| (*id, d.as_slice())),
                );
                let key = (now_ms, next_id);
                t.events
                    .insert(key, value.as_slice())
                    .map_err(self.redb("writing"))?;
                if e.is_sequenced() {
                    t.sequences
                        .insert((publisher_hash(&e.publisher), e.sequence), key)
                        .map_err(self.redb("writing"))?;
                }
                bytes += record_cost(value.len(), e.is_sequenced());
                written += plain.len() as u64;
                self.samples.push(plain);
                next_id += 1;
                appended.stored += 1;
            }
            let cap = EVICT_PER_COMMIT.max(4 * events.len() as u64);
            appended.evicted = self.evict(&mut t, &mut dicts, &mut bytes, now_ms, cap)?;
            let current = dictionary.as_ref().map_or(0, |(id, _)| *id);
            let mut meta = txn.open_table(META).map_err(self.redb("writing"))?;
            for (key, value) in [
                (META_NEXT_ID, next_id),
                (META_RECORD_BYTES, bytes),
                (META_DICTIONARY, current),
                (META_DICTIONARY_WRITTEN, written),
            ] {
                meta.insert(key, value).map_err(self.redb("writing"))?;
            }
        }
        txn.commit().map_err(self.redb("committing"))?;
        self.counters.next_id = next_id;
        self.counters.record_bytes = bytes;
        self.counters.dictionary = dictionary;
        self.counters.dictionary_written = written;
        Ok(appended)
    }

    /// Whether `e`'s (publisher, sequence) is already kept: its dedup entry points at an
    /// event of the same publisher (a hash collision is not a duplicate).
    fn is_kept(
        &self,
        t: &Tables<'_>,
        dicts: &mut Dictionaries,
        e: &NewEvent,
    ) -> Result<bool, StoreError> {
        let entry = t
            .sequences
            .get((publisher_hash(&e.publisher), e.sequence))
            .map_err(self.redb("reading"))?
            .map(|k| k.value());
        let Some(key) = entry else {
            return Ok(false);
        };
        let Some(value) = t.events.get(key).map_err(self.redb("reading"))? else {
            return Ok(false);
        };
        Ok(t.decode(dicts, value.value())
            .is_ok_and(|kept| kept.publisher == e.publisher && kept.sequence == e.sequence))
    }

    /// Removes, in one commit, the oldest events the retention rule no longer keeps at
    /// `now_ms` (up to a bounded number: call again while it removes some). For a store
    /// that receives nothing for a while.
    pub fn enforce_retention(&mut self, now_ms: u64) -> Result<Evicted, StoreError> {
        let oldest = self.stats_inner(false)?.oldest_ms;
        if retention::evict_oldest(&self.limits, self.counters.record_bytes, oldest, now_ms)
            .is_none()
        {
            return Ok(Evicted::default());
        }
        let db = self.writer()?;
        let txn = db.begin_write().map_err(self.redb("writing"))?;
        let mut bytes = self.counters.record_bytes;
        let evicted = {
            let mut t = Tables {
                events: txn.open_table(EVENTS).map_err(self.redb("writing"))?,
                sequences: txn.open_table(SEQUENCES).map_err(self.redb("writing"))?,
                dictionaries: txn.open_table(DICTIONARIES).map_err(self.redb("writing"))?,
            };
            let mut dicts = Dictionaries::default();
            let evicted = self.evict(&mut t, &mut dicts, &mut bytes, now_ms, EVICT_PER_COMMIT)?;
            let mut meta = txn.open_table(META).map_err(self.redb("writing"))?;
            meta.insert(META_RECORD_BYTES, bytes)
                .map_err(self.redb("writing"))?;
            evicted
        };
        txn.commit().map_err(self.redb("committing"))?;
        self.counters.record_bytes = bytes;
        Ok(evicted)
    }

    /// Pops the oldest events while the retention rule says so, at most `cap`, with their
    /// dedup entries; then deletes the dictionaries older than the oldest kept record's.
    fn evict(
        &self,
        t: &mut Tables<'_>,
        dicts: &mut Dictionaries,
        bytes: &mut u64,
        now_ms: u64,
        cap: u64,
    ) -> Result<Evicted, StoreError> {
        let mut evicted = Evicted::default();
        while evicted.total() < cap {
            let oldest = t
                .events
                .first()
                .map_err(self.redb("reading"))?
                .map(|(k, v)| (k.value(), v.value().to_vec()));
            let Some((key, value)) = oldest else { break };
            let Some(why) = retention::evict_oldest(&self.limits, *bytes, Some(key.0), now_ms)
            else {
                break;
            };
            t.events.remove(key).map_err(self.redb("writing"))?;
            // A record that no longer decodes still goes; it has no dedup entry to remove.
            let record = t.decode(dicts, &value).unwrap_or_default();
            let sequenced = sequenced(&record.publisher, record.sequence);
            if sequenced {
                let dedup_key = (publisher_hash(&record.publisher), record.sequence);
                let points_here = t
                    .sequences
                    .get(dedup_key)
                    .map_err(self.redb("reading"))?
                    .is_some_and(|k| k.value() == key);
                if points_here {
                    t.sequences
                        .remove(dedup_key)
                        .map_err(self.redb("writing"))?;
                }
            }
            *bytes = bytes.saturating_sub(record_cost(value.len(), sequenced));
            match why {
                Evict::Age => evicted.by_age += 1,
                Evict::Size => evicted.by_size += 1,
            }
        }
        if evicted.total() > 0 {
            self.forget_unused_dictionaries(t, bytes)?;
        }
        Ok(evicted)
    }

    /// Dictionaries are made in id order and records use the one current when written, so
    /// those older than the oldest record's are used by no record.
    fn forget_unused_dictionaries(
        &self,
        t: &mut Tables<'_>,
        bytes: &mut u64,
    ) -> Result<(), StoreError> {
        let first = t.events.first().map_err(self.redb("reading"))?;
        let in_use = match first.as_ref().map(|(_, v)| record::codec(v.value())) {
            Some(Ok(Codec::Dictionary { id })) => id,
            // A raw record: what it was written beside is unknown; wait for it to go. An
            // empty store keeps its current dictionary.
            _ => return Ok(()),
        };
        drop(first);
        let unused: Vec<(u64, usize)> = t
            .dictionaries
            .range(..in_use)
            .map_err(self.redb("reading"))?
            .filter_map(Result::ok)
            .map(|(k, v)| (k.value(), v.value().len()))
            .collect();
        for (id, len) in unused {
            t.dictionaries.remove(id).map_err(self.redb("writing"))?;
            *bytes = bytes.saturating_sub(len as u64);
        }
        Ok(())
    }
}
