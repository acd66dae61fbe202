//! Encrypted records: sealing a frame into records, and reading frames back
//! from a byte stream, resumably and with bounded allocation.
//!
//! The layout is in `frame.rs` and `docs/protocol.md`. Reading checks, in
//! order: the record length (17 ..= 65535, before the record is read), the
//! AEAD tag under the direction's key and the record's implicit number
//! (nonce), then, on a frame's first record, the header: flags, kind and
//! length against the limit (before any payload buffer is sized from it).
//! Continuation records must be exactly as long as the sender makes them.
//! The payload buffer grows only as records arrive; a caller may have a
//! frame's payload decrypted straight into a buffer of its own
//! ([`FrameReader::read_into`]).

use std::io::{self, Read};
use std::net::SocketAddr;

use snow::StatelessTransportState;

use crate::error::{Result, TransportError};
use crate::frame::{
    Frame, FrameKind, Header, Limits, FIRST_PAYLOAD, HEADER_LEN, MAX_PLAINTEXT, MAX_RECORD, TAG_LEN,
};

/// Bytes of the little-endian length before each record.
pub(crate) const LEN_PREFIX: usize = 2;

/// The AEAD keys of an established session, shared by the two halves of a
/// connection (each uses only its own direction's key).
pub(crate) type Session = std::sync::Arc<StatelessTransportState>;

/// Takes the next nonce of a direction, refusing the last value (the Noise
/// spec reserves 2^64 - 1).
fn take_nonce(n: &mut u64) -> Result<u64> {
    if *n == u64::MAX {
        return Err(TransportError::NonceExhausted);
    }
    let this = *n;
    *n += 1;
    Ok(this)
}

/// Buffers a sender reuses from frame to frame.
#[derive(Default)]
pub(crate) struct SealBuffers {
    /// The first record's plaintext: header, then the payload's start.
    first: Vec<u8>,
    /// Sealed records not yet written: `out[..used]`. The rest of `out`
    /// is initialised bytes kept from earlier frames, so sealing writes
    /// over them instead of zero-filling fresh space each time.
    out: Vec<u8>,
    used: usize,
}

impl SealBuffers {
    /// Drops the kept buffer if it grew past `max` bytes.
    pub fn trim(&mut self, max: usize) {
        if self.out.len() > max {
            self.out = Vec::new();
        }
    }

    /// Appends one record sealing `plaintext`.
    fn seal_record(
        &mut self,
        s: &StatelessTransportState,
        nonce: &mut u64,
        plaintext: Plain,
    ) -> Result<()> {
        let plaintext = match plaintext {
            Plain::First => &self.first[..],
            Plain::Bytes(b) => b,
        };
        debug_assert!(plaintext.len() <= MAX_PLAINTEXT);
        let ct_len = plaintext.len() + TAG_LEN;
        let (at, end) = (self.used, self.used + LEN_PREFIX + ct_len);
        if self.out.len() < end {
            self.out.resize(end, 0);
        }
        self.out[at..at + LEN_PREFIX].copy_from_slice(&(ct_len as u16).to_le_bytes());
        let n = take_nonce(nonce)?;
        let written = s
            .write_message(n, plaintext, &mut self.out[at + LEN_PREFIX..end])
            .map_err(|e| TransportError::Crypto(e.to_string()))?;
        debug_assert_eq!(written, ct_len);
        self.used = end;
        Ok(())
    }

    /// Hands the sealed records to `flush`, and forgets them.
    fn flush(&mut self, flush: &mut impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let n = std::mem::take(&mut self.used);
        flush(&self.out[..n])
    }
}

/// What [`SealBuffers::seal_record`] seals.
enum Plain<'a> {
    /// The first record's plaintext, in `SealBuffers::first`.
    First,
    Bytes(&'a [u8]),
}

/// Seals one frame into records, handing them to `flush` once `batch`
/// bytes or so are sealed and at the end (the sender writes them out, so a
/// large payload never needs a buffer of its own size).
pub(crate) fn seal_frame(
    s: &StatelessTransportState,
    nonce: &mut u64,
    (header, payload): (&Header, &[u8]),
    bufs: &mut SealBuffers,
    batch: usize,
    mut flush: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    // Records left by a frame that failed half-way are never sent.
    bufs.used = 0;
    let head = payload.len().min(FIRST_PAYLOAD);
    bufs.first.clear();
    bufs.first.extend_from_slice(&header.encode());
    bufs.first.extend_from_slice(&payload[..head]);
    bufs.seal_record(s, nonce, Plain::First)?;
    for chunk in payload[head..].chunks(MAX_PLAINTEXT) {
        if bufs.used >= batch {
            bufs.flush(&mut flush)?;
        }
        bufs.seal_record(s, nonce, Plain::Bytes(chunk))?;
    }
    bufs.flush(&mut flush)
}

/// A frame whose first record has arrived.
struct Partial {
    header: Header,
    /// Payload bytes received so far.
    got: usize,
    /// The payload is being appended to the caller's buffer (`None`: to
    /// the reader's own).
    into: Option<Routed>,
}

/// Where a routed frame's payload is going: the caller's buffer held
/// `base` bytes before it, and was at address `addr` after the last append
/// (compared, never dereferenced).
#[derive(Clone, Copy)]
struct Routed {
    base: usize,
    addr: usize,
}

impl Routed {
    /// Whether `out` is the buffer this frame was being appended to, as
    /// that call left it with `got` payload bytes in it.
    fn matches(&self, out: &[u8], got: usize) -> bool {
        out.as_ptr() as usize == self.addr && out.len() == self.base + got
    }
}

/// What [`FrameReader::read_into`] received.
#[derive(Debug)]
pub enum Received {
    /// A frame with its own payload (not routed to the caller's buffer).
    Frame(Frame),
    /// A frame whose payload was appended to the caller's buffer.
    Appended {
        /// What it is.
        kind: FrameKind,
        /// The sender's term.
        term: u64,
        /// Its number in its direction, counted by the receiver.
        seq: u64,
        /// Payload bytes appended.
        len: usize,
    },
}

/// Reads frames of one direction from `R`.
pub(crate) struct FrameReader<R> {
    inner: R,
    peer: SocketAddr,
    session: Session,
    nonce: u64,
    limits: Limits,
    frames: u64,
    /// Length prefix of the record in progress.
    len_buf: [u8; LEN_PREFIX],
    len_got: usize,
    /// Ciphertext of the record in progress (its length once known).
    record: Vec<u8>,
    record_len: Option<usize>,
    record_got: usize,
    /// Plaintext of a frame's first record.
    scratch: Vec<u8>,
    partial: Option<Partial>,
    /// The payload of a frame not routed to the caller's buffer.
    own: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader whose first record has number `nonce`.
    pub fn new(inner: R, peer: SocketAddr, session: Session, nonce: u64, limits: Limits) -> Self {
        FrameReader {
            inner,
            peer,
            session,
            nonce,
            limits,
            frames: 0,
            len_buf: [0; LEN_PREFIX],
            len_got: 0,
            record: vec![0; MAX_RECORD],
            record_len: None,
            record_got: 0,
            scratch: vec![0; MAX_PLAINTEXT],
            partial: None,
            own: Vec::new(),
        }
    }

    /// Sets the payload limit for frames whose header has not arrived.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads one complete, authenticated frame.
    ///
    /// On [`TransportError::Timeout`] everything received so far is kept
    /// and the next call continues the same record and frame (a frame that
    /// an earlier [`read_into`](Self::read_into) routed to a buffer of the
    /// caller's can only be continued by `read_into` with that buffer: here
    /// it fails with [`TransportError::BufferChanged`]).
    pub fn read(&mut self) -> Result<Frame> {
        match self.read_into(&mut Vec::new(), |_, _| false)? {
            Received::Frame(f) => Ok(f),
            // Not reached: a routed partial frame fails the buffer check.
            Received::Appended { .. } => Err(TransportError::BufferChanged),
        }
    }

    /// Reads one complete, authenticated frame. When its header arrives
    /// (before any of its payload is stored), `route(kind, len)` decides
    /// where the payload goes: `true` appends it to `out`, decrypted
    /// straight into it (no copy of its own); `false` gives it its own
    /// buffer, in [`Received::Frame`].
    ///
    /// On [`TransportError::Timeout`] everything received so far is kept,
    /// and the next call continues the same record and frame: a frame
    /// routed to `out` must be continued with the same buffer (same
    /// address and length: not moved, not changed in between), or the call
    /// fails with [`TransportError::BufferChanged`]. After any other error
    /// `out` is cut back to what it held before the frame.
    pub fn read_into(
        &mut self,
        out: &mut Vec<u8>,
        route: impl FnOnce(FrameKind, usize) -> bool,
    ) -> Result<Received> {
        // Where a frame routed to `out` starts: the one in progress, or one
        // this call starts (a call completes at most one frame, and frames
        // not routed leave `out` alone).
        let base = match &self.partial {
            Some(Partial { into: Some(r), .. }) => r.base,
            _ => out.len(),
        };
        let r = self.read_into_inner(out, route);
        if let Err(e) = &r {
            if e.is_fatal() && !matches!(e, TransportError::BufferChanged) {
                // Nothing unauthenticated or half-received stays behind.
                out.truncate(base);
            }
        }
        r
    }

    fn read_into_inner(
        &mut self,
        out: &mut Vec<u8>,
        route: impl FnOnce(FrameKind, usize) -> bool,
    ) -> Result<Received> {
        let mut route = Some(route);
        loop {
            // A frame routed to `out` by an earlier call must find it as
            // that call left it, before anything more is read.
            if let Some(Partial {
                got,
                into: Some(into),
                ..
            }) = &self.partial
            {
                if !into.matches(out, *got) {
                    return Err(TransportError::BufferChanged);
                }
            }
            let ct_len = self.read_record()?;
            // The record is complete: whatever happens next starts a new one.
            self.record_len = None;
            self.record_got = 0;
            self.len_got = 0;
            let nonce = take_nonce(&mut self.nonce)?;
            let partial = match self.partial.take() {
                None => {
                    let pt_len = ct_len - TAG_LEN;
                    open(
                        &self.session,
                        self.peer,
                        nonce,
                        &self.record[..ct_len],
                        &mut self.scratch,
                    )?;
                    let header = Header::parse(&self.scratch[..pt_len], self.limits, self.peer)?;
                    if pt_len != header.first_record_len() {
                        return Err(self.bad(format!(
                            "a frame of {} payload bytes starts with a record of {pt_len} \
                             plaintext bytes, expected {}",
                            header.len,
                            header.first_record_len()
                        )));
                    }
                    let to_out = route
                        .take()
                        .is_some_and(|r| r(header.kind, header.len as usize));
                    let base = out.len();
                    let dst = if to_out { &mut *out } else { &mut self.own };
                    if !to_out {
                        dst.clear();
                    }
                    dst.extend_from_slice(&self.scratch[HEADER_LEN..pt_len]);
                    Partial {
                        header,
                        got: pt_len - HEADER_LEN,
                        into: to_out.then_some(Routed {
                            base,
                            addr: out.as_ptr() as usize,
                        }),
                    }
                }
                Some(Partial { header, got, into }) => {
                    let want = (header.len as usize - got).min(MAX_PLAINTEXT);
                    if ct_len - TAG_LEN != want {
                        return Err(self.bad(format!(
                            "a continuation record of {} plaintext bytes, expected {want}",
                            ct_len - TAG_LEN
                        )));
                    }
                    let dst = if into.is_some() {
                        &mut *out
                    } else {
                        &mut self.own
                    };
                    let at = dst.len();
                    dst.resize(at + want, 0);
                    open(
                        &self.session,
                        self.peer,
                        nonce,
                        &self.record[..ct_len],
                        &mut dst[at..],
                    )?;
                    Partial {
                        header,
                        got: got + want,
                        into: into.map(|i| Routed {
                            addr: out.as_ptr() as usize,
                            ..i
                        }),
                    }
                }
            };
            if partial.got < partial.header.len as usize {
                self.partial = Some(partial);
                continue;
            }
            self.frames += 1;
            let Header { kind, term, len } = partial.header;
            return Ok(match partial.into {
                Some(_) => Received::Appended {
                    kind,
                    term,
                    seq: self.frames,
                    len: len as usize,
                },
                None => Received::Frame(Frame {
                    kind,
                    term,
                    seq: self.frames,
                    payload: std::mem::take(&mut self.own),
                }),
            });
        }
    }

    fn bad(&self, detail: String) -> TransportError {
        TransportError::BadRecord {
            peer: self.peer,
            detail,
        }
    }

    /// Reads the rest of the current record; returns its ciphertext length.
    fn read_record(&mut self) -> Result<usize> {
        while self.len_got < LEN_PREFIX {
            let n = fill(
                &mut self.inner,
                &mut self.len_buf[self.len_got..],
                self.peer,
            )
            .map_err(|e| self.at_eof(e))?;
            self.len_got += n;
        }
        let len = match self.record_len {
            Some(l) => l,
            None => {
                let l = usize::from(u16::from_le_bytes(self.len_buf));
                if l <= TAG_LEN {
                    return Err(self.bad(format!(
                        "a record of {l} bytes, shorter than the smallest ({})",
                        TAG_LEN + 1
                    )));
                }
                self.record_len = Some(l);
                l
            }
        };
        while self.record_got < len {
            let n = fill(
                &mut self.inner,
                &mut self.record[self.record_got..len],
                self.peer,
            )
            .map_err(|e| self.at_eof(e))?;
            self.record_got += n;
        }
        Ok(len)
    }

    /// Turns end of stream into `Closed` between frames, `Truncated` (of
    /// the record in progress) inside one.
    fn at_eof(&self, e: TransportError) -> TransportError {
        if !matches!(e, TransportError::Closed) {
            return e;
        }
        let (got, want) = match self.record_len {
            Some(l) => (LEN_PREFIX + self.record_got, LEN_PREFIX + l),
            None => (self.len_got, LEN_PREFIX),
        };
        if got == 0 && self.partial.is_none() {
            TransportError::Closed
        } else {
            TransportError::Truncated {
                peer: self.peer,
                got,
                want,
            }
        }
    }
}

/// Decrypts the record `ct` under `nonce` into `out`.
fn open(session: &Session, peer: SocketAddr, nonce: u64, ct: &[u8], out: &mut [u8]) -> Result<()> {
    session
        .read_message(nonce, ct, out)
        .map(|_| ())
        .map_err(|_| TransportError::Auth { peer })
}

/// One read into `buf`; never returns 0 (end of stream is `Closed`).
fn fill(r: &mut impl Read, buf: &mut [u8], peer: SocketAddr) -> Result<usize> {
    loop {
        match r.read(buf) {
            Ok(0) => return Err(TransportError::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_io_error(e, peer)),
        }
    }
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
