//! The WAL: framing, replay of damaged logs, and the connector's bookkeeping against a model
//! disk that crashes with torn tails.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use daemoneye_core::Instant;
use daemoneye_core::wal::{
    self, DEFAULT_MAX_RECORD, HEADER_LEN, TailError, Wal, WalAction, WalConfig, WalError, WalReader,
};
use daemoneye_proto::pb::wal::WalRecord;
use proptest::prelude::*;

const T0: Instant = Instant::ZERO;

fn record(sequence: u64, topic: &str, payload: &[u8]) -> WalRecord {
    WalRecord {
        sequence,
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
        accepted_at_ms: 1_700_000_000_000 + sequence,
        source: "procmond".into(),
        reserved_through: 0,
        settled: false,
    }
}

fn log_of(records: &[WalRecord]) -> (Vec<u8>, Vec<u64>) {
    let mut out = BytesMut::new();
    let mut ends = Vec::new();
    for r in records {
        wal::encode_record(r, &mut out);
        ends.push(out.len() as u64);
    }
    (out.to_vec(), ends)
}

fn three() -> Vec<WalRecord> {
    vec![
        record(1, "events.process.new", b"one"),
        record(2, "events.process.exit", b""),
        record(3, "events.process.new", &[7u8; 300]),
    ]
}

#[test]
fn records_round_trip_in_chunks_of_any_size() {
    let records = three();
    let (log, ends) = log_of(&records);
    for chunk in [1, 2, 7, 64, log.len()] {
        let mut reader = WalReader::new(DEFAULT_MAX_RECORD);
        let mut got = Vec::new();
        for piece in log.chunks(chunk) {
            reader.push(piece);
            while let Some(r) = reader.next_record() {
                got.push(r);
            }
        }
        assert_eq!(got, records, "chunk size {chunk}");
        let end = reader.finish();
        assert_eq!(end.tail, None);
        assert_eq!(end.valid_len, ends[2]);
        assert_eq!(end.last_sequence, 3);
        assert_eq!(end.records, 3);
    }
}

#[test]
fn a_log_cut_anywhere_keeps_exactly_the_whole_records() {
    let records = three();
    let (log, ends) = log_of(&records);
    for cut in 0..=log.len() {
        let (got, end) = wal::replay(&log[..cut], DEFAULT_MAX_RECORD);
        let whole = ends.iter().filter(|&&e| e <= cut as u64).count();
        assert_eq!(got, records[..whole], "cut at {cut}");
        let valid = if whole == 0 { 0 } else { ends[whole - 1] };
        assert_eq!(end.valid_len, valid, "cut at {cut}");
        let rest = cut as u64 - valid;
        match end.tail {
            None => assert_eq!(rest, 0, "cut at {cut}"),
            Some(TailError::TornHeader { have }) => {
                assert_eq!(have as u64, rest);
                assert!(have < HEADER_LEN);
            }
            Some(TailError::TornBody { have, .. }) => {
                assert_eq!((have + HEADER_LEN) as u64, rest)
            }
            Some(other) => panic!("cut at {cut}: unexpected {other}"),
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_stops_replay_at_that_record() {
    let records = three();
    let (log, ends) = log_of(&records);
    for at in 0..log.len() {
        for bit in [0, 3, 7] {
            let mut bad = log.clone();
            bad[at] ^= 1 << bit;
            let (got, end) = wal::replay(&bad, DEFAULT_MAX_RECORD);
            // The damaged record and everything after it are gone; nothing altered survives.
            let damaged = ends.iter().position(|&e| (at as u64) < e).unwrap_or(0);
            assert_eq!(got, records[..damaged], "bit {bit} of byte {at}");
            assert!(end.tail.is_some(), "bit {bit} of byte {at}");
        }
    }
}

#[test]
fn zero_filled_blocks_are_a_torn_tail_not_empty_records() {
    let records = three();
    let (mut log, ends) = log_of(&records[..1]);
    log.extend_from_slice(&[0u8; 4096]);
    let (got, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    assert_eq!(got, records[..1]);
    assert_eq!(end.valid_len, ends[0]);
    assert_eq!(end.tail, Some(TailError::Empty));
}

#[test]
fn oversized_lengths_and_repeated_sequences_stop_replay() {
    let (mut log, _) = log_of(&three()[..1]);
    log.extend_from_slice(&u32::MAX.to_le_bytes());
    log.extend_from_slice(&[0u8; 12]);
    let (got, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    assert_eq!(got.len(), 1);
    assert!(matches!(end.tail, Some(TailError::TooLong { .. })));

    let (log, ends) = log_of(&[
        record(5, "a", b"x"),
        record(5, "a", b"y"),
        record(6, "a", b"z"),
    ]);
    let (got, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    assert_eq!(got.len(), 1);
    assert_eq!(end.valid_len, ends[0]);
    assert_eq!(
        end.tail,
        Some(TailError::Sequence {
            previous: 5,
            sequence: 5
        })
    );
}

#[test]
fn only_a_reserving_or_settled_checkpoint_may_repeat_the_last_sequence() {
    let reservation = WalRecord {
        reserved_through: 40,
        ..record(2, "", b"")
    };
    let (log, _) = log_of(&[
        record(1, "events.t", b"a"),
        record(2, "events.t", b"b"),
        reservation.clone(),
        record(3, "events.t", b"c"),
    ]);
    let (records, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    assert_eq!(end.tail, None);
    assert_eq!(records.len(), 3, "the reservation is not an event");
    assert_eq!((end.last_sequence, end.reserved_through), (3, 40));
    // A plain checkpoint, or one going backwards, ends the log there.
    for bad in [
        record(2, "", b""),
        WalRecord {
            sequence: 1,
            ..reservation
        },
    ] {
        let (log, ends) = log_of(&[
            record(1, "events.t", b"a"),
            record(2, "events.t", b"b"),
            bad,
        ]);
        let (_, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
        assert!(
            matches!(end.tail, Some(TailError::Sequence { .. })),
            "{end}"
        );
        assert_eq!((end.valid_len, end.reserved_through), (ends[1], 0));
    }
}

#[test]
fn garbage_with_a_valid_checksum_is_still_refused() {
    let body = b"\xff\xff\xff";
    let mut log = Vec::new();
    log.extend_from_slice(&(body.len() as u32).to_le_bytes());
    log.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    log.extend_from_slice(body);
    let (got, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    assert!(got.is_empty());
    assert!(matches!(end.tail, Some(TailError::Body(_))));
}

/// Runs the machine's actions against a byte vector; returns the published records, each
/// with whether it was a replayed one.
fn drive_flagged(wal: &mut Wal, disk: &mut Vec<u8>) -> Vec<(WalRecord, bool)> {
    let mut published = Vec::new();
    while let Some(a) = wal.poll_output() {
        match a {
            WalAction::Truncate { len } => disk.truncate(len as usize),
            WalAction::Append(b) => disk.extend_from_slice(&b),
            WalAction::Sync { len } => wal.handle_synced(T0, len),
            WalAction::Rewrite(b) => *disk = b.to_vec(),
            WalAction::Publish { record, replayed } => published.push((record, replayed)),
        }
    }
    published
}

/// [`drive_flagged`], as (sequence, replayed) pairs.
fn drive_sequences(wal: &mut Wal, disk: &mut Vec<u8>) -> Vec<(u64, bool)> {
    drive_flagged(wal, disk)
        .into_iter()
        .map(|(r, replayed)| (r.sequence, replayed))
        .collect()
}

/// Runs the machine's actions against a byte vector; returns the published records.
fn drive(wal: &mut Wal, disk: &mut Vec<u8>) -> Vec<WalRecord> {
    drive_flagged(wal, disk)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

#[test]
fn records_are_published_only_once_synced_and_leave_after_their_puback() {
    let mut wal = Wal::new(WalConfig::new("procmond"));
    let mut disk = Vec::new();
    let a = wal.append(1, "events.process.new", Bytes::from_static(b"a"));
    let b = wal.append(2, "events.process.new", Bytes::from_static(b"b"));
    assert_eq!((a, b), (Ok(1), Ok(2)));
    // Appended, not synced: nothing is published yet.
    assert!(drive(&mut wal, &mut disk).is_empty());
    assert_eq!(wal.unsynced(), 2);
    wal.commit();
    let published = drive(&mut wal, &mut disk);
    assert_eq!(
        published.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!((wal.unsynced(), wal.pending()), (0, 2));
    assert!(wal.handle_puback(T0, 1));
    assert!(
        !wal.handle_puback(T0, 1),
        "a second PubAck is not a second removal"
    );
    assert!(!wal.is_pending(1) && wal.is_pending(2));
    assert_eq!(wal.file_len(), disk.len() as u64);
    let (replayed, _) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert_eq!(replayed.len(), 2, "compaction waits for enough dead bytes");
}

#[test]
fn an_idle_log_settles_only_after_its_delay_and_an_append_defers_it() {
    let ms = |n: u64| Instant::from_nanos(n * 1_000_000);
    let mut wal = Wal::new(WalConfig::new("procmond"));
    let delay = WalConfig::new("procmond").idle_compact_delay;
    let mut disk = Vec::new();
    let append_acked = |wal: &mut Wal, disk: &mut Vec<u8>, at: Instant| {
        let s = wal
            .append(0, "events.process.new", Bytes::from_static(b"x"))
            .expect("room");
        wal.commit();
        drive(wal, disk);
        assert!(wal.handle_puback(at, s));
        drive(wal, disk);
        s
    };
    // Everything acknowledged: nothing is written yet, the settle waits its delay.
    append_acked(&mut wal, &mut disk, ms(10));
    let before = disk.len();
    assert_eq!(wal.poll_timeout(), Some(ms(10) + delay));
    wal.handle_timeout(ms(9) + delay);
    drive(&mut wal, &mut disk);
    assert_eq!(disk.len(), before);
    assert_eq!(wal::replay(&disk, DEFAULT_MAX_RECORD).0.len(), 1);
    // An event in the meantime: the clock starts again from its acknowledgement.
    let last = append_acked(&mut wal, &mut disk, ms(500));
    let before = disk.len();
    assert_eq!(wal.poll_timeout(), Some(ms(500) + delay));
    wal.handle_timeout(ms(10) + delay);
    drive(&mut wal, &mut disk);
    assert_eq!(disk.len(), before);
    // Due: a settled checkpoint is appended (no rewrite), it keeps the sequence, and a
    // replay re-sends nothing.
    wal.handle_timeout(ms(500) + delay);
    drive(&mut wal, &mut disk);
    assert_eq!(wal.compactions(), 0);
    assert!(disk.len() > before && disk.starts_with(&disk[..before]));
    assert_eq!(wal.poll_timeout(), None, "settled once");
    let (records, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert!(records.is_empty(), "{records:?}");
    assert_eq!((end.last_sequence, &end.tail), (last, &None));
    // While a record waits for its PubAck there is no idle compaction.
    wal.append(0, "events.process.new", Bytes::from_static(b"y"))
        .expect("room");
    wal.commit();
    drive(&mut wal, &mut disk);
    assert_eq!(wal.poll_timeout(), None);
}

#[test]
fn a_stop_with_everything_acknowledged_settles_the_log_and_one_pending_keeps_it() {
    let mut wal = Wal::new(WalConfig::new("procmond"));
    let mut disk = Vec::new();
    let append = |wal: &mut Wal, disk: &mut Vec<u8>| {
        let s = wal
            .append(0, "events.process.new", Bytes::from_static(b"x"))
            .expect("room");
        wal.commit();
        drive(wal, disk);
        s
    };
    let first = append(&mut wal, &mut disk);
    let second = append(&mut wal, &mut disk);
    assert!(wal.handle_puback(T0, first));
    // One still waits for its PubAck: a stop keeps both records as they are.
    let before = disk.len();
    wal.handle_stop();
    drive(&mut wal, &mut disk);
    assert_eq!(disk.len(), before);
    assert_eq!(wal::replay(&disk, DEFAULT_MAX_RECORD).0.len(), 2);
    // Acknowledged: the stop settles the log at once (no idle delay), keeping the sequence.
    assert!(wal.handle_puback(T0, second));
    wal.handle_stop();
    drive(&mut wal, &mut disk);
    let (records, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(end.last_sequence, second);
    // A second stop has nothing left to do.
    let settled = disk.len();
    wal.handle_stop();
    drive(&mut wal, &mut disk);
    assert_eq!(disk.len(), settled);
    assert_eq!(wal.compactions(), 0);
}

#[test]
fn after_a_stop_nothing_is_rewritten_even_when_a_compaction_is_due() {
    let mut cfg = WalConfig::new("procmond");
    cfg.compact_after = 1;
    let mut wal = Wal::new(cfg.clone());
    let mut disk = Vec::new();
    let first = wal.append(0, "t", Bytes::from_static(b"a")).expect("room");
    wal.commit();
    drive(&mut wal, &mut disk);
    // Running: the PubAck makes the whole log dead, and it is rewritten.
    assert!(wal.handle_puback(T0, first));
    drive(&mut wal, &mut disk);
    assert_eq!(wal.compactions(), 1);
    let second = wal.append(0, "t", Bytes::from_static(b"b")).expect("room");
    wal.commit();
    drive(&mut wal, &mut disk);
    // Stopping: the same PubAck leaves the log as it is (the next run compacts it).
    wal.handle_stop();
    assert!(wal.handle_puback(T0, second));
    drive(&mut wal, &mut disk);
    assert_eq!(wal.compactions(), 1);
    let (records, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert_eq!(records.len(), 1, "no settle was asked for after the PubAck");
    assert_eq!(end.last_sequence, second);
}

#[test]
fn a_settled_checkpoint_drops_the_events_before_it_and_keeps_those_after() {
    let settled = |sequence| WalRecord {
        settled: true,
        ..record(sequence, "", b"")
    };
    let (log, _) = log_of(&[
        record(1, "events.t", b"a"),
        record(2, "events.t", b"b"),
        // It repeats the last sequence, as a reservation may.
        settled(2),
        record(3, "events.t", b"c"),
        record(4, "events.t", b"d"),
    ]);
    let (records, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    assert_eq!((&end.tail, end.last_sequence), (&None, 4));
    assert_eq!(
        records.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [3, 4]
    );
    // A restart re-sends only those, and goes on after the last sequence.
    let mut wal = Wal::recover(WalConfig::new("procmond"), records, &end);
    let mut disk = log.clone();
    assert_eq!(drive_sequences(&mut wal, &mut disk), [(3, true), (4, true)]);
    assert_eq!(wal.append(0, "t", Bytes::new()), Ok(5));
}

#[test]
fn refuses_when_full_empty_topics_and_oversized_records() {
    let mut cfg = WalConfig::new("procmond");
    cfg.max_pending = 2;
    cfg.max_record = 100;
    let mut wal = Wal::new(cfg);
    assert_eq!(wal.append(0, "", Bytes::new()), Err(WalError::NoTopic));
    assert!(matches!(
        wal.append(0, "t", Bytes::from(vec![0; 200])),
        Err(WalError::TooLarge { .. })
    ));
    assert_eq!(wal.append(0, "t", Bytes::new()), Ok(1));
    assert_eq!(wal.append(0, "t", Bytes::new()), Ok(2));
    assert_eq!(
        wal.append(0, "t", Bytes::new()),
        Err(WalError::Full { pending: 2 })
    );
    let mut disk = Vec::new();
    wal.commit();
    drive(&mut wal, &mut disk);
    wal.handle_puback(T0, 1);
    assert_eq!(
        wal.append(0, "t", Bytes::new()),
        Ok(3),
        "a PubAck frees room"
    );
}

#[test]
fn compaction_keeps_pending_records_and_never_lets_a_sequence_be_reused() {
    let mut cfg = WalConfig::new("procmond");
    cfg.compact_after = 1;
    let mut wal = Wal::new(cfg.clone());
    let mut disk = Vec::new();
    for i in 0..100u64 {
        wal.append(i, "events.process.new", Bytes::from(vec![1; 50]))
            .expect("room");
    }
    wal.commit();
    drive(&mut wal, &mut disk);
    // Ack all but 97 and 99: most of the log is dead, so it is rewritten.
    for s in 1..=100 {
        if s != 97 && s != 99 {
            wal.handle_puback(T0, s);
        }
    }
    let full = disk.len();
    drive(&mut wal, &mut disk);
    assert!(wal.compactions() >= 1);
    assert!(disk.len() * 4 < full, "{} of {full} bytes left", disk.len());
    let (replayed, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    let seqs: Vec<u64> = replayed.iter().map(|r| r.sequence).collect();
    assert!(seqs.contains(&97) && seqs.contains(&99), "{seqs:?}");
    assert_eq!(end.last_sequence, 100);
    // Everything acknowledged: the log shrinks to the checkpoint alone.
    wal.handle_puback(T0, 97);
    wal.handle_puback(T0, 99);
    drive(&mut wal, &mut disk);
    let (replayed, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert!(replayed.is_empty());
    assert_eq!(end.last_sequence, 100);
    // A restart resumes after the checkpoint.
    let mut again = Wal::recover(cfg, replayed, &end);
    assert_eq!(again.append(0, "events.process.new", Bytes::new()), Ok(101));
}

#[test]
fn recovery_truncates_the_torn_tail_and_republishes_in_order() {
    let (mut log, ends) = log_of(&three());
    log.truncate(ends[2] as usize - 3);
    let (records, end) = wal::replay(&log, DEFAULT_MAX_RECORD);
    let mut wal = Wal::recover(WalConfig::new("procmond"), records, &end);
    assert_eq!(
        wal.poll_output(),
        Some(WalAction::Truncate { len: ends[1] })
    );
    // What survived is synced before it is published again.
    assert_eq!(wal.poll_output(), Some(WalAction::Sync { len: ends[1] }));
    assert_eq!(wal.poll_output(), None);
    wal.handle_synced(T0, ends[1]);
    let published: Vec<(u64, bool)> = std::iter::from_fn(|| wal.poll_output())
        .map(|a| match a {
            WalAction::Publish { record, replayed } => (record.sequence, replayed),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(published, [(1, true), (2, true)]);
    // The torn record was never accepted, so its sequence may be assigned again.
    assert_eq!(wal.append(0, "t", Bytes::new()), Ok(3));
}

fn published_sequences(wal: &mut Wal, disk: &mut Vec<u8>) -> Vec<u64> {
    drive(wal, disk).iter().map(|r| r.sequence).collect()
}

#[test]
fn under_a_synced_reservation_events_go_out_at_append_and_a_restart_skips_the_block() {
    let mut cfg = WalConfig::new("procmond");
    cfg.reserve_block = 10;
    let mut wal = Wal::new(cfg.clone());
    let mut disk = Vec::new();
    // The first event is written after a checkpoint reserving 1..=10: nothing is synced
    // yet, so nothing goes out.
    assert_eq!(wal.append(1, "t", Bytes::from_static(b"a")), Ok(1));
    assert!(published_sequences(&mut wal, &mut disk).is_empty());
    wal.commit();
    assert_eq!(published_sequences(&mut wal, &mut disk), [1]);
    // Under the synced reservation, an event goes out as soon as it is appended, before any
    // sync, and is accepted (held for its PubAck) only once synced.
    assert_eq!(wal.append(2, "t", Bytes::from_static(b"b")), Ok(2));
    assert_eq!(published_sequences(&mut wal, &mut disk), [2]);
    assert!(!wal.is_pending(2) && wal.unsynced() == 1);
    // Its PubAck may come before its sync: it is then never held.
    assert!(wal.handle_puback(T0, 2));
    assert!(!wal.handle_puback(T0, 2));
    wal.commit();
    assert!(published_sequences(&mut wal, &mut disk).is_empty());
    assert!(!wal.is_pending(2) && wal.unsynced() == 0);
    let synced = disk.len();
    // Half the block used: the next reservation (through 15) is written before event 6,
    // which the first one still covers. Sequences stay consecutive.
    for n in 3..=6 {
        assert_eq!(wal.append(n, "t", Bytes::new()), Ok(n));
    }
    assert_eq!(published_sequences(&mut wal, &mut disk), [3, 4, 5, 6]);
    // A crash before any of it is synced leaves the log as it was at the last sync: the
    // events are gone, and so is the second reservation, but the first one is on the disk,
    // so a restart resumes after 10 and never gives 3 to 6 to another event.
    let (_, end_synced) = wal::replay(&disk[..synced], DEFAULT_MAX_RECORD);
    assert_eq!(end_synced.reserved_through, 10);
    let mut restarted = Wal::recover(cfg.clone(), Vec::new(), &end_synced);
    assert_eq!(restarted.append(0, "t", Bytes::new()), Ok(11));
    // With everything on the disk the restart resumes after the second reservation.
    let (records, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert_eq!(end.reserved_through, 15, "{end}");
    assert_eq!(
        records.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "reservations are checkpoints, not events"
    );
    let mut restarted = Wal::recover(cfg, records, &end);
    drive(&mut restarted, &mut disk);
    assert_eq!(restarted.append(0, "t", Bytes::new()), Ok(16));
}

#[test]
fn a_compaction_keeps_the_reservation_and_replayed_records_go_out_first() {
    let mut cfg = WalConfig::new("procmond");
    cfg.reserve_block = 100;
    // The first PubAck leaves only dead bytes: a rewrite.
    cfg.compact_after = 1;
    let mut wal = Wal::new(cfg.clone());
    let mut disk = Vec::new();
    wal.append(0, "t", Bytes::from_static(b"a")).expect("room");
    wal.commit();
    assert_eq!(published_sequences(&mut wal, &mut disk), [1]);
    wal.handle_puback(T0, 1);
    drive(&mut wal, &mut disk);
    assert_eq!(wal.compactions(), 1);
    let (records, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    assert!(records.is_empty());
    assert_eq!(
        (end.last_sequence, end.reserved_through),
        (1, 100),
        "the checkpoint carries the reservation"
    );
    // After the rewrite the reservation still holds: the next event goes out at once.
    assert_eq!(wal.append(0, "t", Bytes::from_static(b"b")), Ok(2));
    assert_eq!(published_sequences(&mut wal, &mut disk), [2]);
    wal.commit();
    drive(&mut wal, &mut disk);
    // A restart re-sends 2 (synced, not acknowledged) before anything new, and new events
    // wait for the replayed ones' sync and a reservation of their own.
    let (records, end) = wal::replay(&disk, DEFAULT_MAX_RECORD);
    let mut wal = Wal::recover(cfg, records, &end);
    assert_eq!(wal.append(0, "t", Bytes::from_static(b"c")), Ok(101));
    assert_eq!(
        drive_sequences(&mut wal, &mut disk),
        [(2, true)],
        "101 waits for a synced reservation"
    );
    wal.commit();
    assert_eq!(drive_sequences(&mut wal, &mut disk), [(101, false)]);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Commit,
    /// The device finishes the oldest sync in progress.
    SyncDone,
    /// Ack the n-th pending record (modulo).
    Ack(u8),
    /// Time passes: an idle log settles.
    Idle,
    /// A graceful stop begins (the incarnation runs on until the next crash).
    Stop,
    /// Crash: the disk keeps its synced prefix and a torn piece of the rest.
    Crash {
        keep: u16,
        garbage: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Append),
        2 => Just(Op::Commit),
        2 => Just(Op::SyncDone),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Idle),
        1 => Just(Op::Stop),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(keep, garbage)| Op::Crash { keep, garbage }),
    ]
}

proptest! {
    /// Nothing accepted and unacknowledged is ever lost across crashes with torn tails, and
    /// no sequence is ever assigned to two different events that were published, whether
    /// events are published after their sync or, under reservations, before it.
    #[test]
    fn accepted_records_survive_crashes(
        ops in proptest::collection::vec(op(), 1..300),
        reserve_block in prop_oneof![Just(0u64), Just(1), Just(2), Just(5), Just(64)],
    ) {
        let mut cfg = WalConfig::new("src");
        cfg.compact_after = 200;
        cfg.reserve_block = reserve_block;
        let mut wal = Wal::new(cfg.clone());
        let mut disk: Vec<u8> = Vec::new();
        let mut synced = 0usize;
        let mut syncing: std::collections::VecDeque<u64> = Default::default();
        // Published by the current incarnation: only these can be acknowledged to it.
        let mut sent: std::collections::BTreeSet<u64> = Default::default();
        // Accepted, not acknowledged: sequence -> payload.
        let mut must_survive: BTreeMap<u64, Bytes> = BTreeMap::new();
        // Every published (sequence -> payload), across incarnations.
        let mut published: BTreeMap<u64, Bytes> = BTreeMap::new();
        let mut n = 0u32;
        for op in ops {
            match op {
                Op::Append(len) => {
                    n += 1;
                    let payload = Bytes::from(format!("event {n} {}", "x".repeat(len as usize % 40)));
                    let _ = wal.append(u64::from(n), "events.t", payload);
                }
                Op::Commit => wal.commit(),
                Op::Idle => wal.handle_timeout(T0.saturating_add(std::time::Duration::from_secs(3600))),
                Op::Stop => wal.handle_stop(),
                Op::SyncDone => {
                    if let Some(len) = syncing.pop_front() {
                        synced = synced.max(len as usize);
                        wal.handle_synced(T0, len);
                    }
                }
                Op::Ack(k) => {
                    // Anything sent may be acknowledged, synced or not.
                    if !sent.is_empty() {
                        let ackable: Vec<u64> = sent.iter().copied().collect();
                        let seq = ackable[k as usize % ackable.len()];
                        prop_assert!(wal.handle_puback(T0, seq), "#{} sent but not held", seq);
                        prop_assert!(!wal.handle_puback(T0, seq), "#{} held twice", seq);
                        must_survive.remove(&seq);
                        sent.remove(&seq);
                    }
                }
                Op::Crash { keep, garbage } => {
                    let extra = (disk.len() - synced).min(keep as usize % 64);
                    disk.truncate(synced + extra);
                    syncing.clear();
                    sent.clear();
                    if garbage {
                        disk.extend_from_slice(&[0x5a; 5]);
                    }
                    let (records, end) = wal::replay(&disk, cfg.max_record);
                    let seqs: Vec<u64> = records.iter().map(|r| r.sequence).collect();
                    for s in must_survive.keys() {
                        prop_assert!(seqs.contains(s), "accepted #{} lost; replayed {:?}", s, seqs);
                    }
                    wal = Wal::recover(cfg.clone(), records, &end);
                }
            }
            // The driver: run every action; a Sync makes the disk durable up to its length.
            while let Some(a) = wal.poll_output() {
                match a {
                    WalAction::Truncate { len } => {
                        disk.truncate(len as usize);
                        synced = synced.min(disk.len());
                    }
                    WalAction::Append(b) => disk.extend_from_slice(&b),
                    WalAction::Sync { len } => syncing.push_back(len),
                    WalAction::Rewrite(b) => {
                        disk = b.to_vec();
                        synced = disk.len();
                    }
                    WalAction::Publish { record: r, replayed } => {
                        if let Some(prev) = published.insert(r.sequence, r.payload.clone()) {
                            prop_assert!(replayed, "#{} published twice without a replay", r.sequence);
                            prop_assert_eq!(&prev, &r.payload, "sequence {} reused", r.sequence);
                        }
                        if reserve_block == 0 || replayed {
                            prop_assert!(
                                wal.is_pending(r.sequence),
                                "#{} published before its sync", r.sequence
                            );
                        }
                        sent.insert(r.sequence);
                    }
                }
            }
            // Accepted: synced and not acknowledged. What was sent and acknowledged before
            // its sync never needs to survive.
            for &seq in &sent {
                if wal.is_pending(seq) {
                    must_survive.entry(seq).or_insert_with(|| published[&seq].clone());
                }
            }
            prop_assert_eq!(wal.file_len(), disk.len() as u64);
        }
    }
}
