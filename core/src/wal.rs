//! The write-ahead log of a WAL-backed connector: record framing, replay, and the
//! bookkeeping that decides what to write, when to sync, what to publish and when to compact.
//!
//! On disk a record is a little-endian `u32` body length, a little-endian `u32` CRC32C of
//! the body, then the body: a protobuf [`WalRecord`]. An event counts as accepted once the
//! bytes holding it are synced, and it leaves the log only after the broker's PubAck for its
//! sequence. It is published once it is accepted or, when the source reserves sequences
//! ([`WalConfig::reserve_block`]), as soon as it is appended, so that subscribers do not wait
//! for the disk.
//!
//! Publishing before the sync must not let a restarted source give a published sequence to
//! another event (subscribers would drop the new one as a duplicate). A source that publishes
//! early writes a checkpoint reserving a block of sequences (`reserved_through`) and
//! publishes early only under a reservation that is synced; a restart resumes after the
//! highest reservation in the log, so a crash costs a gap in the sequences, never a reuse.
//! The next reservation is written when half the block is used: under a steady flow it is
//! synced by an earlier group commit and no event waits for it.
//!
//! Replay ([`WalReader`]) stops at the first record that is torn (the file ends inside it),
//! fails its checksum, does not decode, has a zero or oversized length, or does not carry a
//! higher sequence than the one before (a checkpoint that reserves sequences may repeat
//! it); the tail from there on is truncated. Everything
//! before it is re-sent under its original sequence, so a subscriber drops what it already
//! saw.
//!
//! Once everything in the log is acknowledged (after [`WalConfig::idle_compact_delay`] of
//! quiet, or at a graceful stop) the machine appends a *settled* checkpoint and syncs it: a
//! replay re-sends none of the events before it. That costs one append and one data sync,
//! where a rewrite costs a new file, its sync, a rename and a directory sync (journal
//! commits that can take hundreds of milliseconds on a busy disk).
//!
//! Compaction rewrites the log with only the records still waiting for a PubAck (the driver
//! makes the rewrite atomic: temporary file, sync, rename). It runs once enough of the log is
//! acknowledged ([`WalConfig::compact_after`]), never after a stop. So that a restarted
//! source never reuses a sequence, a rewrite ends with a checkpoint record (empty topic)
//! carrying the highest sequence ever assigned (and the reservation, if one reaches beyond
//! it), unless the last pending record already carries it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use daemoneye_proto::pb::wal::WalRecord;
use prost::Message;

/// Bytes of a record's header: length and checksum.
pub const HEADER_LEN: usize = 8;

/// Default upper bound of one record's body.
pub const DEFAULT_MAX_RECORD: u32 = 1024 * 1024;

/// Appends one framed record to `out`.
pub fn encode_record(record: &WalRecord, out: &mut BytesMut) {
    let len = record.encoded_len();
    out.reserve(HEADER_LEN + len);
    let at = out.len();
    out.put_u32_le(len as u32);
    out.put_u32_le(0);
    // Encoding into a BytesMut with room reserved cannot fail.
    let _ = record.encode(out);
    let crc = crc32c::crc32c(&out[at + HEADER_LEN..]);
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The framed size of a record.
pub fn framed_len(record: &WalRecord) -> u64 {
    (HEADER_LEN + record.encoded_len()) as u64
}

/// Whether a replayed record is a sequence checkpoint rather than an event.
pub fn is_checkpoint(record: &WalRecord) -> bool {
    record.topic.is_empty()
}

/// Gathers a replay's events, record by record in log order: an event is kept, a settled
/// checkpoint drops every event before it (all of them were acknowledged), any other
/// checkpoint only carries sequences.
pub fn gather_events(events: &mut Vec<WalRecord>, record: WalRecord) {
    if !is_checkpoint(&record) {
        events.push(record);
    } else if record.settled {
        events.clear();
    }
}

/// Why replay stopped before the end of the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// The log ends inside a record header.
    #[error("torn header ({have} of {HEADER_LEN} bytes)")]
    TornHeader {
        /// Header bytes present.
        have: usize,
    },
    /// The log ends inside a record body.
    #[error("torn record ({have} of {len} body bytes)")]
    TornBody {
        /// Body bytes present.
        have: usize,
        /// The length the header claims.
        len: u32,
    },
    /// A zero length (zero-filled blocks after a crash look like this).
    #[error("zero-length record")]
    Empty,
    /// A length beyond the configured maximum.
    #[error("record length {len} exceeds the maximum {max}")]
    TooLong {
        /// The length the header claims.
        len: u32,
        /// The maximum.
        max: u32,
    },
    /// The body does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// The body is not a WAL record.
    #[error("undecodable record: {0}")]
    Body(String),
    /// A sequence that is zero or does not increase.
    #[error("sequence {sequence} after {previous}")]
    Sequence {
        /// The previous record's sequence.
        previous: u64,
        /// This record's sequence.
        sequence: u64,
    },
}

/// The end of a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Bytes of valid records: the log is truncated to this length.
    pub valid_len: u64,
    /// Valid records (checkpoints included).
    pub records: u64,
    /// The highest sequence seen (checkpoints included).
    pub last_sequence: u64,
    /// The highest sequence a checkpoint reserved (0: none): the source may have published
    /// up to it.
    pub reserved_through: u64,
    /// Why replay stopped early, if it did.
    pub tail: Option<TailError>,
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} record(s), {} valid bytes, last sequence {}",
            self.records, self.valid_len, self.last_sequence
        )?;
        if self.reserved_through > self.last_sequence {
            write!(f, ", reserved through {}", self.reserved_through)?;
        }
        if let Some(t) = &self.tail {
            write!(f, ", tail dropped: {t}")?;
        }
        Ok(())
    }
}

/// Replays a log fed in chunks of any size.
#[derive(Debug)]
pub struct WalReader {
    max_record: u32,
    buf: BytesMut,
    valid_len: u64,
    records: u64,
    last_sequence: u64,
    reserved_through: u64,
    stopped: Option<TailError>,
}

impl WalReader {
    /// A reader that refuses bodies longer than `max_record`.
    pub fn new(max_record: u32) -> Self {
        Self {
            max_record,
            buf: BytesMut::new(),
            valid_len: 0,
            records: 0,
            last_sequence: 0,
            reserved_through: 0,
            stopped: None,
        }
    }

    /// The next chunk of the log.
    pub fn push(&mut self, data: &[u8]) {
        if self.stopped.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes held waiting for the rest of a record.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next valid record, or `None` when more bytes are needed or replay has stopped.
    pub fn next_record(&mut self) -> Option<WalRecord> {
        if self.stopped.is_some() || self.buf.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let crc = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if len == 0 {
            return self.stop(TailError::Empty);
        }
        if len > self.max_record {
            return self.stop(TailError::TooLong {
                len,
                max: self.max_record,
            });
        }
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return None;
        }
        let frame = self.buf.split_to(total).freeze();
        let body = frame.slice(HEADER_LEN..);
        if crc32c::crc32c(&body) != crc {
            return self.stop(TailError::Checksum);
        }
        let record = match WalRecord::decode(body) {
            Ok(r) => r,
            Err(e) => return self.stop(TailError::Body(e.to_string())),
        };
        // A checkpoint that reserves sequences or settles the log carries the last sequence
        // assigned, so it may repeat the one before it.
        let may_repeat = is_checkpoint(&record) && (record.reserved_through > 0 || record.settled);
        if record.sequence < self.last_sequence
            || (record.sequence == self.last_sequence && !may_repeat)
        {
            return self.stop(TailError::Sequence {
                previous: self.last_sequence,
                sequence: record.sequence,
            });
        }
        self.last_sequence = record.sequence;
        if is_checkpoint(&record) {
            self.reserved_through = self.reserved_through.max(record.reserved_through);
        }
        self.valid_len += total as u64;
        self.records += 1;
        Some(record)
    }

    fn stop(&mut self, why: TailError) -> Option<WalRecord> {
        self.stopped = Some(why);
        self.buf = BytesMut::new();
        None
    }

    /// The log has ended: what was valid, and why the rest (if any) is dropped.
    pub fn finish(mut self) -> Replayed {
        while self.next_record().is_some() {}
        let tail = match self.stopped.take() {
            Some(t) => Some(t),
            None if self.buf.len() >= HEADER_LEN => {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                Some(TailError::TornBody {
                    have: self.buf.len() - HEADER_LEN,
                    len,
                })
            }
            None if !self.buf.is_empty() => Some(TailError::TornHeader {
                have: self.buf.len(),
            }),
            None => None,
        };
        Replayed {
            valid_len: self.valid_len,
            records: self.records,
            last_sequence: self.last_sequence,
            reserved_through: self.reserved_through,
            tail,
        }
    }
}

/// Replays a whole log held in memory: the events to re-send ([`gather_events`]) and the
/// end.
pub fn replay(log: &[u8], max_record: u32) -> (Vec<WalRecord>, Replayed) {
    let mut reader = WalReader::new(max_record);
    reader.push(log);
    let mut records = Vec::new();
    while let Some(r) = reader.next_record() {
        gather_events(&mut records, r);
    }
    (records, reader.finish())
}

/// What the WAL machine asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalAction {
    /// Cut the log to this length (a torn tail found by replay).
    Truncate {
        /// The new length.
        len: u64,
    },
    /// Append these bytes to the log.
    Append(Bytes),
    /// Make the log durable up to `len`, then call [`Wal::handle_synced`] with it.
    Sync {
        /// The log length the sync covers.
        len: u64,
    },
    /// Replace the whole log with these bytes, atomically and durably.
    Rewrite(Bytes),
    /// Publish this accepted record (QoS1, under its sequence).
    Publish {
        /// The record.
        record: WalRecord,
        /// It came back from a replay, so it may have been delivered before: send it marked
        /// as a resend.
        replayed: bool,
    },
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    /// Too many records wait for a sync or a PubAck: back off.
    #[error("the WAL holds {pending} unacknowledged records (the maximum)")]
    Full {
        /// Records held.
        pending: usize,
    },
    /// The record would exceed the maximum record size.
    #[error("record of {len} bytes exceeds the maximum {max}")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The maximum.
        max: u32,
    },
    /// Events need a topic (an empty topic marks a checkpoint).
    #[error("an event needs a topic")]
    NoTopic,
}

/// Limits of the WAL machine.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The source name stored in each record.
    pub source: String,
    /// Largest record body.
    pub max_record: u32,
    /// Records held (unsynced plus unacknowledged) before appends are refused.
    pub max_pending: usize,
    /// Acknowledged bytes in the log before a compaction is considered; a compaction also
    /// needs at least half the log to be acknowledged.
    pub compact_after: u64,
    /// Once everything is acknowledged, a settled checkpoint is appended after it has stayed
    /// that way this long (see [`Wal::poll_timeout`]), so that a source that publishes now
    /// and then does not pay a sync for a checkpoint after every event.
    pub idle_compact_delay: Duration,
    /// Sequences reserved at a time so that events are published as soon as they are
    /// appended, before their sync (see the module docs); 0 publishes an event only once
    /// it is synced.
    pub reserve_block: u64,
}

/// The default [`WalConfig::idle_compact_delay`].
pub const DEFAULT_IDLE_COMPACT_DELAY: Duration = Duration::from_secs(1);

/// A [`WalConfig::reserve_block`] for sources that publish early: a crash skips at most
/// this many sequences, and a reservation is written once every half block of events.
pub const DEFAULT_RESERVE_BLOCK: u64 = 8192;

impl WalConfig {
    /// Defaults for `source`: 1 MiB records, 100,000 held, compaction past 4 MiB, events
    /// published once synced.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            max_record: DEFAULT_MAX_RECORD,
            max_pending: 100_000,
            compact_after: 4 * 1024 * 1024,
            idle_compact_delay: DEFAULT_IDLE_COMPACT_DELAY,
            reserve_block: 0,
        }
    }
}

/// An appended event waiting for its sync.
#[derive(Debug)]
struct Unsynced {
    /// Where its bytes end in the log.
    end: u64,
    record: WalRecord,
    /// It came back from a replay.
    replayed: bool,
    /// Published before its sync, and already acknowledged.
    acked: bool,
}

/// The WAL machine.
#[derive(Debug)]
pub struct Wal {
    config: WalConfig,
    last_sequence: u64,
    file_len: u64,
    /// Appended (or replayed) but not yet synced, in log order.
    unsynced: VecDeque<Unsynced>,
    /// How many of the first `unsynced` records are published already (under a
    /// reservation): always a prefix, since records are published in order.
    published_early: usize,
    /// Accepted and waiting for a PubAck, by sequence.
    pending: BTreeMap<u64, WalRecord>,
    /// Bytes of the log that hold unsynced or pending records.
    live_bytes: u64,
    /// The highest sequence reserved by a checkpoint appended in this run (0: none).
    reserved: u64,
    /// The highest sequence reserved by a checkpoint of this run that is synced: events up
    /// to it may be published before their own sync.
    reserved_durable: u64,
    /// Reservations appended and not yet synced: (end offset in the log, reserved through).
    reservations: VecDeque<(u64, u64)>,
    /// Syncs asked for and not yet reported: a rewrite waits for them, since their lengths
    /// refer to the log before it.
    syncs_in_flight: u32,
    actions: VecDeque<WalAction>,
    compactions: u64,
    /// Since when everything has been acknowledged (the idle settle's clock).
    idle_since: Option<Instant>,
    /// The log up to this length holds no event a replay would re-send (it ends with a
    /// settled checkpoint, or with no event at all).
    settled_len: u64,
    /// A graceful stop was asked for: no more rewrites.
    stopping: bool,
}

impl Wal {
    /// Starts from a replayed log: truncates a torn tail, syncs what is left (a record that
    /// survived a process crash may still sit only in the page cache), then re-publishes
    /// every record. `records` are the events replay returned ([`gather_events`]), in log
    /// order. New sequences start after the highest one the log assigned or reserved.
    pub fn recover(config: WalConfig, records: Vec<WalRecord>, replayed: &Replayed) -> Self {
        let mut wal = Self {
            config,
            last_sequence: replayed.last_sequence.max(replayed.reserved_through),
            file_len: replayed.valid_len,
            unsynced: VecDeque::new(),
            published_early: 0,
            pending: BTreeMap::new(),
            live_bytes: 0,
            reserved: 0,
            reserved_durable: 0,
            reservations: VecDeque::new(),
            syncs_in_flight: 0,
            actions: VecDeque::new(),
            compactions: 0,
            idle_since: None,
            settled_len: if records.is_empty() {
                replayed.valid_len
            } else {
                0
            },
            stopping: false,
        };
        if replayed.tail.is_some() {
            wal.actions.push_back(WalAction::Truncate {
                len: replayed.valid_len,
            });
        }
        for record in records {
            wal.live_bytes += framed_len(&record);
            wal.last_sequence = wal.last_sequence.max(record.sequence);
            wal.unsynced.push_back(Unsynced {
                end: replayed.valid_len,
                record,
                replayed: true,
                acked: false,
            });
        }
        if replayed.valid_len > 0 {
            wal.syncs_in_flight += 1;
            wal.actions.push_back(WalAction::Sync {
                len: replayed.valid_len,
            });
        }
        wal
    }

    /// An empty log.
    pub fn new(config: WalConfig) -> Self {
        Self::recover(
            config,
            Vec::new(),
            &Replayed {
                valid_len: 0,
                records: 0,
                last_sequence: 0,
                reserved_through: 0,
                tail: None,
            },
        )
    }

    /// Appends an event; returns its sequence. It is accepted once a
    /// [`commit`](Self::commit)'s sync covers it, and published then or, under a synced
    /// reservation, at once.
    pub fn append(
        &mut self,
        accepted_at_ms: u64,
        topic: &str,
        payload: Bytes,
    ) -> Result<u64, WalError> {
        if topic.is_empty() {
            return Err(WalError::NoTopic);
        }
        let held = self.pending.len() + self.unsynced.len();
        if held >= self.config.max_pending {
            return Err(WalError::Full { pending: held });
        }
        // Half the reserved block used: reserve the next one, just before the event.
        let block = self.config.reserve_block;
        let reserve = block > 0 && self.reserved < self.last_sequence + 1 + block / 2;
        let record = WalRecord {
            sequence: self.last_sequence + 1,
            topic: topic.to_string(),
            payload,
            accepted_at_ms,
            source: self.config.source.clone(),
            reserved_through: 0,
            settled: false,
        };
        let len = record.encoded_len();
        if len > self.config.max_record as usize {
            return Err(WalError::TooLarge {
                len,
                max: self.config.max_record,
            });
        }
        if reserve {
            self.reserve(self.last_sequence + block);
        }
        self.last_sequence = record.sequence;
        self.idle_since = None;
        let mut out = BytesMut::new();
        encode_record(&record, &mut out);
        self.file_len += out.len() as u64;
        self.live_bytes += out.len() as u64;
        self.actions.push_back(WalAction::Append(out.freeze()));
        self.unsynced.push_back(Unsynced {
            end: self.file_len,
            record,
            replayed: false,
            acked: false,
        });
        self.publish_reserved();
        Ok(self.last_sequence)
    }

    /// Appends a checkpoint that reserves the sequences up to `through` (it carries the last
    /// sequence assigned, so events keep consecutive sequences).
    fn reserve(&mut self, through: u64) {
        let mut out = BytesMut::new();
        encode_record(
            &WalRecord {
                reserved_through: through,
                ..self.checkpoint()
            },
            &mut out,
        );
        self.file_len += out.len() as u64;
        self.reserved = through;
        self.reservations.push_back((self.file_len, through));
        self.actions.push_back(WalAction::Append(out.freeze()));
    }

    /// Publishes, in order, the unsynced events a synced reservation covers.
    fn publish_reserved(&mut self) {
        while let Some(u) = self.unsynced.get(self.published_early) {
            if u.replayed || u.record.sequence > self.reserved_durable {
                break;
            }
            self.actions.push_back(WalAction::Publish {
                record: u.record.clone(),
                replayed: false,
            });
            self.published_early += 1;
        }
    }

    /// Group commit: one sync for everything appended so far.
    pub fn commit(&mut self) {
        if !self.unsynced.is_empty() {
            self.syncs_in_flight += 1;
            self.actions
                .push_back(WalAction::Sync { len: self.file_len });
        }
    }

    /// The log is durable up to `len`: the records inside are accepted and published (if
    /// they were not already). Syncs are reported in the order they were asked for.
    pub fn handle_synced(&mut self, now: Instant, len: u64) {
        self.syncs_in_flight = self.syncs_in_flight.saturating_sub(1);
        while let Some(&(end, through)) = self.reservations.front() {
            if end > len {
                break;
            }
            self.reservations.pop_front();
            self.reserved_durable = self.reserved_durable.max(through);
        }
        while self.unsynced.front().is_some_and(|u| u.end <= len) {
            let Some(u) = self.unsynced.pop_front() else {
                break;
            };
            if self.published_early > 0 {
                self.published_early -= 1;
            } else {
                self.actions.push_back(WalAction::Publish {
                    record: u.record.clone(),
                    replayed: u.replayed,
                });
            }
            if u.acked {
                self.live_bytes -= framed_len(&u.record);
            } else {
                self.pending.insert(u.record.sequence, u.record);
            }
        }
        self.publish_reserved();
        if self.is_idle() && self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        self.maybe_compact();
    }

    /// The broker acknowledged `sequence`: the record may go (once synced, if it was
    /// published before its sync). Returns whether it was held.
    pub fn handle_puback(&mut self, now: Instant, sequence: u64) -> bool {
        let Some(record) = self.pending.remove(&sequence) else {
            return self.ack_unsynced(sequence);
        };
        self.live_bytes -= framed_len(&record);
        if self.is_idle() && self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        self.maybe_compact();
        true
    }

    /// A PubAck for an event published before its sync: it is dropped once synced.
    fn ack_unsynced(&mut self, sequence: u64) -> bool {
        match self
            .unsynced
            .binary_search_by_key(&sequence, |u| u.record.sequence)
        {
            Ok(at) if at < self.published_early && !self.unsynced[at].acked => {
                self.unsynced[at].acked = true;
                true
            }
            _ => false,
        }
    }

    /// Nothing unsynced, unacknowledged or being synced.
    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.unsynced.is_empty() && self.syncs_in_flight == 0
    }

    /// When the idle settle is due: everything has been acknowledged for
    /// [`WalConfig::idle_compact_delay`] and the log holds events a replay would re-send.
    /// The driver calls [`handle_timeout`](Self::handle_timeout) then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let since = self.idle_since?;
        (self.is_idle() && self.file_len > self.settled_len)
            .then(|| since.saturating_add(self.config.idle_compact_delay))
    }

    /// Time passed: once the idle settle is due, a settled checkpoint is appended and
    /// synced, so that a restart re-sends nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|due| due <= now) {
            self.settle();
        }
    }

    /// A graceful stop: when everything is acknowledged, a settled checkpoint is appended
    /// and synced now, so that the next start re-sends nothing (acknowledged records
    /// replayed would go out again, as if new, to every subscriber that joined since). No
    /// rewrite follows a stop: a compaction waits for the next run.
    pub fn handle_stop(&mut self) {
        self.stopping = true;
        if self.is_idle() && self.file_len > self.settled_len {
            self.settle();
        }
    }

    /// Appends a settled checkpoint and syncs it (the log is idle).
    fn settle(&mut self) {
        let mut out = BytesMut::new();
        encode_record(
            &WalRecord {
                settled: true,
                ..self.checkpoint()
            },
            &mut out,
        );
        self.file_len += out.len() as u64;
        self.settled_len = self.file_len;
        self.idle_since = None;
        self.actions.push_back(WalAction::Append(out.freeze()));
        self.syncs_in_flight += 1;
        self.actions
            .push_back(WalAction::Sync { len: self.file_len });
    }

    /// A compaction under load: enough of the log is acknowledged to be worth a rewrite.
    fn maybe_compact(&mut self) {
        if !self.unsynced.is_empty()
            || self.syncs_in_flight > 0
            || self.file_len == 0
            || self.stopping
        {
            return;
        }
        let dead = self.file_len - self.live_bytes;
        if dead >= self.config.compact_after && dead * 2 >= self.file_len {
            self.rewrite();
        }
    }

    /// Rewrites the log as the pending records, plus a checkpoint of the last sequence
    /// (and of the reservation) when the newest record is gone or the reservation reaches
    /// beyond it.
    fn rewrite(&mut self) {
        let mut out = BytesMut::new();
        for r in self.pending.values() {
            encode_record(r, &mut out);
        }
        let top = self.pending.keys().next_back().copied().unwrap_or(0);
        if top < self.last_sequence || self.reserved > self.last_sequence {
            encode_record(&self.checkpoint(), &mut out);
        }
        // Only synced reservations are left (no rewrite while a sync is outstanding), and
        // the rewrite is durable.
        self.reservations.clear();
        self.reserved_durable = self.reserved;
        self.file_len = out.len() as u64;
        self.settled_len = if self.pending.is_empty() {
            self.file_len
        } else {
            0
        };
        self.live_bytes = self.file_len;
        self.compactions += 1;
        self.idle_since = None;
        self.actions.push_back(WalAction::Rewrite(out.freeze()));
    }

    /// A checkpoint of the last sequence, carrying the reservation if it reaches beyond.
    fn checkpoint(&self) -> WalRecord {
        WalRecord {
            sequence: self.last_sequence,
            topic: String::new(),
            payload: Bytes::new(),
            accepted_at_ms: 0,
            source: self.config.source.clone(),
            reserved_through: if self.reserved > self.last_sequence {
                self.reserved
            } else {
                0
            },
            settled: false,
        }
    }

    /// The next thing for the driver to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<WalAction> {
        self.actions.pop_front()
    }

    /// Changes how many records may be held (an operator's UpdateConfig); records already
    /// held stay, new appends are refused until fewer are held.
    pub fn set_max_pending(&mut self, max_pending: usize) {
        self.config.max_pending = max_pending.max(1);
    }

    /// The highest sequence assigned.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Records accepted and waiting for their PubAck.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records appended but not yet synced.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// Records that still need a sync or a PubAck before the log is idle: what a graceful
    /// stop waits for.
    pub fn unsettled(&self) -> usize {
        self.pending.len() + self.unsynced.len()
    }

    /// Whether `sequence` is accepted and not yet acknowledged.
    pub fn is_pending(&self, sequence: u64) -> bool {
        self.pending.contains_key(&sequence)
    }

    /// The log's length once every action so far is done.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Compactions so far.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }
}
