//! The WAL file: drives [`daemoneye_core::wal::Wal`] against a real file.
//!
//! One process owns a log at a time (an exclusive `flock` on `<log>.lock`, a file that is
//! never replaced, so compaction cannot open a window); the log is created with mode
//! 0600 in a directory made 0700. Appends are positioned writes, a commit is one
//! `fdatasync` (group commit), and a compaction writes a temporary file, syncs it, renames
//! it over the log and syncs the directory, so a crash leaves either the old log or the
//! new one. By default the calls block on the disk; after
//! [`sync_in_background`](WalFile::sync_in_background) a commit's `fdatasync` runs on a
//! blocking thread instead (one at a time; a commit asked for meanwhile waits for the next
//! one, which covers it and everything appended since), and the caller hands each
//! completion back to [`handle_sync_done`](WalFile::handle_sync_done). Together with
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
use std::sync::Arc;

use bytes::Bytes;
use daemoneye_core::wal::{
    Replayed, TailError, Wal, WalAction, WalConfig, WalError, WalReader, is_checkpoint,
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

/// A background sync finished: hand it to [`WalFile::handle_sync_done`].
#[derive(Debug)]
pub struct SyncDone {
    /// The log's length when the sync started: everything before it is durable.
    covers: u64,
    result: io::Result<()>,
}

/// An open, locked WAL.
#[derive(Debug)]
pub struct WalFile {
    path: PathBuf,
    file: Arc<File>,
    _lock: Flock<File>,
    machine: Wal,
    outbox: Vec<ToPublish>,
    clock: MonotonicClock,
    /// Where the log ends (the next append goes here).
    end: u64,
    /// The file's size: the log, then zeros.
    allocated: u64,
    /// Where background syncs report (none: syncs block the caller).
    background: Option<UnboundedSender<SyncDone>>,
    /// A background sync is running.
    syncing: bool,
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
                if !is_checkpoint(&r) {
                    records.push(r);
                }
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
            file: Arc::new(file),
            _lock: lock,
            machine,
            outbox: Vec::new(),
            clock: MonotonicClock::default(),
            end: replayed.valid_len,
            allocated,
            background: None,
            syncing: false,
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

    /// From now on a commit's sync runs on a blocking thread of the tokio runtime (the
    /// caller must be inside one) and reports on `done`; the caller passes each report to
    /// [`handle_sync_done`](Self::handle_sync_done).
    pub fn sync_in_background(&mut self, done: UnboundedSender<SyncDone>) {
        self.background = Some(done);
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

    /// A background sync finished: the commits it covers are accepted (and their records
    /// wait in [`take_publishes`](Self::take_publishes) if they were not published yet);
    /// the next sync starts if one was asked for meanwhile.
    pub fn handle_sync_done(&mut self, done: SyncDone) -> Result<(), WalFileError> {
        self.syncing = false;
        done.result.map_err(self.io_err("syncing"))?;
        self.report_synced(done.covers);
        self.run()?;
        self.start_sync();
        Ok(())
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

    /// Starts a background sync of everything written, if one is asked for and none runs.
    fn start_sync(&mut self) {
        let Some(done) = self.background.as_ref() else {
            return;
        };
        if self.syncing || self.requested.is_empty() {
            return;
        }
        self.syncing = true;
        let (file, done, covers) = (Arc::clone(&self.file), done.clone(), self.end);
        tokio::task::spawn_blocking(move || {
            let result = file.sync_data();
            let _ = done.send(SyncDone { covers, result });
        });
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
                WalAction::Truncate { len } => {
                    self.file.set_len(len).map_err(self.io_err("truncating"))?;
                    self.end = len;
                    self.allocated = len;
                }
                WalAction::Append(bytes) => {
                    let end = self.end + bytes.len() as u64;
                    if end > self.allocated {
                        let to = allocation_for(end);
                        // Synced at once: until the zeros are on the disk, with their
                        // size, each data sync into them still commits the journal.
                        write_zeros(&self.file, self.allocated, to)
                            .and_then(|()| self.file.sync_all())
                            .map_err(self.io_err("growing"))?;
                        self.allocated = to;
                    }
                    self.file
                        .write_all_at(&bytes, self.end)
                        .map_err(self.io_err("appending"))?;
                    self.end = end;
                }
                WalAction::Sync { len } => {
                    self.requested.push_back(len);
                    self.commits_asked += 1;
                    if self.background.is_some() {
                        self.start_sync();
                    } else {
                        self.file.sync_data().map_err(self.io_err("syncing"))?;
                        self.report_synced(self.end);
                    }
                }
                WalAction::Rewrite(bytes) => self.rewrite(&bytes)?,
                WalAction::Publish { record, replayed } => {
                    self.outbox.push(ToPublish { record, replayed });
                }
            }
        }
        Ok(())
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
        self.file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(self.io_err("reopening the compacted log"))?,
        );
        self.end = bytes.len() as u64;
        self.allocated = allocated;
        tracing::debug!(wal = %self.path.display(), bytes = bytes.len(), "WAL compacted");
        Ok(())
    }
}
