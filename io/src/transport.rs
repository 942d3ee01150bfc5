//! The transports under the broker server ([`Listener`]: byte streams with the peer's OS
//! credentials) and the client library ([`Connector`]). Production uses Unix domain
//! sockets; the simulation implements the same traits over turmoil, so both run unchanged.

use std::future::Future;
use std::io;

use daemoneye_core::broker::PeerCreds;
use tokio::io::{AsyncRead, AsyncWrite};

/// Accepts connections.
pub trait Listener {
    /// The read half of an accepted connection.
    type Read: AsyncRead + Unpin + 'static;
    /// The write half of an accepted connection.
    type Write: AsyncWrite + Unpin + 'static;
    /// The next connection, split, with its peer's credentials from the OS.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Read, Self::Write, PeerCreds)>>;
}

/// Unix domain socket listener; credentials from `SO_PEERCRED` (or the platform's
/// equivalent), never from what the client says.
#[derive(Debug)]
pub struct UnixTransport(pub tokio::net::UnixListener);

impl Listener for UnixTransport {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    async fn accept(&mut self) -> io::Result<(Self::Read, Self::Write, PeerCreds)> {
        let (stream, _) = self.0.accept().await?;
        let cred = stream.peer_cred()?;
        let peer = PeerCreds {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
        };
        let (r, w) = stream.into_split();
        Ok((r, w, peer))
    }
}

/// Opens connections to the broker, for the client library. Production connects to a
/// Unix domain socket; the simulation connects over turmoil's network.
pub trait Connector: Send + Sync + 'static {
    /// The read half of a connection.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The write half of a connection.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// A new connection, split.
    fn connect(&self) -> impl Future<Output = io::Result<(Self::Read, Self::Write)>> + Send;
    /// Where it connects, for error messages.
    fn address(&self) -> std::path::PathBuf;
}

/// Connects to the broker's Unix domain socket at a path.
#[derive(Debug, Clone)]
pub struct UnixConnector(pub std::path::PathBuf);

impl Connector for UnixConnector {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    async fn connect(&self) -> io::Result<(Self::Read, Self::Write)> {
        Ok(tokio::net::UnixStream::connect(&self.0).await?.into_split())
    }

    fn address(&self) -> std::path::PathBuf {
        self.0.clone()
    }
}
