//! Reading frames from a byte stream: resumable, checked, allocation-bounded.
//!
//! [`FrameReader`] keeps a partly received frame across read timeouts, so a
//! timeout never desynchronises the stream. Checks, in order: magic (as soon
//! as its bytes arrive), payload length against the limit (before any
//! buffer is sized from it), MAC, then — only for authenticated frames —
//! flags, kind and sequence number. The payload buffer grows as bytes
//! arrive, so even a length within the limit costs memory only once the
//! bytes are actually sent.

use std::io::{self, Read};
use std::net::SocketAddr;

use crate::error::{Result, TransportError};
use crate::frame::{
    check_magic, verify_mac, Frame, FrameKind, Header, Limits, HEADER_LEN, MAC_LEN,
};
use crate::key::MacKey;

/// First size of the payload buffer; it doubles as bytes arrive.
const FIRST_CHUNK: usize = 64 << 10;

/// A complete frame whose MAC has been checked but whose flags, kind and
/// sequence number have not.
#[derive(Debug)]
pub(crate) struct RawFrame {
    /// The parsed header.
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether the MAC matched under the reader's key.
    pub mac_ok: bool,
}

/// Reads frames of one direction from `R`.
pub(crate) struct FrameReader<R> {
    inner: R,
    peer: SocketAddr,
    key: MacKey,
    next_seq: u64,
    limits: Limits,
    /// Header bytes of the frame in progress.
    header: [u8; HEADER_LEN],
    header_got: usize,
    /// The header once complete and checked.
    parsed: Option<Header>,
    /// Payload then MAC of the frame in progress (grown on demand).
    body: Vec<u8>,
    body_got: usize,
}

impl<R: Read> FrameReader<R> {
    /// A reader expecting sequence number 1 first.
    pub fn new(inner: R, peer: SocketAddr, key: MacKey, limits: Limits) -> Self {
        FrameReader {
            inner,
            peer,
            key,
            next_seq: 1,
            limits,
            header: [0; HEADER_LEN],
            header_got: 0,
            parsed: None,
            body: Vec::new(),
            body_got: 0,
        }
    }

    /// Switches to `key` and expects sequence number 1 next.
    pub fn rekey(&mut self, key: MacKey) {
        self.key = key;
        self.next_seq = 1;
    }

    /// Sets the payload limit for frames whose header is not yet complete.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The key frames are checked with.
    #[cfg(test)]
    pub fn key(&self) -> &MacKey {
        &self.key
    }

    /// Reads one authenticated, in-sequence frame.
    pub fn read(&mut self) -> Result<Frame> {
        let raw = self.read_raw()?;
        if !raw.mac_ok {
            return Err(TransportError::Mac { peer: self.peer });
        }
        self.accept(raw)
    }

    /// Checks an authenticated frame's flags, kind and sequence number and
    /// advances the expected sequence number.
    pub fn accept(&mut self, raw: RawFrame) -> Result<Frame> {
        debug_assert!(raw.mac_ok);
        let h = raw.header;
        if h.flags != 0 {
            return Err(TransportError::BadFlags {
                peer: self.peer,
                flags: h.flags,
            });
        }
        let kind = FrameKind::from_u16(h.kind).ok_or(TransportError::UnknownKind {
            peer: self.peer,
            kind: h.kind,
        })?;
        if h.seq != self.next_seq {
            return Err(TransportError::Replay {
                expected: self.next_seq,
                got: h.seq,
            });
        }
        self.next_seq += 1;
        Ok(Frame {
            kind,
            term: h.term,
            seq: h.seq,
            payload: raw.payload,
        })
    }

    /// Reads one complete frame and checks its magic, length and MAC.
    ///
    /// On [`TransportError::Timeout`] the bytes received so far are kept and
    /// the next call continues the same frame.
    pub fn read_raw(&mut self) -> Result<RawFrame> {
        while self.header_got < HEADER_LEN {
            let n = self.fill(Part::Header)?;
            self.header_got += n;
            check_magic(&self.header[..self.header_got], self.peer)?;
        }
        let header = match self.parsed {
            Some(h) => h,
            None => {
                let h = Header::parse(&self.header, self.limits, self.peer)?;
                self.parsed = Some(h);
                h
            }
        };
        let body_len = header.len as usize + MAC_LEN;
        while self.body_got < body_len {
            if self.body.len() == self.body_got {
                let grown = (self.body_got * 2).max(FIRST_CHUNK).min(body_len);
                self.body.resize(grown, 0);
            }
            self.body_got += self.fill(Part::Body)?;
        }

        // The frame is complete: reset the state before anything can fail.
        let mut body = std::mem::take(&mut self.body);
        body.truncate(body_len);
        self.header_got = 0;
        self.body_got = 0;
        self.parsed = None;

        let payload_len = header.len as usize;
        let tag: [u8; MAC_LEN] = body[payload_len..].try_into().expect("MAC_LEN bytes");
        body.truncate(payload_len);
        let mac_ok = verify_mac(&self.key, &self.header, &body, &tag);
        Ok(RawFrame {
            header,
            payload: body,
            mac_ok,
        })
    }

    /// One read into the unfilled part of the header or body; returns the
    /// byte count (never 0: end of stream becomes an error).
    fn fill(&mut self, part: Part) -> Result<usize> {
        loop {
            let buf = match part {
                Part::Header => &mut self.header[self.header_got..],
                Part::Body => &mut self.body[self.body_got..],
            };
            match self.inner.read(buf) {
                Ok(0) => return Err(self.eof()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(map_io_error(e, self.peer)),
            }
        }
    }

    /// The error for end of stream at the current position.
    fn eof(&self) -> TransportError {
        match self.parsed {
            None if self.header_got == 0 => TransportError::Closed,
            None => TransportError::Truncated {
                peer: self.peer,
                got: self.header_got,
                want: HEADER_LEN,
            },
            Some(h) => TransportError::Truncated {
                peer: self.peer,
                got: HEADER_LEN + self.body_got,
                want: HEADER_LEN + h.len as usize + MAC_LEN,
            },
        }
    }
}

/// Which buffer [`FrameReader::fill`] reads into.
#[derive(Clone, Copy)]
enum Part {
    Header,
    Body,
}

/// Maps an I/O error on a connection: timeouts and resets get their own
/// variants.
pub(crate) fn map_io_error(e: io::Error, peer: SocketAddr) -> TransportError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Timeout,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => TransportError::Closed,
        _ => TransportError::Io { peer, source: e },
    }
}
