//! The one error type of this crate.
//!
//! Every message names what is wrong and where, so a refused checkpoint can
//! be diagnosed from the log line alone.

use crate::fingerprint::Fingerprint;
use crate::format::SectionId;

/// Shorthand for `Result<T, CheckpointError>`.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Everything that can go wrong writing, reading or verifying a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The stream does not start with `HSPRCKPT`.
    #[error("not a checkpoint: bad magic {found:02x?} (expected \"HSPRCKPT\")")]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },

    /// The header carries a format version this reader does not know.
    #[error(
        "unsupported checkpoint format version {found} (this reader supports version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// The only version this reader understands.
        supported: u32,
    },

    /// The header CRC does not match the header bytes.
    #[error(
        "checkpoint header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    HeaderChecksum {
        /// CRC stored in the file.
        stored: u32,
        /// CRC computed over the header bytes read.
        computed: u32,
    },

    /// The header is self-consistent bytes-wise but its fields are invalid
    /// (unknown kind, reserved bytes set, bad `base_seq`).
    #[error("invalid checkpoint header: {0}")]
    InvalidHeader(String),

    /// The checkpoint was taken of a VM with a different configuration.
    #[error(
        "fingerprint mismatch: checkpoint is for a different VM configuration \
         (expected {}, found {})",
        expected.short(),
        found.short()
    )]
    FingerprintMismatch {
        /// Fingerprint of the configuration the caller runs.
        expected: Fingerprint,
        /// Fingerprint recorded in the checkpoint.
        found: Fingerprint,
    },

    /// A section's CRC does not match its id, length and payload.
    #[error("checksum mismatch in section {id}: stored {stored:#010x}, computed {computed:#010x}")]
    SectionChecksum {
        /// The section's id as read.
        id: SectionId,
        /// CRC stored in the section header.
        stored: u32,
        /// CRC computed over what was read.
        computed: u32,
    },

    /// A section claims more bytes than the reader's limits allow.
    #[error("section {id} too large: {len} bytes exceeds the limit of {limit} bytes")]
    SectionTooLarge {
        /// The section's id.
        id: SectionId,
        /// The claimed payload length.
        len: u64,
        /// The configured `Limits::max_section_len`.
        limit: u64,
    },

    /// More sections than `Limits::max_sections`.
    #[error("too many sections: more than the limit of {limit}")]
    TooManySections {
        /// The configured `Limits::max_sections`.
        limit: u32,
    },

    /// A section header carries an id this reader does not know.
    #[error("unknown section id {0} ({0:#x})")]
    UnknownSection(u32),

    /// A section that may appear at most once appeared again.
    #[error("duplicate section {0}: it may appear at most once")]
    DuplicateSection(SectionId),

    /// The End section's contents disagree with the sections read.
    #[error("End section {what} mismatch: recorded {recorded:#x}, actual {actual:#x}")]
    EndMismatch {
        /// `"length"`, `"section count"` or `"checksum of section checksums"`.
        what: &'static str,
        /// Value recorded in the file.
        recorded: u64,
        /// Value the reader computed.
        actual: u64,
    },

    /// The stream ended before the End section was read.
    #[error("checkpoint truncated in {what}: expected {expected} bytes, got {got}")]
    Truncated {
        /// Where the stream ended, e.g. `"section Memory"`.
        what: String,
        /// Bytes the structure being read needed.
        expected: u64,
        /// Bytes that were available.
        got: u64,
    },

    /// Bytes follow a valid End section.
    #[error("trailing data after the End section")]
    TrailingData,

    /// A section's payload is not valid for its id.
    #[error("invalid {id} section payload: {reason}")]
    BadPayload {
        /// The section's id.
        id: SectionId,
        /// What is wrong with it.
        reason: String,
    },

    /// A record in a Memory section payload is invalid.
    #[error("invalid memory record at offset {offset}: {reason}")]
    BadRecord {
        /// Byte offset of the record within the section payload.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A memory record encoding byte this reader does not know.
    #[error("unknown memory record encoding {0}")]
    UnknownEncoding(u8),

    /// A dirty bitmap of the wrong size was given.
    #[error("dirty bitmap size mismatch: {what}: expected {expected}, got {got}")]
    BitmapMismatch {
        /// What was compared, e.g. `"pages in region 2"`.
        what: String,
        /// The expected value.
        expected: usize,
        /// The value given.
        got: usize,
    },

    /// An API was called with arguments it cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Postcard encoding or decoding failed.
    #[error("decode error: {0}")]
    Decode(String),

    /// Zstd compression or decompression failed in a way not attributable to
    /// a record (e.g. context creation).
    #[error("zstd error: {0}")]
    Zstd(std::io::Error),

    /// The underlying reader or writer failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<postcard::Error> for CheckpointError {
    fn from(e: postcard::Error) -> Self {
        CheckpointError::Decode(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem() {
        let e = CheckpointError::Truncated {
            what: format!("section {}", SectionId::Memory),
            expected: 4096,
            got: 100,
        };
        assert_eq!(
            e.to_string(),
            "checkpoint truncated in section Memory: expected 4096 bytes, got 100"
        );

        let e = CheckpointError::FingerprintMismatch {
            expected: Fingerprint::from_bytes([0xab; 32]),
            found: Fingerprint::from_bytes([0x01; 32]),
        };
        assert_eq!(
            e.to_string(),
            "fingerprint mismatch: checkpoint is for a different VM configuration \
             (expected abababababab, found 010101010101)"
        );

        let e = CheckpointError::UnsupportedVersion {
            found: 7,
            supported: 1,
        };
        assert!(e.to_string().contains('7') && e.to_string().contains('1'));
        assert_eq!(
            CheckpointError::UnknownSection(42).to_string(),
            "unknown section id 42 (0x2a)"
        );
    }
}
