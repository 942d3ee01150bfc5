//! The reader's side: queries (one range scan of the time-keyed events table, filters
//! applied to each record) and the store's statistics.

use std::ops::Bound;

use daemoneye_proto::pb::store::{EventQuery, EventQueryResponse};
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableError};

use super::filter::EventFilter;
use super::record::Dictionaries;
use super::{DICTIONARIES, EVENTS, EventStore, StoreError, StoreStats, guarded};

/// Bytes a reply adds to each event beyond its own encoding (tag and length).
const PER_EVENT_OVERHEAD: usize = 8;

impl EventStore {
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
        let mut filter = EventFilter::compile(query)?;
        guarded(&self.path, || {
            let mut out = EventQueryResponse::default();
            let txn = self.begin_read()?;
            let table = match txn.open_table(EVENTS) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(out),
                Err(e) => return Err(self.redb("reading")(e)),
            };
            let dictionaries = txn
                .open_table(DICTIONARIES)
                .map_err(self.redb("reading its dictionaries"))?;
            let mut dicts = Dictionaries::default();
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
                let mut event = dicts
                    .decode(v.value(), |id| {
                        dictionaries
                            .get(id)
                            .map(|d| d.map(|d| d.value().to_vec()))
                            .map_err(|e| e.to_string())
                    })
                    .map_err(|why| StoreError::Corrupt {
                        path: self.path.clone(),
                        why: format!("event {id} does not decode: {why}"),
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
                let size = event.encoded_len() + PER_EVENT_OVERHEAD;
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

    /// The oldest and newest times; with `count`, the number of events and the file size.
    pub(super) fn stats_inner(&self, count: bool) -> Result<StoreStats, StoreError> {
        let txn = self.begin_read()?;
        let mut stats = StoreStats {
            record_bytes: self.counters.record_bytes,
            ..StoreStats::default()
        };
        match txn.open_table(EVENTS) {
            Ok(table) => {
                let first = table.first().map_err(self.redb("reading"))?;
                stats.oldest_ms = first.map(|(k, _)| k.value().0);
                let last = table.last().map_err(self.redb("reading"))?;
                stats.newest_ms = last.map(|(k, _)| k.value().0);
                if count {
                    stats.events = table.len().map_err(self.redb("reading"))?;
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.redb("reading")(e)),
        }
        if count {
            stats.file_bytes = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        }
        Ok(stats)
    }
}
