//! The replication stream's transport: authenticated, framed,
//! replay-protected TCP connections with a versioned handshake.
//!
//! A primary streams epochs of a running VM to a standby over one
//! connection ([`Channel::Stream`]); heartbeats run over a second one
//! ([`Channel::Heartbeat`]) so they never queue behind page traffic. This
//! crate knows nothing about VMs or checkpoints: payloads are opaque bytes.
//! The wire format and handshake are specified in `docs/protocol.md`.
//!
//! ```no_run
//! use std::time::Duration;
//! use transport::{Channel, FrameKind, FramedConn, HandshakeParams, Listener, Psk};
//!
//! # fn main() -> transport::Result<()> {
//! let psk = Psk::from_file("/etc/hotspare/key")?;
//! let fingerprint = [0u8; 32];
//! // Standby:
//! let listener = Listener::bind("0.0.0.0:7070")?;
//! let params = HandshakeParams::new(&psk, None, Channel::Stream, 0);
//! let (mut conn, peer) = listener.accept(&params, Duration::from_secs(5))?;
//! let frame = conn.recv()?;
//! // Primary:
//! let params = HandshakeParams::new(&psk, Some(fingerprint), Channel::Stream, 7);
//! let (mut conn, peer) = FramedConn::connect("standby:7070", &params, Duration::from_secs(5))?;
//! conn.send(FrameKind::EpochBegin, 7, b"opaque")?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conn;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod key;
pub mod listener;
mod reader;

#[cfg(test)]
mod tests;

pub use conn::{FramedConn, Receiver, Sender};
pub use error::{Result, TransportError};
pub use frame::{Frame, FrameKind, Limits, PayloadHash};
pub use handshake::{Channel, HandshakeParams, PeerInfo, RefuseCode, PROTOCOL_VERSION};
pub use key::Psk;
pub use listener::Listener;
