//! The transport behind the server: a listener that yields byte streams with the peer's
//! OS credentials. Production uses Unix domain sockets; a simulated transport (turmoil)
//! implements the same trait so the server runs unchanged under simulation.

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
