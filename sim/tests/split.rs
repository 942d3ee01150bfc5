//! DESIGN.md section 5 and simulation invariant 8 as a property test: any split of the same
//! input byte streams gives the broker the same outputs (each connection's transmitted bytes,
//! pauses, resumes and closes, and the broker's counters), over random multi-connection
//! scripts of handshakes, subscriptions (small Block and dropping queues, a queue group),
//! publishes, acks, unsubscribes, pings, goodbyes, raw bytes, frames cut short, writes,
//! ends of stream, disconnects and time.

use daemoneye_sim::fuzz::{SplitEvent, SplitFrame, check_split};
use proptest::prelude::*;

fn frame() -> impl Strategy<Value = SplitFrame> {
    prop_oneof![
        1 => any::<bool>().prop_map(|agent| SplitFrame::Hello { agent }),
        3 => (any::<u8>(), any::<u8>(), any::<bool>(), any::<bool>(), any::<u8>(), any::<u8>())
            .prop_map(|(sub_id, filter, group, qos1, capacity, overflow)| SplitFrame::Subscribe {
                sub_id,
                filter,
                group,
                qos1,
                capacity,
                overflow,
            }),
        1 => any::<u8>().prop_map(|sub_id| SplitFrame::Unsubscribe { sub_id }),
        8 => (any::<u8>(), any::<bool>(), any::<u8>(), 0u8..120)
            .prop_map(|(topic, qos1, priority, len)| SplitFrame::Publish {
                topic,
                qos1,
                priority,
                len,
            }),
        3 => any::<u8>().prop_map(|delivery_id| SplitFrame::Ack { delivery_id }),
        1 => Just(SplitFrame::Ping),
        1 => Just(SplitFrame::Goodbye),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(SplitFrame::Raw),
    ]
}

fn event() -> impl Strategy<Value = SplitEvent> {
    prop_oneof![
        12 => (0u8..4, proptest::collection::vec(frame(), 1..12), proptest::option::weighted(0.1, any::<u8>()))
            .prop_map(|(conn, frames, cut_last)| SplitEvent::Bytes { conn, frames, cut_last }),
        4 => (0u8..4).prop_map(|conn| SplitEvent::Written { conn }),
        1 => any::<bool>().prop_map(|root| SplitEvent::Connect { root }),
        1 => (0u8..4).prop_map(|conn| SplitEvent::Eof { conn }),
        1 => (0u8..4).prop_map(|conn| SplitEvent::Disconnect { conn }),
        2 => (0u16..4000).prop_map(|ms| SplitEvent::Advance { ms }),
    ]
}

/// Three connections that say Hello, then the random script.
fn script() -> impl Strategy<Value = Vec<SplitEvent>> {
    proptest::collection::vec(event(), 1..40).prop_map(|rest| {
        let mut events = Vec::new();
        for conn in 0..3u8 {
            events.push(SplitEvent::Connect { root: false });
            events.push(SplitEvent::Bytes {
                conn,
                frames: vec![SplitFrame::Hello { agent: conn == 2 }],
                cut_last: None,
            });
        }
        events.extend(rest);
        events
    })
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 300;
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_split_of_the_same_bytes_gives_the_same_outputs(
        events in script(),
        cuts in proptest::collection::vec(1u16..40, 1..16),
    ) {
        if let Err(e) = check_split(&events, &cuts) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_outputs_as_one_read(events in script()) {
        if let Err(e) = check_split(&events, &[1]) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The reported case: Hello, Subscribe, three Publishes, Unsubscribe, Ping.
#[test]
fn the_reported_stream_is_split_independent() {
    let frames = vec![
        SplitFrame::Hello { agent: false },
        SplitFrame::Subscribe {
            sub_id: 0,
            filter: 0,
            group: false,
            qos1: true,
            capacity: 3,
            overflow: 1,
        },
        SplitFrame::Publish {
            topic: 0,
            qos1: true,
            priority: 0,
            len: 3,
        },
        SplitFrame::Publish {
            topic: 0,
            qos1: true,
            priority: 0,
            len: 3,
        },
        SplitFrame::Publish {
            topic: 0,
            qos1: true,
            priority: 0,
            len: 3,
        },
        SplitFrame::Unsubscribe { sub_id: 0 },
        SplitFrame::Ping,
    ];
    let events = vec![
        SplitEvent::Connect { root: false },
        SplitEvent::Bytes {
            conn: 0,
            frames,
            cut_last: None,
        },
    ];
    check_split(&events, &[1]).expect("byte by byte");
    check_split(&events, &[5, 17, 3]).expect("uneven pieces");
}
