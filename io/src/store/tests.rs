//! The store on real files: dedup, retention by size and age, queries, and the files it
//! refuses.

use std::time::Duration;

use bytes::Bytes;
use daemoneye_proto::pb::events::{ProcessEvent, ProcessEventKind, ProcessInfo};
use daemoneye_proto::pb::store::{EventQuery, StoredEvent};
use prost::Message;

use super::*;

const MIN: u64 = 60_000;

fn process_event(pid: u32, exe: &str) -> Bytes {
    Bytes::from(
        ProcessEvent {
            kind: ProcessEventKind::New as i32,
            process: Some(ProcessInfo {
                pid,
                name: exe.rsplit('/').next().unwrap_or_default().into(),
                exe: exe.into(),
                cmdline: vec![exe.into(), format!("--n={pid}")],
                user: "root".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn sequenced(publisher: &str, sequence: u64, pid: u32) -> NewEvent {
    NewEvent {
        topic: "events.process.new".into(),
        publisher: publisher.into(),
        sequence,
        payload: process_event(pid, "/usr/bin/curl"),
    }
}

fn plain(topic: &str, payload: &'static [u8]) -> NewEvent {
    NewEvent {
        topic: topic.into(),
        publisher: String::new(),
        sequence: 0,
        payload: Bytes::from_static(payload),
    }
}

fn open(dir: &tempfile::TempDir) -> EventStore {
    EventStore::open(&dir.path().join("events.redb"), StoreConfig::default()).expect("open")
}

fn all(store: &EventStore) -> Vec<StoredEvent> {
    store
        .query(&EventQuery {
            topic_filter: "#".into(),
            ..Default::default()
        })
        .expect("query")
        .events
}

#[test]
fn a_resent_sequence_is_kept_once_across_batches_within_a_batch_and_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    let a = store
        .append_batch(1_000, &[sequenced("p", 1, 10), sequenced("p", 2, 11)])
        .expect("append");
    assert_eq!((a.stored, a.duplicates), (2, 0));
    let b = store
        .append_batch(
            2_000,
            &[
                sequenced("p", 2, 11),
                sequenced("p", 3, 12),
                sequenced("p", 3, 12),
            ],
        )
        .expect("append");
    assert_eq!((b.stored, b.duplicates), (1, 2));
    drop(store);
    let mut store = open(&dir);
    let c = store
        .append_batch(
            3_000,
            &[
                sequenced("p", 1, 10),
                sequenced("other", 1, 20),
                plain("events.x", b"q"),
                plain("events.x", b"q"),
            ],
        )
        .expect("append");
    assert_eq!(
        (c.stored, c.duplicates),
        (3, 1),
        "another publisher's sequence 1 and unsequenced messages are new"
    );
    let kept: Vec<(String, u64)> = all(&store)
        .into_iter()
        .map(|e| (e.publisher, e.sequence))
        .collect();
    assert_eq!(
        kept,
        [
            ("p".to_string(), 1),
            ("p".to_string(), 2),
            ("p".to_string(), 3),
            ("other".to_string(), 1),
            (String::new(), 0),
            (String::new(), 0),
        ]
    );
}

#[test]
fn ids_increase_in_arrival_order_and_carry_the_receive_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    for t in 1..=3u64 {
        store
            .append_batch(
                t * 1_000,
                &[plain("events.t", b"a"), plain("events.t", b"b")],
            )
            .expect("append");
    }
    let events = all(&store);
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    assert_eq!(events[2].time_ms, 2_000);
    assert_eq!(events[5].payload, Bytes::from_static(b"b"));
}

#[test]
fn age_retention_removes_what_is_older_than_max_age_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.redb");
    let config = StoreConfig {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(600),
    };
    let mut store = EventStore::open(&path, config).expect("open");
    for minute in 0..10u64 {
        store
            .append_batch(minute * MIN, &[sequenced("p", minute + 1, 1)])
            .expect("append");
    }
    // At minute 14, what arrived before minute 4 is over 10 minutes old; minute 4 is
    // exactly 10 minutes old and stays.
    let evicted = store.enforce_retention(14 * MIN).expect("retention");
    assert_eq!((evicted.by_age, evicted.by_size), (4, 0));
    let times: Vec<u64> = all(&store).iter().map(|e| e.time_ms / MIN).collect();
    assert_eq!(times, [4, 5, 6, 7, 8, 9]);
    // Nothing more to do: no empty commit.
    assert_eq!(
        store.enforce_retention(14 * MIN).expect("retention"),
        Evicted::default()
    );
    // An append applies the same rule in its own commit.
    let a = store
        .append_batch(17 * MIN, &[sequenced("p", 100, 1)])
        .expect("append");
    assert_eq!(a.evicted.by_age, 3);
    // A removed event's sequence is forgotten with it; the kept ones still dedup.
    let again = store
        .append_batch(17 * MIN, &[sequenced("p", 1, 1), sequenced("p", 9, 1)])
        .expect("append");
    assert_eq!((again.stored, again.duplicates), (1, 1));
}

#[test]
fn size_retention_keeps_the_file_bounded_while_events_keep_coming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.redb");
    let max_bytes = 4 << 20;
    let config = StoreConfig {
        max_bytes,
        max_age: Duration::from_secs(86_400),
    };
    let mut store = EventStore::open(&path, config).expect("open");
    // Incompressible payloads: the records take their full size.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut payload = move || {
        Bytes::from_iter((0..300).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        }))
    };
    let mut sequence = 0;
    let mut evicted = 0;
    // About 8 times the bound in all.
    for batch in 0..300u64 {
        let events: Vec<NewEvent> = (0..100)
            .map(|_| {
                sequence += 1;
                NewEvent {
                    topic: "events.process.new".into(),
                    publisher: "procmond.1.abc".into(),
                    sequence,
                    payload: payload(),
                }
            })
            .collect();
        evicted += store
            .append_batch(batch, &events)
            .expect("append")
            .evicted
            .by_size;
        let stats = store.stats().expect("stats");
        assert!(
            stats.record_bytes <= config.max_bytes / 100 * retention::RECORD_SHARE_PERCENT,
            "{stats:?}"
        );
        assert!(stats.file_bytes <= max_bytes, "batch {batch}: {stats:?}");
    }
    assert!(evicted > 20_000, "{evicted}");
    // Oldest first: what is left is the newest, contiguous run.
    let kept = all(&store);
    let sequences: Vec<u64> = kept.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences.last(), Some(&sequence));
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn alike_process_events_are_kept_compressed_and_read_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    let events: Vec<NewEvent> = (1..=2_000u64)
        .map(|i| sequenced("procmond.1.abc", i, i as u32))
        .collect();
    let plain: u64 = events
        .iter()
        .map(|e| (e.payload.len() + e.topic.len() + e.publisher.len()) as u64)
        .sum();
    for (t, batch) in events.chunks(100).enumerate() {
        store.append_batch(t as u64, batch).expect("append");
    }
    let stats = store.stats().expect("stats");
    // Less keys and dedup entries (48 bytes an event), the values and the dictionary
    // take well under what they hold.
    let values = stats.record_bytes - 48 * events.len() as u64;
    assert!(
        values < plain * 2 / 3,
        "{values} bytes of values for {plain} bytes of payloads, topics and publishers"
    );
    drop(store);
    let store = EventStore::open_read_only(&dir.path().join("events.redb")).expect("reader");
    let back = all(&store);
    assert_eq!(back.len(), events.len());
    for (kept, sent) in back.iter().zip(&events) {
        assert_eq!(
            (&kept.payload, kept.sequence, &kept.topic),
            (&sent.payload, sent.sequence, &sent.topic)
        );
    }
}

#[test]
fn queries_select_by_time_window_process_and_topic_with_a_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    store
        .append_batch(
            1_000,
            &[
                NewEvent {
                    payload: process_event(1, "/usr/bin/curl"),
                    ..sequenced("p", 1, 0)
                },
                plain("events.custom", b"x"),
            ],
        )
        .expect("append");
    store
        .append_batch(
            2_000,
            &[
                NewEvent {
                    payload: process_event(2, "/bin/sh"),
                    ..sequenced("p", 2, 0)
                },
                plain("alerts.high", b"{}"),
            ],
        )
        .expect("append");
    store
        .append_batch(
            3_000,
            &[NewEvent {
                payload: process_event(3, "/usr/bin/curl"),
                ..sequenced("p", 3, 0)
            }],
        )
        .expect("append");
    let ids = |q: EventQuery| -> Vec<u64> {
        store
            .query(&q)
            .expect("query")
            .events
            .iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(
        ids(EventQuery::default()),
        [1, 2, 3, 5],
        "events.# by default"
    );
    assert_eq!(
        ids(EventQuery {
            since_ms: 2_000,
            until_ms: 3_000,
            ..Default::default()
        }),
        [3],
        "since inclusive, until exclusive"
    );
    assert_eq!(
        ids(EventQuery {
            exe_glob: "*curl".into(),
            ..Default::default()
        }),
        [1, 5]
    );
    assert_eq!(
        ids(EventQuery {
            pid: Some(2),
            ..Default::default()
        }),
        [3]
    );
    assert_eq!(
        ids(EventQuery {
            topic_filter: "alerts.#".into(),
            ..Default::default()
        }),
        [4]
    );
    let limited = store
        .query(&EventQuery {
            limit: 2,
            ..Default::default()
        })
        .expect("query");
    assert_eq!(limited.events.len(), 2);
    assert!(limited.truncated);
    let exact = store
        .query(&EventQuery {
            limit: 4,
            ..Default::default()
        })
        .expect("query");
    assert!(!exact.truncated, "nothing more matched");
}

#[test]
fn pages_of_a_byte_budget_resume_after_the_last_event_and_cover_everything_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    // Many events in the same millisecond: paging must not rely on time alone.
    for batch in 0..5u64 {
        let events: Vec<NewEvent> = (0..40)
            .map(|i| sequenced("p", batch * 40 + i + 1, i as u32))
            .collect();
        store
            .append_batch(7_000 + batch / 2, &events)
            .expect("append");
    }
    let mut query = EventQuery::default();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.query_within(&query, 2_000).expect("query");
        assert!(page.error.is_empty());
        pages += 1;
        seen.extend(page.events.iter().map(|e| e.sequence));
        let Some(last) = page.events.last() else {
            break;
        };
        if !page.truncated {
            break;
        }
        query.since_ms = last.time_ms;
        query.after_id = last.id;
    }
    assert!(pages > 5, "{pages} pages");
    assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
}

#[test]
fn an_event_larger_than_the_reply_budget_is_an_error_in_the_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir);
    store
        .append_batch(1, &[plain("events.big", &[7u8; 4096])])
        .expect("append");
    let answer = store
        .query_within(&EventQuery::default(), 1024)
        .expect("query");
    assert!(answer.events.is_empty() && answer.truncated);
    assert!(answer.error.contains("--database"), "{}", answer.error);
}

#[test]
fn a_reader_opens_beside_the_writer_and_sees_its_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.redb");
    let mut writer = EventStore::open(&path, StoreConfig::default()).expect("open");
    writer
        .append_batch(1, &[plain("events.a", b"1")])
        .expect("append");
    let reader = EventStore::open_read_only(&path).expect("read-only beside the writer");
    assert_eq!(all(&reader).len(), 1);
    writer
        .append_batch(2, &[plain("events.a", b"2")])
        .expect("append");
    assert_eq!(all(&reader).len(), 2, "a later commit is visible");
    assert!(matches!(
        EventStore::open_read_only(&path)
            .expect("reader")
            .append_batch(3, &[]),
        Err(StoreError::ReadOnly { .. })
    ));
    match EventStore::open(&path, StoreConfig::default()) {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(e.to_string().contains("events.redb"), "{e}")
        }
        other => panic!("a second writer must be refused: {other:?}"),
    }
}

const UNCLEAN_WRITER_ENV: &str = "DAEMONEYE_TEST_UNCLEAN_STORE";

/// Run as a child by the test below: writes two events to the store named by the
/// environment, says so, and waits to be killed.
#[test]
#[ignore = "a helper process for the test below"]
fn helper_writer_killed_mid_life() {
    let Some(path) = std::env::var_os(UNCLEAN_WRITER_ENV) else {
        return;
    };
    let mut writer =
        EventStore::open(std::path::Path::new(&path), StoreConfig::default()).expect("open");
    writer
        .append_batch(1, &[plain("events.a", b"1"), plain("events.a", b"2")])
        .expect("append");
    println!("WRITTEN");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_file_its_writer_left_unclean_is_read_through_a_repaired_copy_and_left_as_it_was() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.redb");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "store::tests::helper_writer_killed_mid_life",
            "--ignored",
            "--nocapture",
        ])
        .env(UNCLEAN_WRITER_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("helper");
    let stdout = child.stdout.take().expect("stdout");
    let written = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("WRITTEN"));
    assert!(written, "the helper wrote its events");
    // kill -9 mid-life: the file stays marked for recovery and no writer holds it.
    child.kill().expect("kill");
    child.wait().expect("reap");

    let before = std::fs::read(&path).expect("read");
    let mut reader = EventStore::open_read_only(&path).expect("reader of an unclean file");
    assert!(reader.repaired_copy());
    assert_eq!(all(&reader).len(), 2);
    assert!(matches!(
        reader.append_batch(3, &[]),
        Err(StoreError::ReadOnly { .. })
    ));
    let copy = reader.copy.as_ref().map(|c| c.0.clone()).expect("a copy");
    assert!(copy.exists());
    drop(reader);
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "the file is untouched"
    );
    assert!(!copy.exists(), "the repaired copy is removed");
    // The agent's writer repairs the file itself when it opens it.
    let writer = EventStore::open(&path, StoreConfig::default()).expect("writer repairs");
    assert_eq!(all(&writer).len(), 2);
    drop(writer);
    let reader = EventStore::open_read_only(&path).expect("reader");
    assert!(!reader.repaired_copy(), "clean after the writer's repair");
}

/// The one-line error for `path`, from both kinds of open.
fn refused(path: &std::path::Path) -> [String; 2] {
    let w = EventStore::open(path, StoreConfig::default()).expect_err("writer refused");
    let r = EventStore::open_read_only(path).expect_err("reader refused");
    [w.to_string(), r.to_string()]
}

#[test]
fn random_bytes_text_and_a_foreign_redb_file_are_named_as_not_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let random = dir.path().join("random.bin");
    let bytes: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, &bytes).expect("write");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "[store]\nthis is not a database\n").expect("write");
    let foreign = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&foreign).expect("redb");
        let txn = db.begin_write().expect("txn");
        txn.open_table(TableDefinition::<u64, u64>::new("their_table"))
            .expect("table")
            .insert(1, 2)
            .expect("insert");
        txn.commit().expect("commit");
    }
    for (path, why) in [
        (&random, "not a redb database"),
        (&text, "holds text"),
        (&foreign, "their_table"),
    ] {
        for line in refused(path) {
            assert!(
                line.contains(&path.display().to_string())
                    && line.contains("not a DaemonEye event store")
                    && line.contains(why)
                    && !line.contains('\n'),
                "{line}"
            );
        }
    }
    // Refusing it changed nothing.
    assert_eq!(std::fs::read(&random).expect("read"), bytes);
}

#[test]
fn a_truncated_store_is_named_as_damaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.redb");
    {
        let mut store = EventStore::open(&path, StoreConfig::default()).expect("open");
        for i in 0..50u64 {
            let events: Vec<NewEvent> =
                (0..50).map(|j| sequenced("p", i * 50 + j + 1, 1)).collect();
            store.append_batch(i, &events).expect("append");
        }
    }
    let len = std::fs::metadata(&path).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(len / 3))
        .expect("truncate");
    for line in refused(&path) {
        assert!(
            line.contains(&path.display().to_string()) && !line.contains('\n'),
            "{line}"
        );
        assert!(line.contains("damaged"), "{line}");
    }
}

#[test]
fn a_store_of_another_format_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.redb");
    drop(EventStore::open(&path, StoreConfig::default()).expect("create"));
    {
        let db = redb::Database::create(&path).expect("redb");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(META_FORMAT, 99)
            .expect("insert");
        txn.commit().expect("commit");
    }
    for line in refused(&path) {
        assert!(
            line.contains("format version 99") && line.contains("version 1"),
            "{line}"
        );
    }
}

#[test]
fn a_missing_file_is_not_found_for_a_reader_and_created_for_a_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub").join("events.redb");
    assert!(matches!(
        EventStore::open_read_only(&path),
        Err(StoreError::NotFound { .. })
    ));
    let store = EventStore::open(&path, StoreConfig::default()).expect("created");
    assert_eq!(store.stats().expect("stats").events, 0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.parent().expect("dir"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
