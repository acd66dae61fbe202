//! Entry points for the fuzz targets (`fuzz/`), not an API: the handshake
//! against a scripted peer, and the record reader over sealed or raw bytes.
//!
//! The scripted peers let a fuzzer reach past the AEAD: a harness-side
//! Noise initiator or responder answers what the code under test writes,
//! with fuzzer-chosen payloads and corruptions, so every check behind a
//! successful decryption is exercised, and the outcome has an oracle (a
//! handshake succeeds exactly when nothing was tampered with).

use std::cell::RefCell;
use std::io::{self, Cursor, Read};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::cipher::memory_pair;
use crate::frame::{Header, Limits};
use crate::handshake::{self, HandshakeParams, PeerInfo, Wire, MAGIC, PROTOCOL_VERSION};
use crate::key::Psk;
use crate::record::{seal_frame, FrameReader, Received, SealBuffers, Session};
use crate::{Channel, Frame, FrameKind, Result, TransportError};

/// The key both sides of a fuzzed handshake hold.
pub const PSK: [u8; 32] = [0x42; 32];
/// The fingerprint of the fuzzed VM.
pub const FINGERPRINT: [u8; 32] = [0xf0; 32];

fn addr() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 7000))
}

/// A peer whose bytes come from `input`, plus whatever `answer` returns
/// for each write of the side under test (a harness-side Noise peer).
struct Scripted<'a> {
    input: RefCell<Vec<u8>>,
    at: RefCell<usize>,
    /// Bytes handed out per read (at least 1): short reads.
    chunk: usize,
    written: RefCell<Vec<u8>>,
    answer: RefCell<Answer<'a>>,
}

/// The harness peer: given what the side under test wrote, what it sends.
type Answer<'a> = Box<dyn FnMut(&[u8]) -> Vec<u8> + 'a>;

impl Wire for Scripted<'_> {
    fn peer(&self) -> io::Result<SocketAddr> {
        Ok(addr())
    }

    fn read_within(&self, buf: &mut [u8], _left: Duration) -> io::Result<usize> {
        let input = self.input.borrow();
        let mut at = self.at.borrow_mut();
        let n = buf.len().min(self.chunk).min(input.len() - *at);
        buf[..n].copy_from_slice(&input[*at..*at + n]);
        *at += n;
        Ok(n)
    }

    fn write_within(&self, buf: &[u8], _left: Duration) -> io::Result<()> {
        self.written.borrow_mut().extend_from_slice(buf);
        let more = (self.answer.borrow_mut())(buf);
        self.input.borrow_mut().extend_from_slice(&more);
        Ok(())
    }
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn noise(initiator: bool, prologue: &[u8]) -> snow::HandshakeState {
    let b = handshake::builder().psk(0, &PSK).prologue(prologue);
    if initiator {
        b.build_initiator().expect("initiator")
    } else {
        b.build_responder().expect("responder")
    }
}

fn preamble(version: u32, channel: u8, reserved: [u8; 3]) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&version.to_le_bytes());
    p[8] = channel;
    p[9..].copy_from_slice(&reserved);
    p
}

fn message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![1u8];
    m.extend_from_slice(&(body.len() as u16).to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Flips `mask` into byte `at` (modulo the length) of `v`, if both are set.
fn corrupt(v: &mut [u8], (at, mask): (usize, u8)) {
    if !v.is_empty() {
        let i = at % v.len();
        v[i] ^= mask;
    }
}

/// Runs the responder on raw bytes from a peer, `chunk` bytes per read.
/// Returns the result and what the responder wrote.
pub fn respond_raw(input: &[u8], chunk: usize, learn: bool) -> (Result<PeerInfo>, Vec<u8>) {
    let psk = Psk::from_bytes(&PSK).expect("32 bytes");
    let fp = (!learn).then_some(FINGERPRINT);
    let mut params = HandshakeParams::new(&psk, fp, Channel::Stream, 1);
    params.any_channel = learn;
    let wire = Scripted {
        input: RefCell::new(input.to_vec()),
        at: RefCell::new(0),
        chunk: chunk.max(1),
        written: RefCell::new(Vec::new()),
        answer: RefCell::new(Box::new(|_| Vec::new())),
    };
    let r = handshake::respond(&wire, &params, deadline()).map(|e| e.info);
    (r, wire.written.into_inner())
}

/// What a fuzzed initiator sends a real responder.
#[derive(Debug, Clone)]
pub struct InitiatorScript {
    pub version: u32,
    pub channel: u8,
    pub reserved: [u8; 3],
    /// Msg 1's plaintext (a well-formed one is fingerprint ‖ term u64).
    pub payload: Vec<u8>,
    /// The confirmation record's plaintext (well-formed: "hotspare confirm").
    pub confirm: Vec<u8>,
    /// A corruption of the wire bytes of msg 1 or of the confirmation.
    pub corrupt_msg1: Option<(usize, u8)>,
    pub corrupt_confirm: Option<(usize, u8)>,
    /// Bytes sent after the confirmation.
    pub tail: Vec<u8>,
    pub chunk: usize,
}

impl InitiatorScript {
    /// Whether a correct responder must accept this script.
    pub fn is_valid(&self) -> bool {
        self.version == PROTOCOL_VERSION
            && self.channel == 1
            && self.reserved == [0; 3]
            && self.payload.len() == 40
            && self.payload[..32] == FINGERPRINT
            && self.confirm == b"hotspare confirm"
            && self.corrupt_msg1.is_none_or(|(_, m)| m == 0)
            && self.corrupt_confirm.is_none_or(|(_, m)| m == 0)
    }
}

/// Runs the real responder against a harness initiator following `s`.
/// Returns the responder's result.
pub fn respond_to_initiator(s: &InitiatorScript) -> Result<PeerInfo> {
    let psk = Psk::from_bytes(&PSK).expect("32 bytes");
    let params = HandshakeParams::new(&psk, Some(FINGERPRINT), Channel::Stream, 1);
    let pre = preamble(s.version, s.channel, s.reserved);
    let hs = RefCell::new(Some(noise(true, &pre)));
    let mut first = pre.to_vec();
    let mut buf = vec![0u8; 2048];
    let n = hs
        .borrow_mut()
        .as_mut()
        .expect("state")
        .write_message(&s.payload[..s.payload.len().min(900)], &mut buf)
        .expect("msg 1");
    let mut m1 = buf[..n].to_vec();
    if let Some(c) = s.corrupt_msg1 {
        corrupt(&mut m1, c);
    }
    first.extend_from_slice(&message(&m1));
    let answer = |written: &[u8]| -> Vec<u8> {
        // The responder's msg 2 (type 1, len, body): answer with the
        // confirmation, if it decrypts.
        if written.len() < 3 || written[0] != 1 {
            return Vec::new();
        }
        let Some(mut state) = hs.borrow_mut().take() else {
            return Vec::new();
        };
        let mut plain = [0u8; 1024];
        if state.read_message(&written[3..], &mut plain).is_err() {
            return Vec::new();
        }
        let Ok(t) = state.into_stateless_transport_mode() else {
            return Vec::new();
        };
        let mut rec = vec![0u8; s.confirm.len().min(900) + 16];
        let n = t
            .write_message(0, &s.confirm[..s.confirm.len().min(900)], &mut rec)
            .expect("confirm");
        rec.truncate(n);
        if let Some(c) = s.corrupt_confirm {
            corrupt(&mut rec, c);
        }
        let mut out = message(&rec);
        out.extend_from_slice(&s.tail);
        out
    };
    let wire = Scripted {
        input: RefCell::new(first),
        at: RefCell::new(0),
        chunk: s.chunk.max(1),
        written: RefCell::new(Vec::new()),
        answer: RefCell::new(Box::new(answer)),
    };
    handshake::respond(&wire, &params, deadline()).map(|e| e.info)
}

/// What a fuzzed responder answers a real initiator.
#[derive(Debug, Clone)]
pub struct ResponderScript {
    /// Msg 2's plaintext (well-formed: had_fp u8 ‖ fingerprint ‖ term).
    pub payload: Vec<u8>,
    pub corrupt_msg2: Option<(usize, u8)>,
    /// Raw bytes instead of msg 2 (a hostile responder), if set.
    pub raw: Option<Vec<u8>>,
    pub chunk: usize,
}

impl ResponderScript {
    /// Whether a correct initiator must accept this script.
    pub fn is_valid(&self) -> bool {
        self.raw.is_none()
            && self.payload.len() == 41
            && self.payload[1..33] == FINGERPRINT
            && self.corrupt_msg2.is_none_or(|(_, m)| m == 0)
    }
}

/// Runs the real initiator against a harness responder following `s`.
pub fn initiate_against_responder(s: &ResponderScript) -> Result<PeerInfo> {
    let psk = Psk::from_bytes(&PSK).expect("32 bytes");
    let params = HandshakeParams::new(&psk, Some(FINGERPRINT), Channel::Stream, 1);
    let mut answered = false;
    let answer = |written: &[u8]| -> Vec<u8> {
        if answered {
            return Vec::new();
        }
        answered = true;
        if let Some(raw) = &s.raw {
            return raw.clone();
        }
        // The initiator's first flight: preamble (12) then msg 1.
        if written.len() < 15 {
            return Vec::new();
        }
        let mut state = noise(false, &written[..12]);
        let mut plain = [0u8; 1024];
        if state.read_message(&written[15..], &mut plain).is_err() {
            return Vec::new();
        }
        let mut buf = vec![0u8; 2048];
        let n = state
            .write_message(&s.payload[..s.payload.len().min(900)], &mut buf)
            .expect("msg 2");
        let mut m2 = buf[..n].to_vec();
        if let Some(c) = s.corrupt_msg2 {
            corrupt(&mut m2, c);
        }
        message(&m2)
    };
    let wire = Scripted {
        input: RefCell::new(Vec::new()),
        at: RefCell::new(0),
        chunk: s.chunk.max(1),
        written: RefCell::new(Vec::new()),
        answer: RefCell::new(Box::new(answer)),
    };
    handshake::initiate(&wire, &params, deadline()).map(|e| e.info)
}

/// One NNpsk0 session, made once: (sender's, receiver's).
fn sessions() -> &'static (Session, Session) {
    static S: OnceLock<(Session, Session)> = OnceLock::new();
    S.get_or_init(|| {
        let (i, r) = memory_pair(&PSK, b"fuzz").expect("an in-memory session");
        (Arc::new(i), Arc::new(r))
    })
}

/// One piece of a fuzzed record stream.
#[derive(Debug, Clone)]
pub enum Piece {
    /// A record sealing these plaintext bytes with the next nonce.
    Record(Vec<u8>),
    /// A record sealed with the previous nonce again (a replay).
    Replay(Vec<u8>),
    /// The next nonce is skipped (a dropped record).
    Skip,
    /// Bytes as they are (garbage, or a forged length prefix).
    Raw(Vec<u8>),
}

/// A reader that returns at most `chunk` bytes per call and, when `stall`,
/// a `WouldBlock` before every read (a timeout the reader must resume
/// from).
struct Choppy {
    inner: Cursor<Vec<u8>>,
    chunk: usize,
    stall: bool,
    stalled: bool,
}

impl Read for Choppy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stall && !self.stalled {
            self.stalled = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.stalled = false;
        let n = buf.len().min(self.chunk);
        self.inner.read(&mut buf[..n])
    }
}

/// Reads frames until an error from the sealed `pieces`; checks the
/// reader's invariants (a frame's payload is as long as its header says and
/// within the limit; timeouts resume). Returns the frames and the error
/// that ended the stream.
pub fn read_pieces(
    pieces: &[Piece],
    max_payload: u32,
    chunk: usize,
    stall: bool,
) -> (Vec<Frame>, TransportError) {
    let (tx, rx) = sessions();
    let mut wire = Vec::new();
    let mut nonce = 0u64;
    for p in pieces {
        let (n, plain) = match p {
            Piece::Record(b) => {
                nonce += 1;
                (nonce - 1, b)
            }
            Piece::Replay(b) => (nonce.saturating_sub(1), b),
            Piece::Skip => {
                nonce += 1;
                continue;
            }
            Piece::Raw(b) => {
                wire.extend_from_slice(b);
                continue;
            }
        };
        let plain = &plain[..plain.len().min(65519)];
        let mut ct = plain.to_vec();
        let tag = tx.seal_in_place(n, &mut ct).expect("seal");
        ct.extend_from_slice(&tag);
        wire.extend_from_slice(&(ct.len() as u16).to_le_bytes());
        wire.extend_from_slice(&ct);
    }
    let src = Choppy {
        inner: Cursor::new(wire),
        chunk: chunk.max(1),
        stall,
        stalled: false,
    };
    let limits = Limits { max_payload };
    let mut reader = FrameReader::new(src, addr(), rx.clone(), 0, limits);
    let mut frames = Vec::new();
    // Frames of an even length are decrypted onto the end of `out`, the
    // others get buffers of their own: both paths see the hostile input.
    let mut out = Vec::new();
    // Where the frame in progress starts in `out` (a frame cut by a
    // timeout is continued by the next call).
    let mut before = 0;
    loop {
        match reader.read_into(&mut out, |_, len| len % 2 == 0) {
            Ok(Received::Frame(f)) => {
                assert!(
                    f.payload.len() <= max_payload as usize,
                    "frame over the limit"
                );
                assert_eq!(out.len(), before, "a frame of its own grew the buffer");
                frames.push(f);
            }
            Ok(Received::Appended {
                kind,
                term,
                seq,
                len,
            }) => {
                assert!(len <= max_payload as usize, "frame over the limit");
                assert_eq!(out.len(), before + len, "appended bytes and length differ");
                frames.push(Frame {
                    kind,
                    term,
                    seq,
                    payload: out[before..].to_vec(),
                });
                before = out.len();
            }
            Err(TransportError::Timeout) => assert!(stall, "a timeout with no stall"),
            Err(e) => return (frames, e),
        }
    }
}

/// Seals `frames` as a sender does and reads them back through short reads
/// and timeouts: they must come back equal, then `Closed`.
pub fn round_trip(frames: &[(FrameKind, u64, Vec<u8>)], chunk: usize, stall: bool) {
    let (tx, rx) = sessions();
    let mut nonce = 0;
    let mut bufs = SealBuffers::default();
    let mut wire = Vec::new();
    for (kind, term, payload) in frames {
        let h = Header::for_payload(*kind, *term, payload).expect("header");
        seal_frame(tx, &mut nonce, (&h, payload), &mut bufs, 1 << 20, |out| {
            wire.extend_from_slice(out);
            Ok(())
        })
        .expect("seal");
    }
    let src = Choppy {
        inner: Cursor::new(wire),
        chunk: chunk.max(1),
        stall,
        stalled: false,
    };
    let mut reader = FrameReader::new(src, addr(), rx.clone(), 0, Limits::default());
    let mut got = Vec::new();
    // Epoch data is gathered in one buffer (as a standby stages it), the
    // rest read as frames.
    let mut gathered = Vec::new();
    let mut before = 0;
    let end = loop {
        match reader.read_into(&mut gathered, |k, _| k == FrameKind::EpochData) {
            Ok(Received::Frame(f)) => {
                assert!(f.kind != FrameKind::EpochData, "epoch data not gathered");
                got.push((f.kind, f.term, f.payload));
            }
            Ok(Received::Appended { kind, term, .. }) => {
                got.push((kind, term, gathered[before..].to_vec()));
                before = gathered.len();
            }
            Err(TransportError::Timeout) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(end, TransportError::Closed), "ended with {end}");
    assert_eq!(got.len(), frames.len(), "frame count");
    for (a, b) in got.iter().zip(frames) {
        assert!(a.0 == b.0 && a.1 == b.1 && a.2 == b.2, "a frame changed");
    }
}
