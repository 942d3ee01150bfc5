//! turmoil behind the io crate's transport traits: the broker server's listener (with
//! the peer credentials a local socket would report) and the clients' connector.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use daemoneye_core::broker::PeerCreds;
use daemoneye_io::transport::{Connector, Listener};

use super::{PORT, UID};

thread_local! {
    /// The pid of each collector host's current process, as the broker's peer credentials
    /// report it (the agent accepts a collector's registration only from that pid).
    pub(super) static HOST_PIDS: RefCell<BTreeMap<String, u32>> = const { RefCell::new(BTreeMap::new()) };
}

pub(super) struct TurmoilListener(pub(super) turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;

    async fn accept(&mut self) -> io::Result<(Self::Read, Self::Write, PeerCreds)> {
        let (stream, from) = self.0.accept().await?;
        let (r, w) = stream.into_split();
        // The simulated network has no peer credentials: every host is the owner, and a
        // collector host has the pid the simulated spawner gave its current process.
        let pid = turmoil::reverse_lookup(from.ip())
            .and_then(|host| HOST_PIDS.with(|p| p.borrow().get(&host).copied()));
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid,
        };
        Ok((r, w, peer))
    }
}

pub(super) struct TurmoilConnector;

impl Connector for TurmoilConnector {
    type Read = turmoil::net::tcp::OwnedReadHalf;
    type Write = turmoil::net::tcp::OwnedWriteHalf;

    async fn connect(&self) -> io::Result<(Self::Read, Self::Write)> {
        Ok(turmoil::net::TcpStream::connect(("broker", PORT))
            .await?
            .into_split())
    }

    fn address(&self) -> PathBuf {
        PathBuf::from(format!("broker:{PORT}"))
    }
}
