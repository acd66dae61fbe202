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

    /// The key file does not hold exactly 32 bytes.
    #[error(
        "key file {path} holds {len} bytes; a key is exactly 32 random bytes \
         (make one with `hotspare keygen FILE`)"
    )]
    KeyFileBadLength {
        /// The key file's path as given.
        path: PathBuf,
        /// Its size in bytes ("more than 32" past the capped read).
        len: String,
    },

    /// The key file is a symbolic link, not a regular file, or readable or
    /// writable by its group or others.
    #[error("refusing key file {path}: {why}")]
    KeyFileInsecure {
        /// The key file's path as given.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },

    /// A new key file could not be written.
    #[error("cannot write key file {path}: {source}")]
    KeyFileUnwritable {
        /// The key file's path as given.
        path: PathBuf,
        /// Why writing failed.
        source: io::Error,
    },

    /// A key given as bytes is not 32 bytes long.
    #[error("pre-shared key is {len} bytes; it must be exactly 32")]
    KeyBadLength {
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
    #[error("connection with {peer} closed mid-frame: got {got} of the {want} bytes of a record")]
    Truncated {
        /// The remote address.
        peer: SocketAddr,
        /// Bytes of the record in progress received (length prefix
        /// included).
        got: usize,
        /// Bytes the record needed (the 2-byte prefix if its length was
        /// not known yet).
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

    /// The connection does not start with the handshake magic `HSN1`.
    #[error(
        "connection from {peer}: bad magic {found:02x?}, expected \"HSN1\" \
         (not a hotspare peer of protocol version 4 or later)"
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

    /// A record failed authenticated decryption under the session key:
    /// forged, corrupt, replayed, reordered or cut.
    #[error(
        "record from {peer} fails authentication (forged, corrupt, replayed, reordered \
         or dropped data)"
    )]
    Auth {
        /// The remote address.
        peer: SocketAddr,
    },

    /// An authenticated record breaks the record layout (a frame header
    /// or continuation of the wrong size).
    #[error("record from {peer}: {detail}")]
    BadRecord {
        /// The remote address.
        peer: SocketAddr,
        /// What is wrong.
        detail: String,
    },

    /// A frame whose payload a `recv_into` was appending to the caller's
    /// buffer was continued with another buffer, or one moved or resized in
    /// between (its address or length differ): the frame cannot be
    /// completed.
    #[error("a frame being received into a buffer was continued with another buffer")]
    BufferChanged,

    /// The listener refused a connection before its handshake (address
    /// not allowed, or too many handshakes pending).
    #[error("connection from {peer} refused: {reason}")]
    NotAdmitted {
        /// The remote address.
        peer: SocketAddr,
        /// Why.
        reason: &'static str,
    },

    /// The AEAD refused to seal a record (never expected: sizes are
    /// checked first).
    #[error("cannot encrypt a record: {0}")]
    Crypto(String),

    /// This direction's record counter is exhausted (2^64 - 1 records):
    /// the connection must be re-established.
    #[error("the connection's record counter is exhausted; reconnect")]
    NonceExhausted,

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

    /// The peer does not hold our pre-shared key: its handshake message
    /// does not decrypt, or its key confirmation is wrong.
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

/// The first 6 bytes of a fingerprint in hex, then `..`.
pub(crate) fn short_hex(fp: &[u8; 32]) -> String {
    let mut s: String = fp[..6].iter().map(|b| format!("{b:02x}")).collect();
    s.push_str("..");
    s
}
