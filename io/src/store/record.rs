//! How one kept message is laid out in the events table, and the dictionaries that
//! compress it.
//!
//! A record is a `StoredEvent` protobuf (topic, publisher, sequence, payload; the id and
//! time are the key), behind one codec byte:
//! - `0`: the protobuf as it is;
//! - `1`: an LZ4 block (`lz4_flex`, pure Rust) compressed against a dictionary of the
//!   store's own recent records: varint dictionary id, varint length of the protobuf, then
//!   the block.
//!
//! Process events are small (about 300 bytes) and alike (paths, users, cgroups, topic,
//! publisher), so one alone barely compresses while against a dictionary of its
//! predecessors it shrinks several times; that is what keeps a million events well under
//! 500 MB. The writer makes a new dictionary from its latest records every
//! [`DICTIONARY_EVERY`] bytes, so it follows what the host runs; a dictionary is deleted
//! once the oldest kept record no longer uses it.

use std::collections::BTreeMap;

use daemoneye_proto::pb::store::StoredEvent;
use prost::Message;

/// The bytes of recent records a dictionary is made of. LZ4 hashes the whole dictionary
/// for each record it compresses: 8 KiB compresses process events about as well as 32 KiB
/// (measured) at a third of the cost.
pub(super) const DICTIONARY_BYTES: usize = 8 * 1024;
/// A new dictionary after this many bytes of records written with the current one.
pub(super) const DICTIONARY_EVERY: u64 = 32 * 1024 * 1024;
/// No dictionary is made from less than this.
pub(super) const DICTIONARY_MIN: usize = 2 * 1024;

/// The largest record decoded: above any frame the broker accepts (64 MiB at most), so a
/// damaged length cannot make a reader allocate without bound.
const MAX_RECORD_BYTES: u64 = 128 * 1024 * 1024;

const RAW: u8 = 0;
const LZ4_DICTIONARY: u8 = 1;

/// A record's body, before its payload is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    /// Stored as it is.
    Raw,
    /// Compressed against dictionary `id`.
    Dictionary {
        /// The dictionary.
        id: u64,
    },
}

/// Encodes `plain` (a `StoredEvent` protobuf without id and time: the key holds them)
/// against `dictionary` (id, bytes) when one is given and it makes the record smaller,
/// else as it is.
pub(super) fn encode(plain: &[u8], dictionary: Option<(u64, &[u8])>) -> Vec<u8> {
    if let Some((id, dict)) = dictionary {
        let mut out = Vec::with_capacity(plain.len() + 24);
        out.push(LZ4_DICTIONARY);
        prost::encoding::encode_varint(id, &mut out);
        prost::encoding::encode_varint(plain.len() as u64, &mut out);
        let header = out.len();
        out.resize(
            header + lz4_flex::block::get_maximum_output_size(plain.len()),
            0,
        );
        if let Ok(n) = lz4_flex::block::compress_into_with_dict(plain, &mut out[header..], dict)
            && header + n < plain.len() + 1
        {
            out.truncate(header + n);
            return out;
        }
    }
    let mut out = Vec::with_capacity(plain.len() + 1);
    out.push(RAW);
    out.extend_from_slice(plain);
    out
}

/// The codec of a stored record.
pub(super) fn codec(value: &[u8]) -> Result<Codec, String> {
    match value.split_first() {
        Some((&RAW, _)) => Ok(Codec::Raw),
        Some((&LZ4_DICTIONARY, mut rest)) => {
            let id = prost::encoding::decode_varint(&mut rest)
                .map_err(|e| format!("dictionary id: {e}"))?;
            Ok(Codec::Dictionary { id })
        }
        Some((other, _)) => Err(format!("unknown record codec {other}")),
        None => Err("empty record".into()),
    }
}

/// Dictionaries by id, loaded once each for a query or a commit.
#[derive(Debug, Default)]
pub(super) struct Dictionaries {
    loaded: BTreeMap<u64, Vec<u8>>,
}

impl Dictionaries {
    /// Decodes a stored record; `load` reads a dictionary this cache does not hold yet.
    pub(super) fn decode(
        &mut self,
        value: &[u8],
        load: impl FnOnce(u64) -> Result<Option<Vec<u8>>, String>,
    ) -> Result<StoredEvent, String> {
        let Some((&codec, mut rest)) = value.split_first() else {
            return Err("empty record".into());
        };
        let plain;
        let body = match codec {
            RAW => rest,
            LZ4_DICTIONARY => {
                let id = prost::encoding::decode_varint(&mut rest)
                    .map_err(|e| format!("dictionary id: {e}"))?;
                let len = prost::encoding::decode_varint(&mut rest)
                    .map_err(|e| format!("length: {e}"))?;
                if len > MAX_RECORD_BYTES {
                    return Err(format!("length {len} is beyond any record"));
                }
                let dict = match self.loaded.entry(id) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(load(id)?.ok_or_else(|| format!("dictionary {id} is missing"))?)
                    }
                };
                let len = usize::try_from(len).map_err(|_| "length overflows".to_string())?;
                plain = lz4_flex::block::decompress_with_dict(rest, len, dict)
                    .map_err(|e| format!("decompressing: {e}"))?;
                &plain[..]
            }
            other => return Err(format!("unknown record codec {other}")),
        };
        StoredEvent::decode(body).map_err(|e| format!("protobuf: {e}"))
    }
}

/// The latest records the writer has encoded, the material of its next dictionary.
#[derive(Debug, Default)]
pub(super) struct Samples {
    recent: std::collections::VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Samples {
    /// Keeps `record`, forgetting the oldest beyond [`DICTIONARY_BYTES`].
    pub(super) fn push(&mut self, record: Vec<u8>) {
        self.bytes += record.len();
        self.recent.push_back(record);
        while self.bytes > DICTIONARY_BYTES
            && let Some(front) = self.recent.front()
            && self.bytes - front.len() >= DICTIONARY_BYTES / 2
        {
            self.bytes -= front.len();
            self.recent.pop_front();
        }
    }

    /// Bytes held.
    pub(super) fn len(&self) -> usize {
        self.bytes
    }

    /// A dictionary: the latest [`DICTIONARY_BYTES`] of records, newest last (LZ4 finds the
    /// nearest match in its window first).
    pub(super) fn dictionary(&self) -> Vec<u8> {
        let all: Vec<u8> = self.recent.iter().flatten().copied().collect();
        all[all.len().saturating_sub(DICTIONARY_BYTES)..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(i: u64) -> StoredEvent {
        StoredEvent {
            id: 0,
            time_ms: 0,
            topic: "events.process.new".into(),
            publisher: "procmond.77.abc".into(),
            sequence: i,
            payload: Bytes::from(format!(
                "exe=/usr/bin/python3 cwd=/home/alice/project cgroup=/user.slice/user-1000.slice \
                 argv=python3 -m pip install build-{i}"
            )),
        }
    }

    #[test]
    fn a_record_round_trips_raw_and_against_a_dictionary() {
        let mut samples = Samples::default();
        for i in 0..50 {
            samples.push(event(i).encode_to_vec());
        }
        let dict = samples.dictionary();
        let bytes = event(1_000).encode_to_vec();
        let raw = encode(&bytes, None);
        let small = encode(&bytes, Some((7, &dict)));
        assert_eq!(codec(&raw), Ok(Codec::Raw));
        assert_eq!(codec(&small), Ok(Codec::Dictionary { id: 7 }));
        assert!(
            small.len() * 3 < bytes.len(),
            "{} of {}",
            small.len(),
            bytes.len()
        );
        let mut dicts = Dictionaries::default();
        assert_eq!(dicts.decode(&raw, |_| unreachable!()), Ok(event(1_000)));
        let load = |id| Ok((id == 7).then(|| dict.clone()));
        assert_eq!(dicts.decode(&small, load), Ok(event(1_000)));
        // Loaded once: a second record needs no load.
        assert_eq!(
            dicts.decode(&small, |_| Err("loaded again".into())),
            Ok(event(1_000))
        );
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let mut samples = Samples::default();
        samples.push(event(1).encode_to_vec());
        let dict = samples.dictionary();
        let good = encode(&event(2).encode_to_vec(), Some((1, &dict)));
        let load = |_| Ok(Some(dict.clone()));
        for cut in 0..good.len() {
            let _ = Dictionaries::default().decode(&good[..cut], load);
        }
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x55;
            let _ = Dictionaries::default().decode(&flipped, load);
            flipped[i] ^= 0x55;
        }
        assert!(Dictionaries::default().decode(&[9, 1, 2], load).is_err());
        assert!(
            Dictionaries::default()
                .decode(&good, |_| Ok(None))
                .expect_err("missing dictionary")
                .contains("dictionary 1 is missing")
        );
    }

    #[test]
    fn samples_keep_about_a_dictionarys_worth_of_the_latest_records() {
        let mut samples = Samples::default();
        for i in 0..10_000u64 {
            samples.push(event(i).encode_to_vec());
        }
        assert!(samples.len() <= DICTIONARY_BYTES + 200);
        assert!(samples.len() >= DICTIONARY_BYTES / 2);
        let dict = samples.dictionary();
        assert!(dict.len() <= DICTIONARY_BYTES);
        let newest = event(9_999).encode_to_vec();
        assert!(dict.ends_with(&newest));
    }
}
