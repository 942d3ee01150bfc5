//! The broker socket's location and permissions (DESIGN.md section 6).
//!
//! Default path: `$XDG_RUNTIME_DIR/daemoneye/broker.sock`, else
//! `/tmp/daemoneye-<uid>/broker.sock`; `DAEMONEYE_BROKER_SOCKET` or an explicit path
//! overrides it. The default directory is the agent user's own with mode 0700; a directory
//! the user named keeps its mode (see [`prepare_socket_dir`]). The socket is 0600.
//! A socket file with no broker answering is stale and replaced; one with a live broker is
//! an error, never a takeover.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable every component reads for the socket path.
pub const SOCKET_ENV: &str = "DAEMONEYE_BROKER_SOCKET";

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A broker already answers on the path.
    #[error("a live broker is already listening on {0}; stop it first or choose another --socket")]
    LiveBroker(PathBuf),
    /// The socket's directory belongs to someone else.
    #[error(
        "socket directory {path} is owned by uid {owner}, not by this user (uid {uid}); refusing to use it"
    )]
    ForeignDirectory {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        uid: u32,
    },
    /// The socket's directory may be written by others and is not sticky.
    #[error(
        "socket directory {path} (mode {mode:o}) is writable by other users and not sticky: anyone could replace the socket; refusing to use it (its mode is left as it is)"
    )]
    LooseDirectory {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path has no parent directory.
    #[error("socket path {0} has no parent directory")]
    NoParent(PathBuf),
    /// An OS error, with what was being done.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// This process's effective uid.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The default socket path for this user.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("daemoneye").join("broker.sock"),
        None => PathBuf::from(format!("/tmp/daemoneye-{}", current_uid())).join("broker.sock"),
    }
}

/// Where components keep state that must survive a reboot (a collector's WAL):
/// `/var/lib/daemoneye` for root, else `$XDG_STATE_HOME/daemoneye`, else
/// `$HOME/.local/state/daemoneye`, else `/tmp/daemoneye-<uid>/state`.
pub fn default_state_dir() -> PathBuf {
    let uid = current_uid();
    if uid == 0 {
        return PathBuf::from("/var/lib/daemoneye");
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("daemoneye");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".local/state/daemoneye");
    }
    PathBuf::from(format!("/tmp/daemoneye-{uid}")).join("state")
}

/// The environment variable that gives a supervised collector its id (its
/// `[[collectors]]` name).
pub const COLLECTOR_ID_ENV: &str = "DAEMONEYE_COLLECTOR_ID";
/// The environment variable that gives a supervised collector its own state directory.
pub const COLLECTOR_STATE_DIR_ENV: &str = "DAEMONEYE_COLLECTOR_STATE_DIR";

/// This agent instance's own state directory under `root`: one per socket, so that two
/// agents on one host never share state. The name is the socket's file stem and a stable
/// 64-bit FNV-1a hash of its absolute path (`agents/broker-1f3a...`).
pub fn agent_state_dir(root: &Path, socket: &Path) -> PathBuf {
    let absolute = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in absolute.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let stem: String = socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    root.join("agents").join(format!("{stem}-{hash:016x}"))
}

/// A collector's state directory inside its agent's.
pub fn collector_state_dir(agent_state: &Path, collector_id: &str) -> PathBuf {
    agent_state.join("collectors").join(collector_id)
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), SocketError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("cannot create state directory", dir))
}

/// An explicit path, else `DAEMONEYE_BROKER_SOCKET`, else the default.
pub fn resolve_socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => default_socket_path(),
    }
}

/// Prepares the socket's directory (DESIGN.md section 6). A missing one is created with
/// mode 0700. The agent's own default directory must be ours and is tightened to 0700 if
/// looser. An existing directory the user named keeps its mode: it is accepted as it is
/// when it is sticky (like `/tmp`, where nobody can remove or replace another user's
/// socket), else refused when it belongs to another user or others may write to it.
/// A bare relative name (`broker.sock`) lives in the current directory.
pub fn prepare_socket_dir(socket: &Path) -> Result<(), SocketError> {
    let dir = match socket.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(SocketError::NoParent(socket.into())),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create socket directory", dir))?;
        return Ok(());
    }
    let meta = std::fs::metadata(dir).map_err(io_err("cannot inspect socket directory", dir))?;
    let uid = current_uid();
    let own_default = default_socket_path().parent() == Some(dir);
    let mode = meta.mode() & 0o7777;
    if !own_default && mode & 0o1000 != 0 {
        // Sticky: others may create entries but not remove or rename ours.
        return Ok(());
    }
    if meta.uid() != uid {
        return Err(SocketError::ForeignDirectory {
            path: dir.into(),
            owner: meta.uid(),
            uid,
        });
    }
    if own_default {
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "tightening the agent's own socket directory to 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("cannot set mode 0700 on", dir))?;
        }
        return Ok(());
    }
    if mode & 0o022 != 0 {
        return Err(SocketError::LooseDirectory {
            path: dir.into(),
            mode,
        });
    }
    Ok(())
}

/// Binds the broker socket: replaces a stale one, refuses a live one, and sets mode 0600.
pub async fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    prepare_socket_dir(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.into()));
        }
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Err(SocketError::LiveBroker(path.into())),
            Err(_) => {
                tracing::info!(path = %path.display(), "replacing stale socket");
                std::fs::remove_file(path).map_err(io_err("cannot remove stale socket", path))?;
            }
        }
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(io_err("cannot listen on", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot set mode 0600 on", path))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_socket_gets_its_own_state_directory() {
        let root = Path::new("/state");
        let a = agent_state_dir(root, Path::new("/run/a/broker.sock"));
        let b = agent_state_dir(root, Path::new("/run/b/broker.sock"));
        assert_ne!(a, b);
        assert_eq!(a, agent_state_dir(root, Path::new("/run/a/broker.sock")));
        assert!(
            a.to_string_lossy().starts_with("/state/agents/broker-"),
            "{}",
            a.display()
        );
        assert_eq!(
            collector_state_dir(&a, "procmond-1"),
            a.join("collectors").join("procmond-1")
        );
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn a_sticky_directory_such_as_tmp_is_used_as_it_is() {
        let before = mode(Path::new("/tmp"));
        prepare_socket_dir(Path::new("/tmp/daemoneye-test.sock")).expect("/tmp is accepted");
        assert_eq!(
            mode(Path::new("/tmp")),
            before,
            "/tmp's mode must not change"
        );
        // Sticky and owned by someone else: accepted, untouched.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        if current_uid() == 0 {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
        }
        prepare_socket_dir(&dir.path().join("b.sock")).expect("sticky is accepted");
        assert_eq!(mode(dir.path()), 0o1777);
    }

    #[test]
    fn a_named_directory_keeps_its_mode_and_a_loose_or_foreign_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        prepare_socket_dir(&dir.path().join("b.sock")).expect("our own 0755 directory");
        assert_eq!(
            mode(dir.path()),
            0o755,
            "a directory the user named keeps its mode"
        );

        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        match prepare_socket_dir(&dir.path().join("b.sock")) {
            Err(SocketError::LooseDirectory { mode: m, .. }) => assert_eq!(m, 0o777),
            other => panic!("expected LooseDirectory, got {other:?}"),
        }
        assert_eq!(mode(dir.path()), 0o777, "a refused directory is left alone");

        if current_uid() == 0 {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
            match prepare_socket_dir(&dir.path().join("b.sock")) {
                Err(SocketError::ForeignDirectory { owner, .. }) => assert_eq!(owner, 65534),
                other => panic!("expected ForeignDirectory, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("a").join("b");
        prepare_socket_dir(&fresh.join("b.sock")).expect("created");
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn a_bare_relative_name_lives_in_the_current_directory() {
        let before = mode(Path::new("."));
        prepare_socket_dir(Path::new("broker.sock")).expect("the current directory");
        assert_eq!(mode(Path::new(".")), before);
    }
}
