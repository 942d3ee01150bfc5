//! The WAL file: drives [`daemoneye_core::wal::Wal`] against a real file.
//!
//! One process owns a log at a time (an exclusive `flock` on `<log>.lock`, a file that is
//! never replaced, so compaction cannot open a window); the log is created with mode
//! 0600 in a directory made 0700. Appends are positioned writes, a commit is one
//! `fdatasync` (group commit), and a compaction writes a temporary file, syncs it, renames
//! it over the log and syncs the directory, so a crash leaves either the old log or the
//! new one. By default the calls block on the disk. After
//! [`sync_in_background`](WalFile::sync_in_background) the file work moves to the log's own
//! thread, which does it in order (a sync there also takes the appends and commits queued
//! behind it, so one `fdatasync` serves them all), and the caller hands each sync's report
//! back to [`handle_sync_done`](WalFile::handle_sync_done). The caller's thread then never
//! waits for the disk, not even for a compaction or the file growing. Together with
//! reserved sequences ([`WalConfig::reserve_block`](daemoneye_core::wal::WalConfig)) this
//! keeps the disk off the path from an append to its publish.
//!
//! The file is kept ahead of the log by zeros, [`PREALLOCATE`] bytes at a time: an
//! `fdatasync` of a file whose size changed must commit the filesystem's journal, which
//! waits behind every other writer on the disk (on ext4, hundreds of milliseconds at
//! times); one over blocks already written is a plain data flush. Replay reads a zero
//! length as the end of the log, and zeros up to the end of the file as padding, not as a
//! damaged tail.

use crate::clock::{Clock, MonotonicClock};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use daemoneye_core::wal::{
    Replayed, TailError, Wal, WalAction, WalConfig, WalError, WalReader, gather_events,
};
use daemoneye_proto::pb::wal::WalRecord;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::mpsc::UnboundedSender;

/// Why the log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalFileError {
    /// Another process holds the log.
    #[error("WAL {0} is held by another process (is another instance running?)")]
    Locked(PathBuf),
    /// An OS error, with what was being done.
    #[error("WAL {path}: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The log.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The machine refused an append.
    #[error(transparent)]
    Refused(#[from] WalError),
}

/// Names what failed on which log.
fn io_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> WalFileError + 'a {
    move |source| WalFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The file grows by this many zeros at a time, ahead of the log.
pub const PREALLOCATE: u64 = 1024 * 1024;

/// `n` rounded up to a whole number of [`PREALLOCATE`] steps.
fn allocation_for(n: u64) -> u64 {
    n.div_ceil(PREALLOCATE).max(1) * PREALLOCATE
}

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = [0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// True when `file` holds only zeros from `from` to its end.
fn zeros_from(file: &File, from: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
}

/// A record the caller must publish (QoS1, under its sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPublish {
    /// The record.
    pub record: WalRecord,
    /// It came back from a replay: send it marked as a resend.
    pub replayed: bool,
}

/// A background sync finished (or the log's thread failed): hand it to
/// [`WalFile::handle_sync_done`].
#[derive(Debug)]
pub struct SyncDone {
    /// The log's length when the sync started: everything before it is durable.
    covers: u64,
    result: Result<(), WalFileError>,
}

/// The log's file, owned by the caller or, once syncs run in the background, by the log's
/// own thread.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    /// Held as long as the file is written.
    _lock: Flock<File>,
    /// Where the log ends (the next append goes here).
    end: u64,
    /// The file's size: the log, then zeros.
    allocated: u64,
}

impl LogFile {
    fn io_err(&self, what: &'static str) -> impl FnOnce(io::Error) -> WalFileError + '_ {
        io_error(&self.path, what)
    }

    fn truncate(&mut self, len: u64) -> Result<(), WalFileError> {
        self.file.set_len(len).map_err(self.io_err("truncating"))?;
        self.end = len;
        self.allocated = len;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), WalFileError> {
        let end = self.end + bytes.len() as u64;
        if end > self.allocated {
            let to = allocation_for(end);
            // Synced at once: until the zeros are on the disk, with their size, each data
            // sync into them still commits the journal.
            write_zeros(&self.file, self.allocated, to)
                .and_then(|()| self.file.sync_all())
                .map_err(self.io_err("growing"))?;
            self.allocated = to;
        }
        self.file
            .write_all_at(bytes, self.end)
            .map_err(self.io_err("appending"))?;
        self.end = end;
        Ok(())
    }

    fn sync(&self) -> Result<(), WalFileError> {
        self.file.sync_data().map_err(self.io_err("syncing"))
    }

    fn rewrite(&mut self, bytes: &[u8]) -> Result<(), WalFileError> {
        let tmp = self.path.with_extension("wal.compact");
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.io_err("creating the compacted log"))?;
        let allocated = allocation_for(bytes.len() as u64);
        out.write_all(bytes)
            .and_then(|()| write_zeros(&out, bytes.len() as u64, allocated))
            .and_then(|()| out.sync_all())
            .map_err(self.io_err("writing the compacted log"))?;
        std::fs::rename(&tmp, &self.path).map_err(self.io_err("replacing the log"))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io_err("syncing the log's directory"))?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(self.io_err("reopening the compacted log"))?;
        self.end = bytes.len() as u64;
        self.allocated = allocated;
        tracing::debug!(wal = %self.path.display(), bytes = bytes.len(), "WAL compacted");
        Ok(())
    }
}

/// Work for the log's thread, done in order.
#[derive(Debug)]
enum FileOp {
    Truncate(u64),
    Append(Bytes),
    Sync,
    Rewrite(Bytes),
}

/// The log's thread: does `ops` in order and reports each sync on `done`. A sync also takes
/// whatever was queued behind it (appends, and the syncs that would cover them), so one
/// `fdatasync` serves every commit made while the last one ran. After a failure it reports
/// the error and stops.
fn log_thread(
    mut log: LogFile,
    ops: std::sync::mpsc::Receiver<FileOp>,
    done: UnboundedSender<SyncDone>,
) {
    let mut next = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match ops.recv() {
                Ok(op) => op,
                Err(_) => return,
            },
        };
        let result = match op {
            FileOp::Truncate(len) => log.truncate(len),
            FileOp::Append(bytes) => log.append(&bytes),
            FileOp::Rewrite(bytes) => log.rewrite(&bytes),
            FileOp::Sync => {
                let mut result = Ok(());
                while result.is_ok() {
                    match ops.try_recv() {
                        Ok(FileOp::Append(bytes)) => result = log.append(&bytes),
                        Ok(FileOp::Sync) => {}
                        Ok(op) => {
                            next = Some(op);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let covers = log.end;
                let result = result.and_then(|()| log.sync());
                let failed = result.is_err();
                if done.send(SyncDone { covers, result }).is_err() || failed {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = result {
            let _ = done.send(SyncDone {
                covers: 0,
                result: Err(e),
            });
            return;
        }
    }
}

/// Where the file work happens.
#[derive(Debug)]
enum Disk {
    /// On the caller's thread: calls block on the disk.
    Direct(LogFile),
    /// On the log's thread.
    Thread {
        ops: std::sync::mpsc::Sender<FileOp>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// An open, locked WAL.
#[derive(Debug)]
pub struct WalFile {
    path: PathBuf,
    disk: Disk,
    machine: Wal,
    outbox: Vec<ToPublish>,
    clock: MonotonicClock,
    /// Sync lengths the machine asked for and that are not yet reported to it, in order.
    requested: std::collections::VecDeque<u64>,
    /// Syncs the machine asked for (a commit's ticket) and syncs made durable.
    commits_asked: u64,
    commits_done: u64,
}

impl WalFile {
    /// Opens (or creates) the log at `path`, replays it, truncates a torn tail and syncs
    /// what survived. The replayed records are waiting in [`take_publishes`](Self::take_publishes).
    pub fn open(path: &Path, config: WalConfig) -> Result<(WalFile, Replayed), WalFileError> {
        let io_err = |what| io_error(path, what);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating its directory"))?;
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening its lock file"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|_| WalFileError::Locked(path.to_path_buf()))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err("opening"))?;
        let mut reader = WalReader::new(config.max_record);
        let mut records = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io_err("reading"))?;
            if n == 0 {
                break;
            }
            reader.push(&buf[..n]);
            while let Some(r) = reader.next_record() {
                gather_events(&mut records, r);
            }
        }
        let mut replayed = reader.finish();
        let allocated = file
            .metadata()
            .map_err(io_err("reading its metadata"))?
            .len();
        if replayed.tail == Some(TailError::Empty)
            && zeros_from(&file, replayed.valid_len).map_err(io_err("reading"))?
        {
            // The zeros kept ahead of the log.
            replayed.tail = None;
        }
        if let Some(tail) = &replayed.tail {
            tracing::warn!(wal = %path.display(), valid_bytes = replayed.valid_len, %tail,
                "WAL has a damaged tail; truncating it");
        }
        let machine = Wal::recover(config, records, &replayed);
        let mut wal = WalFile {
            path: path.to_path_buf(),
            disk: Disk::Direct(LogFile {
                path: path.to_path_buf(),
                file,
                _lock: lock,
                end: replayed.valid_len,
                allocated,
            }),
            machine,
            outbox: Vec::new(),
            clock: MonotonicClock::default(),
            requested: std::collections::VecDeque::new(),
            commits_asked: 0,
            commits_done: 0,
        };
        wal.run()?;
        tracing::info!(wal = %path.display(), %replayed, "WAL replayed");
        Ok((wal, replayed))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an event (not yet accepted: see [`commit`](Self::commit)). Returns its
    /// sequence.
    pub fn append(
        &mut self,
        accepted_at_ms: u64,
        topic: &str,
        payload: Bytes,
    ) -> Result<u64, WalFileError> {
        let seq = self.machine.append(accepted_at_ms, topic, payload)?;
        self.run()?;
        Ok(seq)
    }

    /// From now on the file work (appends, syncs, compactions) runs in order on the log's
    /// own thread, and the caller never waits for the disk: each sync reports on `done`, and
    /// the caller passes the report to [`handle_sync_done`](Self::handle_sync_done) (a
    /// failure of the thread reports there too). [`close`](Self::close) waits for the work
    /// already handed over.
    pub fn sync_in_background(
        &mut self,
        done: UnboundedSender<SyncDone>,
    ) -> Result<(), WalFileError> {
        self.sync_in_background_with(done, || {})
    }

    /// [`sync_in_background`](Self::sync_in_background), with `on_start` run first on the
    /// log's thread (a process that drops capabilities per thread drops them there).
    pub fn sync_in_background_with(
        &mut self,
        done: UnboundedSender<SyncDone>,
        on_start: fn(),
    ) -> Result<(), WalFileError> {
        let (ops, rx) = std::sync::mpsc::channel();
        let Disk::Direct(_) = &self.disk else {
            return Ok(());
        };
        let Disk::Direct(log) =
            std::mem::replace(&mut self.disk, Disk::Thread { ops, thread: None })
        else {
            unreachable!("checked above");
        };
        let thread = std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || {
                on_start();
                log_thread(log, rx, done)
            })
            .map_err(self.io_err("starting its thread"))?;
        if let Disk::Thread { thread: t, .. } = &mut self.disk {
            *t = Some(thread);
        }
        Ok(())
    }

    /// Syncs everything appended (group commit): those events are accepted, and what was
    /// not published before its sync waits in [`take_publishes`](Self::take_publishes).
    /// Returns the commit's ticket: it is durable once [`commits_done`](Self::commits_done)
    /// reaches it (at once, unless syncs run in the background).
    pub fn commit(&mut self) -> Result<u64, WalFileError> {
        self.machine.commit();
        self.run()?;
        Ok(self.commits_asked)
    }

    /// Commits made durable so far (see [`commit`](Self::commit)'s ticket).
    pub fn commits_done(&self) -> u64 {
        self.commits_done
    }

    /// Syncs asked for and not yet reported.
    pub fn syncs_outstanding(&self) -> usize {
        self.requested.len()
    }

    /// A background sync finished: the commits it covers are accepted (and their records
    /// wait in [`take_publishes`](Self::take_publishes) if they were not published yet).
    /// An error is the log's thread failing: it has stopped, and the log can take no more.
    pub fn handle_sync_done(&mut self, done: SyncDone) -> Result<(), WalFileError> {
        done.result?;
        self.report_synced(done.covers);
        self.run()
    }

    /// Reports every requested sync that `covers` includes to the machine.
    fn report_synced(&mut self, covers: u64) {
        while let Some(&len) = self.requested.front() {
            if len > covers {
                break;
            }
            self.requested.pop_front();
            self.commits_done += 1;
            let now = self.clock.now();
            self.machine.handle_synced(now, len);
        }
    }

    /// Does `op` now or hands it to the log's thread.
    fn perform(&mut self, op: FileOp) -> Result<(), WalFileError> {
        match &mut self.disk {
            Disk::Direct(log) => match op {
                FileOp::Truncate(len) => log.truncate(len),
                FileOp::Append(bytes) => log.append(&bytes),
                FileOp::Rewrite(bytes) => log.rewrite(&bytes),
                FileOp::Sync => {
                    log.sync()?;
                    let covers = log.end;
                    self.report_synced(covers);
                    Ok(())
                }
            },
            Disk::Thread { ops, .. } => ops.send(op).map_err(|_| WalFileError::Io {
                what: "handing work to its thread",
                path: self.path.clone(),
                source: io::Error::other("the log's thread stopped after an error"),
            }),
        }
    }

    /// The broker acknowledged `sequence`; the log may be compacted.
    pub fn handle_puback(&mut self, sequence: u64) -> Result<(), WalFileError> {
        let now = self.clock.now();
        self.machine.handle_puback(now, sequence);
        self.run()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due (the idle compaction: see
    /// [`WalConfig::idle_compact_delay`](daemoneye_core::wal::WalConfig)).
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.machine.poll_timeout().map(|at| self.clock.to_std(at))
    }

    /// Time passed: the log shrinks to a checkpoint once it has been idle long enough.
    pub fn handle_timeout(&mut self) -> Result<(), WalFileError> {
        let now = self.clock.now();
        self.machine.handle_timeout(now);
        self.run()
    }

    /// A graceful stop: with everything acknowledged, the log shrinks to a checkpoint.
    pub fn handle_stop(&mut self) -> Result<(), WalFileError> {
        self.machine.handle_stop();
        self.run()
    }

    /// Records to publish now, in order.
    pub fn take_publishes(&mut self) -> Vec<ToPublish> {
        std::mem::take(&mut self.outbox)
    }

    /// Records accepted and waiting for their PubAck.
    pub fn pending(&self) -> usize {
        self.machine.pending()
    }

    /// Records still waiting for a sync or a PubAck: what a graceful stop waits for.
    pub fn unsettled(&self) -> usize {
        self.machine.unsettled()
    }

    /// Changes how many records may be held waiting for their PubAck.
    pub fn set_max_pending(&mut self, max_pending: usize) {
        self.machine.set_max_pending(max_pending);
    }

    /// The highest sequence assigned.
    pub fn last_sequence(&self) -> u64 {
        self.machine.last_sequence()
    }

    fn io_err(&self, what: &'static str) -> impl FnOnce(io::Error) -> WalFileError + '_ {
        io_error(&self.path, what)
    }

    fn run(&mut self) -> Result<(), WalFileError> {
        while let Some(action) = self.machine.poll_output() {
            match action {
                WalAction::Truncate { len } => self.perform(FileOp::Truncate(len))?,
                WalAction::Append(bytes) => self.perform(FileOp::Append(bytes))?,
                WalAction::Sync { len } => {
                    self.requested.push_back(len);
                    self.commits_asked += 1;
                    self.perform(FileOp::Sync)?;
                }
                WalAction::Rewrite(bytes) => self.perform(FileOp::Rewrite(bytes))?,
                WalAction::Publish { record, replayed } => {
                    self.outbox.push(ToPublish { record, replayed });
                }
            }
        }
        Ok(())
    }
}

impl WalFile {
    /// Closes the log, waiting for the work handed to its thread (a dropped `WalFile`
    /// leaves its thread to finish that work alone, holding the lock until it has, so
    /// that a process that exits is not held by a slow disk: what was written is in the
    /// page cache either way, and a torn tail is truncated at the next open).
    pub fn close(mut self) {
        if let Disk::Thread { ops, thread } = &mut self.disk {
            let (closed, _) = std::sync::mpsc::channel();
            drop(std::mem::replace(ops, closed));
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}
