//! The NATS bridge's decisions (DESIGN.md section 14), as a pure machine.
//!
//! The bridge carries local messages that match its export filters to NATS under a prefix
//! (`daemoneye.<host id>` by default) and NATS messages that match its import
//! subscriptions onto the local bus. This machine owns every decision of it; the io crate's
//! driver only moves bytes and files:
//!
//! - **what crosses**: [`Bridge::offer`] decides for a local message (export QoS0 at once,
//!   queue QoS1, or skip it and say why), [`Bridge::import`] for a NATS message. A message
//!   the bridge imported carries its origin host (a header on NATS, a correlation tag on
//!   the local bus) and is never exported; a NATS message whose origin is this host is
//!   never imported. So two hosts that import each other's exports do not loop.
//! - **the QoS1 export queue**: every QoS1 export gets a bridge sequence and waits, in
//!   order, until the server acknowledges it ([`Bridge::handle_ack`], by sequence;
//!   duplicate and unknown acks are ignored). At most `max_in_flight` are sent and not yet
//!   acknowledged. A disconnect, a failed publish or an ack that does not come within
//!   `ack_timeout` puts every unacknowledged export back at the head of the queue, in
//!   order, to be sent again (after `retry_delay`, or at once on a reconnect); the
//!   message id (`host.publisher.sequence`) lets the server drop what it already stored.
//!   The queue holds at most `max_queued`; when full, the oldest goes and is counted.
//!   Each export that leaves the queue (acknowledged or dropped) is announced by
//!   [`Output::Release`], so that the driver removes it from its disk copy.
//! - **health**: Connected, or Degraded with the last error (not connected yet, an
//!   outage, a failed publish), and the counters the operator sees (queued, in flight,
//!   dropped, exported, imported, and the lag: the age of the oldest unacknowledged
//!   export).
//!
//! Time comes in as `now`; nothing here reads a clock, a socket or a file.

pub mod subject;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::Instant;
use crate::topic::{TopicFilter, TopicName};

/// The NATS header that names the host a message comes from.
pub const HEADER_ORIGIN: &str = "DaemonEye-Origin";
/// The NATS header with the message's local topic.
pub const HEADER_TOPIC: &str = "DaemonEye-Topic";
/// The NATS header with the local publisher's id.
pub const HEADER_PUBLISHER: &str = "DaemonEye-Publisher";
/// The NATS header with the local publisher's sequence.
pub const HEADER_SEQUENCE: &str = "DaemonEye-Sequence";
/// JetStream's deduplication header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// The correlation tag that marks a local message as imported (its value: the origin
/// host).
pub const IMPORTED_TAG: &str = "bridge.origin";

/// The bridge's settings, checked by the io crate's config.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// This host's id (header of every export; imports from it are refused).
    pub host_id: String,
    /// Exports go to `<prefix>.<topic>`.
    pub prefix: String,
    /// Local topic filters to export.
    pub export: Vec<TopicFilter>,
    /// Import subscriptions: (NATS prefix, local topic filter); the NATS subjects are
    /// `<prefix>.<topic>` and the local topic is the part after the prefix.
    pub import: Vec<(String, TopicFilter)>,
    /// Most QoS1 exports held (queued and in flight); the oldest goes beyond it.
    pub max_queued: usize,
    /// Most QoS1 exports sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// An export not acknowledged within this is sent again.
    pub ack_timeout: Duration,
    /// After a failed publish, the queue waits this long before sending again.
    pub retry_delay: Duration,
}

impl BridgeConfig {
    /// Defaults for `host_id`: prefix `daemoneye.<host_id>`, export `alerts.#`, import
    /// tasks for this host and for all hosts.
    pub fn new(host_id: &str) -> Self {
        let prefix = format!("daemoneye.{host_id}");
        let tasks = TopicFilter::parse("control.collector.task.#").expect("a valid filter");
        Self {
            host_id: host_id.to_string(),
            import: vec![
                (prefix.clone(), tasks.clone()),
                ("daemoneye.all".to_string(), tasks),
            ],
            prefix,
            export: vec![TopicFilter::parse("alerts.#").expect("a valid filter")],
            max_queued: 100_000,
            max_in_flight: 256,
            ack_timeout: Duration::from_secs(5),
            retry_delay: Duration::from_secs(1),
        }
    }

    /// The NATS subscriptions the import filters need, with the prefix each is under.
    pub fn import_subscriptions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (prefix, filter) in &self.import {
            for s in subject::subscriptions_for(prefix, filter) {
                if !out.iter().any(|(_, have)| *have == s) {
                    out.push((prefix.clone(), s));
                }
            }
        }
        out
    }

    /// The NATS subjects the exports can reach (what a JetStream stream must cover).
    pub fn export_subjects(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in &self.export {
            for s in subject::subscriptions_for(&self.prefix, f) {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out
    }
}

/// A local message offered for export.
#[derive(Debug, Clone)]
pub struct LocalMessage {
    /// Its topic.
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// At least once (QoS1) or not.
    pub at_least_once: bool,
    /// The local publisher's id.
    pub publisher: String,
    /// The local publisher's sequence.
    pub sequence: u64,
    /// The origin host, if the bridge imported it.
    pub imported_from: Option<String>,
}

/// The message id JetStream deduplicates by: `host.publisher.sequence` (built by hand:
/// `format!` costs more than the copies on the per-message path).
pub fn msg_id(host: &str, publisher: &str, sequence: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = sequence;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[at..];
    let mut id = String::with_capacity(host.len() + publisher.len() + 2 + digits.len());
    id.push_str(host);
    id.push('.');
    id.push_str(publisher);
    id.push('.');
    // ASCII digits.
    id.extend(digits.iter().map(|d| char::from(*d)));
    id
}

/// One export to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The bridge's sequence (0 for QoS0, which is not queued).
    pub seq: u64,
    /// The NATS subject.
    pub subject: String,
    /// The local topic.
    pub topic: String,
    /// The local publisher's id.
    pub publisher: String,
    /// The local publisher's sequence.
    pub sequence: u64,
    /// The message id JetStream deduplicates by: `host.publisher.sequence` (QoS1; empty
    /// for QoS0, which is never sent twice).
    pub msg_id: String,
    /// Payload.
    pub payload: Bytes,
    /// When it was offered.
    pub since: Instant,
}

/// What [`Bridge::offer`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// QoS0: publish this now (plain publish, not kept).
    Publish(Export),
    /// QoS1: queued under this sequence (it comes out of [`Bridge::poll_output`]).
    Queued(u64),
    /// Not exported.
    Skipped(Skip),
}

/// Why a message does not cross the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No export filter (or import subscription) matches it.
    NoMatch,
    /// It was imported (exporting it would loop).
    Imported,
    /// It comes from this host (importing it would loop).
    OwnExport,
    /// Its topic cannot be carried as a NATS subject.
    Unmappable,
    /// QoS0 while NATS is unreachable: dropped and counted.
    Disconnected,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Publish this QoS1 export (acknowledged publish with its message id), then report
    /// [`Bridge::handle_ack`] or [`Bridge::handle_publish_failed`] with its sequence.
    Publish(Export),
    /// This export left the queue (acknowledged, or dropped when the queue was full):
    /// forget its disk copy.
    Release(u64),
}

/// The connection's state, as health reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BridgeState {
    /// Connected, and the last publish went through.
    Connected,
    /// Not connected, or the last publish failed: exports wait.
    Degraded,
}

/// The bridge's counters and state, for health and `bridge status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Connected or Degraded.
    pub state: BridgeState,
    /// The server connected to, if any.
    pub server: Option<String>,
    /// The last error, if any since the last success.
    pub last_error: Option<String>,
    /// QoS1 exports held (queued and in flight).
    pub queued: u64,
    /// Of those, sent and not yet acknowledged.
    pub in_flight: u64,
    /// QoS1 exports dropped because the queue was full.
    pub dropped: u64,
    /// QoS0 exports dropped while disconnected.
    pub dropped_qos0: u64,
    /// Exports the server acknowledged (QoS1) or took (QoS0).
    pub exported: u64,
    /// Messages imported.
    pub imported: u64,
    /// Messages that could not cross (unmappable topics).
    pub unmappable: u64,
    /// Loops prevented (imported messages not exported, own exports not imported).
    pub loops_prevented: u64,
    /// Age of the oldest unacknowledged export.
    pub lag: Duration,
}

/// Why [`Bridge::poll_timeout`] wants to be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// An export's ack is overdue.
    AckTimeout,
    /// The retry delay after a failed publish is over.
    Retry,
}

/// The bridge machine.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    /// Exports sent and not yet acknowledged, in sequence order, with their ack deadline.
    in_flight: VecDeque<(Export, Instant)>,
    /// Exports waiting to be sent, in sequence order (all after the in-flight ones).
    queue: VecDeque<Export>,
    next_seq: u64,
    connected: Option<String>,
    /// No sending before this (after a failure).
    hold_until: Option<Instant>,
    last_error: Option<String>,
    outputs: VecDeque<Output>,
    dropped: u64,
    dropped_qos0: u64,
    exported: u64,
    imported: u64,
    unmappable: u64,
    loops_prevented: u64,
}

impl Bridge {
    /// A bridge with nothing queued, not connected yet.
    pub fn new(config: BridgeConfig) -> Self {
        Self {
            config,
            in_flight: VecDeque::new(),
            queue: VecDeque::new(),
            next_seq: 1,
            connected: None,
            hold_until: None,
            last_error: Some("not connected yet".into()),
            outputs: VecDeque::new(),
            dropped: 0,
            dropped_qos0: 0,
            exported: 0,
            imported: 0,
            unmappable: 0,
            loops_prevented: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    fn export_of(&self, now: Instant, seq: u64, m: LocalMessage, subject: String) -> Export {
        Export {
            seq,
            subject,
            // Only what JetStream may see twice (a QoS1 resend) needs an id to be
            // deduplicated by; a stream would otherwise keep every QoS0 id for its window.
            msg_id: if m.at_least_once {
                msg_id(&self.config.host_id, &m.publisher, m.sequence)
            } else {
                String::new()
            },
            topic: m.topic.as_str().to_string(),
            publisher: m.publisher,
            sequence: m.sequence,
            payload: m.payload,
            since: now,
        }
    }

    /// A local message arrived on an export subscription: decide what becomes of it.
    pub fn offer(&mut self, now: Instant, m: LocalMessage) -> Offer {
        if m.imported_from.is_some() {
            self.loops_prevented += 1;
            return Offer::Skipped(Skip::Imported);
        }
        if !self.config.export.iter().any(|f| f.matches(&m.topic)) {
            return Offer::Skipped(Skip::NoMatch);
        }
        let Some(subject) = subject::subject_for(&self.config.prefix, &m.topic) else {
            self.unmappable += 1;
            return Offer::Skipped(Skip::Unmappable);
        };
        if !m.at_least_once {
            if self.connected.is_none() {
                self.dropped_qos0 += 1;
                return Offer::Skipped(Skip::Disconnected);
            }
            self.exported += 1;
            return Offer::Publish(self.export_of(now, 0, m, subject));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let export = self.export_of(now, seq, m, subject);
        self.enqueue(now, export);
        Offer::Queued(seq)
    }

    /// Puts back an export the driver kept on disk from an earlier run (in sequence
    /// order, before any new offer): it is sent again under its message id.
    pub fn restore(&mut self, now: Instant, mut export: Export) {
        export.seq = self.next_seq;
        self.next_seq += 1;
        self.enqueue(now, export);
    }

    /// The sequence the next QoS1 export will get.
    pub fn next_sequence(&self) -> u64 {
        self.next_seq
    }

    fn enqueue(&mut self, now: Instant, export: Export) {
        while self.held() >= self.config.max_queued.max(1) {
            // The oldest goes: in flight first (they are older than everything queued).
            let seq = match self.in_flight.pop_front() {
                Some((e, _)) => e.seq,
                None => match self.queue.pop_front() {
                    Some(e) => e.seq,
                    None => break,
                },
            };
            self.dropped += 1;
            self.outputs.push_back(Output::Release(seq));
        }
        self.queue.push_back(export);
        self.pump(now);
    }

    fn held(&self) -> usize {
        self.in_flight.len() + self.queue.len()
    }

    /// Sends what the window allows, unless disconnected or holding after a failure.
    fn pump(&mut self, now: Instant) {
        if self.connected.is_none() || self.hold_until.is_some_and(|t| now < t) {
            return;
        }
        self.hold_until = None;
        while self.in_flight.len() < self.config.max_in_flight.max(1) {
            let Some(e) = self.queue.pop_front() else {
                break;
            };
            self.outputs.push_back(Output::Publish(e.clone()));
            self.in_flight
                .push_back((e, now.saturating_add(self.config.ack_timeout)));
        }
    }

    /// Everything unacknowledged goes back to the head of the queue, in order.
    fn requeue(&mut self) {
        while let Some((e, _)) = self.in_flight.pop_back() {
            self.queue.push_front(e);
        }
    }

    /// Connected (again) to `server`: the queue flows, from its oldest export.
    pub fn handle_connected(&mut self, now: Instant, server: &str) {
        self.connected = Some(server.to_string());
        self.last_error = None;
        self.hold_until = None;
        self.requeue();
        self.pump(now);
    }

    /// The connection is gone: exports wait, and everything in flight is sent again later.
    pub fn handle_disconnected(&mut self, now: Instant, error: &str) {
        let _ = now;
        self.connected = None;
        self.last_error = Some(error.to_string());
        self.requeue();
    }

    /// The server acknowledged export `seq` (a duplicate or unknown ack changes nothing).
    pub fn handle_ack(&mut self, now: Instant, seq: u64) {
        let Some(i) = self.in_flight.iter().position(|(e, _)| e.seq == seq) else {
            return;
        };
        self.in_flight.remove(i);
        self.exported += 1;
        self.last_error = None;
        self.outputs.push_back(Output::Release(seq));
        self.pump(now);
    }

    /// Publishing export `seq` failed: everything unacknowledged is sent again after the
    /// retry delay.
    pub fn handle_publish_failed(&mut self, now: Instant, seq: u64, error: &str) {
        if !self.in_flight.iter().any(|(e, _)| e.seq == seq) {
            return;
        }
        self.fail(now, error);
    }

    fn fail(&mut self, now: Instant, error: &str) {
        self.last_error = Some(error.to_string());
        self.requeue();
        self.hold_until = Some(now.saturating_add(self.config.retry_delay));
    }

    /// A QoS0 export could not be published (counted as dropped).
    pub fn handle_qos0_failed(&mut self, error: &str) {
        self.exported = self.exported.saturating_sub(1);
        self.dropped_qos0 += 1;
        self.last_error = Some(error.to_string());
    }

    /// Time passed: overdue acks count as a failure; a retry delay may be over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.in_flight.front().is_some_and(|(_, due)| *due <= now) {
            self.fail(now, "no acknowledgement from the server in time");
            return;
        }
        self.pump(now);
    }

    /// The next deadline, and why.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        if let Some((_, due)) = self.in_flight.front() {
            return Some((*due, Timer::AckTimeout));
        }
        match self.hold_until {
            Some(t) if self.connected.is_some() && !self.queue.is_empty() => {
                Some((t, Timer::Retry))
            }
            _ => None,
        }
    }

    /// The next thing for the driver to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A NATS message arrived on the import subscription for `prefix`: the local topic
    /// to publish it on, or why not.
    pub fn import(
        &mut self,
        prefix: &str,
        subject: &str,
        origin: Option<&str>,
    ) -> Result<TopicName, Skip> {
        if origin == Some(self.config.host_id.as_str()) {
            self.loops_prevented += 1;
            return Err(Skip::OwnExport);
        }
        let Some(topic) = subject::topic_under(prefix, subject) else {
            return Err(Skip::NoMatch);
        };
        if !self
            .config
            .import
            .iter()
            .any(|(p, f)| p == prefix && f.matches(&topic))
        {
            return Err(Skip::NoMatch);
        }
        self.imported += 1;
        Ok(topic)
    }

    /// The state and counters at `now`.
    pub fn status(&self, now: Instant) -> BridgeStatus {
        let oldest = self
            .in_flight
            .front()
            .map(|(e, _)| e.since)
            .or_else(|| self.queue.front().map(|e| e.since));
        let degraded = self.connected.is_none() || self.last_error.is_some();
        BridgeStatus {
            state: if degraded {
                BridgeState::Degraded
            } else {
                BridgeState::Connected
            },
            server: self.connected.clone(),
            last_error: self.last_error.clone(),
            queued: self.held() as u64,
            in_flight: self.in_flight.len() as u64,
            dropped: self.dropped,
            dropped_qos0: self.dropped_qos0,
            exported: self.exported,
            imported: self.imported,
            unmappable: self.unmappable,
            loops_prevented: self.loops_prevented,
            lag: oldest.map_or(Duration::ZERO, |t| now.saturating_since(t)),
        }
    }
}
