//! The process table: what procmond publishes for execs, exits, scans and overruns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use daemoneye_core::Instant;
use daemoneye_core::procmon::table::{
    Output, PROCESS_FIELDS, ProcessEvent, ProcessTable, ScanResult, Source, TableConfig, Timer,
};
use daemoneye_proto::pb::events::{ProcessEventKind, ProcessInfo};
use proptest::prelude::*;
use prost::Message;

fn t(secs: u64) -> Instant {
    Instant::from_nanos(secs * 1_000_000_000)
}

fn proc_(pid: u32, start: u64, exe: &str) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid: 1,
        name: exe
            .rsplit('/')
            .next()
            .unwrap_or(exe)
            .chars()
            .take(15)
            .collect(),
        exe: exe.into(),
        cmdline: vec![exe.into(), format!("arg-{pid}-{start}")],
        uid: 1000,
        user: "alice".into(),
        start_ticks: start,
        status: "S".into(),
        ..Default::default()
    }
}

/// A read whose process was gone: only the pid.
fn partial(pid: u32) -> ProcessInfo {
    ProcessInfo {
        pid,
        unread: PROCESS_FIELDS.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

/// A scan listed at tick `listed_at` and read at once.
fn scan(listed_at: u64, processes: Vec<ProcessInfo>) -> ScanResult {
    ScanResult {
        listed_at,
        finished_at: listed_at,
        processes,
    }
}

fn drain(table: &mut ProcessTable) -> Vec<Output> {
    std::iter::from_fn(|| table.poll_output()).collect()
}

fn events(table: &mut ProcessTable) -> Vec<ProcessEvent> {
    drain(table)
        .into_iter()
        .filter_map(|o| match o {
            Output::Publish(e) => Some(*e),
            Output::Scan => None,
        })
        .collect()
}

/// (kind, pid, start ticks) of each event, snapshot parts as their pids.
fn summary(evs: &[ProcessEvent]) -> Vec<(ProcessEventKind, u32, u64)> {
    evs.iter()
        .flat_map(|e| match e {
            ProcessEvent::Snapshot { processes, .. } => processes
                .iter()
                .map(|p| (ProcessEventKind::Snapshot, p.pid, p.start_ticks))
                .collect::<Vec<_>>(),
            other => {
                let p = other.process().expect("a process");
                vec![(other.kind(), p.pid, p.start_ticks)]
            }
        })
        .collect()
}

/// A table past its start-up snapshot of `running`.
fn started(config: TableConfig, running: Vec<ProcessInfo>) -> ProcessTable {
    let mut table = ProcessTable::new(config, t(0));
    assert_eq!(drain(&mut table), [Output::Scan]);
    table.handle_scan(t(0), scan(10, running));
    let _ = drain(&mut table);
    table
}

use ProcessEventKind::{Exit, Modified, New, Snapshot};

#[test]
fn startup_scan_is_one_snapshot_in_numbered_parts_each_under_the_budget() {
    let config = TableConfig {
        snapshot_part_bytes: 2048,
        ..TableConfig::default()
    };
    let mut table = ProcessTable::new(config, t(0));
    assert_eq!(drain(&mut table), [Output::Scan]);
    let running: Vec<_> = (2..200).map(|pid| proc_(pid, 5, "/usr/bin/x")).collect();
    table.handle_scan(t(1), scan(10, running));
    let evs = events(&mut table);
    assert!(evs.len() > 3, "several parts");
    let parts = evs.len() as u32;
    let mut pids = Vec::new();
    for (i, e) in evs.into_iter().enumerate() {
        let ProcessEvent::Snapshot {
            processes,
            part,
            parts: n,
        } = &e
        else {
            panic!("only snapshot parts: {e:?}");
        };
        assert_eq!((*part, *n), (i as u32 + 1, parts));
        pids.extend(processes.iter().map(|p| p.pid));
        let wire = e.clone().into_pb("", u64::MAX);
        assert!(wire.encoded_len() <= 2048, "{}", wire.encoded_len());
        assert_eq!(wire.kind, Snapshot as i32);
        assert_eq!(wire.source, "snapshot");
    }
    assert_eq!(pids, (2..200).collect::<Vec<_>>());
    assert_eq!(table.stats().snapshot_processes, 198);
    assert_eq!(table.stats().new, 0, "no flood of NEW");
}

#[test]
fn an_empty_startup_scan_is_one_empty_part_and_the_default_budget_fits_a_frame() {
    let mut table = ProcessTable::new(TableConfig::default(), t(0));
    let _ = drain(&mut table);
    table.handle_scan(t(0), scan(1, Vec::new()));
    let evs = events(&mut table);
    assert_eq!(
        evs,
        [ProcessEvent::Snapshot {
            processes: vec![],
            part: 1,
            parts: 1
        }]
    );
    let budget = TableConfig::default().snapshot_part_bytes;
    assert!(budget + 60 * 1024 <= daemoneye_proto::DEFAULT_MAX_FRAME as usize);
}

#[test]
fn an_exec_of_an_unknown_process_is_new_and_its_next_exec_is_modified_with_what_changed() {
    let mut table = started(TableConfig::default(), vec![]);
    table.handle_exec(t(1), 100, proc_(50, 99, "/bin/sh"));
    assert_eq!(summary(&events(&mut table)), [(New, 50, 99)]);
    let mut curl = proc_(50, 99, "/usr/bin/curl");
    curl.cmdline = vec!["curl".into(), "http://x".into()];
    table.handle_exec(t(1), 101, curl);
    let evs = events(&mut table);
    let [
        ProcessEvent::Modified {
            process,
            changed,
            source,
        },
    ] = evs.as_slice()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(process.exe, "/usr/bin/curl");
    assert_eq!(*changed, ["name", "exe", "cmdline"]);
    assert_eq!(*source, Source::Netlink);
}

#[test]
fn an_id_change_without_an_exec_is_modified_only_for_the_same_process_and_only_when_changed() {
    let mut table = started(
        TableConfig::default(),
        vec![proc_(40, 5, "/usr/bin/python3")],
    );
    let mut root = proc_(40, 5, "/usr/bin/python3");
    (root.uid, root.user) = (0, "root".into());
    // The same ids again (a saved-uid change, say): nothing to tell.
    table.handle_credentials(t(1), 50, proc_(40, 5, "/usr/bin/python3"));
    assert_eq!(events(&mut table), []);
    table.handle_credentials(t(1), 60, root.clone());
    let evs = events(&mut table);
    let [
        ProcessEvent::Modified {
            process,
            changed,
            source,
        },
    ] = evs.as_slice()
    else {
        panic!("{evs:?}")
    };
    assert_eq!((process.uid, process.user.as_str()), (0, "root"));
    assert_eq!(*changed, ["uid", "user"]);
    assert_eq!(*source, Source::Netlink);
    assert_eq!(table.get(40).map(|p| p.uid), Some(0));
    assert_eq!(table.stats().credential_changes, 1);
    // A read of a later holder of the pid, of an unknown pid, or without a start: nothing
    // (the exec or the scan that finds them tells).
    table.handle_credentials(t(2), 70, proc_(40, 65, "/bin/nc"));
    table.handle_credentials(t(2), 70, proc_(41, 66, "/bin/nc"));
    table.handle_credentials(t(2), 70, partial(40));
    assert_eq!(events(&mut table), []);
    assert_eq!(
        table.get(40).map(|p| p.exe.as_str()),
        Some("/usr/bin/python3")
    );
    assert_eq!(table.stats().credential_changes, 1);
}

#[test]
fn a_reused_pid_is_an_exit_of_the_old_process_then_a_new_one_never_a_modification() {
    let mut table = started(TableConfig::default(), vec![proc_(7, 3, "/usr/sbin/sshd")]);
    table.handle_exec(t(1), 200, proc_(7, 150, "/bin/nc"));
    let evs = events(&mut table);
    assert_eq!(summary(&evs), [(Exit, 7, 3), (New, 7, 150)]);
    let ProcessEvent::Exit {
        exit_code, unseen, ..
    } = &evs[0]
    else {
        unreachable!()
    };
    assert_eq!((*exit_code, *unseen), (None, false));
}

#[test]
fn an_exit_carries_its_code_and_an_exit_of_a_never_seen_pid_is_flagged_by_pid() {
    let mut table = started(TableConfig::default(), vec![proc_(7, 3, "/bin/sleep")]);
    table.handle_exit(t(1), 50, 7, Some(137));
    table.handle_exit(t(1), 51, 8, Some(0));
    let evs = events(&mut table);
    assert_eq!(summary(&evs), [(Exit, 7, 3), (Exit, 8, 0)]);
    let wire: Vec<_> = evs.into_iter().map(|e| e.into_pb("procmond", 5)).collect();
    assert_eq!(
        (wire[0].exit_code, wire[0].has_exit_code, wire[0].unseen),
        (137, true, false)
    );
    assert_eq!(
        (wire[1].exit_code, wire[1].has_exit_code, wire[1].unseen),
        (0, true, true)
    );
    let unseen = wire[1].process.as_ref().expect("process");
    assert_eq!(unseen.pid, 8);
    assert!(unseen.unread.iter().any(|u| u == "start_ticks"));
    assert!(
        unseen.unread.iter().any(|u| u == "uid"),
        "uid 0 is not root"
    );
    assert_eq!(wire[1].source, "netlink");
    assert_eq!(wire[1].collector_id, "procmond");
    assert_eq!(table.stats().unseen_exits, 1);
}

#[test]
fn a_partial_exec_matches_by_pid_while_no_overrun_could_hide_a_reuse() {
    let mut table = started(TableConfig::default(), vec![proc_(9, 3, "/bin/sh")]);
    table.handle_exec(t(1), 100, partial(9));
    let evs = events(&mut table);
    let [ProcessEvent::Modified { process, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    assert_eq!(process.start_ticks, 3, "the identity is the table's");
    assert!(!process.unread.iter().any(|u| u == "start_ticks"));

    // After an overrun the same partial exec may be a new holder of the pid.
    table.handle_overrun(t(2), 110);
    assert_eq!(drain(&mut table), [Output::Scan]);
    table.handle_exec(t(2), 120, partial(9));
    assert_eq!(summary(&events(&mut table)), [(Exit, 9, 3), (New, 9, 0)]);
    // A scan then learns its start without announcing it again.
    table.handle_scan(t(3), scan(130, vec![proc_(9, 115, "/bin/x")]));
    assert!(events(&mut table).is_empty());
    assert_eq!(table.identities().collect::<Vec<_>>(), [(9, Some(115))]);
}

#[test]
fn a_partial_exec_of_an_unknown_pid_is_new_and_its_exit_closes_it() {
    let mut table = started(TableConfig::default(), vec![]);
    table.handle_exec(t(1), 100, partial(40));
    table.handle_exit(t(1), 100, 40, Some(1));
    assert_eq!(summary(&events(&mut table)), [(New, 40, 0), (Exit, 40, 0)]);
    assert!(table.is_empty());
}

#[test]
fn a_reconciliation_scan_announces_what_was_missed_and_closes_what_is_gone() {
    let mut table = started(
        TableConfig::default(),
        vec![proc_(2, 1, "/a"), proc_(3, 1, "/b"), proc_(4, 1, "/c")],
    );
    let mut b = proc_(3, 1, "/b");
    b.uid = 0;
    b.user = "root".into();
    b.memory_bytes = 1 << 30;
    b.cpu_percent = 99.0;
    let mut c = proc_(4, 1, "/c");
    c.memory_bytes = 5;
    table.handle_scan(
        t(30),
        scan(500, vec![b, c, proc_(5, 400, "/d"), proc_(6, 450, "/e")]),
    );
    let evs = events(&mut table);
    assert_eq!(
        summary(&evs),
        [(Exit, 2, 1), (Modified, 3, 1), (New, 5, 400), (New, 6, 450)]
    );
    let ProcessEvent::Modified {
        changed, source, ..
    } = &evs[1]
    else {
        unreachable!()
    };
    assert_eq!(
        (changed.as_slice(), *source),
        (&["uid", "user"][..], Source::Scan)
    );
    assert!(evs.iter().all(|e| e.source() == Source::Scan));
}

#[test]
fn a_scan_does_not_close_a_process_seen_after_its_listing_nor_revive_one_that_exited_during_it() {
    let mut table = started(TableConfig::default(), vec![proc_(2, 1, "/a")]);
    table.handle_timeout(t(30));
    assert_eq!(drain(&mut table), [Output::Scan]);
    // While the scan runs (it listed /proc at tick 500): pid 2 exits, pid 3 starts.
    table.handle_exit(t(30), 505, 2, Some(0));
    table.handle_exec(t(30), 506, proc_(3, 506, "/b"));
    let _ = drain(&mut table);
    // The scan read pid 2 before its exit and missed pid 3.
    table.handle_scan(t(31), scan(500, vec![proc_(2, 1, "/a")]));
    assert!(events(&mut table).is_empty());
    assert_eq!(table.identities().collect::<Vec<_>>(), [(3, Some(506))]);
}

#[test]
fn an_exit_that_arrives_after_a_scan_closed_its_process_is_not_published_twice() {
    let mut table = started(TableConfig::default(), vec![proc_(2, 1, "/a")]);
    table.handle_scan(t(30), scan(500, vec![]));
    assert_eq!(summary(&events(&mut table)), [(Exit, 2, 1)]);
    table.handle_exit(t(30), 490, 2, Some(0));
    assert!(events(&mut table).is_empty());
    assert_eq!(table.stats().late_exits, 1);
    // The pid's next holder, never seen, exits: that one is reported.
    table.handle_exit(t(30), 510, 2, Some(3));
    assert_eq!(summary(&events(&mut table)), [(Exit, 2, 0)]);
}

#[test]
fn after_a_loss_an_exit_the_table_cannot_attribute_is_reported_not_dropped() {
    let mut table = started(TableConfig::default(), vec![proc_(2, 1, "/a")]);
    table.handle_overrun(t(5), 100);
    table.handle_overrun_ended(t(5), 120);
    let _ = drain(&mut table);
    table.handle_scan(t(6), scan(130, vec![]));
    assert_eq!(summary(&events(&mut table)), [(Exit, 2, 1)]);
    // pid 2's exit or that of a later holder whose exec was lost: reported, by pid.
    table.handle_exit(t(6), 125, 2, Some(7));
    let evs = events(&mut table);
    assert!(
        matches!(
            evs.as_slice(),
            [ProcessEvent::Exit {
                unseen: true,
                exit_code: Some(7),
                ..
            }]
        ),
        "{evs:?}"
    );
}

#[test]
fn a_late_exec_of_a_closed_process_or_an_older_one_announces_nothing() {
    let mut table = started(TableConfig::default(), vec![proc_(2, 50, "/a")]);
    table.handle_scan(t(30), scan(500, vec![]));
    let _ = events(&mut table);
    table.handle_exec(t(30), 400, partial(2));
    table.handle_exec(t(30), 40, partial(2));
    table.handle_exec(t(30), 45, proc_(2, 30, "/older"));
    assert!(events(&mut table).is_empty());
    assert_eq!(table.stats().stale_execs, 3);
    // After the closed process was dead: a later holder.
    table.handle_exec(t(30), 510, partial(2));
    assert_eq!(summary(&events(&mut table)), [(New, 2, 0)]);
}

#[test]
fn an_exec_older_than_the_pids_current_process_changes_nothing() {
    let mut table = started(TableConfig::default(), vec![proc_(2, 300, "/new")]);
    table.handle_exec(t(1), 250, partial(2));
    table.handle_exec(t(1), 260, proc_(2, 200, "/old"));
    assert!(events(&mut table).is_empty());
    assert_eq!(table.stats().stale_execs, 2);
    assert_eq!(table.get(2).map(|p| p.exe.as_str()), Some("/new"));
}

#[test]
fn zombies_and_entries_without_a_start_are_not_running_to_a_scan() {
    let mut z = proc_(2, 1, "/a");
    z.status = "Z".into();
    let table = started(
        TableConfig::default(),
        vec![z, partial(3), proc_(4, 1, "/c")],
    );
    assert_eq!(table.identities().collect::<Vec<_>>(), [(4, Some(1))]);
    assert_eq!(table.stats().scan_skipped, 2);
}

#[test]
fn an_overrun_asks_for_a_scan_at_once_or_right_after_the_running_one() {
    let mut table = started(TableConfig::default(), vec![]);
    assert_eq!(table.poll_timeout(), Some((t(30), Timer::Reconcile)));
    table.handle_overrun(t(3), 30);
    assert_eq!(drain(&mut table), [Output::Scan]);
    assert_eq!(table.poll_timeout(), None, "waiting for the scan");
    table.handle_overrun(t(3), 31);
    assert!(drain(&mut table).is_empty(), "one scan at a time");
    table.handle_scan(t(4), scan(32, vec![]));
    assert_eq!(
        drain(&mut table),
        [Output::Scan],
        "the second overrun's scan"
    );
    table.handle_scan(t(5), scan(33, vec![]));
    assert!(drain(&mut table).is_empty());
    assert_eq!(table.poll_timeout(), Some((t(35), Timer::Reconcile)));
    assert_eq!(table.stats().overruns, 2);
}

#[test]
fn the_periodic_scan_follows_the_interval_and_a_new_interval_counts_from_the_last_scan() {
    let mut table = started(TableConfig::default(), vec![]);
    table.handle_timeout(t(29));
    assert!(drain(&mut table).is_empty(), "not before the deadline");
    table.set_config(
        t(29),
        TableConfig {
            reconcile_interval: Duration::from_secs(10),
            ..TableConfig::default()
        },
    );
    assert_eq!(table.poll_timeout(), Some((t(10), Timer::Reconcile)));
    table.handle_timeout(t(29));
    assert_eq!(drain(&mut table), [Output::Scan]);
    table.handle_scan_failed(t(30));
    assert_eq!(table.poll_timeout(), Some((t(35), Timer::Reconcile)));
    assert_eq!(table.stats().scan_failures, 1);
}

#[test]
fn at_the_process_limit_new_processes_are_refused_counted_and_their_exits_still_reported() {
    let config = TableConfig {
        max_processes: 2,
        ..TableConfig::default()
    };
    let mut table = ProcessTable::new(config, t(0));
    let _ = drain(&mut table);
    table.handle_scan(t(0), scan(10, (2..6).map(|p| proc_(p, 1, "/x")).collect()));
    assert_eq!(table.len(), 2);
    table.handle_exec(t(1), 20, proc_(9, 15, "/y"));
    assert_eq!(table.stats().refused, 3);
    let _ = events(&mut table);
    table.handle_exit(t(1), 21, 9, Some(0));
    let evs = events(&mut table);
    assert!(matches!(
        evs.as_slice(),
        [ProcessEvent::Exit { unseen: true, .. }]
    ));
    // A reuse frees the old entry's slot before taking one.
    table.handle_exec(t(1), 30, proc_(2, 25, "/z"));
    assert_eq!(summary(&events(&mut table)), [(Exit, 2, 1), (New, 2, 25)]);
    assert_eq!(table.len(), 2);
}

#[test]
fn new_and_modified_convert_to_the_wire_with_changed_fields_and_source() {
    let e = ProcessEvent::Modified {
        process: proc_(5, 9, "/bin/x"),
        changed: vec!["exe", "cmdline"],
        source: Source::Netlink,
    };
    let wire = e.into_pb("procmond", 1234);
    assert_eq!(wire.kind, Modified as i32);
    assert_eq!(wire.changed, ["exe", "cmdline"]);
    assert_eq!(
        (
            wire.source.as_str(),
            wire.observed_at_ms,
            wire.has_exit_code
        ),
        ("netlink", 1234, false)
    );
    assert_eq!(wire.process.map(|p| p.pid), Some(5));
}

#[test]
fn unread_fields_and_unhashed_reads_are_not_changes() {
    let mut table = started(TableConfig::default(), vec![]);
    let mut a = proc_(5, 9, "/bin/x");
    a.exe_sha256 = "ab".into();
    table.handle_exec(t(1), 10, a);
    let mut b = proc_(5, 9, "/bin/x");
    b.uid = 0;
    b.unread = vec!["uid".into()];
    table.handle_exec(t(1), 11, b);
    let evs = events(&mut table);
    let ProcessEvent::Modified { changed, .. } = &evs[1] else {
        panic!("{evs:?}")
    };
    assert!(changed.is_empty(), "{changed:?}");
}

// ---- property: random worlds with pid reuse, losses and scans ----

/// One step of the ground truth or of the observation path.
#[derive(Debug, Clone)]
enum Op {
    /// A process starts at the next free pid and execs (`exe` picks the image).
    Spawn { exe: u8 },
    /// A live process (by index) execs another image.
    Exec { which: u8, exe: u8 },
    /// A live process exits.
    Exit { which: u8, code: u8 },
    /// The reader delivers `n` queued events (an overrun report first, if one is owed).
    Deliver { n: u8 },
    /// The socket overflows: the `n` newest queued events are lost.
    Lose { n: u8 },
    /// A scan runs now (if the table asked for one, or the periodic one is due).
    Scan,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(|exe| Op::Spawn { exe }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(which, exe)| Op::Exec { which, exe }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(which, code)| Op::Exit { which, code }),
        5 => (1..6u8).prop_map(|n| Op::Deliver { n }),
        1 => (1..5u8).prop_map(|n| Op::Lose { n }),
        1 => Just(Op::Scan),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Kernel {
    Exec { pid: u32, at: u64, id: (u32, u64) },
    Exit { pid: u32, at: u64, code: i32 },
}

/// The ground truth and the checks.
struct World {
    tick: u64,
    next_pid: u32,
    pids: u32,
    /// pid -> (start, exe) of the live holder.
    alive: BTreeMap<u32, (u64, String)>,
    queue: VecDeque<Kernel>,
    /// The kernel's pending ENOBUFS.
    lost: bool,
    /// The kernel's congestion: set by a loss, cleared when the queue empties; no second
    /// ENOBUFS while set.
    congested: bool,
    table: ProcessTable,
    /// What a reader of the events believes lives: pid -> true identity.
    mirror: BTreeMap<u32, (u32, u64)>,
    announced: BTreeSet<(u32, u64)>,
    /// An overrun reached the table and no scan asked for after it has ended.
    lossy: bool,
    scan_asked: bool,
    scan_clean: bool,
}

impl World {
    fn new(pids: u32) -> Self {
        let mut table = ProcessTable::new(TableConfig::default(), t(0));
        let mut w = World {
            tick: 1,
            next_pid: 2,
            pids,
            alive: BTreeMap::new(),
            queue: VecDeque::new(),
            lost: false,
            congested: false,
            table: ProcessTable::new(TableConfig::default(), t(0)),
            mirror: BTreeMap::new(),
            announced: BTreeSet::new(),
            lossy: false,
            scan_asked: false,
            scan_clean: false,
        };
        assert_eq!(drain(&mut table), [Output::Scan]);
        w.table = table;
        w.scan_asked = true;
        w.scan_clean = true;
        w
    }

    fn info(&self, pid: u32) -> ProcessInfo {
        let (start, exe) = &self.alive[&pid];
        proc_(pid, *start, exe)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.tick += 1;
        let live: Vec<u32> = self.alive.keys().copied().collect();
        match *op {
            Op::Spawn { exe } => {
                let Some(pid) = (0..self.pids)
                    .map(|i| 2 + (self.next_pid - 2 + i) % self.pids)
                    .find(|p| !self.alive.contains_key(p))
                else {
                    return Ok(());
                };
                self.next_pid = 2 + (pid - 2 + 1) % self.pids;
                self.alive
                    .insert(pid, (self.tick, format!("/bin/e{}", exe % 4)));
                self.queue.push_back(Kernel::Exec {
                    pid,
                    at: self.tick,
                    id: (pid, self.tick),
                });
            }
            Op::Exec { which, exe } if !live.is_empty() => {
                let pid = live[which as usize % live.len()];
                let slot = self.alive.get_mut(&pid).expect("live");
                slot.1 = format!("/bin/e{}", exe % 4);
                let id = (pid, slot.0);
                self.queue.push_back(Kernel::Exec {
                    pid,
                    at: self.tick,
                    id,
                });
            }
            Op::Exit { which, code } if !live.is_empty() => {
                let pid = live[which as usize % live.len()];
                self.alive.remove(&pid);
                self.queue.push_back(Kernel::Exit {
                    pid,
                    at: self.tick,
                    code: i32::from(code),
                });
            }
            Op::Exec { .. } | Op::Exit { .. } => {}
            Op::Lose { n } => {
                for _ in 0..n {
                    if self.queue.pop_back().is_some() {
                        if !self.congested {
                            self.lost = true;
                        }
                        self.congested = true;
                    }
                }
            }
            Op::Deliver { n } => {
                for _ in 0..n {
                    if self.lost {
                        self.lost = false;
                        self.table.handle_overrun(t(self.tick), self.tick);
                        self.lossy = true;
                        self.scan_clean = false;
                        self.after_input(None)?;
                        continue;
                    }
                    let Some(k) = self.queue.pop_front() else {
                        if self.congested {
                            self.congested = false;
                            self.table.handle_overrun_ended(t(self.tick), self.tick);
                            self.after_input(None)?;
                        }
                        break;
                    };
                    let drained = self.queue.is_empty() && self.congested;
                    match k {
                        Kernel::Exec { pid, at, id } => {
                            // Read at delivery: the exec'er if it still holds the pid.
                            let info = match self.alive.get(&pid) {
                                Some((start, _)) if (pid, *start) == id => self.info(pid),
                                _ => partial(pid),
                            };
                            self.table.handle_exec(t(self.tick), at, info);
                            self.after_input(Some(id))?;
                        }
                        Kernel::Exit { pid, at, code } => {
                            self.table.handle_exit(t(self.tick), at, pid, Some(code));
                            self.after_input(None)?;
                        }
                    }
                    if drained {
                        self.congested = false;
                        self.table.handle_overrun_ended(t(self.tick), self.tick);
                        self.after_input(None)?;
                    }
                }
            }
            Op::Scan => {
                if !self.table.scan_in_flight() {
                    self.table.handle_timeout(t(self.tick + 1_000_000));
                    self.after_input(None)?;
                }
                let listed: Vec<ProcessInfo> = self.alive.keys().map(|p| self.info(*p)).collect();
                let throughout: Vec<(u32, u64)> =
                    self.alive.iter().map(|(p, (s, _))| (*p, *s)).collect();
                let clean = self.scan_clean;
                self.table
                    .handle_scan(t(self.tick), scan(self.tick, listed));
                if clean {
                    self.lossy = false;
                }
                self.after_input(None)?;
                for id in throughout {
                    prop_assert!(
                        self.announced.contains(&id),
                        "procmon-announced: {id:?} alive during a scan and never announced"
                    );
                }
                // Nothing queued and nothing lost: the table is the truth.
                if clean && self.queue.is_empty() && !self.lost {
                    let truth: Vec<(u32, Option<u64>)> = self
                        .alive
                        .iter()
                        .map(|(p, (s, _))| (*p, Some(*s)))
                        .collect();
                    let table: Vec<_> = self.table.identities().collect();
                    prop_assert_eq!(table, truth, "procmon-reconciled");
                    let mirror: Vec<(u32, u64)> = self.mirror.values().copied().collect();
                    let alive: Vec<(u32, u64)> =
                        self.alive.iter().map(|(p, (s, _))| (*p, *s)).collect();
                    prop_assert_eq!(mirror, alive, "a reader's view equals the truth");
                }
            }
        }
        Ok(())
    }

    /// Drains the table and checks each event; `cause` is the true identity of the exec
    /// just handled.
    fn after_input(&mut self, cause: Option<(u32, u64)>) -> Result<(), TestCaseError> {
        for out in drain(&mut self.table) {
            let ev = match out {
                Output::Scan => {
                    self.scan_asked = true;
                    self.scan_clean = !self.congested && !self.lost;
                    continue;
                }
                Output::Publish(ev) => *ev,
            };
            let announce = |w: &mut World, p: &ProcessInfo| -> Result<(), TestCaseError> {
                let id = if p.start_ticks == 0 {
                    cause.expect("an unknown start comes from an exec")
                } else {
                    (p.pid, p.start_ticks)
                };
                let dup = !w.announced.insert(id);
                prop_assert!(
                    !dup || (p.start_ticks == 0 && w.lossy),
                    "procmon-unique-new: {id:?} announced twice"
                );
                prop_assert!(
                    !w.mirror.contains_key(&p.pid),
                    "two live processes announced at pid {}",
                    p.pid
                );
                w.mirror.insert(p.pid, id);
                Ok(())
            };
            match &ev {
                ProcessEvent::Snapshot { processes, .. } => {
                    for p in processes {
                        announce(self, p)?;
                    }
                }
                ProcessEvent::New { process, .. } => announce(self, process)?,
                ProcessEvent::Exit {
                    process, unseen, ..
                } => {
                    if *unseen {
                        // An earlier holder of the pid than the one a reader knows, or one
                        // never announced: never the announced process itself.
                        continue;
                    }
                    let id = self.mirror.remove(&process.pid);
                    prop_assert!(
                        id.is_some(),
                        "procmon-no-exit-before-new: pid {}",
                        process.pid
                    );
                    let id = id.expect("checked");
                    prop_assert!(
                        process.start_ticks == 0 || process.start_ticks == id.1,
                        "exit of {:?} names start {}",
                        id,
                        process.start_ticks
                    );
                    prop_assert!(
                        self.alive.get(&id.0).is_none_or(|(s, _)| *s != id.1),
                        "procmon-no-false-exit: {id:?} is alive"
                    );
                }
                ProcessEvent::Modified { process, .. } => {
                    let id = self.mirror.get(&process.pid).copied();
                    prop_assert!(id.is_some(), "modified before new: pid {}", process.pid);
                    if let (Some(id), Some(cause)) = (id, cause) {
                        prop_assert_eq!(id, cause, "procmon-pid-reuse: exec of another process");
                    }
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_worlds_with_pid_reuse_losses_and_scans_keep_every_table_invariant(
        pids in 2..12u32,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut w = World::new(pids);
        for op in &ops {
            w.apply(op)?;
        }
        // Liveness: deliver everything, then a clean scan settles the table.
        w.apply(&Op::Deliver { n: 255 })?;
        while !w.queue.is_empty() || w.lost || w.congested {
            w.apply(&Op::Deliver { n: 255 })?;
        }
        w.apply(&Op::Scan)?;
        while w.table.scan_in_flight() {
            w.apply(&Op::Scan)?;
        }
        let truth: Vec<(u32, Option<u64>)> =
            w.alive.iter().map(|(p, (s, _))| (*p, Some(*s))).collect();
        prop_assert_eq!(w.table.identities().collect::<Vec<_>>(), truth);
    }
}
