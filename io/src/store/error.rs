//! What can go wrong with an event store, each said in one line that names the file.
//!
//! redb's own errors are sorted here into what an operator can act on: a file that is not a
//! store at all, a damaged store, a store of another format version, a store another
//! process holds, and plain IO.

use std::path::{Path, PathBuf};

/// Why an event store could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A read-only open of a file that does not exist.
    #[error("{}: no event store there", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file is something else: not a redb database, or a redb database without the
    /// store's metadata.
    #[error("{}: not a DaemonEye event store ({why})", path.display())]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// What it looks like instead.
        why: String,
    },
    /// The file is a store, but damaged (truncated, overwritten).
    #[error("{}: the event store is damaged: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb found.
        why: String,
    },
    /// The store was written in a format version this build does not read.
    #[error(
        "{}: event store format version {found}, this build reads version {supported}",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The file's version.
        found: u64,
        /// Ours.
        supported: u64,
    },
    /// Another process has the store open for writing (or, for a writer, open at all).
    #[error(
        "{}: the event store is in use by another process ({why})",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// redb's words, and what to do.
        why: String,
    },
    /// A write on a store opened read-only.
    #[error("{}: the event store is open read-only", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// A query that cannot run: a bad glob or topic filter.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// An OS error, with what was being done.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Any other failure of the database, with what was being done.
    #[error("{}: {what}: {why}", path.display())]
    Database {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// redb's message.
        why: String,
    },
}

impl StoreError {
    /// Sorts a redb error met while `what` on `path`.
    pub(super) fn from_redb(path: &Path, what: &'static str, e: impl Into<redb::Error>) -> Self {
        let path = path.to_path_buf();
        match e.into() {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::Locked {
                    path,
                    why: "redb allows one writer; a running agent (or a standalone procmond) \
                          has it: query through the agent instead"
                        .into(),
                }
            }
            redb::Error::UpgradeRequired(v) => StoreError::Corrupt {
                path,
                why: format!("written by an older redb (file format {v})"),
            },
            redb::Error::Corrupted(why) => StoreError::Corrupt { path, why },
            e @ redb::Error::TableTypeMismatch { .. } => StoreError::NotAStore {
                path,
                why: format!("a redb database of another program: {e}"),
            },
            redb::Error::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => {
                StoreError::NotAStore {
                    path,
                    why: source.to_string(),
                }
            }
            redb::Error::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                StoreError::Corrupt {
                    path,
                    why: format!("it ends early (truncated?): {source}"),
                }
            }
            redb::Error::Io(source) => StoreError::Io { what, path, source },
            other => StoreError::Database {
                what,
                path,
                why: other.to_string(),
            },
        }
    }
}
