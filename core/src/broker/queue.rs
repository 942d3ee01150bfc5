//! A subscription's bounded queue: priority lanes, FIFO within a lane.
//!
//! Higher priority is handed out first (DESIGN.md section 11). Priority 0 (nearly all
//! traffic) lives in a plain `VecDeque`; other priorities get a lane each, created on demand.
//! Capacity is enforced by the broker, which counts unacknowledged deliveries too.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::Message;

/// One queued copy of a message.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub msg: Arc<Message>,
    /// Handed to a subscriber before, which went away without acking.
    pub redelivered: bool,
    /// This copy holds a share of its publish's PubAck: resolved when acked, handed out at
    /// QoS0, or dropped.
    pub tracked: bool,
}

#[derive(Debug, Default)]
pub(crate) struct SubQueue {
    normal: VecDeque<Entry>,
    /// Lanes for priority > 0, keyed by priority.
    high: BTreeMap<u8, VecDeque<Entry>>,
    len: usize,
}

impl SubQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    fn lane(&mut self, priority: u8) -> &mut VecDeque<Entry> {
        if priority == 0 {
            &mut self.normal
        } else {
            self.high.entry(priority).or_default()
        }
    }

    pub fn push_back(&mut self, entry: Entry) {
        let p = entry.msg.priority;
        self.lane(p).push_back(entry);
        self.len += 1;
    }

    /// Puts a redelivery ahead of the messages of its priority.
    pub fn push_front(&mut self, entry: Entry) {
        let p = entry.msg.priority;
        self.lane(p).push_front(entry);
        self.len += 1;
    }

    /// The next message to hand out: highest priority first.
    pub fn pop(&mut self) -> Option<Entry> {
        let entry = match self.high.last_entry() {
            Some(mut lane) => {
                let e = lane.get_mut().pop_front();
                if lane.get().is_empty() {
                    lane.remove();
                }
                e
            }
            None => self.normal.pop_front(),
        };
        if entry.is_some() {
            self.len -= 1;
        }
        entry
    }

    /// Evicts the oldest message of the lowest priority (DropOldest).
    pub fn pop_oldest_lowest(&mut self) -> Option<Entry> {
        let entry = if !self.normal.is_empty() {
            self.normal.pop_front()
        } else {
            match self.high.first_entry() {
                Some(mut lane) => {
                    let e = lane.get_mut().pop_front();
                    if lane.get().is_empty() {
                        lane.remove();
                    }
                    e
                }
                None => None,
            }
        };
        if entry.is_some() {
            self.len -= 1;
        }
        entry
    }

    /// Empties the queue, in hand-out order.
    pub fn drain_all(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(e) = self.pop() {
            out.push(e);
        }
        out
    }
}
