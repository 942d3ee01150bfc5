//! The process connector decoder against an encoder written here from the kernel headers
//! (`cn_proc.h`, `connector.h`, `netlink.h`): every event round-trips, several messages in
//! one datagram decode in order, and any byte string decodes or errors without panicking.

use daemoneye_core::procmon::netlink::{
    self, DecodeError, McastOp, Message, ProcEvent, ProcEventKind, decode,
};
use proptest::prelude::*;

/// `struct proc_event` for `kind` (the union padded to its kernel size, 24 bytes).
fn event_bytes(event: &ProcEvent) -> Vec<u8> {
    let (what, fields): (u32, Vec<u32>) = match &event.kind {
        ProcEventKind::Ack { err } => (0, vec![*err]),
        ProcEventKind::Fork {
            parent_pid,
            parent_tgid,
            child_pid,
            child_tgid,
        } => (1, vec![*parent_pid, *parent_tgid, *child_pid, *child_tgid]),
        ProcEventKind::Exec { pid, tgid } => (2, vec![*pid, *tgid]),
        ProcEventKind::Uid {
            pid,
            tgid,
            ruid,
            euid,
        } => (4, vec![*pid, *tgid, *ruid, *euid]),
        ProcEventKind::Gid {
            pid,
            tgid,
            rgid,
            egid,
        } => (0x40, vec![*pid, *tgid, *rgid, *egid]),
        ProcEventKind::Sid { pid, tgid } => (0x80, vec![*pid, *tgid]),
        ProcEventKind::Ptrace {
            pid,
            tgid,
            tracer_pid,
            tracer_tgid,
        } => (0x100, vec![*pid, *tgid, *tracer_pid, *tracer_tgid]),
        ProcEventKind::Comm { pid, tgid, comm } => {
            let mut f = vec![*pid, *tgid];
            for chunk in comm.chunks(4) {
                f.push(u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            }
            (0x200, f)
        }
        ProcEventKind::Coredump {
            pid,
            tgid,
            parent_pid,
            parent_tgid,
        } => (0x4000_0000, vec![*pid, *tgid, *parent_pid, *parent_tgid]),
        ProcEventKind::Exit {
            pid,
            tgid,
            exit_code,
            exit_signal,
            parent_pid,
            parent_tgid,
        } => (
            0x8000_0000,
            vec![
                *pid,
                *tgid,
                *exit_code,
                *exit_signal,
                *parent_pid,
                *parent_tgid,
            ],
        ),
        ProcEventKind::Unknown { what } => (*what, vec![]),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&what.to_ne_bytes());
    out.extend_from_slice(&event.cpu.to_ne_bytes());
    out.extend_from_slice(&event.timestamp_ns.to_ne_bytes());
    let mut union = [0u8; 24];
    for (i, f) in fields.iter().enumerate() {
        union[4 * i..4 * i + 4].copy_from_slice(&f.to_ne_bytes());
    }
    out.extend_from_slice(&union);
    out
}

/// `nlmsghdr` + payload, padded to 4 bytes.
fn netlink_message(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len() as u32;
    let mut out = Vec::new();
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&9u32.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// `cn_msg` (idx, val, seq, ack, len, flags) + data.
fn connector_message(idx: u32, val: u32, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [idx, val, seq, ack] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.extend_from_slice(&(data.len() as u16).to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(data);
    out
}

fn proc_message(seq: u32, ack: u32, event: &ProcEvent) -> Vec<u8> {
    netlink_message(
        netlink::NLMSG_DONE,
        &connector_message(1, 1, seq, ack, &event_bytes(event)),
    )
}

const KNOWN: [u32; 10] = [
    0,
    1,
    2,
    4,
    0x40,
    0x80,
    0x100,
    0x200,
    0x4000_0000,
    0x8000_0000,
];

fn any_kind() -> impl Strategy<Value = ProcEventKind> {
    let u = any::<u32>;
    prop_oneof![
        u().prop_map(|err| ProcEventKind::Ack { err }),
        (u(), u(), u(), u()).prop_map(|(a, b, c, d)| ProcEventKind::Fork {
            parent_pid: a,
            parent_tgid: b,
            child_pid: c,
            child_tgid: d
        }),
        (u(), u()).prop_map(|(pid, tgid)| ProcEventKind::Exec { pid, tgid }),
        (u(), u(), u(), u()).prop_map(|(pid, tgid, ruid, euid)| ProcEventKind::Uid {
            pid,
            tgid,
            ruid,
            euid
        }),
        (u(), u(), u(), u()).prop_map(|(pid, tgid, rgid, egid)| ProcEventKind::Gid {
            pid,
            tgid,
            rgid,
            egid
        }),
        (u(), u()).prop_map(|(pid, tgid)| ProcEventKind::Sid { pid, tgid }),
        (u(), u(), u(), u()).prop_map(|(pid, tgid, a, b)| ProcEventKind::Ptrace {
            pid,
            tgid,
            tracer_pid: a,
            tracer_tgid: b
        }),
        (u(), u(), any::<[u8; 16]>()).prop_map(|(pid, tgid, comm)| ProcEventKind::Comm {
            pid,
            tgid,
            comm
        }),
        (u(), u(), u(), u()).prop_map(|(pid, tgid, a, b)| ProcEventKind::Coredump {
            pid,
            tgid,
            parent_pid: a,
            parent_tgid: b
        }),
        (u(), u(), u(), u(), u(), u()).prop_map(|(pid, tgid, c, s, pp, pt)| {
            ProcEventKind::Exit {
                pid,
                tgid,
                exit_code: c,
                exit_signal: s,
                parent_pid: pp,
                parent_tgid: pt,
            }
        }),
        u().prop_filter("unknown what", |w| !KNOWN.contains(w))
            .prop_map(|what| ProcEventKind::Unknown { what }),
    ]
}

fn any_event() -> impl Strategy<Value = ProcEvent> {
    (any::<u32>(), any::<u64>(), any_kind()).prop_map(|(cpu, timestamp_ns, kind)| ProcEvent {
        cpu,
        timestamp_ns,
        kind,
    })
}

proptest! {
    #[test]
    fn every_event_round_trips_through_a_datagram(events in prop::collection::vec((any::<u32>(), any_event()), 1..8)) {
        let mut datagram = Vec::new();
        for (seq, e) in &events {
            datagram.extend(proc_message(*seq, 0, e));
        }
        let decoded: Vec<_> = decode(&datagram).collect();
        let expected: Vec<_> = events
            .iter()
            .map(|(seq, e)| Ok(Message::Proc { seq: *seq, ack: 0, event: e.clone() }))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn any_bytes_decode_or_error_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let results: Vec<_> = decode(&bytes).collect();
        // At most one error, and only as the last item.
        let errors = results.iter().filter(|r| r.is_err()).count();
        prop_assert!(errors <= 1);
        if errors == 1 {
            prop_assert!(results.last().is_some_and(Result::is_err));
        }
        // Every message consumes at least a header: the iterator is bounded by the input.
        prop_assert!(results.len() <= bytes.len() / 16 + 1);
    }

    #[test]
    fn any_truncation_of_a_valid_datagram_errors_or_yields_a_prefix(
        events in prop::collection::vec(any_event(), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut datagram = Vec::new();
        for e in &events {
            datagram.extend(proc_message(1, 0, e));
        }
        let cut = cut.index(datagram.len());
        let results: Vec<_> = decode(&datagram[..cut]).collect();
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(Message::Proc { event, .. }) => prop_assert_eq!(event, &events[i]),
                Ok(other) => prop_assert!(false, "unexpected {:?}", other),
                Err(_) => prop_assert_eq!(i, results.len() - 1),
            }
        }
    }
}

#[test]
fn the_listen_request_decodes_as_a_connector_message() {
    let request = netlink::encode_request(McastOp::Listen, 5, 1234);
    // The request's data is 4 bytes, shorter than a proc_event: the decoder says so.
    let r: Vec<_> = decode(&request).collect();
    assert_eq!(
        r,
        vec![Err(DecodeError::TruncatedEvent {
            what: 1,
            len: 4,
            needed: 16
        })]
    );
}

#[test]
fn netlink_control_messages_are_typed() {
    let mut d = netlink_message(netlink::NLMSG_NOOP, &[]);
    d.extend(netlink_message(
        netlink::NLMSG_ERROR,
        &(-1i32).to_ne_bytes(),
    ));
    d.extend(netlink_message(netlink::NLMSG_OVERRUN, &[]));
    d.extend(netlink_message(netlink::NLMSG_DONE, &[]));
    d.extend(netlink_message(77, &[1, 2, 3]));
    d.extend(netlink_message(
        netlink::NLMSG_DONE,
        &connector_message(4, 1, 0, 0, &[]),
    ));
    let r: Vec<_> = decode(&d).collect();
    assert_eq!(
        r,
        vec![
            Ok(Message::Noop),
            Ok(Message::Error { errno: 1 }),
            Ok(Message::Overrun),
            Ok(Message::Done),
            Ok(Message::Other { kind: 77 }),
            Ok(Message::OtherConnector { idx: 4, val: 1 }),
        ]
    );
}

#[test]
fn short_and_lying_headers_are_errors() {
    assert_eq!(
        decode(&[0; 10]).collect::<Vec<_>>(),
        vec![Err(DecodeError::ShortHeader { left: 10 })]
    );
    let mut m = netlink_message(netlink::NLMSG_NOOP, &[]);
    m[0..4].copy_from_slice(&100u32.to_ne_bytes());
    assert_eq!(
        decode(&m).collect::<Vec<_>>(),
        vec![Err(DecodeError::BadLength { len: 100, left: 16 })]
    );
    m[0..4].copy_from_slice(&3u32.to_ne_bytes());
    assert!(matches!(
        decode(&m).next(),
        Some(Err(DecodeError::BadLength { len: 3, .. }))
    ));
    let error = netlink_message(netlink::NLMSG_ERROR, &[1]);
    assert_eq!(
        decode(&error).collect::<Vec<_>>(),
        vec![Err(DecodeError::TruncatedError)]
    );
    let lying = netlink_message(netlink::NLMSG_DONE, &{
        let mut c = connector_message(1, 1, 0, 0, &[0; 8]);
        c[16..18].copy_from_slice(&200u16.to_ne_bytes());
        c
    });
    assert!(matches!(
        decode(&lying).next(),
        Some(Err(DecodeError::TruncatedConnector { data_len: 200, .. }))
    ));
}

#[test]
fn an_unknown_what_is_kept_as_unknown() {
    let e = ProcEvent {
        cpu: 1,
        timestamp_ns: 2,
        kind: ProcEventKind::Unknown { what: 0x1000 },
    };
    assert_eq!(
        decode(&proc_message(3, 0, &e)).collect::<Vec<_>>(),
        vec![Ok(Message::Proc {
            seq: 3,
            ack: 0,
            event: e
        })]
    );
}

#[test]
fn a_comm_reads_up_to_its_nul() {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"bash");
    assert_eq!(netlink::comm_str(&comm), "bash");
    assert_eq!(netlink::comm_str(&[b'x'; 16]), "x".repeat(16));
}
