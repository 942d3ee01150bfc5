//! Time: the broker's deadlines ([`Timer`]), `poll_timeout` and `handle_timeout`.
//!
//! Every connection has one phase deadline (the handshake, then the keepalive) and, while
//! a frame has arrived in part, a frame deadline; a detached durable subscription has its
//! expiry; the broker has its stats interval. `poll_timeout` answers from a
//! [`Deadlines`](super::deadlines::Deadlines) structure in O(log n): a deadline that appears or moves earlier is armed where it
//! changes (the `arm_*` helpers below); one that moves later (the keepalive, on every
//! frame) is re-filed lazily when it surfaces. Ties go to the scan order: stats, then
//! connections by id (frame before phase), then subscriptions by key.

use daemoneye_proto::pb::bus::{self as pb, frame::Body};

use super::connection::{Connection, Phase};
use super::subscribe::Subscription;
use super::{Broker, BrokerConfig, CloseReason, ConnId};
use crate::Instant;
use crate::time::earlier;

/// Why the [`Broker`] wants [`handle_timeout`](Broker::handle_timeout) called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The periodic `$sys` stats publish.
    Stats,
    /// A connection has not said Hello in time.
    Handshake(ConnId),
    /// A connection has been quiet: ping it, or drop it after three heartbeat intervals.
    Keepalive(ConnId),
    /// A connection started a frame and has not finished it within the frame timeout.
    Frame(ConnId),
    /// A detached durable subscription (by subscription key) has stayed away too long.
    DurableExpiry(u64),
}

/// A deadline's key in the broker's deadline structure; the derived order is the tie order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKey {
    /// A connection's timer.
    Conn(ConnId, ConnTimer),
    /// A detached durable subscription's expiry, by subscription key.
    DurableExpiry(u64),
}

/// A connection's two timers, in tie order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ConnTimer {
    /// The frame that has arrived in part.
    Frame,
    /// The handshake deadline, then the keepalive.
    Phase,
}

impl TimerKey {
    pub(super) fn frame(conn: ConnId) -> Self {
        TimerKey::Conn(conn, ConnTimer::Frame)
    }

    fn phase(conn: ConnId) -> Self {
        TimerKey::Conn(conn, ConnTimer::Phase)
    }
}

/// A connection's frame deadline, if a frame has arrived in part.
fn frame_deadline(config: &BrokerConfig, c: &Connection) -> Option<Instant> {
    c.frame_started
        .map(|started| started + config.frame_timeout)
}

/// A connection's handshake or keepalive deadline: the ping after a quiet heartbeat
/// interval (at most one per interval), the close after three.
fn phase_deadline(config: &BrokerConfig, id: ConnId, c: &Connection) -> (Instant, Timer) {
    let hb = config.heartbeat_interval;
    match c.phase {
        Phase::Handshaking { deadline } => (deadline, Timer::Handshake(id)),
        Phase::Open => {
            let idle = c.last_recv + hb * 3;
            let ping = (c.last_recv + hb).max(c.last_ping + hb);
            (idle.min(ping), Timer::Keepalive(id))
        }
    }
}

fn expiry_deadline(config: &BrokerConfig, s: &Subscription) -> Option<Instant> {
    s.detached_at.map(|t| t + config.durable_expiry)
}

impl Broker {
    /// Time has reached a deadline from [`poll_timeout`](Self::poll_timeout) (calling it
    /// early or late is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start_clock(now);
        let hb = self.config.heartbeat_interval;
        let mut expired = Vec::new();
        let mut pings = Vec::new();
        let mut slow_frames = Vec::new();
        for (&id, c) in &self.conns {
            if let Some(started) = c.frame_started
                && started + self.config.frame_timeout <= now
            {
                slow_frames.push(id);
                continue;
            }
            match c.phase {
                Phase::Handshaking { deadline } if deadline <= now => expired.push((id, true)),
                Phase::Handshaking { .. } => {}
                Phase::Open => {
                    if c.last_recv + hb * 3 <= now {
                        expired.push((id, false));
                    } else if c.last_recv + hb <= now && c.last_ping + hb <= now {
                        pings.push(id);
                    }
                }
            }
        }
        for id in slow_frames {
            self.totals.frame_timeouts += 1;
            let msg = format!(
                "frame not completed within the frame timeout of {} ms",
                self.config.frame_timeout.as_millis()
            );
            self.protocol_error(now, id, pb::ErrorCode::Protocol, msg);
        }
        for (id, handshake) in expired {
            let (code, msg) = if handshake {
                (
                    pb::ErrorCode::HandshakeTimeout,
                    "no Hello within the handshake timeout".to_string(),
                )
            } else {
                (
                    pb::ErrorCode::IdleTimeout,
                    "no traffic for 3 heartbeat intervals".to_string(),
                )
            };
            self.send_error(id, code, msg, 0, pb::AnswerKind::Connection);
            self.close(now, id, CloseReason::Timeout);
        }
        for id in pings {
            if let Some(c) = self.conns.get_mut(&id) {
                c.last_ping = now;
                let nonce = now.as_nanos();
                self.send_frame(id, Body::Ping(pb::Ping { nonce }));
            }
        }
        // Durable subscriptions whose owner stayed away too long.
        let expiry = self.config.durable_expiry;
        let gone: Vec<u64> = self
            .subs
            .values()
            .filter(|s| s.detached_at.is_some_and(|t| t + expiry <= now))
            .map(|s| s.key)
            .collect();
        for key in gone {
            self.remove_subscription(now, key, false);
        }
        if let Some(at) = self.next_stats
            && at <= now
        {
            self.next_stats = Some(now + self.config.stats_interval);
            self.publish_stats(now);
        }
        self.pump(now);
        self.flush();
    }

    /// The next deadline and what it is for: a handshake, frame or keepalive timeout, a
    /// durable expiry or the stats interval. O(log n); `&mut` only because deadlines that
    /// moved later since they were armed are re-filed as they surface (nothing a caller can
    /// observe changes).
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<(Instant, Timer)> {
        let (config, conns, subs) = (&self.config, &self.conns, &self.subs);
        let next = self.deadlines.next(|key| match key {
            TimerKey::Conn(id, ConnTimer::Frame) => frame_deadline(config, conns.get(&id)?),
            TimerKey::Conn(id, ConnTimer::Phase) => {
                Some(phase_deadline(config, id, conns.get(&id)?).0)
            }
            TimerKey::DurableExpiry(k) => expiry_deadline(config, subs.get(&k)?),
        });
        let next = next.map(|(at, key)| {
            let timer = match key {
                TimerKey::Conn(id, ConnTimer::Frame) => Timer::Frame(id),
                TimerKey::Conn(id, ConnTimer::Phase) => match self.conns.get(&id) {
                    Some(c) => phase_deadline(&self.config, id, c).1,
                    None => Timer::Keepalive(id),
                },
                TimerKey::DurableExpiry(k) => Timer::DurableExpiry(k),
            };
            (at, timer)
        });
        let answer = earlier(self.next_stats.map(|at| (at, Timer::Stats)), next);
        debug_assert_eq!(
            answer,
            self.poll_timeout_by_scan(),
            "deadline structure disagrees"
        );
        answer
    }

    /// `poll_timeout` by scanning every connection and subscription: the reference the
    /// deadline structure must agree with (checked in debug builds and by the tests).
    #[doc(hidden)]
    pub fn poll_timeout_by_scan(&self) -> Option<(Instant, Timer)> {
        let mut next = self.next_stats.map(|at| (at, Timer::Stats));
        for (&id, c) in &self.conns {
            let frame = frame_deadline(&self.config, c).map(|at| (at, Timer::Frame(id)));
            next = earlier(next, frame);
            next = earlier(next, Some(phase_deadline(&self.config, id, c)));
        }
        for s in self.subs.values() {
            let expiry =
                expiry_deadline(&self.config, s).map(|at| (at, Timer::DurableExpiry(s.key)));
            next = earlier(next, expiry);
        }
        next
    }

    /// A connection's handshake or keepalive deadline appeared or may have moved earlier.
    pub(super) fn arm_phase_timer(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            let (at, _) = phase_deadline(&self.config, conn, c);
            self.deadlines.arm(TimerKey::phase(conn), at);
        }
    }

    /// A durable subscription was detached: its expiry runs.
    pub(super) fn arm_durable_expiry(&mut self, key: u64) {
        if let Some(at) = self
            .subs
            .get(&key)
            .and_then(|s| expiry_deadline(&self.config, s))
        {
            self.deadlines.arm(TimerKey::DurableExpiry(key), at);
        }
    }

    /// A durable subscription was resumed or removed.
    pub(super) fn disarm_durable_expiry(&mut self, key: u64) {
        self.deadlines.disarm(TimerKey::DurableExpiry(key));
    }

    /// A connection is gone.
    pub(super) fn disarm_connection(&mut self, conn: ConnId) {
        self.deadlines.disarm(TimerKey::frame(conn));
        self.deadlines.disarm(TimerKey::phase(conn));
    }
}
