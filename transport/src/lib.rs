//! The replication stream's transport: encrypted, authenticated, framed
//! TCP connections, established by a Noise handshake with a pre-shared key.
//!
//! A primary streams epochs of a running VM to a standby over one
//! connection ([`Channel::Stream`]); heartbeats run over a second one
//! ([`Channel::Heartbeat`]) so they never queue behind page traffic. This
//! crate knows nothing about VMs or checkpoints: payloads are opaque bytes.
//! The wire format and handshake are specified in `docs/protocol.md`, the
//! threat model in `docs/security.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use transport::{Accepted, Channel, FrameKind, FramedConn, HandshakeParams, Listener, Psk, ServeConfig};
//!
//! # fn main() -> transport::Result<()> {
//! let psk = Arc::new(Psk::from_file("/etc/hotspare/key")?);
//! let fingerprint = [0u8; 32];
//! // Standby: handshakes run concurrently, under bounds.
//! let incoming = Listener::bind("0.0.0.0:7070")?
//!     .serve(ServeConfig::new(psk.clone(), Arc::new(|| None)))?;
//! if let Some(Accepted::Conn(mut conn, peer)) = incoming.next(Duration::from_secs(5))? {
//!     let frame = conn.recv()?;
//! }
//! // Primary:
//! let params = HandshakeParams::new(&psk, Some(fingerprint), Channel::Stream, 7);
//! let (mut conn, peer) = FramedConn::connect("standby:7070", &params, Duration::from_secs(5))?;
//! conn.send(FrameKind::EpochBegin, 7, b"opaque")?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cipher;
pub mod conn;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod key;
pub mod listener;
pub mod measure;
mod record;

#[cfg(test)]
mod tests;

pub use conn::{FramedConn, Receiver, Sender};
pub use error::{Result, TransportError};
pub use frame::{Frame, FrameKind, Limits};
pub use handshake::{Channel, HandshakeParams, PeerInfo, RefuseCode, PROTOCOL_VERSION};
pub use key::{Psk, PSK_LEN};
pub use listener::{Accepted, FingerprintSource, Incoming, Listener, ServeConfig};
pub use record::Received;
