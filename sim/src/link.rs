//! A fake byte-stream link between the broker and one client (layer 1), as a sans-IO
//! machine in the core's contract (`handle_*(now, ..)`, `poll_output`, `poll_timeout`),
//! after str0m's `Netem`: the link decides how bytes move (chunking, corruption, stalls,
//! a bounded send buffer), the scheduler decides when each end reads. Each link draws from
//! its own seeded stream, so what one link does never shifts another's draws or the
//! workload's.
//!
//! Two directions: towards the broker, the client's writes go straight into the link
//! (unbounded) and the broker end reads them unless the broker paused reading; towards the
//! client, the broker's writes wait in the driver's write queue until the link has room
//! (counted in bytes), and only then are reported written. A reset is not an input: the
//! connection is gone, and the next one gets a new link.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::rng::SeededRng;

/// A read takes at most this much when it is not cut short.
const MAX_READ: usize = 16 * 1024;

/// How a link misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Probability that a read delivers only part of what is buffered (any chunking).
    pub partial: f64,
    /// Probability that a chunk read at the broker end has one bit flipped. Only that
    /// direction: the broker's decoder faces hostile clients, while a flipped bit inside a
    /// valid frame towards a client is indistinguishable from a real message (a local
    /// socket has no checksum, and never flips bytes).
    pub corrupt: f64,
    /// Bytes the link buffers towards the client: the broker's writes are accepted (and
    /// reported written) only while they fit, unless the buffer is empty.
    pub capacity: usize,
}

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client's end.
    Client,
    /// The broker's end.
    Broker,
}

/// What the driver must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutput {
    /// `end` read these bytes; `corrupted` when one bit was flipped on the way.
    Read {
        /// The end that read.
        end: End,
        /// The bytes, in order.
        data: Vec<u8>,
        /// A bit was flipped.
        corrupted: bool,
    },
    /// The link accepted this many more bytes of the broker's writes: report them written.
    Written(usize),
    /// The client end reads end of stream: the broker closed, and everything it wrote has
    /// been read.
    Eof,
}

/// Why the link wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The client end's stall ends: it reads again.
    StallEnds,
}

/// One broker-client connection's bytes in flight.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    to_broker: VecDeque<u8>,
    to_client: VecDeque<u8>,
    /// Broker writes not yet in the link (the driver's write queue).
    unsent: VecDeque<Bytes>,
    /// The client end reads nothing before this.
    stalled_until: Instant,
    /// The broker asked not to be given bytes.
    read_paused: bool,
    /// The broker closed the connection: deliver what is buffered, then EOF.
    closing: bool,
    outputs: VecDeque<LinkOutput>,
    /// The link's own stream: chunking and corruption.
    rng: SeededRng,
}

impl Link {
    /// An empty, open link; `seed` replays its every decision.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Link {
            config,
            to_broker: VecDeque::new(),
            to_client: VecDeque::new(),
            unsent: VecDeque::new(),
            stalled_until: Instant::ZERO,
            read_paused: false,
            closing: false,
            outputs: VecDeque::new(),
            rng: SeededRng::new(seed),
        }
    }

    /// Misbehaves another way from now on (what is in flight stays).
    pub fn reconfigure(&mut self, config: LinkConfig) {
        self.config = config;
    }

    // ----- inputs -----

    /// The client wrote `data`.
    pub fn handle_client_write(&mut self, _now: Instant, data: &[u8]) {
        self.to_broker.extend(data.iter());
    }

    /// The broker wrote `data`: it waits in the write queue until the link has room.
    pub fn handle_broker_write(&mut self, _now: Instant, data: Bytes) {
        self.unsent.push_back(data);
    }

    /// The broker stops (`true`) or resumes (`false`) reading.
    pub fn handle_broker_paused(&mut self, _now: Instant, paused: bool) {
        self.read_paused = paused;
    }

    /// The broker closed the connection: what it wrote is still delivered, whatever the
    /// capacity, then the client end reads end of stream.
    pub fn handle_broker_close(&mut self, _now: Instant) {
        self.closing = true;
    }

    /// The driver's writer runs: moves queued broker writes into the link while they fit
    /// (a write that finds the link empty always fits), and reports how much went in.
    pub fn handle_flush(&mut self, _now: Instant) {
        let mut written = 0;
        while let Some(front) = self.unsent.front() {
            if !self.closing
                && self.to_client.len() + front.len() > self.config.capacity
                && !self.to_client.is_empty()
            {
                break;
            }
            let data = self.unsent.pop_front().unwrap_or_default();
            written += data.len();
            self.to_client.extend(data.iter());
        }
        if written > 0 {
            self.outputs.push_back(LinkOutput::Written(written));
        }
    }

    /// `end` reads whatever the link gives it now: nothing while the client end is
    /// stalled or the broker paused reading, else a chunk (all of what is buffered up to
    /// 16 KiB, or with probability `partial` a random shorter piece), bytes towards the
    /// broker possibly corrupted. The client end reads EOF once a closed link is empty.
    pub fn handle_read(&mut self, now: Instant, end: End) {
        match end {
            End::Client => {
                if self.stalled_until > now {
                    return;
                }
                let n = self.take_chunk(self.to_client.len());
                if n == 0 {
                    if self.closing && self.unsent.is_empty() {
                        self.outputs.push_back(LinkOutput::Eof);
                    }
                    return;
                }
                let data = self.to_client.drain(..n).collect();
                self.outputs.push_back(LinkOutput::Read {
                    end,
                    data,
                    corrupted: false,
                });
            }
            End::Broker => {
                if self.read_paused {
                    return;
                }
                let n = self.take_chunk(self.to_broker.len());
                if n == 0 {
                    return;
                }
                let mut data: Vec<u8> = self.to_broker.drain(..n).collect();
                let corrupted = chance(&mut self.rng, self.config.corrupt);
                if corrupted {
                    let at = self.rng.below(data.len() as u64) as usize;
                    data[at] ^= 1 << self.rng.below(8);
                }
                self.outputs.push_back(LinkOutput::Read {
                    end,
                    data,
                    corrupted,
                });
            }
        }
    }

    /// Time passed: a stall that is due ends.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stalled_until <= now {
            self.stalled_until = Instant::ZERO;
        }
    }

    // ----- faults -----

    /// The client end stops reading for `duration` from `now`.
    pub fn stall(&mut self, now: Instant, duration: Duration) {
        self.stalled_until = now + duration;
    }

    /// The client end reads again at once.
    pub fn heal_stall(&mut self) {
        self.stalled_until = Instant::ZERO;
    }

    // ----- outputs and time -----

    /// The next thing the driver must carry out.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<LinkOutput> {
        self.outputs.pop_front()
    }

    /// When the link changes on its own, and why.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        (self.stalled_until > Instant::ZERO).then_some((self.stalled_until, Timer::StallEnds))
    }

    // ----- queries -----

    /// Bytes buffered towards `end`, not yet read (towards the client: in the link, not
    /// counting the write queue).
    pub fn buffered(&self, end: End) -> usize {
        match end {
            End::Client => self.to_client.len(),
            End::Broker => self.to_broker.len(),
        }
    }

    /// Bytes the broker wrote that are still waiting for room.
    pub fn queued(&self) -> usize {
        self.unsent.iter().map(Bytes::len).sum()
    }

    fn take_chunk(&mut self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        if chance(&mut self.rng, self.config.partial) {
            1 + self.rng.below(len as u64) as usize
        } else {
            len.min(MAX_READ)
        }
    }
}

/// True with probability `p`; draws nothing when `p` is zero (so a fault that is off leaves
/// the stream as it was).
pub(crate) fn chance(rng: &mut SeededRng, p: f64) -> bool {
    p > 0.0 && rng.unit() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(partial: f64, corrupt: f64, capacity: usize) -> LinkConfig {
        LinkConfig {
            partial,
            corrupt,
            capacity,
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    /// Reads at `end` until the link gives nothing more, returning the bytes and EOF.
    fn read_all(link: &mut Link, now: Instant, end: End) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut eof = false;
        for _ in 0..10_000 {
            link.handle_read(now, end);
            let mut any = false;
            while let Some(out) = link.poll_output() {
                any = true;
                match out {
                    LinkOutput::Read { data, .. } => got.extend(data),
                    LinkOutput::Eof => eof = true,
                    LinkOutput::Written(_) => {}
                }
            }
            if !any || eof {
                break;
            }
        }
        (got, eof)
    }

    #[test]
    fn partial_reads_deliver_every_byte_once_in_order() {
        let mut link = Link::new(config(0.9, 0.0, 1 << 20), 9);
        let sent: Vec<u8> = (0..5000u32).map(|n| (n % 251) as u8).collect();
        for piece in sent.chunks(333) {
            link.handle_client_write(at(0), piece);
        }
        let mut chunks = 0;
        let mut got = Vec::new();
        while link.buffered(End::Broker) > 0 {
            link.handle_read(at(0), End::Broker);
            while let Some(out) = link.poll_output() {
                let LinkOutput::Read {
                    end,
                    data,
                    corrupted,
                } = out
                else {
                    panic!("unexpected {out:?}");
                };
                assert_eq!((end, corrupted), (End::Broker, false));
                chunks += 1;
                got.extend(data);
            }
        }
        assert_eq!(got, sent);
        // Without partial reads, 5000 bytes are one read.
        assert!(chunks >= 3, "reads were cut short: {chunks} chunks");
    }

    #[test]
    fn broker_writes_wait_for_room_and_are_reported_written_in_order() {
        let mut link = Link::new(config(0.0, 0.0, 10), 1);
        link.handle_broker_write(at(0), Bytes::from_static(b"abcdef"));
        link.handle_broker_write(at(0), Bytes::from_static(b"ghijkl"));
        link.handle_flush(at(0));
        assert_eq!(link.poll_output(), Some(LinkOutput::Written(6)));
        assert_eq!(link.poll_output(), None);
        assert_eq!(link.queued(), 6, "the second write does not fit");
        let (got, _) = read_all(&mut link, at(0), End::Client);
        assert_eq!(got, b"abcdef");
        link.handle_flush(at(0));
        assert_eq!(link.poll_output(), Some(LinkOutput::Written(6)));
        let (got, eof) = read_all(&mut link, at(0), End::Client);
        assert_eq!((got.as_slice(), eof), (&b"ghijkl"[..], false));
    }

    #[test]
    fn a_write_larger_than_the_capacity_fits_an_empty_link() {
        let mut link = Link::new(config(0.0, 0.0, 4), 7);
        link.handle_broker_write(at(0), Bytes::from(vec![7u8; 100]));
        link.handle_flush(at(0));
        assert_eq!(link.poll_output(), Some(LinkOutput::Written(100)));
    }

    #[test]
    fn a_closed_link_delivers_everything_then_eof() {
        let mut link = Link::new(config(0.5, 0.0, 4), 2);
        link.handle_broker_write(at(0), Bytes::from_static(b"0123456789"));
        link.handle_broker_write(at(0), Bytes::from_static(b"abc"));
        link.handle_broker_close(at(0));
        link.handle_flush(at(0));
        assert_eq!(link.poll_output(), Some(LinkOutput::Written(13)));
        let (got, eof) = read_all(&mut link, at(0), End::Client);
        assert_eq!(got, b"0123456789abc");
        assert!(eof);
    }

    #[test]
    fn a_stall_holds_the_client_end_then_heals() {
        let mut link = Link::new(config(0.0, 0.0, 1024), 3);
        link.handle_broker_write(at(0), Bytes::from_static(b"held"));
        link.handle_flush(at(0));
        let _ = link.poll_output();
        link.stall(at(0), Duration::from_millis(100));
        assert_eq!(link.poll_timeout(), Some((at(100), Timer::StallEnds)));
        let (got, _) = read_all(&mut link, at(99), End::Client);
        assert!(got.is_empty(), "a stalled end reads nothing");
        assert_eq!(link.buffered(End::Client), 4);
        link.handle_timeout(at(100));
        assert_eq!(link.poll_timeout(), None);
        let (got, _) = read_all(&mut link, at(100), End::Client);
        assert_eq!(got, b"held");
        link.stall(at(200), Duration::from_secs(5));
        link.heal_stall();
        link.handle_broker_write(at(200), Bytes::from_static(b"more"));
        link.handle_flush(at(200));
        let _ = link.poll_output();
        assert_eq!(read_all(&mut link, at(200), End::Client).0, b"more");
    }

    #[test]
    fn a_paused_broker_end_reads_nothing_until_resumed() {
        let mut link = Link::new(config(0.0, 0.0, 1024), 4);
        link.handle_client_write(at(0), b"hello");
        link.handle_broker_paused(at(0), true);
        assert!(read_all(&mut link, at(0), End::Broker).0.is_empty());
        link.handle_broker_paused(at(0), false);
        assert_eq!(read_all(&mut link, at(0), End::Broker).0, b"hello");
    }

    #[test]
    fn corruption_flips_exactly_one_bit_towards_the_broker_only() {
        let mut link = Link::new(config(0.0, 1.0, 1 << 20), 5);
        let sent = vec![0u8; 64];
        link.handle_client_write(at(0), &sent);
        link.handle_read(at(0), End::Broker);
        let Some(LinkOutput::Read {
            data, corrupted, ..
        }) = link.poll_output()
        else {
            panic!("a read");
        };
        assert!(corrupted);
        let flipped: u32 = data.iter().map(|b| b.count_ones()).sum();
        assert_eq!(flipped, 1);
        link.handle_broker_write(at(0), Bytes::from(sent.clone()));
        link.handle_flush(at(0));
        let _ = link.poll_output();
        let (got, _) = read_all(&mut link, at(0), End::Client);
        assert_eq!(got, sent, "bytes towards the client are never corrupted");
    }

    #[test]
    fn the_same_seed_gives_the_same_reads_and_another_seed_other_reads() {
        let reads = |seed: u64| {
            let mut link = Link::new(config(0.7, 0.1, 1 << 20), seed);
            link.handle_client_write(at(0), &[0x55; 4000]);
            let mut seen = Vec::new();
            while link.buffered(End::Broker) > 0 {
                link.handle_read(at(0), End::Broker);
                while let Some(out) = link.poll_output() {
                    seen.push(out);
                }
            }
            seen
        };
        assert_eq!(reads(11), reads(11));
        assert_ne!(reads(11), reads(12));
    }

    #[test]
    fn with_its_faults_off_a_link_reads_the_same_whatever_its_seed() {
        let reads = |seed: u64| {
            let mut link = Link::new(config(0.0, 0.0, 1024), seed);
            link.handle_client_write(at(0), &[1; 3000]);
            link.handle_broker_write(at(0), Bytes::from(vec![2; 3000]));
            link.handle_flush(at(0));
            let mut seen: Vec<LinkOutput> = std::iter::from_fn(|| link.poll_output()).collect();
            link.handle_read(at(0), End::Broker);
            link.handle_read(at(0), End::Client);
            seen.extend(std::iter::from_fn(|| link.poll_output()));
            seen
        };
        assert_eq!(reads(1), reads(2));
        assert_eq!(
            reads(1).len(),
            3,
            "written, then one whole read at each end"
        );
    }
}
