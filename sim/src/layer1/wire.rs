//! Connections and moving bytes in layer 1: connecting and resetting a client, draining
//! the broker's outputs into the links (and the shadow), the driver's writer, and each end
//! of a link reading what the link gives it.

use std::time::Duration;

use daemoneye_core::broker::{CloseReason, Output, PeerCreds};

use super::shadow::Shadow;
use super::{UID, World};
use crate::link::{End, LinkOutput};
use crate::report::Violation;

impl World {
    // ----- connections -----

    pub(super) fn connect(&mut self, i: usize) {
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid: Some(100 + i as u32),
        };
        let conn = self.broker.handle_connect(self.now, peer);
        self.shadow.broker.handle_connect(self.now, peer);
        let now = self.now;
        let link = self.new_link();
        let c = &mut self.clients[i];
        c.conn = Some(conn);
        c.link = link;
        c.link_epoch += 1;
        c.unacked.clear();
        c.acked_subs.clear();
        c.closing = false;
        c.blocked = false;
        c.watch.clear();
        c.session.connect(now);
        self.log(format!("connect c{i} as {conn:?}"));
    }

    /// Both ends see the connection die.
    pub(crate) fn reset(&mut self, i: usize, why: &str) {
        let Some(conn) = self.clients[i].conn.take() else {
            return;
        };
        self.broker.handle_disconnect(self.now, conn);
        self.shadow.broker.handle_disconnect(self.now, conn);
        let delay = Duration::from_millis(self.rng.below(3000));
        let link = self.new_link();
        let c = &mut self.clients[i];
        c.session.handle_disconnect(self.now, why.to_string());
        c.link = link;
        c.unacked.clear();
        c.down_until = self.now + delay;
        self.log(format!("reset c{i} ({why})"));
    }

    // ----- moving bytes -----

    pub(super) fn drain_broker(&mut self) -> Result<(), Violation> {
        let result = self.drain_primary();
        if let Err(detail) = self.shadow.check(self.broker.totals()) {
            return Err(self.violation("byte-split", detail));
        }
        result
    }

    fn drain_primary(&mut self) -> Result<(), Violation> {
        while let Some(out) = self.broker.poll_output() {
            Shadow::note(&mut self.shadow.primary, &out);
            match out {
                Output::Transmit { conn, data } if Some(conn) == self.agent.conn => {
                    self.agent.inbox.push_back(data);
                }
                Output::PauseRead { conn } if Some(conn) == self.agent.conn => {
                    self.agent.paused = true;
                }
                Output::ResumeRead { conn } if Some(conn) == self.agent.conn => {
                    self.agent.paused = false;
                }
                Output::Close { conn, reason } if Some(conn) == self.agent.conn => {
                    return Err(self.violation(
                        "agent-connection",
                        format!("the broker closed the agent's own connection: {reason:?}"),
                    ));
                }
                Output::Transmit { conn, data } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.handle_broker_write(self.now, data);
                    }
                }
                Output::PauseRead { conn } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.handle_broker_paused(self.now, true);
                    }
                }
                Output::ResumeRead { conn } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.handle_broker_paused(self.now, false);
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(i) = self.client_of(conn) {
                        self.clients[i].link.handle_broker_close(self.now);
                        self.log(format!("broker closes c{i}: {reason:?}"));
                        if reason == CloseReason::Goodbye {
                            self.note_clean_close(i);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The driver's writer: moves queued Transmits into each link while it has room, and
    /// tells the broker what went in.
    pub(super) fn write_to_links(&mut self) {
        let now = self.now;
        for i in 0..self.clients.len() {
            let Some(conn) = self.clients[i].conn else {
                continue;
            };
            let link = &mut self.clients[i].link;
            link.handle_flush(now);
            while let Some(out) = link.poll_output() {
                let LinkOutput::Written(written) = out else {
                    unreachable!("a flush only reports writes");
                };
                self.broker.handle_written(now, conn, written);
                self.shadow.broker.handle_written(now, conn, written);
            }
        }
    }

    /// The client end of client `i`'s link reads what the link gives it.
    pub(super) fn deliver_to_client(&mut self, i: usize) -> Result<(), Violation> {
        if self.clients[i].conn.is_none() {
            return Ok(());
        }
        let now = self.now;
        self.clients[i].link.handle_read(now, End::Client);
        let Some(out) = self.clients[i].link.poll_output() else {
            return Ok(());
        };
        match out {
            LinkOutput::Eof => {
                let link = self.new_link();
                let c = &mut self.clients[i];
                c.conn = None;
                c.session.handle_disconnect(now, "closed by broker");
                c.link = link;
                c.unacked.clear();
                c.down_until = now + Duration::from_millis(500);
                self.log(format!("c{i} sees EOF"));
                Ok(())
            }
            LinkOutput::Read { data, .. } => {
                self.log(format!("broker->c{i} {}B", data.len()));
                let dups = self.clients[i].session.duplicates_dropped();
                self.clients[i].session.handle_bytes(now, &data);
                let dropped = self.clients[i].session.duplicates_dropped() - dups;
                if dropped > 0 {
                    self.log(format!("c{i} dropped {dropped} duplicate(s)"));
                }
                self.client_events(i)
            }
            LinkOutput::Written(_) => unreachable!("only a flush reports writes"),
        }
    }

    /// The broker end of client `i`'s link reads what the link gives it.
    pub(super) fn deliver_to_broker(&mut self, i: usize) -> Result<(), Violation> {
        let Some(conn) = self.clients[i].conn else {
            return Ok(());
        };
        let now = self.now;
        self.clients[i].link.handle_read(now, End::Broker);
        let Some(out) = self.clients[i].link.poll_output() else {
            return Ok(());
        };
        let LinkOutput::Read {
            data, corrupted, ..
        } = out
        else {
            unreachable!("the broker end only reads bytes");
        };
        self.log(format!(
            "c{i}->broker {}B{}",
            data.len(),
            if corrupted { " corrupted" } else { "" }
        ));
        self.broker.handle_bytes(now, conn, &data);
        self.shadow.handle_bytes(now, conn, &data);
        self.drain_broker()?;
        if corrupted {
            // Whatever the broker made of the flipped byte (a refused stream, or a valid but
            // different frame), this client's frames can no longer be trusted: it goes away,
            // and what it published is exempt from the ordering checks.
            self.tainted.insert(self.clients[i].publisher_id.clone());
            self.crash_client(i);
        }
        Ok(())
    }

    pub(super) fn client_transmit(&mut self, i: usize) {
        if self.clients[i].conn.is_none() {
            return;
        }
        if let Some(bytes) = self.clients[i].session.poll_transmit() {
            let now = self.now;
            self.clients[i].link.handle_client_write(now, &bytes);
        }
    }
}
