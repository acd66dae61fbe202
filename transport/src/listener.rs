//! Accepting connections on the standby.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

use crate::conn::FramedConn;
use crate::error::{Result, TransportError};
use crate::handshake::{HandshakeParams, PeerInfo};

/// A listening socket whose accepted connections go through the handshake.
///
/// A refused peer does not affect the listener: [`Listener::accept`]
/// returns that peer's error and can be called again.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    local: SocketAddr,
}

impl Listener {
    /// Binds to `addr` (e.g. `"0.0.0.0:7070"`, or port 0 for any free port).
    pub fn bind<A: ToSocketAddrs + fmt::Display>(addr: A) -> Result<Listener> {
        let err = |source| TransportError::Listen {
            addr: addr.to_string(),
            source,
        };
        let inner = TcpListener::bind(&addr).map_err(err)?;
        let local = inner.local_addr().map_err(err)?;
        Ok(Listener { inner, local })
    }

    /// Waits (without limit) for the next TCP connection, then runs the
    /// handshake as the responder within `timeout`.
    ///
    /// An error concerns that one peer only (wrong key, version, fingerprint
    /// or channel, garbage, a handshake timeout); call `accept` again for
    /// the next peer.
    pub fn accept(
        &self,
        params: &HandshakeParams<'_>,
        timeout: Duration,
    ) -> Result<(FramedConn, PeerInfo)> {
        let stream = loop {
            match self.inner.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(TransportError::Listen {
                        addr: self.local.to_string(),
                        source,
                    })
                }
            }
        };
        FramedConn::accept(stream, params, timeout)
    }

    /// The address actually bound (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}
