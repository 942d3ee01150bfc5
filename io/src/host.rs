//! This host's stable identity, as alerts (and the NATS bridge's topic prefix) name it.
//!
//! The id is the machine id (`/etc/machine-id`, else `/var/lib/dbus/machine-id`: 32 hex
//! digits, stable across reboots and renames), else the host name; the name is the kernel's
//! host name. Read once per process.

use std::path::Path;
use std::sync::OnceLock;

/// Where the machine id is kept, in order.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];
/// Where the host name is read, in order.
const HOSTNAME_FILES: [&str; 2] = ["/proc/sys/kernel/hostname", "/etc/hostname"];

/// This host's id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostId {
    /// The machine id, else the host name (else `localhost`).
    pub id: String,
    /// The host name (else `localhost`).
    pub name: String,
}

/// This host's identity (read on first use).
pub fn host() -> &'static HostId {
    static HOST: OnceLock<HostId> = OnceLock::new();
    HOST.get_or_init(|| {
        let name = HOSTNAME_FILES
            .iter()
            .find_map(|f| read_hostname(Path::new(f)))
            .unwrap_or_else(|| "localhost".into());
        let id = MACHINE_ID_FILES
            .iter()
            .find_map(|f| read_machine_id(Path::new(f)))
            .unwrap_or_else(|| name.clone());
        HostId { id, name }
    })
}

/// The machine id in `path`: 32 hex digits on the first line (lowercased).
pub fn read_machine_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.lines().next()?.trim().to_ascii_lowercase();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The host name in `path`: its first line, when not empty.
fn read_hostname(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let name = text.lines().next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_id_is_32_hex_digits_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("machine-id");
        std::fs::write(&f, "0123456789ABCDEF0123456789abcdef\n").unwrap();
        assert_eq!(
            read_machine_id(&f).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        for bad in ["", "uninitialized\n", "0123456789abcdef\n"] {
            std::fs::write(&f, bad).unwrap();
            assert_eq!(read_machine_id(&f), None, "{bad:?}");
        }
        assert_eq!(read_machine_id(&dir.path().join("absent")), None);
    }

    #[test]
    fn the_host_has_an_id_and_a_name_and_they_are_stable() {
        let h = host();
        assert!(!h.id.is_empty() && !h.name.is_empty());
        assert_eq!(host(), h);
    }
}
