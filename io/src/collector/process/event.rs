//! The `events.process.*` payload: [`process_event`] wraps one `ProcessInfo` in a
//! `ProcessEvent`, encoded.

use bytes::Bytes;
use daemoneye_proto::pb::events as pbe;
use prost::Message;

/// The encoded `ProcessEvent` of `kind` for `info`, observed at `observed_at_ms` (Unix ms)
/// by collector `collector_id`, learned from a scan.
pub fn process_event(
    collector_id: &str,
    kind: pbe::ProcessEventKind,
    info: &pbe::ProcessInfo,
    observed_at_ms: u64,
) -> Bytes {
    let event = pbe::ProcessEvent {
        kind: kind as i32,
        process: Some(info.clone()),
        changed: Vec::new(),
        observed_at_ms,
        collector_id: collector_id.to_string(),
        source: "scan".into(),
        ..Default::default()
    };
    Bytes::from(event.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_carries_the_process_and_its_collector() {
        let info = pbe::ProcessInfo {
            pid: 7,
            name: "x".into(),
            ..Default::default()
        };
        let bytes = process_event("procmond", pbe::ProcessEventKind::Exit, &info, 42);
        let event = pbe::ProcessEvent::decode(bytes).expect("decodes");
        assert_eq!(event.kind, pbe::ProcessEventKind::Exit as i32);
        assert_eq!(event.process, Some(info));
        assert_eq!(
            (event.observed_at_ms, event.collector_id.as_str()),
            (42, "procmond")
        );
    }
}
