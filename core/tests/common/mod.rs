//! A perfect-link world for broker tests: one broker, clients wired to it in memory, run
//! until quiet after every step. (The fault-injecting world lives in daemoneye-sim.)
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::acl::Acl;
use daemoneye_core::broker::{Broker, BrokerConfig, CloseReason, ConnId, Output, PeerCreds};
use daemoneye_core::client::{ClientConfig, ClientEvent, ClientSession};
use daemoneye_proto::frame::{
    Deliver, GroupSpec, Overflow, Publish, QoS, QueueStrategy, Subscribe, Target,
};

pub const OWNER: u32 = 1000;
/// The broker's seed unless a test picks one.
pub const SEED: u64 = 42;

pub struct World {
    pub broker: Broker,
    pub now: Instant,
    pub clients: BTreeMap<ConnId, ClientSession>,
    /// Bytes a paused connection sent that the broker has not read yet.
    pub unread: BTreeMap<ConnId, Vec<u8>>,
    pub paused: BTreeSet<ConnId>,
    pub events: BTreeMap<ConnId, Vec<ClientEvent>>,
    pub closed: BTreeMap<ConnId, CloseReason>,
    /// Raw bytes the broker sent to raw (non-client) connections.
    pub raw_out: BTreeMap<ConnId, Vec<u8>>,
    /// Connections whose reader has stopped: what the broker transmits sits in the
    /// "socket" and is not reported written until `release`.
    pub stalled_readers: BTreeSet<ConnId>,
    pub held: BTreeMap<ConnId, Vec<Bytes>>,
}

impl World {
    pub fn new() -> Self {
        Self::with_config(BrokerConfig {
            owner_uid: OWNER,
            ..Default::default()
        })
    }

    pub fn with_config(config: BrokerConfig) -> Self {
        let acl = Acl::owner_only(config.owner_uid);
        Self::with_seed(config, acl, SEED)
    }

    pub fn with_seed(config: BrokerConfig, acl: Acl, seed: u64) -> Self {
        World {
            broker: Broker::new(config, acl, seed),
            now: Instant::from_nanos(1_000_000_000),
            clients: BTreeMap::new(),
            unread: BTreeMap::new(),
            paused: BTreeSet::new(),
            events: BTreeMap::new(),
            closed: BTreeMap::new(),
            raw_out: BTreeMap::new(),
            stalled_readers: BTreeSet::new(),
            held: BTreeMap::new(),
        }
    }

    pub fn connect(&mut self, name: &str) -> ConnId {
        self.connect_as(name, OWNER)
    }

    pub fn connect_as(&mut self, name: &str, uid: u32) -> ConnId {
        let conn = self.broker.handle_connect(
            self.now,
            PeerCreds {
                uid,
                gid: uid,
                pid: Some(1),
            },
        );
        let mut client = ClientSession::new(ClientConfig::new(name));
        client.connect(self.now);
        self.clients.insert(conn, client);
        self.run();
        conn
    }

    /// A connection with no client machine: the test writes raw bytes.
    pub fn connect_raw(&mut self, uid: u32) -> ConnId {
        let conn = self.broker.handle_connect(
            self.now,
            PeerCreds {
                uid,
                gid: uid,
                pid: None,
            },
        );
        self.run();
        conn
    }

    pub fn raw_send(&mut self, conn: ConnId, bytes: &[u8]) {
        self.broker.handle_bytes(self.now, conn, bytes);
        self.run();
    }

    pub fn client(&mut self, conn: ConnId) -> &mut ClientSession {
        self.clients.get_mut(&conn).expect("client exists")
    }

    /// Moves bytes until nothing changes.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            let mut progress = false;
            while let Some(out) = self.broker.poll_output() {
                progress = true;
                match out {
                    Output::Transmit { conn, data } if self.stalled_readers.contains(&conn) => {
                        self.held.entry(conn).or_default().push(data);
                    }
                    Output::Transmit { conn, data } => {
                        let n = data.len();
                        match self.clients.get_mut(&conn) {
                            Some(c) => c.handle_bytes(self.now, &data),
                            None => self
                                .raw_out
                                .entry(conn)
                                .or_default()
                                .extend_from_slice(&data),
                        }
                        self.broker.handle_written(self.now, conn, n);
                    }
                    Output::PauseRead { conn } => {
                        self.paused.insert(conn);
                    }
                    Output::ResumeRead { conn } => {
                        self.paused.remove(&conn);
                    }
                    Output::Close { conn, reason } => {
                        if let Some(c) = self.clients.get_mut(&conn) {
                            c.handle_disconnect(self.now, "closed by broker");
                        }
                        self.closed.insert(conn, reason);
                    }
                }
            }
            let ids: Vec<ConnId> = self.clients.keys().copied().collect();
            for id in ids {
                let client = self.clients.get_mut(&id).expect("client");
                while let Some(ev) = client.poll_output() {
                    self.events.entry(id).or_default().push(ev);
                    progress = true;
                }
                if let Some(bytes) = client.poll_transmit() {
                    if !self.closed.contains_key(&id) {
                        self.unread.entry(id).or_default().extend_from_slice(&bytes);
                    }
                    progress = true;
                }
                if !self.paused.contains(&id)
                    && let Some(bytes) = self.unread.remove(&id)
                    && !bytes.is_empty()
                {
                    self.broker.handle_bytes(self.now, id, &bytes);
                    progress = true;
                }
            }
            if !progress {
                // Quiet: the deadline structure answers as a scan of every connection and
                // subscription would.
                assert_eq!(
                    self.broker.poll_timeout(),
                    self.broker.poll_timeout_by_scan()
                );
                return;
            }
        }
        panic!("world did not quiesce");
    }

    /// The reader of `conn` starts reading again: held bytes arrive and count as written.
    pub fn release(&mut self, conn: ConnId) {
        self.stalled_readers.remove(&conn);
        for data in self.held.remove(&conn).unwrap_or_default() {
            if let Some(c) = self.clients.get_mut(&conn) {
                c.handle_bytes(self.now, &data);
            }
            self.broker.handle_written(self.now, conn, data.len());
        }
        self.run();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.broker.handle_timeout(self.now);
        for c in self.clients.values_mut() {
            c.handle_timeout(self.now);
        }
        self.run();
    }

    pub fn disconnect(&mut self, conn: ConnId) {
        self.broker.handle_disconnect(self.now, conn);
        if let Some(c) = self.clients.get_mut(&conn) {
            c.handle_disconnect(self.now, "test disconnect");
        }
        self.clients.remove(&conn);
        self.unread.remove(&conn);
        self.run();
    }

    pub fn subscribe(&mut self, conn: ConnId, spec: Subscribe) -> u64 {
        let id = self.client(conn).subscribe(spec);
        self.run();
        id
    }

    pub fn sub(&mut self, conn: ConnId, filter: &str) -> u64 {
        self.subscribe(conn, sub_spec(filter))
    }

    pub fn publish(&mut self, conn: ConnId, topic: &str, payload: &str, qos: QoS) -> u64 {
        let seq = self
            .client(conn)
            .publish(publish_spec(topic, payload, qos))
            .expect("publish");
        self.run();
        seq
    }

    /// Takes the messages a client received so far.
    pub fn take_messages(&mut self, conn: ConnId) -> Vec<Deliver> {
        let evs = self.events.entry(conn).or_default();
        let mut msgs = Vec::new();
        evs.retain(|e| match e {
            ClientEvent::Message(d) => {
                msgs.push(d.clone());
                false
            }
            _ => true,
        });
        msgs
    }

    pub fn payloads(&mut self, conn: ConnId) -> Vec<String> {
        self.take_messages(conn)
            .into_iter()
            .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
            .collect()
    }

    pub fn ack_all(&mut self, conn: ConnId, msgs: &[Deliver]) {
        for m in msgs {
            self.client(conn).ack(m.delivery_id);
        }
        self.run();
    }

    pub fn events_of(&mut self, conn: ConnId) -> Vec<ClientEvent> {
        std::mem::take(self.events.entry(conn).or_default())
    }

    pub fn errors(&mut self, conn: ConnId) -> Vec<daemoneye_proto::frame::ErrorFrame> {
        self.events
            .entry(conn)
            .or_default()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Error(err) => Some(err.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn pubacks(&mut self, conn: ConnId) -> Vec<(u64, u32, u32, bool)> {
        self.events
            .entry(conn)
            .or_default()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::PubAck {
                    sequence,
                    delivered,
                    dropped,
                    no_interest,
                } => Some((*sequence, *delivered, *dropped, *no_interest)),
                _ => None,
            })
            .collect()
    }
}

pub fn sub_spec(filter: &str) -> Subscribe {
    Subscribe::new(filter)
}

pub fn group_spec(filter: &str, group: &str, strategy: QueueStrategy) -> Subscribe {
    Subscribe {
        group: Some(GroupSpec {
            name: group.into(),
            strategy,
        }),
        ..sub_spec(filter)
    }
}

pub fn with(
    spec: Subscribe,
    qos: QoS,
    capacity: Option<u32>,
    overflow: Option<Overflow>,
) -> Subscribe {
    Subscribe {
        qos,
        capacity,
        overflow,
        ..spec
    }
}

pub fn publish_spec(topic: &str, payload: &str, qos: QoS) -> Publish {
    Publish::new(topic, Bytes::copy_from_slice(payload.as_bytes()), qos)
}

pub fn direct(p: Publish, target: Target) -> Publish {
    Publish {
        target: Some(target),
        ..p
    }
}

/// One client frame, header included.
pub fn frame_bytes(f: daemoneye_proto::frame::ClientFrame) -> Vec<u8> {
    let mut out = Vec::new();
    daemoneye_proto::encode(&f.into(), u32::MAX, &mut out).expect("encodes");
    out
}

/// A Hello frame for a raw connection.
pub fn hello_bytes(name: &str, role: daemoneye_proto::frame::Role) -> Vec<u8> {
    frame_bytes(daemoneye_proto::frame::ClientFrame::Hello(
        daemoneye_proto::frame::Hello {
            protocol_version: daemoneye_proto::PROTOCOL_VERSION,
            client_name: name.into(),
            role,
            publisher_id: name.into(),
            collector: None,
        },
    ))
}

/// Every frame in a byte stream the broker sent (a truncated tail is a test failure).
pub fn server_frames(bytes: &[u8]) -> Vec<daemoneye_proto::pb::bus::Frame> {
    let mut d = daemoneye_proto::FrameDecoder::new(u32::MAX);
    d.push(bytes).expect("valid frames");
    let mut frames = Vec::new();
    while let Some(f) = d.next_frame().expect("valid frame") {
        frames.push(f);
    }
    d.finish().expect("whole frames");
    frames
}

impl World {
    /// A client with its own configuration.
    pub fn connect_with(&mut self, config: ClientConfig, uid: u32) -> ConnId {
        let conn = self.broker.handle_connect(
            self.now,
            PeerCreds {
                uid,
                gid: uid,
                pid: Some(1),
            },
        );
        let mut client = ClientSession::new(config);
        client.connect(self.now);
        self.clients.insert(conn, client);
        self.run();
        conn
    }

    /// The peer of a raw connection shuts its sending side.
    pub fn raw_eof(&mut self, conn: ConnId) {
        self.broker.handle_eof(self.now, conn);
        self.run();
    }
}
