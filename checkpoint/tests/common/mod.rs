//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{self, Read};

use checkpoint::{
    CheckpointError, CheckpointReader, CheckpointWriter, Fingerprint, Header, Limits, SectionId,
};

/// A fixed fingerprint for tests.
pub fn fp() -> Fingerprint {
    Fingerprint::from_bytes([0x42; 32])
}

/// Writes a checkpoint with `header` and `sections`.
pub fn write(header: &Header, sections: &[(SectionId, Vec<u8>)]) -> Vec<u8> {
    let mut w = CheckpointWriter::new(Vec::new(), header).expect("header");
    for (id, p) in sections {
        w.write_section(*id, p).expect("section");
    }
    w.finish().expect("finish")
}

/// A header and its sections, as read back.
pub type Checkpoint = (Header, Vec<(SectionId, Vec<u8>)>);

/// Reads a checkpoint's container (no payload interpretation).
pub fn read_all<R: Read>(
    r: R,
    limits: &Limits,
    expected: Option<&Fingerprint>,
) -> Result<Checkpoint, CheckpointError> {
    let mut reader = CheckpointReader::new(r, limits, expected)?;
    let mut out = Vec::new();
    while let Some(s) = reader.next_section()? {
        out.push(s);
    }
    Ok((*reader.header(), out))
}

/// A reader handing out at most `chunk` bytes per call, with an
/// `Interrupted` error before every other read.
pub struct Trickle<'a> {
    pub data: &'a [u8],
    pub chunk: usize,
    pub interrupt: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
        }
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Short name of an error's variant, for readable assertions.
pub fn kind(e: &CheckpointError) -> &'static str {
    match e {
        CheckpointError::BadMagic { .. } => "BadMagic",
        CheckpointError::UnsupportedVersion { .. } => "UnsupportedVersion",
        CheckpointError::HeaderChecksum { .. } => "HeaderChecksum",
        CheckpointError::InvalidHeader(_) => "InvalidHeader",
        CheckpointError::FingerprintMismatch { .. } => "FingerprintMismatch",
        CheckpointError::SectionChecksum { .. } => "SectionChecksum",
        CheckpointError::SectionTooLarge { .. } => "SectionTooLarge",
        CheckpointError::TooManySections { .. } => "TooManySections",
        CheckpointError::UnknownSection(_) => "UnknownSection",
        CheckpointError::DuplicateSection(_) => "DuplicateSection",
        CheckpointError::EndMismatch { .. } => "EndMismatch",
        CheckpointError::Truncated { .. } => "Truncated",
        CheckpointError::TrailingData => "TrailingData",
        CheckpointError::BadPayload { .. } => "BadPayload",
        CheckpointError::BadRecord { .. } => "BadRecord",
        CheckpointError::UnknownEncoding(_) => "UnknownEncoding",
        CheckpointError::BitmapMismatch { .. } => "BitmapMismatch",
        CheckpointError::InvalidArgument(_) => "InvalidArgument",
        CheckpointError::Decode(_) => "Decode",
        CheckpointError::Zstd(_) => "Zstd",
        CheckpointError::Io(_) => "Io",
    }
}
