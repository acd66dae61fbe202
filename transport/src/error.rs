//! The one error type of this crate.
//!
//! Every message names what is wrong and, where there is one, the peer it
//! came from, so a refused connection can be diagnosed from the log line
//! alone. Whether an error leaves the connection usable is answered by
//! [`TransportError::is_fatal`].

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::handshake::{Channel, RefuseCode};

/// Shorthand for `Result<T, TransportError>`.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// Everything that can go wrong loading a key, connecting, handshaking,
/// sending or receiving.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    KeyFileUnreadable {
        /// The key file's path as given.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },

    /// The key file holds fewer than 32 bytes.
    #[error(
        "key file {path} is {len} bytes; at least 32 are required, \
         e.g. `head -c 32 /dev/urandom > key`"
    )]
    KeyFileTooShort {
        /// The key file's path as given.
        path: PathBuf,
        /// Its size in bytes.
        len: usize,
    },

    /// A key given as bytes is shorter than 32 bytes.
    #[error("pre-shared key is {len} bytes; at least 32 are required")]
    KeyTooShort {
        /// Its length in bytes.
        len: usize,
    },

    /// The initiator was given no VM fingerprint (only a responder may
    /// accept any).
    #[error("the connecting side needs a VM fingerprint; only the accepting side may pass None")]
    MissingFingerprint,

    /// The OS random number generator failed.
    #[error("cannot get random bytes from the OS: {0}")]
    Random(String),

    /// Binding or accepting on a listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address as given (or the bound address, for accept errors).
        addr: String,
        /// The OS error.
        source: io::Error,
    },

    /// A TCP connection could not be established.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The OS error (for several resolved addresses, the last one's).
        source: io::Error,
    },

    /// Any other I/O error on an established connection.
    #[error("I/O error on the connection with {peer}: {source}")]
    Io {
        /// The remote address.
        peer: SocketAddr,
        /// The OS error.
        source: io::Error,
    },

    /// The peer closed the connection at a frame boundary (or reset it), or
    /// this connection was already shut down after an earlier fatal error.
    #[error("connection closed")]
    Closed,

    /// The connection ended in the middle of a frame.
    #[error("connection with {peer} closed mid-frame: got {got} of {want} bytes")]
    Truncated {
        /// The remote address.
        peer: SocketAddr,
        /// Bytes of the frame received.
        got: usize,
        /// Bytes the frame needed (the header's 28 if its length was not
        /// known yet).
        want: usize,
    },

    /// No data arrived within the read timeout. The connection stays
    /// usable: a partly received frame is kept and completed by the next
    /// `recv`.
    #[error("timed out waiting for data from the peer")]
    Timeout,

    /// The handshake did not complete in time.
    #[error("handshake with {peer} timed out after {after:?}")]
    HandshakeTimeout {
        /// The remote address.
        peer: SocketAddr,
        /// The handshake timeout that expired.
        after: Duration,
    },

    /// The bytes received do not start with the frame magic `HSF1`.
    #[error(
        "frame from {peer}: bad magic {found:02x?}, expected \"HSF1\" \
         (not a hotspare peer, or the stream is out of sync)"
    )]
    BadMagic {
        /// The remote address.
        peer: SocketAddr,
        /// The bytes found where the magic belongs (as many as arrived).
        found: Vec<u8>,
    },

    /// A frame header claims a payload larger than the limit. Nothing of
    /// the claimed size was allocated.
    #[error("frame too large from {peer}: {len} bytes, limit {limit}")]
    FrameTooLarge {
        /// The remote address.
        peer: SocketAddr,
        /// The payload length the header claims.
        len: u64,
        /// The receiver's limit.
        limit: u32,
    },

    /// A payload to send does not fit the 32-bit length field.
    #[error("cannot send a {len}-byte payload: the frame length field holds at most 4294967295")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
    },

    /// The frame's MAC does not match its header and payload under the
    /// session key.
    #[error("frame from {peer}: MAC mismatch (forged or corrupt)")]
    Mac {
        /// The remote address.
        peer: SocketAddr,
    },

    /// An authenticated frame carries a kind this side does not know.
    #[error("frame from {peer}: unknown frame kind {kind}")]
    UnknownKind {
        /// The remote address.
        peer: SocketAddr,
        /// The kind number received.
        kind: u16,
    },

    /// An authenticated frame has reserved flag bits set.
    #[error(
        "frame from {peer}: unsupported flags {flags:#06x} (all flags are reserved and must be 0)"
    )]
    BadFlags {
        /// The remote address.
        peer: SocketAddr,
        /// The flags received.
        flags: u16,
    },

    /// An authenticated frame's sequence number is not the next expected
    /// one: it was replayed (`got < expected`) or frames were reordered or
    /// dropped (`got > expected`).
    #[error("{}", seq_problem(*expected, *got))]
    Replay {
        /// The sequence number expected next.
        expected: u64,
        /// The sequence number received.
        got: u64,
    },

    /// The peer does not hold our pre-shared key: its handshake frame failed
    /// authentication, or its handshake proof is wrong.
    #[error("peer {peer} does not hold the pre-shared key ({detail})")]
    WrongKey {
        /// The remote address.
        peer: SocketAddr,
        /// What failed.
        detail: &'static str,
    },

    /// The peer refused the handshake with a Refuse frame.
    #[error("peer {peer} refused: {reason}")]
    Refused {
        /// The remote address.
        peer: SocketAddr,
        /// The refusal's category.
        code: RefuseCode,
        /// The peer's explanation, as sent (control characters replaced).
        reason: String,
    },

    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks {peer}, we speak {ours}")]
    VersionMismatch {
        /// The peer's version.
        peer: u32,
        /// Ours.
        ours: u32,
    },

    /// The peer replicates a VM with another configuration.
    #[error(
        "VM fingerprint mismatch: peer has {}, we have {}",
        short_hex(peer),
        short_hex(ours)
    )]
    FingerprintMismatch {
        /// The peer's fingerprint.
        peer: [u8; 32],
        /// Ours.
        ours: [u8; 32],
    },

    /// The peer opened another kind of channel than this endpoint serves
    /// (e.g. a stream connection to the heartbeat port).
    #[error("channel mismatch: peer opened a {peer} connection, this endpoint serves {ours}")]
    ChannelMismatch {
        /// The channel the peer asked for.
        peer: Channel,
        /// The channel this endpoint serves.
        ours: Channel,
    },

    /// The peer broke the handshake protocol (unexpected frame kind,
    /// malformed handshake message).
    #[error("handshake with {peer}: {detail}")]
    Protocol {
        /// The remote address.
        peer: SocketAddr,
        /// What was wrong.
        detail: String,
    },
}

impl TransportError {
    /// Whether the connection is unusable after this error. Only
    /// [`TransportError::Timeout`] on `recv` leaves it usable; after any
    /// other error from `send` or `recv` the connection has been shut down.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TransportError::Timeout)
    }
}

/// The message of [`TransportError::Replay`].
fn seq_problem(expected: u64, got: u64) -> String {
    if got < expected {
        format!("replayed frame: sequence number {got}, expected {expected}")
    } else {
        format!("reordered or dropped frames: sequence number {got}, expected {expected}")
    }
}

/// The first 6 bytes of a fingerprint in hex, then `..`.
pub(crate) fn short_hex(fp: &[u8; 32]) -> String {
    let mut s: String = fp[..6].iter().map(|b| format!("{b:02x}")).collect();
    s.push_str("..");
    s
}
