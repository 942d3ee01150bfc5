//! The real-time pipeline (Linux): process connector events in, observations out.
//!
//! Three threads. The receive thread reads datagrams and, on an exec, reads at once what
//! vanishes with the process ([`ProcessReader::read_early`]: argv, the executable, stat,
//! ids, cwd) before handing the event on; a process that lives a millisecond is still
//! caught with its argv. The reader thread completes each exec (cgroup, parent, names,
//! enhanced metadata, and the hash when it is cached). An executable not hashed before is only
//! opened there: the hash thread reads it whole (a large binary takes a while, and the
//! reader must keep up with the next processes' exits). [`Observation`]s reach the caller
//! in the order the kernel reported them, on a bounded channel: from the reader directly,
//! or through the hash thread while it holds an earlier one. Counters
//! ([`WatchStats`]) are readable at any time for heartbeats.
//!
//! An exit carries the exit code as a shell reports it: the value the process passed to
//! `exit` (the wait status's second byte) for a normal exit, 128 plus the signal number
//! when a signal ended it ([`exit_code_of_status`]).
//!
//! [`Watch::stop`] (or dropping the watch) ends its threads within the receive timeout
//! (100 ms by default) plus the reader's and the hash thread's current items. This module observes; what an
//! observation means (new, modified, exit, by (pid, start time)) is the core's process
//! table's decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use daemoneye_core::procmon::netlink::{self, Message, ProcEventKind, exit_code_of_status};
use daemoneye_proto::pb::events::ProcessInfo;

use super::connector::{ProcConnector, Received};
use super::reader::{EarlyRead, PendingHash, ProcessReader};

/// Observations queued for the caller before the reader waits (and, behind it, the
/// kernel's socket buffer fills and overruns).
pub const OBSERVATION_QUEUE: usize = 65_536;

/// Observations in the hash thread's hands at most before the reader hashes executables
/// itself (each waiting hash holds a file descriptor).
pub const HASHES_WAITING: usize = 256;

/// How the watch's threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Run the receive thread under `SCHED_FIFO` at this priority (1-99; needs
    /// CAP_SYS_NICE, so it is set before any capability drop). A process that lives a
    /// millisecond is gone before an ordinary thread is scheduled on a busy host; the
    /// receive thread sleeps in `recv` and does little per event, and the kernel's
    /// real-time throttling keeps 5% of each CPU for others. `None`: the default policy.
    pub realtime_priority: Option<u8>,
    /// Each watch thread drops its capabilities to
    /// [`privileges::KEPT`](super::privileges::KEPT) as it starts (after taking its
    /// priority): capabilities are per thread, so threads started before the process
    /// drops must drop their own.
    pub drop_privileges: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            realtime_priority: Some(10),
            drop_privileges: false,
        }
    }
}

/// What the watch saw.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A process executed a new program (a new process, or an exec in an existing pid).
    Exec {
        /// What was read; `unread` lists what was not.
        info: Box<ProcessInfo>,
        /// The process was gone before anything could be read (`info` has the pid only).
        lost_to_race: bool,
        /// The kernel's timestamp (nanoseconds since boot, `CLOCK_MONOTONIC`).
        timestamp_ns: u64,
        /// When the receive thread got the datagram.
        received_at: Instant,
    },
    /// A process changed its user or group ids without an exec (setuid, setgid and
    /// their kin), read again after the change.
    Credentials {
        /// What was read; `unread` lists what was not.
        info: Box<ProcessInfo>,
        /// The kernel's timestamp (nanoseconds since boot, `CLOCK_MONOTONIC`).
        timestamp_ns: u64,
    },
    /// A process (thread group) exited.
    Exit {
        /// The process.
        pid: u32,
        /// Its parent.
        ppid: u32,
        /// The exit code ([`exit_code_of_status`] of `status`).
        exit_code: i32,
        /// The raw wait status.
        status: u32,
        /// The signal sent to the parent.
        exit_signal: u32,
        /// The kernel's timestamp.
        timestamp_ns: u64,
        /// When the receive thread got the datagram.
        received_at: Instant,
    },
    /// A process forked a new process (threads are not reported).
    Fork {
        /// The new process.
        pid: u32,
        /// Its parent.
        ppid: u32,
        /// The kernel's timestamp.
        timestamp_ns: u64,
    },
    /// Events were lost (the socket buffer overflowed): rescan to reconcile.
    Overrun,
    /// The connector failed or sent what could not be decoded.
    Error {
        /// What happened.
        message: String,
        /// True when the watch stopped because of it (switch to scanning).
        fatal: bool,
    },
}

/// The watch's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Datagrams received.
    pub received: u64,
    /// Exec events.
    pub execs: u64,
    /// Process exit events.
    pub exits: u64,
    /// Process fork events.
    pub forks: u64,
    /// User and group id changes of processes (threads' own are not reported).
    pub credentials: u64,
    /// Execs whose process was gone before anything could be read.
    pub lost_to_race: u64,
    /// Execs read without their argv (the process exited first).
    pub execs_without_argv: u64,
    /// Overruns (ENOBUFS or NLMSG_OVERRUN).
    pub overruns: u64,
    /// Datagrams that did not decode.
    pub decode_errors: u64,
    /// Observations dropped because the caller did not consume them before the stop.
    pub dropped: u64,
    /// Observations handed to the caller's channel.
    pub delivered: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    execs: AtomicU64,
    exits: AtomicU64,
    forks: AtomicU64,
    credentials: AtomicU64,
    lost_to_race: AtomicU64,
    execs_without_argv: AtomicU64,
    overruns: AtomicU64,
    decode_errors: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    realtime: AtomicBool,
    /// Observations handed to the hash thread and not yet delivered by it.
    with_hasher: AtomicUsize,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the receive thread hands the reader thread.
enum Pending {
    Exec {
        early: Box<EarlyRead>,
        timestamp_ns: u64,
        received_at: Instant,
    },
    Credentials {
        pid: u32,
        timestamp_ns: u64,
    },
    Ready(Observation),
}

/// A running watch: the receive and reader threads.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    reader: ProcessReader,
    threads: Vec<JoinHandle<()>>,
}

impl Watch {
    /// Starts watching on `connector` (already open and listening), reading processes
    /// with `reader`. Returns the watch and the channel of its observations.
    pub fn start(
        connector: ProcConnector,
        reader: ProcessReader,
        options: WatchOptions,
    ) -> std::io::Result<(Watch, Receiver<Observation>)> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (pending_tx, pending_rx) = mpsc::sync_channel::<Pending>(OBSERVATION_QUEUE);
        let (read_tx, read_rx) = mpsc::sync_channel::<Read>(OBSERVATION_QUEUE);
        let (out_tx, out_rx) = mpsc::sync_channel::<Observation>(OBSERVATION_QUEUE);
        let receive = {
            let (stop, counters, reader) = (stop.clone(), counters.clone(), reader.clone());
            std::thread::Builder::new()
                .name("procmon-receive".into())
                .spawn(move || {
                    if let Some(priority) = options.realtime_priority {
                        let realtime = set_realtime(priority);
                        counters.realtime.store(realtime, Ordering::Relaxed);
                    }
                    if options.drop_privileges {
                        drop_thread_privileges();
                    }
                    receive_loop(&connector, &reader, &counters, &stop, &pending_tx);
                })?
        };
        let complete = {
            let (stop, counters, reader) = (stop.clone(), counters.clone(), reader.clone());
            let out_tx = out_tx.clone();
            std::thread::Builder::new()
                .name("procmon-reader".into())
                .spawn(move || {
                    if options.drop_privileges {
                        drop_thread_privileges();
                    }
                    reader_loop(&reader, &counters, &stop, &pending_rx, &read_tx, &out_tx);
                })?
        };
        let hash = {
            let (stop, counters, reader) = (stop.clone(), counters.clone(), reader.clone());
            std::thread::Builder::new()
                .name("procmon-hash".into())
                .spawn(move || {
                    if options.drop_privileges {
                        drop_thread_privileges();
                    }
                    hash_loop(&reader, &counters, &stop, &read_rx, &out_tx);
                })?
        };
        Ok((
            Watch {
                stop,
                counters,
                reader,
                threads: vec![receive, complete, hash],
            },
            out_rx,
        ))
    }

    /// The counters now.
    pub fn stats(&self) -> WatchStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WatchStats {
            received: get(&c.received),
            execs: get(&c.execs),
            exits: get(&c.exits),
            forks: get(&c.forks),
            credentials: get(&c.credentials),
            lost_to_race: get(&c.lost_to_race),
            execs_without_argv: get(&c.execs_without_argv),
            overruns: get(&c.overruns),
            decode_errors: get(&c.decode_errors),
            dropped: get(&c.dropped),
            delivered: get(&c.delivered),
        }
    }

    /// True when the receive thread runs under `SCHED_FIFO`.
    pub fn is_realtime(&self) -> bool {
        self.counters.realtime.load(Ordering::Relaxed)
    }

    /// The reader (its per-field failure counters, caches and options).
    pub fn reader(&self) -> &ProcessReader {
        &self.reader
    }

    /// True while the receive thread runs (false after a fatal connector error).
    pub fn is_running(&self) -> bool {
        self.threads.first().is_some_and(|t| !t.is_finished())
    }

    /// Stops the threads and waits for them (within the receive timeout plus the items the
    /// reader and the hash thread are on). Observations already queued stay readable on the
    /// channel.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn set_realtime(priority: u8) -> bool {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let result = ThreadPriority::try_from(priority.clamp(1, 99))
        .map_err(|e| e.to_string())
        .and_then(|p| {
            set_thread_priority_and_policy(
                thread_native_id(),
                p,
                ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
            )
            .map_err(|e| format!("{e:?}"))
        });
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the receive thread keeps the default scheduling (short-lived processes may lose their argv under load)");
            false
        }
    }
}

fn drop_thread_privileges() {
    if let Err(e) = super::privileges::drop_to_minimum() {
        tracing::warn!(error = %e, "a watch thread could not drop its capabilities");
    }
}

fn receive_loop(
    connector: &ProcConnector,
    reader: &ProcessReader,
    counters: &Counters,
    stop: &AtomicBool,
    pending: &SyncSender<Pending>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let hand_on = |p: Pending| pending.send(p).is_ok();
    while !stop.load(Ordering::Relaxed) {
        let n = match connector.recv(&mut buf) {
            Ok(Received::Datagram(n)) => n,
            Ok(Received::Timeout) => continue,
            Ok(Received::Overrun) => {
                bump(&counters.overruns);
                if !hand_on(Pending::Ready(Observation::Overrun)) {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "process connector failed; the watch stops");
                let _ = hand_on(Pending::Ready(Observation::Error {
                    message: e.to_string(),
                    fatal: true,
                }));
                break;
            }
        };
        let received_at = Instant::now();
        bump(&counters.received);
        for message in netlink::decode(&buf[..n]) {
            let pending = match message {
                Ok(Message::Proc { event, .. }) => match event.kind {
                    ProcEventKind::Exec { tgid, .. } => {
                        bump(&counters.execs);
                        // Now, on this thread: the process may be about to exit.
                        let early = Box::new(reader.read_early(tgid));
                        Some(Pending::Exec {
                            early,
                            timestamp_ns: event.timestamp_ns,
                            received_at,
                        })
                    }
                    ProcEventKind::Exit {
                        pid,
                        tgid,
                        exit_code,
                        exit_signal,
                        parent_tgid,
                        ..
                    } if pid == tgid => {
                        bump(&counters.exits);
                        Some(Pending::Ready(Observation::Exit {
                            pid: tgid,
                            ppid: parent_tgid,
                            exit_code: exit_code_of_status(exit_code),
                            status: exit_code,
                            exit_signal,
                            timestamp_ns: event.timestamp_ns,
                            received_at,
                        }))
                    }
                    ProcEventKind::Uid { pid, tgid, .. } | ProcEventKind::Gid { pid, tgid, .. }
                        if pid == tgid =>
                    {
                        bump(&counters.credentials);
                        Some(Pending::Credentials {
                            pid: tgid,
                            timestamp_ns: event.timestamp_ns,
                        })
                    }
                    ProcEventKind::Fork {
                        parent_tgid,
                        child_pid,
                        child_tgid,
                        ..
                    } if child_pid == child_tgid => {
                        bump(&counters.forks);
                        Some(Pending::Ready(Observation::Fork {
                            pid: child_tgid,
                            ppid: parent_tgid,
                            timestamp_ns: event.timestamp_ns,
                        }))
                    }
                    _ => None,
                },
                Ok(Message::Overrun) => {
                    bump(&counters.overruns);
                    Some(Pending::Ready(Observation::Overrun))
                }
                Ok(_) => None,
                Err(e) => {
                    bump(&counters.decode_errors);
                    tracing::warn!(error = %e, "undecodable process connector datagram");
                    Some(Pending::Ready(Observation::Error {
                        message: e.to_string(),
                        fatal: false,
                    }))
                }
            };
            if let Some(p) = pending
                && !hand_on(p)
            {
                return;
            }
        }
    }
    connector.ignore();
}

/// What the reader thread hands the hash thread: an observation, and the executable to
/// hash into it when its hash was not cached.
type Read = (Observation, Option<PendingHash>);

/// Completes each exec. An observation goes to the caller directly when the hash thread
/// holds nothing (so none can overtake another), else behind what the hash thread holds.
fn reader_loop(
    reader: &ProcessReader,
    counters: &Counters,
    stop: &AtomicBool,
    pending: &Receiver<Pending>,
    to_hasher: &SyncSender<Read>,
    out: &SyncSender<Observation>,
) {
    // Ends when the receive thread ends (its sender drops).
    while let Ok(item) = pending.recv() {
        // Only this thread adds to it: it can only fall until this item is sent.
        let with_hasher = counters.with_hasher.load(Ordering::Acquire);
        let defer = with_hasher < HASHES_WAITING;
        let read = |early: EarlyRead| {
            if defer {
                reader.complete_deferring_hash(early)
            } else {
                (reader.complete(early), None)
            }
        };
        let (observation, hash) = match item {
            Pending::Ready(o) => (o, None),
            Pending::Credentials { pid, timestamp_ns } => {
                let (outcome, hash) = read(reader.read_early(pid));
                if outcome.gone {
                    continue;
                }
                let o = Observation::Credentials {
                    info: Box::new(outcome.info),
                    timestamp_ns,
                };
                (o, hash)
            }
            Pending::Exec {
                early,
                timestamp_ns,
                received_at,
            } => {
                let without_argv = early.cmdline.is_err();
                let (outcome, hash) = read(*early);
                if outcome.gone {
                    bump(&counters.lost_to_race);
                }
                if without_argv {
                    bump(&counters.execs_without_argv);
                }
                let o = Observation::Exec {
                    info: Box::new(outcome.info),
                    lost_to_race: outcome.gone,
                    timestamp_ns,
                    received_at,
                };
                (o, hash)
            }
        };
        if hash.is_none() && with_hasher == 0 {
            if !deliver(out, observation, stop, counters) {
                return;
            }
            continue;
        }
        counters.with_hasher.fetch_add(1, Ordering::AcqRel);
        // Ends when the hash thread ends (the caller dropped its receiver).
        if to_hasher.send((observation, hash)).is_err() {
            return;
        }
    }
}

/// Hashes what the reader left to hash and delivers every observation in order. Once a
/// stop is asked, what is left goes out without its hash (counted as unread).
fn hash_loop(
    reader: &ProcessReader,
    counters: &Counters,
    stop: &AtomicBool,
    reads: &Receiver<Read>,
    out: &SyncSender<Observation>,
) {
    // Ends when the reader thread ends (its sender drops).
    while let Ok((mut observation, hash)) = reads.recv() {
        if let (
            Some(hash),
            Observation::Exec { info, .. } | Observation::Credentials { info, .. },
        ) = (hash, &mut observation)
        {
            if stop.load(Ordering::Relaxed) {
                reader.abandon_hash(info, hash);
            } else {
                reader.finish_hash(info, hash);
            }
        }
        let delivered = deliver(out, observation, stop, counters);
        counters.with_hasher.fetch_sub(1, Ordering::AcqRel);
        if !delivered {
            return;
        }
    }
}

/// Sends `o`, waiting while the caller is behind; gives up (counting the drop) once a stop
/// is asked. False when the caller dropped its receiver.
fn deliver(
    out: &SyncSender<Observation>,
    mut o: Observation,
    stop: &AtomicBool,
    counters: &Counters,
) -> bool {
    loop {
        match out.try_send(o) {
            Ok(()) => {
                bump(&counters.delivered);
                return true;
            }
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(back)) => {
                if stop.load(Ordering::Relaxed) {
                    bump(&counters.dropped);
                    return true;
                }
                o = back;
                // The caller is behind: a full queue is rare, a short wait is enough.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
