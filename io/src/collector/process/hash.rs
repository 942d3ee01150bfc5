//! SHA-256 of executables (the `sha2` crate: the RustCrypto implementation, maintained and
//! with CPU acceleration where available), as lowercase hex, cached by the file's identity
//! (device, inode, size, modification time) in a bounded cache.
//!
//! The file is read through `/proc/<pid>/exe` while the process lives, so a binary deleted
//! or replaced after it started still hashes as what runs. When the process is gone, the
//! executable's path is hashed only if its device and inode are still those seen at exec:
//! a path that now names another file is never reported as the process's binary. Files
//! are hashed in 64 KiB pieces, so a large binary never sits whole in memory.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A file's identity for caching: the same identity means the same content, short of a
/// write that keeps size and modification time (which replacing a binary never does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i128,
}

impl FileId {
    /// The identity of the file `meta` describes.
    #[cfg(unix)]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// Why an executable could not be hashed.
#[derive(Debug, Error)]
pub enum HashError {
    /// Opening or reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What was read.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The process is gone and its path names another file than the one it ran.
    #[error("{path} is no longer the file the process ran (device and inode differ)")]
    Replaced {
        /// The path.
        path: String,
    },
    /// The process is gone and nothing was seen at exec to check its path against.
    #[error("the process is gone and its executable was not identified at exec")]
    Unidentified,
}

impl HashError {
    /// The underlying IO error kind, when there is one.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            HashError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Hashes by [`FileId`], at most `capacity` of them (the oldest leaves first).
#[derive(Debug)]
pub struct HashCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<FileId, String>,
    order: VecDeque<FileId>,
    hits: u64,
    misses: u64,
}

/// Default number of cached hashes (a host runs a few thousand distinct binaries at most).
pub const DEFAULT_CAPACITY: usize = 8192;

impl Default for HashCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl HashCache {
    /// A cache of at most `capacity` hashes (at least 1).
    pub fn new(capacity: usize) -> Self {
        HashCache {
            capacity: capacity.max(1),
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// The cached hash of `id`, if any.
    pub fn get(&self, id: &FileId) -> Option<String> {
        let mut inner = self.inner.lock().ok()?;
        let found = inner.map.get(id).cloned();
        if found.is_some() {
            inner.hits += 1;
        }
        found
    }

    /// (hits, misses) so far.
    pub fn counters(&self) -> (u64, u64) {
        self.inner.lock().map_or((0, 0), |i| (i.hits, i.misses))
    }

    /// Number of cached hashes.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, id: FileId, hash: String) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.misses += 1;
        if inner.map.insert(id, hash).is_none() {
            inner.order.push_back(id);
        }
        while inner.map.len() > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&old);
        }
    }

    /// The SHA-256 of process `pid`'s executable: through `/proc/<pid>/exe` while the
    /// process lives, else from `exe_path` when its identity matches `seen` (device and
    /// inode at exec). Cached by the opened file's identity.
    pub fn hash_process_exe(
        &self,
        pid: u32,
        exe_path: &str,
        seen: Option<FileId>,
    ) -> Result<String, HashError> {
        self.hash_exe(Self::open_process_exe(pid, exe_path, seen)?)
    }

    /// Opens process `pid`'s executable for hashing, as [`HashCache::hash_process_exe`]
    /// would. Cheap (an open and a stat); the open file stays readable after the process
    /// exits or its binary is removed, so the hash can be worked out later.
    pub fn open_process_exe(
        pid: u32,
        exe_path: &str,
        seen: Option<FileId>,
    ) -> Result<ExeFile, HashError> {
        let link = format!("/proc/{pid}/exe");
        match File::open(&link) {
            Ok(file) => ExeFile::new(file, link),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(HashError::Io {
                path: link,
                source: e,
            }),
            Err(_) => {
                let Some(seen) = seen else {
                    return Err(HashError::Unidentified);
                };
                let file = File::open(exe_path).map_err(|source| HashError::Io {
                    path: exe_path.into(),
                    source,
                })?;
                let exe = ExeFile::new(file, exe_path.into())?;
                if (exe.id.dev, exe.id.ino) != (seen.dev, seen.ino) {
                    return Err(HashError::Replaced {
                        path: exe_path.into(),
                    });
                }
                Ok(exe)
            }
        }
    }

    /// The cached hash of an opened executable, if any.
    pub fn cached(&self, exe: &ExeFile) -> Option<String> {
        self.get(&exe.id)
    }

    /// The SHA-256 of the file at `path`, cached.
    pub fn hash_path(&self, path: &Path) -> Result<String, HashError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| HashError::Io {
            path: shown.clone(),
            source,
        })?;
        self.hash_open_file(file, &shown)
    }

    /// The SHA-256 of an opened file, cached by its identity (`shown` names it in errors).
    pub fn hash_open_file(&self, file: File, shown: &str) -> Result<String, HashError> {
        self.hash_exe(ExeFile::new(file, shown.into())?)
    }

    /// The SHA-256 of an opened executable: the cache's when it has it, else read whole.
    pub fn hash_exe(&self, exe: ExeFile) -> Result<String, HashError> {
        if let Some(hash) = self.get(&exe.id) {
            return Ok(hash);
        }
        let ExeFile {
            mut file,
            id,
            shown,
        } = exe;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(HashError::Io {
                        path: shown,
                        source,
                    });
                }
            };
            hasher.update(&buf[..n]);
        }
        let hash = to_hex(&hasher.finalize());
        self.insert(id, hash.clone());
        Ok(hash)
    }
}

/// An executable opened for hashing, with its identity (the cache's key).
#[derive(Debug)]
pub struct ExeFile {
    file: File,
    id: FileId,
    shown: String,
}

impl ExeFile {
    fn new(file: File, shown: String) -> Result<Self, HashError> {
        match file.metadata() {
            Ok(meta) => Ok(ExeFile {
                id: FileId::of(&meta),
                file,
                shown,
            }),
            Err(source) => Err(HashError::Io {
                path: shown,
                source,
            }),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_has_the_known_digest_and_is_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").expect("write");
        let cache = HashCache::new(2);
        let h = cache.hash_path(&path).expect("hash");
        assert_eq!(
            h,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(cache.hash_path(&path).expect("hash"), h);
        assert_eq!(cache.counters(), (1, 1));
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = HashCache::new(2);
        for i in 0..5 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, format!("{i}")).expect("write");
            cache.hash_path(&path).expect("hash");
        }
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_large_file_hashes_in_pieces_like_a_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let whole = to_hex(&Sha256::digest(&data));
        assert_eq!(HashCache::default().hash_path(&path).expect("hash"), whole);
    }
}
