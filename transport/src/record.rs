//! Encrypted records: sealing a frame into records, and reading frames back
//! from a byte stream, resumably and with bounded allocation.
//!
//! The layout is in `frame.rs` and `docs/protocol.md`. Reading checks, in
//! order: the record length (17 ..= 65535, and for a continuation record
//! exactly what its frame needs next, before the record is read), the
//! AEAD tag under the direction's key and the record's implicit number
//! (nonce), then, on a frame's first record, the header: flags, kind and
//! length against the limit (before any payload buffer is sized from it).
//! The payload buffer grows only as records arrive; a caller may have a
//! frame's payload decrypted straight into a buffer of its own
//! ([`FrameReader::read_into`]).

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;

use crate::cipher::RecordKeys;
pub(crate) use crate::cipher::Session;
use crate::error::{Result, TransportError};
use crate::frame::{
    Frame, FrameKind, Header, Limits, FIRST_PAYLOAD, HEADER_LEN, MAX_PLAINTEXT, MAX_RECORD, TAG_LEN,
};

/// Bytes of the little-endian length before each record.
pub(crate) const LEN_PREFIX: usize = 2;

/// The reader's buffer in front of the socket: one read brings in up to
/// 64 KiB (a full record and its length prefix are 65,537 bytes).
const READ_BUFFER: usize = 64 << 10;

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

/// Appends `src` to `dst`: the one copy of each received byte out of the
/// reader's buffer, and of each sent byte into the record buffer.
fn append(dst: &mut Vec<u8>, src: &[u8]) {
    dst.extend_from_slice(src);
}

/// Buffers a sender reuses from frame to frame.
#[derive(Default)]
pub(crate) struct SealBuffers {
    /// Sealed records not yet written. Its capacity is kept from frame to
    /// frame, and records are sealed into it without zero-filling.
    out: Vec<u8>,
}

impl SealBuffers {
    /// Drops the kept buffer if it grew past `max` bytes.
    pub fn trim(&mut self, max: usize) {
        if self.out.capacity() > max {
            self.out = Vec::new();
        }
    }

    /// Appends one record sealing `head` (a frame header, on a frame's
    /// first record) then `body`: the plaintext is copied once, into the
    /// record's place in `out`, and sealed there.
    fn seal_record(
        &mut self,
        s: &RecordKeys,
        nonce: &mut u64,
        head: Option<&[u8; HEADER_LEN]>,
        body: &[u8],
    ) -> Result<()> {
        let head: &[u8] = head.map_or(&[], |h| &h[..]);
        let pt_len = head.len() + body.len();
        debug_assert!(pt_len <= MAX_PLAINTEXT);
        let at = self.out.len();
        self.out
            .extend_from_slice(&((pt_len + TAG_LEN) as u16).to_le_bytes());
        self.out.extend_from_slice(head);
        append(&mut self.out, body);
        let n = take_nonce(nonce);
        let sealed = n.and_then(|n| s.seal_in_place(n, &mut self.out[at + LEN_PREFIX..]));
        match sealed {
            Ok(tag) => {
                self.out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                // No plaintext stays behind in the send buffer.
                self.out.truncate(at);
                Err(e)
            }
        }
    }

    /// Hands the sealed records to `flush`, and forgets them.
    fn flush(&mut self, flush: &mut impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let r = flush(&self.out);
        self.out.clear();
        r
    }
}

/// Seals one frame into records, handing them to `flush` once `batch`
/// bytes or so are sealed and at the end (the sender writes them out, so a
/// large payload never needs a buffer of its own size).
pub(crate) fn seal_frame(
    s: &RecordKeys,
    nonce: &mut u64,
    (header, payload): (&Header, &[u8]),
    bufs: &mut SealBuffers,
    batch: usize,
    mut flush: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    // Records left by a frame that failed half-way are never sent.
    bufs.out.clear();
    let head = payload.len().min(FIRST_PAYLOAD);
    bufs.seal_record(s, nonce, Some(&header.encode()), &payload[..head])?;
    for chunk in payload[head..].chunks(MAX_PLAINTEXT) {
        if bufs.out.len() >= batch {
            bufs.flush(&mut flush)?;
        }
        bufs.seal_record(s, nonce, None, chunk)?;
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
    /// that call left it with `held` bytes of the frame in it.
    fn matches(&self, out: &[u8], held: usize) -> bool {
        out.as_ptr() as usize == self.addr && out.len() == self.base + held
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
///
/// Each record's ciphertext is copied once out of the reader's buffer:
/// a frame's first record into `record` (its header is parsed there), every
/// later record straight onto the end of the payload's buffer (its tag into
/// `tag`), where it is opened in place. While a continuation record is only
/// partly received, its ciphertext so far sits past the payload's end
/// (`record_got` bytes, or all of it once the tag is arriving).
pub(crate) struct FrameReader<R> {
    inner: BufReader<R>,
    peer: SocketAddr,
    session: Session,
    nonce: u64,
    limits: Limits,
    frames: u64,
    /// Length prefix of the record in progress.
    len_buf: [u8; LEN_PREFIX],
    len_got: usize,
    /// Ciphertext of a frame's first record (`record_got` bytes of it).
    record: Vec<u8>,
    /// The tag of a continuation record.
    tag: [u8; TAG_LEN],
    record_len: Option<usize>,
    record_got: usize,
    partial: Option<Partial>,
    /// The payload of a frame not routed to the caller's buffer.
    own: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader whose first record has number `nonce`.
    pub fn new(inner: R, peer: SocketAddr, session: Session, nonce: u64, limits: Limits) -> Self {
        FrameReader {
            inner: BufReader::with_capacity(READ_BUFFER, inner),
            peer,
            session,
            nonce,
            limits,
            frames: 0,
            len_buf: [0; LEN_PREFIX],
            len_got: 0,
            record: Vec::with_capacity(MAX_RECORD),
            record_len: None,
            record_got: 0,
            tag: [0; TAG_LEN],
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
        self.inner.get_ref()
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
    /// fails with [`TransportError::BufferChanged`]. Until the frame is
    /// complete, `out` past its length before the frame holds bytes not yet
    /// authenticated, which the caller must not use. After any other error
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
                // Nothing unauthenticated or half-received stays behind,
                // in `out` or here.
                out.truncate(base);
                self.partial = None;
                self.own.clear();
                self.record.clear();
                self.record_len = None;
                self.record_got = 0;
                self.len_got = 0;
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
                header,
                got,
                into: Some(into),
            }) = &self.partial
            {
                // The record in progress holds its ciphertext there, not
                // its tag.
                let want = (header.len as usize - got).min(MAX_PLAINTEXT);
                if !into.matches(out, *got + self.record_got.min(want)) {
                    return Err(TransportError::BufferChanged);
                }
            }
            let ct_len = self.read_len()?;
            let got = match &self.partial {
                None => {
                    let p = self.first_record(ct_len, out, &mut route)?;
                    let got = p.got;
                    self.partial = Some(p);
                    got
                }
                Some(_) => self.next_record(ct_len, out)?,
            };
            let Some(partial) = self.partial.take_if(|p| got >= p.header.len as usize) else {
                continue;
            };
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

    /// Receives and opens a frame's first record, checks its header, and
    /// starts the frame's payload where `route` says.
    fn first_record(
        &mut self,
        ct_len: usize,
        out: &mut Vec<u8>,
        route: &mut Option<impl FnOnce(FrameKind, usize) -> bool>,
    ) -> Result<Partial> {
        while self.record_got < ct_len {
            let want = ct_len - self.record_got;
            match pull(&mut self.inner, &mut self.record, want, self.peer) {
                Ok(n) => self.record_got += n,
                Err(e) => return Err(self.at_eof(e)),
            }
        }
        let nonce = self.record_done()?;
        let opened = self
            .session
            .open_in_place(nonce, &mut self.record[..ct_len]);
        let pt_len = opened.map_err(|_| TransportError::Auth { peer: self.peer })?;
        let header = Header::parse(&self.record[..pt_len], self.limits, self.peer)?;
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
        append(dst, &self.record[HEADER_LEN..pt_len]);
        self.record.clear();
        Ok(Partial {
            header,
            got: pt_len - HEADER_LEN,
            into: to_out.then_some(Routed {
                base,
                addr: out.as_ptr() as usize,
            }),
        })
    }

    /// Receives a continuation record of the frame in progress: its
    /// ciphertext straight onto the end of its payload's buffer, its tag
    /// apart, and opens it there; returns the frame's payload bytes
    /// received. On a timeout the ciphertext so far stays there, for the
    /// next call. The buffer never holds more than the frame's payload.
    fn next_record(&mut self, ct_len: usize, out: &mut Vec<u8>) -> Result<usize> {
        let p = self.partial.as_ref().expect("a frame in progress");
        let (routed, got) = (p.into.is_some(), p.got);
        let want = (p.header.len as usize - got).min(MAX_PLAINTEXT);
        if ct_len - TAG_LEN != want {
            return Err(self.bad(format!(
                "a continuation record of {} plaintext bytes, expected {want}",
                ct_len - TAG_LEN
            )));
        }
        let dst = if routed { &mut *out } else { &mut self.own };
        let at = dst.len() - self.record_got.min(want);
        if self.record_got == 0 {
            dst.reserve(want);
        }
        let mut cut = None;
        while self.record_got < ct_len {
            let r = if self.record_got < want {
                pull(&mut self.inner, dst, want - self.record_got, self.peer)
            } else {
                let t = self.record_got - want;
                pull_into(&mut self.inner, &mut self.tag[t..], self.peer)
            };
            match r {
                Ok(n) => self.record_got += n,
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            }
        }
        let addr = out.as_ptr() as usize;
        let p = self.partial.as_mut().expect("a frame in progress");
        if let Some(into) = &mut p.into {
            into.addr = addr;
        }
        if let Some(e) = cut {
            return Err(self.at_eof(e));
        }
        let nonce = self.record_done()?;
        let dst = if routed { &mut *out } else { &mut self.own };
        self.session
            .open_in_place_separate_tag(nonce, self.tag, &mut dst[at..at + want])
            .map_err(|_| TransportError::Auth { peer: self.peer })?;
        let p = self.partial.as_mut().expect("a frame in progress");
        p.got += want;
        Ok(p.got)
    }

    /// The record is complete: whatever comes next starts a new one. Takes
    /// its number.
    fn record_done(&mut self) -> Result<u64> {
        self.record_len = None;
        self.record_got = 0;
        self.len_got = 0;
        take_nonce(&mut self.nonce)
    }

    fn bad(&self, detail: String) -> TransportError {
        TransportError::BadRecord {
            peer: self.peer,
            detail,
        }
    }

    /// Reads the rest of the current record's length prefix; returns the
    /// record's ciphertext length.
    fn read_len(&mut self) -> Result<usize> {
        if let Some(l) = self.record_len {
            return Ok(l);
        }
        while self.len_got < LEN_PREFIX {
            let mut b = [0u8; LEN_PREFIX];
            let want = LEN_PREFIX - self.len_got;
            match pull_into(&mut self.inner, &mut b[..want], self.peer) {
                Ok(n) => {
                    self.len_buf[self.len_got..self.len_got + n].copy_from_slice(&b[..n]);
                    self.len_got += n;
                }
                Err(e) => return Err(self.at_eof(e)),
            }
        }
        let l = usize::from(u16::from_le_bytes(self.len_buf));
        if l <= TAG_LEN {
            return Err(self.bad(format!(
                "a record of {l} bytes, shorter than the smallest ({})",
                TAG_LEN + 1
            )));
        }
        self.record_len = Some(l);
        Ok(l)
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

/// The reader's buffered bytes, filling it with one read if it is empty;
/// never empty (end of stream is `Closed`).
fn buffered(r: &mut BufReader<impl Read>, peer: SocketAddr) -> Result<&[u8]> {
    loop {
        // The bytes are returned from `buffer()` after the loop: a slice
        // returned from inside it would keep `r` borrowed across retries.
        match r.fill_buf() {
            Ok([]) => return Err(TransportError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_io_error(e, peer)),
        }
    }
    Ok(r.buffer())
}

/// Appends up to `want` buffered bytes to `dst`, reading once if nothing
/// is buffered; returns how many (never 0: end of stream is `Closed`).
fn pull(
    r: &mut BufReader<impl Read>,
    dst: &mut Vec<u8>,
    want: usize,
    peer: SocketAddr,
) -> Result<usize> {
    let b = buffered(r, peer)?;
    let n = b.len().min(want);
    append(dst, &b[..n]);
    r.consume(n);
    Ok(n)
}

/// Like [`pull`], into a slice.
fn pull_into(r: &mut BufReader<impl Read>, dst: &mut [u8], peer: SocketAddr) -> Result<usize> {
    let b = buffered(r, peer)?;
    let n = b.len().min(dst.len());
    dst[..n].copy_from_slice(&b[..n]);
    r.consume(n);
    Ok(n)
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
