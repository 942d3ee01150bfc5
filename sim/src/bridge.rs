//! The NATS bridge's export queue against a fake NATS server, in virtual time
//! (`--bridge`).
//!
//! The real [`Bridge`] machine from the core is driven by a seeded world: a local
//! publisher offers QoS1 (and some QoS0) messages, a FIFO link carries the bridge's
//! publishes to a fake JetStream server that stores each message id once (deduplication by
//! `Nats-Msg-Id`) and acknowledges it, and faults strike: outages (the link loses what it
//! carries, a random prefix of it reached the server first), lost acks (the machine's ack
//! timeout must resend), duplicated acks, publishes the server refuses (with everything
//! behind them on the wire: a refusing server refuses until it recovers), and long outages
//! that fill the queue so that its oldest exports are dropped. The seed picks the fault
//! rates (swarm testing) and the queue's limits.
//!
//! Invariants, after every step:
//!
//! - **order**: the server's first arrivals are in export order (sequence increasing);
//! - **bounded**: the machine never holds more than `max_queued`;
//! - **acked means stored**: an export released by an ack is stored on the server;
//!
//! and after a liveness phase without faults (connected, every publish acknowledged): the
//! queue is empty, and every QoS1 export reached the server exactly once after
//! deduplication, unless the machine counted it as dropped (the count is exact).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::bridge::{Bridge, BridgeConfig, Export, LocalMessage, Offer, Output};
use daemoneye_core::rng::SeededRng;
use daemoneye_core::topic::TopicName;

use crate::report::{EventLog, Violation};

/// What to run.
#[derive(Debug, Clone)]
pub struct BridgeSimConfig {
    /// The seed: replays the run exactly.
    pub seed: u64,
    /// Steps of the fault phase.
    pub steps: u64,
    /// Print every event.
    pub verbose: bool,
}

impl BridgeSimConfig {
    /// Seed `seed`, 3,000 steps, quiet.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: 3000,
            verbose: false,
        }
    }
}

/// A run that kept every invariant.
#[derive(Debug, Clone, Default)]
pub struct BridgeOutcome {
    /// Steps taken (both phases).
    pub steps: u64,
    /// Hash of the event trace: equal for equal seeds.
    pub trace: u64,
    /// QoS1 exports offered.
    pub offered: u64,
    /// Stored by the server (after deduplication).
    pub stored: u64,
    /// Duplicates the server's deduplication dropped.
    pub duplicates: u64,
    /// Exports the machine dropped (queue full).
    pub dropped: u64,
    /// Outages.
    pub outages: u64,
    /// Acks lost.
    pub lost_acks: u64,
}

#[derive(Debug, Clone)]
struct Swarm {
    max_queued: usize,
    max_in_flight: usize,
    offer: f64,
    qos0: f64,
    outage: f64,
    outage_ms: u64,
    lose_ack: f64,
    dup_ack: f64,
    refuse: f64,
}

impl Swarm {
    fn pick(rng: &mut SeededRng) -> Self {
        Swarm {
            max_queued: [1, 3, 20, 200, 100_000][rng.below(5) as usize],
            max_in_flight: [1, 2, 8, 64][rng.below(4) as usize],
            offer: [0.2, 0.4, 0.6][rng.below(3) as usize],
            qos0: [0.0, 0.2][rng.below(2) as usize],
            outage: [0.0, 0.005, 0.02][rng.below(3) as usize],
            outage_ms: [50, 2000, 30_000][rng.below(3) as usize],
            lose_ack: [0.0, 0.02, 0.1][rng.below(3) as usize],
            dup_ack: [0.0, 0.1][rng.below(2) as usize],
            refuse: [0.0, 0.01][rng.below(2) as usize],
        }
    }
}

/// The fake JetStream server and the link to it.
#[derive(Debug, Default)]
struct FakeNats {
    up: bool,
    /// Publishes on their way to the server, in order.
    wire: VecDeque<Export>,
    /// Acks on their way back (the bridge sequence they answer).
    acks: VecDeque<u64>,
    /// Message ids stored, and the order of first arrival (bridge sequences).
    stored_ids: BTreeSet<String>,
    arrivals: Vec<u64>,
    duplicates: u64,
}

struct Sim {
    rng: SeededRng,
    swarm: Swarm,
    bridge: Bridge,
    nats: FakeNats,
    events: EventLog,
    now: Instant,
    step: u64,
    /// The outage ends then.
    down_until: Option<Instant>,
    next_pub_seq: u64,
    /// Every QoS1 export offered: bridge sequence -> message id.
    offered: BTreeMap<u64, String>,
    /// Exports dropped by the machine (released without an ack).
    dropped: BTreeSet<u64>,
    /// An export released by an ack that the server had not stored.
    acked_unstored: Option<u64>,
    outcome: BridgeOutcome,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs one seed of the bridge simulation.
pub fn run_bridge(cfg: &BridgeSimConfig) -> Result<BridgeOutcome, Violation> {
    let mut rng = SeededRng::new(cfg.seed ^ 0x6272_6964_6765_0000);
    let swarm = Swarm::pick(&mut rng);
    let mut events = EventLog::new(cfg.verbose, cfg.seed, " --bridge");
    events.record(0, "0", format!("swarm {swarm:?}"));
    let mut config = BridgeConfig::new("h1");
    config.max_queued = swarm.max_queued;
    config.max_in_flight = swarm.max_in_flight;
    config.ack_timeout = ms(2000);
    config.retry_delay = ms(100);
    let mut sim = Sim {
        rng,
        bridge: Bridge::new(config),
        swarm,
        nats: FakeNats::default(),
        events,
        now: Instant::from_nanos(1_000_000_000),
        step: 0,
        down_until: Some(Instant::ZERO),
        next_pub_seq: 1,
        offered: BTreeMap::new(),
        dropped: BTreeSet::new(),
        acked_unstored: None,
        outcome: BridgeOutcome::default(),
    };
    for _ in 0..cfg.steps {
        sim.step_once(true)?;
    }
    sim.liveness()?;
    sim.outcome.steps = sim.step;
    sim.outcome.trace = sim.events.hash;
    sim.outcome.offered = sim.offered.len() as u64;
    sim.outcome.stored = sim.nats.arrivals.len() as u64;
    sim.outcome.duplicates = sim.nats.duplicates;
    sim.outcome.dropped = sim.dropped.len() as u64;
    Ok(sim.outcome)
}

impl Sim {
    fn log(&mut self, event: String) {
        let stamp = format!("{:?}", self.now);
        self.events.record(self.step, &stamp, event);
    }

    fn fail(&self, invariant: &'static str, detail: String) -> Violation {
        self.events.violation(invariant, detail, self.step)
    }

    fn step_once(&mut self, faults: bool) -> Result<(), Violation> {
        self.step += 1;
        self.now = self.now.saturating_add(ms(1 + self.rng.below(20)));
        if self.down_until.is_some_and(|t| t <= self.now) {
            self.down_until = None;
            self.nats.up = true;
            self.log("reconnected".into());
            self.bridge.handle_connected(self.now, "nats://fake:4222");
        }
        if let Some((due, why)) = self.bridge.poll_timeout()
            && due <= self.now
        {
            self.log(format!("timeout {why:?}"));
            self.bridge.handle_timeout(self.now);
        }
        let roll = self.rng.unit();
        if faults && self.nats.up && roll < self.swarm.outage {
            self.outage();
        } else if faults && self.rng.unit() < self.swarm.offer {
            self.offer();
        } else {
            for _ in 0..1 + self.rng.below(16) {
                self.serve(faults);
                self.drain();
            }
        }
        self.drain();
        self.check()
    }

    fn offer(&mut self) {
        let qos1 = self.rng.unit() >= self.swarm.qos0;
        let sequence = self.next_pub_seq;
        self.next_pub_seq += 1;
        let m = LocalMessage {
            topic: TopicName::parse("alerts.high").expect("a valid topic"),
            payload: Bytes::from(sequence.to_be_bytes().to_vec()),
            at_least_once: qos1,
            publisher: "detect".into(),
            sequence,
            imported_from: None,
        };
        let offer = self.bridge.offer(self.now, m);
        self.log(format!("offer qos1={qos1} pub seq {sequence}: {offer:?}"));
        if let Offer::Queued(seq) = offer {
            self.offered.insert(seq, format!("h1.detect.{sequence}"));
        }
        // Releases now are drops: an ack never arrives inside an offer.
        self.drain_drops();
    }

    fn drain_drops(&mut self) {
        while let Some(o) = self.bridge.poll_output() {
            match o {
                Output::Release(seq) => {
                    self.log(format!("dropped {seq}"));
                    self.dropped.insert(seq);
                }
                Output::Publish(e) => self.send(e),
            }
        }
    }

    fn outage(&mut self) {
        self.outcome.outages += 1;
        // A random prefix of what is on the wire reached the server first.
        let reached = self.rng.below(self.nats.wire.len() as u64 + 1) as usize;
        for _ in 0..reached {
            if let Some(e) = self.nats.wire.pop_front() {
                self.store(&e);
            }
        }
        let lost = self.nats.wire.len();
        self.nats.wire.clear();
        self.nats.acks.clear();
        self.nats.up = false;
        let length = self.rng.below(self.swarm.outage_ms) + 1;
        self.down_until = Some(self.now.saturating_add(ms(length)));
        self.log(format!(
            "outage of {length} ms: {reached} reached, {lost} lost"
        ));
        self.bridge
            .handle_disconnected(self.now, "connection reset by fake server");
    }

    fn store(&mut self, e: &Export) {
        if self.nats.stored_ids.insert(e.msg_id.clone()) {
            self.nats.arrivals.push(e.seq);
        } else {
            self.nats.duplicates += 1;
        }
    }

    /// The server takes one publish or the bridge one ack.
    fn serve(&mut self, faults: bool) {
        if !self.nats.up {
            return;
        }
        if !self.nats.acks.is_empty() && self.rng.below(2) == 0 {
            let seq = self.nats.acks.pop_front().unwrap_or_default();
            self.log(format!("ack {seq}"));
            self.ack(seq);
            return;
        }
        let Some(e) = self.nats.wire.pop_front() else {
            if let Some(seq) = self.nats.acks.pop_front() {
                self.log(format!("ack {seq}"));
                self.ack(seq);
            }
            return;
        };
        if faults && self.rng.unit() < self.swarm.refuse {
            // A server that refuses a publish (storage unavailable, a leader election)
            // refuses what is behind it on the wire too, until it recovers.
            let behind: Vec<Export> = self.nats.wire.drain(..).collect();
            self.log(format!(
                "server refused {} and the {} behind it",
                e.seq,
                behind.len()
            ));
            // Each refused publish gets its own error back.
            for refused in std::iter::once(e).chain(behind) {
                self.bridge
                    .handle_publish_failed(self.now, refused.seq, "fake server refused");
            }
            return;
        }
        self.store(&e);
        if faults && self.rng.unit() < self.swarm.lose_ack {
            self.outcome.lost_acks += 1;
            self.log(format!("stored {}, ack lost", e.seq));
            return;
        }
        self.nats.acks.push_back(e.seq);
        if faults && self.rng.unit() < self.swarm.dup_ack {
            self.nats.acks.push_back(e.seq);
        }
        self.log(format!("stored {} ({})", e.seq, e.msg_id));
    }

    fn ack(&mut self, seq: u64) {
        self.bridge.handle_ack(self.now, seq);
        while let Some(o) = self.bridge.poll_output() {
            match o {
                Output::Release(s) if s == seq => {
                    if !self.nats.arrivals.contains(&s) {
                        self.acked_unstored = Some(s);
                    }
                }
                // Only an offer drops; the count check catches anything else.
                Output::Release(s) => {
                    self.dropped.insert(s);
                }
                Output::Publish(e) => self.send(e),
            }
        }
    }

    fn send(&mut self, e: Export) {
        self.log(format!("publish {} ({})", e.seq, e.msg_id));
        if self.nats.up {
            self.nats.wire.push_back(e);
        }
    }

    fn drain(&mut self) {
        self.drain_drops();
    }

    fn check(&self) -> Result<(), Violation> {
        if let Some(seq) = self.acked_unstored {
            return Err(self.fail(
                "acked means stored",
                format!("export {seq} was released by an ack the server never stored"),
            ));
        }
        if let Some(w) = self.nats.arrivals.windows(2).find(|w| w[0] >= w[1]) {
            return Err(self.fail(
                "order",
                format!("the server stored {} before {}", w[0], w[1]),
            ));
        }
        let s = self.bridge.status(self.now);
        if s.queued as usize > self.swarm.max_queued {
            return Err(self.fail(
                "bounded",
                format!("{} held, max {}", s.queued, self.swarm.max_queued),
            ));
        }
        if s.dropped != self.dropped.len() as u64 {
            return Err(self.fail(
                "drops counted",
                format!(
                    "machine counts {} drops, {} were released unacked",
                    s.dropped,
                    self.dropped.len()
                ),
            ));
        }
        Ok(())
    }

    fn liveness(&mut self) -> Result<(), Violation> {
        self.log("liveness phase".into());
        let limit = self.step + 200_000;
        while self.step < limit {
            let s = self.bridge.status(self.now);
            if s.queued == 0 && self.nats.wire.is_empty() && self.nats.acks.is_empty() {
                break;
            }
            self.step_once(false)?;
        }
        let s = self.bridge.status(self.now);
        if s.queued != 0 {
            return Err(self.fail(
                "liveness",
                format!("{} exports still held after faults stopped", s.queued),
            ));
        }
        let stored: BTreeSet<u64> = self.nats.arrivals.iter().copied().collect();
        for (seq, id) in &self.offered {
            let arrived = stored.contains(seq);
            if !arrived && !self.dropped.contains(seq) {
                return Err(self.fail(
                    "nothing lost",
                    format!("export {seq} ({id}) neither reached the server nor was dropped"),
                ));
            }
            if !self.nats.stored_ids.contains(id) && arrived {
                return Err(self.fail("dedup", format!("{seq} stored without its id {id}")));
            }
        }
        if stored.len() != self.nats.arrivals.len() {
            return Err(self.fail("exactly once", "an export was stored twice".to_string()));
        }
        Ok(())
    }
}
