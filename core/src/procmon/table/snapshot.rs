//! Splitting the start-up snapshot into parts that each stay under a byte budget.

use daemoneye_proto::pb::events::ProcessInfo;
use prost::Message;

/// Bytes a snapshot part's `ProcessEvent` spends besides its processes: kind, source,
/// part, parts, the observation time, and their tags, with room to spare. The collector id
/// and the frame around the event are the budget's headroom (see
/// [`super::TableConfig::snapshot_part_bytes`]).
pub const PART_OVERHEAD: usize = 64;

/// The encoded size of `info` as one element of the `processes` field.
fn element_len(info: &ProcessInfo) -> usize {
    let len = info.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// `processes` cut into parts in order, each part's encoding (with [`PART_OVERHEAD`])
/// within `budget` bytes. A process too large for any part goes alone in its own (the
/// reader bounds a single process's size; a NEW of it would be as large). Always at least
/// one part, empty when nothing runs, so a reader learns the snapshot is complete.
pub fn split(processes: Vec<ProcessInfo>, budget: usize) -> Vec<Vec<ProcessInfo>> {
    let room = budget.saturating_sub(PART_OVERHEAD);
    let mut parts = vec![Vec::new()];
    let mut used = 0usize;
    for info in processes {
        let len = element_len(&info);
        let current = parts.last_mut().expect("at least one part");
        if !current.is_empty() && used + len > room {
            parts.push(vec![info]);
            used = len;
        } else {
            current.push(info);
            used += len;
        }
    }
    parts
}
