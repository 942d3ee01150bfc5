//! The kernel process connector's messages, decoded and encoded without unsafe code and
//! without IO: the datagrams a `NETLINK_CONNECTOR` socket bound to group [`CN_IDX_PROC`]
//! receives, and the request that subscribes it.
//!
//! One datagram holds one or more netlink messages (`struct nlmsghdr`, each padded to 4
//! bytes). The connector sends its payload in a message of type `NLMSG_DONE`: a `struct
//! cn_msg` (callback id `idx`/`val`, sequence, ack, length, flags) followed by a `struct
//! proc_event` (`what`, `cpu`, `timestamp_ns`, then the event's own fields). See
//! `include/uapi/linux/netlink.h`, `connector.h` and `cn_proc.h`.
//!
//! Every integer is in the host's native byte order, as the kernel writes them
//! (little-endian on x86_64 and aarch64): this module uses `from_ne_bytes`/`to_ne_bytes`,
//! so a datagram captured on one architecture decodes only on one of the same endianness.
//!
//! Hostile or short input never panics: [`Datagram`] yields typed [`DecodeError`]s and
//! stops at the first one (the framing after a bad header cannot be trusted). Event kinds
//! the kernel may add later decode as [`ProcEventKind::Unknown`], not as errors.
//! The socket itself lives in the io crate (`daemoneye_io::collector::process::connector`).

use thiserror::Error;

/// The connector callback index of the process events (`CN_IDX_PROC`); also the
/// multicast group to bind.
pub const CN_IDX_PROC: u32 = 1;
/// The connector callback value of the process events (`CN_VAL_PROC`).
pub const CN_VAL_PROC: u32 = 1;

/// `NLMSG_NOOP`: nothing, to be skipped.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an error (or an ack, errno 0) for a request.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a multipart reply; the connector sends every message with it.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data was lost.
pub const NLMSG_OVERRUN: u16 = 4;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HEADER_LEN: usize = 16;
/// Size of `struct cn_msg` without its data.
pub const CN_MSG_HEADER_LEN: usize = 20;
/// Size of `struct proc_event` up to its union (`what`, `cpu`, `timestamp_ns`).
pub const PROC_EVENT_HEADER_LEN: usize = 16;

/// `PROC_EVENT_*` values of `proc_event.what`.
pub mod what {
    /// The ack of a listen or ignore request.
    pub const NONE: u32 = 0x0000_0000;
    /// fork(): a new task.
    pub const FORK: u32 = 0x0000_0001;
    /// execve() succeeded.
    pub const EXEC: u32 = 0x0000_0002;
    /// A user id changed.
    pub const UID: u32 = 0x0000_0004;
    /// A group id changed.
    pub const GID: u32 = 0x0000_0040;
    /// setsid().
    pub const SID: u32 = 0x0000_0080;
    /// ptrace attach or detach.
    pub const PTRACE: u32 = 0x0000_0100;
    /// The task's comm changed.
    pub const COMM: u32 = 0x0000_0200;
    /// A core dump started.
    pub const COREDUMP: u32 = 0x4000_0000;
    /// A task exited.
    pub const EXIT: u32 = 0x8000_0000;
}

/// `enum proc_cn_mcast_op`: what a request to the connector asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McastOp {
    /// `PROC_CN_MCAST_LISTEN`: start sending process events to this socket's group.
    Listen = 1,
    /// `PROC_CN_MCAST_IGNORE`: stop (the kernel counts listeners).
    Ignore = 2,
}

/// Length of the request [`encode_request`] writes.
pub const REQUEST_LEN: usize = NLMSG_HEADER_LEN + CN_MSG_HEADER_LEN + 4;

/// The datagram that asks the kernel to start or stop sending process events:
/// `nlmsghdr` (type `NLMSG_DONE`, the sender's `port_id`, `seq`) + `cn_msg`
/// (`CN_IDX_PROC`/`CN_VAL_PROC`, 4 bytes of data) + the operation as a native `u32`.
/// The kernel answers with a [`ProcEventKind::Ack`] whose `err` is 0 on success.
#[must_use]
pub fn encode_request(op: McastOp, seq: u32, port_id: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    put_u32(&mut out, 0, REQUEST_LEN as u32);
    put_u16(&mut out, 4, NLMSG_DONE);
    put_u16(&mut out, 6, 0);
    put_u32(&mut out, 8, seq);
    put_u32(&mut out, 12, port_id);
    let cn = NLMSG_HEADER_LEN;
    put_u32(&mut out, cn, CN_IDX_PROC);
    put_u32(&mut out, cn + 4, CN_VAL_PROC);
    put_u32(&mut out, cn + 8, seq);
    put_u32(&mut out, cn + 12, 0);
    put_u16(&mut out, cn + 16, 4);
    put_u16(&mut out, cn + 18, 0);
    put_u32(&mut out, cn + CN_MSG_HEADER_LEN, op as u32);
    out
}

/// One netlink message of a datagram, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A process event from the connector.
    Proc {
        /// `cn_msg.seq` (the kernel's per-CPU event counter).
        seq: u32,
        /// `cn_msg.ack` (the request's ack + 1 for an [`ProcEventKind::Ack`], else 0).
        ack: u32,
        /// The event.
        event: ProcEvent,
    },
    /// A connector message for another callback than the process events.
    OtherConnector {
        /// `cn_msg.id.idx`.
        idx: u32,
        /// `cn_msg.id.val`.
        val: u32,
    },
    /// `NLMSG_DONE` without a payload: the end of a multipart message.
    Done,
    /// `NLMSG_NOOP`.
    Noop,
    /// `NLMSG_ERROR`: `errno` is the positive error number, 0 for a plain ack.
    Error {
        /// The positive errno (the kernel sends it negated).
        errno: i32,
    },
    /// `NLMSG_OVERRUN`: the kernel lost messages for this socket.
    Overrun,
    /// A message type this decoder does not know (skipped, length respected).
    Other {
        /// `nlmsg_type`.
        kind: u16,
    },
}

/// A `struct proc_event`: when and on which CPU, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEvent {
    /// The CPU that reported it.
    pub cpu: u32,
    /// Nanoseconds since boot (the kernel's monotonic clock, `ktime_get_ns`).
    pub timestamp_ns: u64,
    /// The event's kind and fields.
    pub kind: ProcEventKind,
}

/// The event-specific fields. Pids are the kernel's: `pid` is the thread id and `tgid`
/// the process id (they differ for a thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEventKind {
    /// `PROC_EVENT_NONE`: the ack of a listen or ignore request; `err` 0 is success.
    Ack {
        /// The errno of the request, 0 when it succeeded.
        err: u32,
    },
    /// A new task (a thread when `child_pid != child_tgid`).
    Fork {
        /// The parent thread.
        parent_pid: u32,
        /// The parent process.
        parent_tgid: u32,
        /// The new thread.
        child_pid: u32,
        /// The new task's process.
        child_tgid: u32,
    },
    /// The process replaced its image (execve).
    Exec {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
    },
    /// A user id change.
    Uid {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
        /// The real uid.
        ruid: u32,
        /// The effective uid.
        euid: u32,
    },
    /// A group id change.
    Gid {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
        /// The real gid.
        rgid: u32,
        /// The effective gid.
        egid: u32,
    },
    /// A new session (setsid).
    Sid {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
    },
    /// ptrace attach (tracer set) or detach (tracer 0).
    Ptrace {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
        /// The tracing thread.
        tracer_pid: u32,
        /// The tracing process.
        tracer_tgid: u32,
    },
    /// The task's name (comm) changed.
    Comm {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
        /// The new name, NUL-padded (see [`comm_str`]).
        comm: [u8; 16],
    },
    /// A core dump started.
    Coredump {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
        /// The parent thread.
        parent_pid: u32,
        /// The parent process.
        parent_tgid: u32,
    },
    /// A task exited (the process when `pid == tgid`).
    Exit {
        /// Thread id.
        pid: u32,
        /// Process id.
        tgid: u32,
        /// The wait status (`task->exit_code`): see [`exit_code_of_status`].
        exit_code: u32,
        /// The signal sent to the parent (`SIGCHLD` usually).
        exit_signal: u32,
        /// The parent thread.
        parent_pid: u32,
        /// The parent process.
        parent_tgid: u32,
    },
    /// A `what` this decoder does not know; the event is kept, its fields are not.
    Unknown {
        /// The raw `what`.
        what: u32,
    },
}

/// The name in a [`ProcEventKind::Comm`], up to its first NUL, lossily as UTF-8.
#[must_use]
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// A shell-style exit code from a wait status (what [`ProcEventKind::Exit`] carries):
/// a normal exit gives the status's second byte (`WEXITSTATUS`, the value passed to
/// `exit`), a death by signal gives 128 plus the signal number (`WTERMSIG`), as a shell
/// reports it.
#[must_use]
pub fn exit_code_of_status(status: u32) -> i32 {
    let signal = status & 0x7f;
    if signal == 0 {
        ((status >> 8) & 0xff) as i32
    } else {
        128 + signal as i32
    }
}

/// Why a datagram (or the rest of it) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes are left than a netlink header.
    #[error("{left} bytes left, less than a netlink header (16)")]
    ShortHeader {
        /// Bytes left in the datagram.
        left: usize,
    },
    /// `nlmsg_len` is smaller than the header or larger than what is left.
    #[error("netlink message length {len} does not fit in the {left} bytes left")]
    BadLength {
        /// The message's `nlmsg_len`.
        len: u32,
        /// Bytes left in the datagram.
        left: usize,
    },
    /// A connector message shorter than `struct cn_msg`, or whose `cn_msg.len` overruns
    /// the netlink message.
    #[error("connector message of {len} bytes is truncated (cn_msg.len {data_len})")]
    TruncatedConnector {
        /// The payload's length.
        len: usize,
        /// `cn_msg.len`, the data length it claims.
        data_len: u16,
    },
    /// A process event shorter than its kind needs.
    #[error("process event what={what:#x} has {len} bytes, needs {needed}")]
    TruncatedEvent {
        /// The event's `what`.
        what: u32,
        /// Its data length.
        len: usize,
        /// What the kind needs.
        needed: usize,
    },
    /// An `NLMSG_ERROR` shorter than its errno.
    #[error("netlink error message without its error code")]
    TruncatedError,
}

/// The messages of one datagram, in order; an iterator that stops after the first error.
#[derive(Debug, Clone)]
pub struct Datagram<'a> {
    rest: &'a [u8],
    failed: bool,
}

/// The messages of `datagram` (see [`Datagram`]).
#[must_use]
pub fn decode(datagram: &[u8]) -> Datagram<'_> {
    Datagram {
        rest: datagram,
        failed: false,
    }
}

impl Iterator for Datagram<'_> {
    type Item = Result<Message, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = self.next_message();
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

impl Datagram<'_> {
    fn next_message(&mut self) -> Result<Message, DecodeError> {
        let left = self.rest.len();
        if left < NLMSG_HEADER_LEN {
            return Err(DecodeError::ShortHeader { left });
        }
        let len = get_u32(self.rest, 0);
        let kind = get_u16(self.rest, 4);
        let len_usize = len as usize;
        if len_usize < NLMSG_HEADER_LEN || len_usize > left {
            return Err(DecodeError::BadLength { len, left });
        }
        let payload = &self.rest[NLMSG_HEADER_LEN..len_usize];
        // The next message starts at the aligned length; the last one may lack padding.
        let advance = len_usize.next_multiple_of(4).min(left);
        self.rest = &self.rest[advance..];
        match kind {
            NLMSG_NOOP => Ok(Message::Noop),
            NLMSG_OVERRUN => Ok(Message::Overrun),
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(DecodeError::TruncatedError);
                }
                let errno = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                Ok(Message::Error {
                    errno: errno.unsigned_abs().min(i32::MAX as u32) as i32,
                })
            }
            NLMSG_DONE if payload.is_empty() => Ok(Message::Done),
            NLMSG_DONE => decode_connector(payload),
            other => Ok(Message::Other { kind: other }),
        }
    }
}

fn decode_connector(payload: &[u8]) -> Result<Message, DecodeError> {
    if payload.len() < CN_MSG_HEADER_LEN {
        return Err(DecodeError::TruncatedConnector {
            len: payload.len(),
            data_len: 0,
        });
    }
    let idx = get_u32(payload, 0);
    let val = get_u32(payload, 4);
    let seq = get_u32(payload, 8);
    let ack = get_u32(payload, 12);
    let data_len = get_u16(payload, 16);
    let data = &payload[CN_MSG_HEADER_LEN..];
    if usize::from(data_len) > data.len() {
        return Err(DecodeError::TruncatedConnector {
            len: payload.len(),
            data_len,
        });
    }
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC) {
        return Ok(Message::OtherConnector { idx, val });
    }
    let event = decode_event(&data[..usize::from(data_len)])?;
    Ok(Message::Proc { seq, ack, event })
}

fn decode_event(data: &[u8]) -> Result<ProcEvent, DecodeError> {
    if data.len() < PROC_EVENT_HEADER_LEN {
        return Err(DecodeError::TruncatedEvent {
            what: if data.len() >= 4 { get_u32(data, 0) } else { 0 },
            len: data.len(),
            needed: PROC_EVENT_HEADER_LEN,
        });
    }
    let what_value = get_u32(data, 0);
    let cpu = get_u32(data, 4);
    let timestamp_ns = get_u64(data, 8);
    let body = &data[PROC_EVENT_HEADER_LEN..];
    let needed = match what_value {
        what::NONE => 4,
        what::EXEC | what::SID => 8,
        what::FORK | what::UID | what::GID | what::PTRACE | what::COREDUMP => 16,
        what::COMM => 24,
        what::EXIT => 24,
        _ => 0,
    };
    if body.len() < needed {
        return Err(DecodeError::TruncatedEvent {
            what: what_value,
            len: body.len(),
            needed,
        });
    }
    let f = |i: usize| get_u32(body, 4 * i);
    let kind = match what_value {
        what::NONE => ProcEventKind::Ack { err: f(0) },
        what::FORK => ProcEventKind::Fork {
            parent_pid: f(0),
            parent_tgid: f(1),
            child_pid: f(2),
            child_tgid: f(3),
        },
        what::EXEC => ProcEventKind::Exec {
            pid: f(0),
            tgid: f(1),
        },
        what::UID => ProcEventKind::Uid {
            pid: f(0),
            tgid: f(1),
            ruid: f(2),
            euid: f(3),
        },
        what::GID => ProcEventKind::Gid {
            pid: f(0),
            tgid: f(1),
            rgid: f(2),
            egid: f(3),
        },
        what::SID => ProcEventKind::Sid {
            pid: f(0),
            tgid: f(1),
        },
        what::PTRACE => ProcEventKind::Ptrace {
            pid: f(0),
            tgid: f(1),
            tracer_pid: f(2),
            tracer_tgid: f(3),
        },
        what::COMM => {
            let mut comm = [0u8; 16];
            comm.copy_from_slice(&body[8..24]);
            ProcEventKind::Comm {
                pid: f(0),
                tgid: f(1),
                comm,
            }
        }
        what::COREDUMP => ProcEventKind::Coredump {
            pid: f(0),
            tgid: f(1),
            parent_pid: f(2),
            parent_tgid: f(3),
        },
        what::EXIT => ProcEventKind::Exit {
            pid: f(0),
            tgid: f(1),
            exit_code: f(2),
            exit_signal: f(3),
            parent_pid: f(4),
            parent_tgid: f(5),
        },
        other => ProcEventKind::Unknown { what: other },
    };
    Ok(ProcEvent {
        cpu,
        timestamp_ns,
        kind,
    })
}

// Callers check lengths first; these index within bounds by construction.
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(x)
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_request_has_the_kernels_layout() {
        let r = encode_request(McastOp::Listen, 0, 77);
        assert_eq!(get_u32(&r, 0), 40);
        assert_eq!(get_u16(&r, 4), NLMSG_DONE);
        assert_eq!(get_u32(&r, 12), 77);
        assert_eq!((get_u32(&r, 16), get_u32(&r, 20)), (1, 1));
        assert_eq!(get_u16(&r, 32), 4);
        assert_eq!(get_u32(&r, 36), 1);
        assert_eq!(get_u32(&encode_request(McastOp::Ignore, 0, 0), 36), 2);
    }

    #[test]
    fn the_exit_code_is_the_exit_value_or_128_plus_the_signal() {
        assert_eq!(exit_code_of_status(0), 0);
        assert_eq!(exit_code_of_status(3 << 8), 3);
        assert_eq!(exit_code_of_status(9), 137);
        assert_eq!(exit_code_of_status(0x80 | 11), 139);
    }
}
