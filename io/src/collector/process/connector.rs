//! The kernel process connector's socket (Linux): a `NETLINK_CONNECTOR` datagram socket
//! through `nix`, bound to the process events' multicast group ([`CN_IDX_PROC`]), with the
//! listen request sent and acknowledged. The bytes are decoded by the core
//! (`daemoneye_core::procmon::netlink`); this module only moves them.
//!
//! Joining the group and the listen request need CAP_NET_ADMIN in the initial user
//! namespace (root, in practice). Without it [`ProcConnector::open`] fails with
//! [`ConnectorError::Refused`], whose text says why: the caller falls back to scanning.
//! The receive buffer is raised with `SO_RCVBUFFORCE` (beyond `rmem_max`, needs
//! CAP_NET_ADMIN), else `SO_RCVBUF`; a buffer that still overflows makes the kernel drop
//! events and `recv` fail with ENOBUFS, returned as [`Received::Overrun`] (the caller
//! counts it and rescans).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use daemoneye_core::procmon::netlink::{self, CN_IDX_PROC, McastOp, Message, ProcEventKind};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, bind, getsockname, recv, send, setsockopt, sockopt,
};
use nix::sys::time::TimeVal;
use thiserror::Error;

/// The netlink protocol of the kernel connector (`NETLINK_CONNECTOR`, linux/netlink.h).
const NETLINK_CONNECTOR: i32 = 11;

/// How the socket is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorOptions {
    /// The receive buffer asked for, bytes (a burst of thousands of processes needs
    /// megabytes: each event is one datagram of about 100 bytes plus the kernel's
    /// per-datagram overhead).
    pub receive_buffer: usize,
    /// How long one `recv` waits before returning [`Received::Timeout`] (bounds how long
    /// a stop waits for the receive thread).
    pub receive_timeout: Duration,
    /// How long [`ProcConnector::open`] waits for the kernel's ack of the listen request.
    pub ack_timeout: Duration,
}

impl Default for ConnectorOptions {
    fn default() -> Self {
        ConnectorOptions {
            receive_buffer: 16 * 1024 * 1024,
            receive_timeout: Duration::from_millis(100),
            ack_timeout: Duration::from_secs(2),
        }
    }
}

/// Why the connector could not be opened.
#[derive(Debug, Error)]
pub enum ConnectorError {
    /// The kernel refused (not root, no CAP_NET_ADMIN in the initial user namespace).
    #[error(
        "the kernel process connector refused {step} ({errno}): it needs root or CAP_NET_ADMIN in the initial user namespace"
    )]
    Refused {
        /// What was refused.
        step: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The kernel has no process connector (`CONFIG_PROC_EVENTS` off) or no netlink.
    #[error("the kernel has no process connector ({errno})")]
    Unsupported {
        /// The error.
        errno: Errno,
    },
    /// Another socket error.
    #[error("process connector: {step} failed: {errno}")]
    Io {
        /// What failed.
        step: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The kernel answered the listen request with an error.
    #[error("the kernel refused to send process events: errno {errno}")]
    Nacked {
        /// The errno in the kernel's ack.
        errno: u32,
    },
    /// No ack came: the kernel ignores listeners outside the initial pid namespace.
    #[error(
        "the kernel did not acknowledge the listen request within {0:?} (a container's own pid namespace gets no process events)"
    )]
    NoAck(Duration),
}

impl ConnectorError {
    fn from_errno(step: &'static str, errno: Errno) -> Self {
        match errno {
            Errno::EPERM | Errno::EACCES => ConnectorError::Refused { step, errno },
            Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT => ConnectorError::Unsupported { errno },
            _ => ConnectorError::Io { step, errno },
        }
    }
}

/// What one [`ProcConnector::recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A datagram of this many bytes.
    Datagram(usize),
    /// Nothing within the receive timeout (or a signal interrupted the wait).
    Timeout,
    /// The kernel dropped events for this socket (ENOBUFS): rescan.
    Overrun,
}

/// An open, listening process connector socket.
#[derive(Debug)]
pub struct ProcConnector {
    fd: OwnedFd,
    port_id: u32,
    receive_buffer: usize,
    forced: bool,
}

impl ProcConnector {
    /// Opens the socket, joins the process events' group, raises the receive buffer, sends
    /// the listen request and waits for its ack. Events that arrive before the ack are
    /// dropped (they happened before the caller started watching).
    pub fn open(options: &ConnectorOptions) -> Result<ProcConnector, ConnectorError> {
        // nix's SockProtocol lacks NETLINK_CONNECTOR; socket2 takes the number (and sets
        // close-on-exec).
        let fd: OwnedFd = socket2::Socket::new(
            socket2::Domain::from(AddressFamily::Netlink as i32),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(NETLINK_CONNECTOR)),
        )
        .map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
            ConnectorError::from_errno("creating the netlink socket", errno)
        })?
        .into();
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, CN_IDX_PROC))
            .map_err(|e| ConnectorError::from_errno("joining the process events group", e))?;
        let port_id = getsockname::<NetlinkAddr>(fd.as_raw_fd())
            .map_err(|e| ConnectorError::from_errno("reading the socket's port id", e))?
            .pid();
        let asked = options.receive_buffer.min(i32::MAX as usize / 2);
        let forced = setsockopt(&fd, sockopt::RcvBufForce, &asked).is_ok();
        if !forced {
            // Capped by net.core.rmem_max; still better than the default.
            let _ = setsockopt(&fd, sockopt::RcvBuf, &asked);
        }
        // The kernel reports twice what was set (its bookkeeping overhead included).
        let receive_buffer = nix::sys::socket::getsockopt(&fd, sockopt::RcvBuf).unwrap_or(0);
        let timeout = TimeVal::new(
            options.receive_timeout.as_secs() as _,
            options.receive_timeout.subsec_micros() as _,
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| ConnectorError::from_errno("setting the receive timeout", e))?;
        let connector = ProcConnector {
            fd,
            port_id,
            receive_buffer,
            forced,
        };
        connector.request(McastOp::Listen)?;
        connector.wait_for_ack(options.ack_timeout)?;
        tracing::debug!(
            port_id,
            receive_buffer,
            forced,
            "process connector listening"
        );
        Ok(connector)
    }

    fn request(&self, op: McastOp) -> Result<(), ConnectorError> {
        let request = netlink::encode_request(op, 0, self.port_id);
        send(self.fd.as_raw_fd(), &request, MsgFlags::empty())
            .map_err(|e| ConnectorError::from_errno("sending the listen request", e))?;
        Ok(())
    }

    fn wait_for_ack(&self, within: Duration) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 8192];
        while Instant::now() < deadline {
            let n = match self.recv(&mut buf)? {
                Received::Datagram(n) => n,
                Received::Timeout | Received::Overrun => continue,
            };
            for message in netlink::decode(&buf[..n]).flatten() {
                if let Message::Proc {
                    event:
                        netlink::ProcEvent {
                            kind: ProcEventKind::Ack { err },
                            ..
                        },
                    ..
                } = message
                {
                    return match err {
                        0 => Ok(()),
                        errno => Err(ConnectorError::Nacked { errno }),
                    };
                }
            }
        }
        Err(ConnectorError::NoAck(within))
    }

    /// Receives one datagram into `buf` (a datagram longer than `buf` is truncated; the
    /// process connector's are about 100 bytes).
    pub fn recv(&self, buf: &mut [u8]) -> Result<Received, ConnectorError> {
        match recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => Ok(Received::Datagram(n)),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(Received::Timeout),
            Err(Errno::ENOBUFS) => Ok(Received::Overrun),
            Err(e) => Err(ConnectorError::Io {
                step: "receiving",
                errno: e,
            }),
        }
    }

    /// The receive buffer the kernel granted, bytes (as `SO_RCVBUF` reports it).
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// True when `SO_RCVBUFFORCE` was allowed (the buffer is not capped by `rmem_max`).
    pub fn buffer_forced(&self) -> bool {
        self.forced
    }

    /// Asks the kernel to stop sending (best effort: after the capabilities are dropped the
    /// kernel refuses it, and closing the socket is what matters).
    pub fn ignore(&self) {
        let _ = self.request(McastOp::Ignore);
    }
}
