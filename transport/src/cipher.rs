//! The record cipher: Noise's transport encryption (AES-256-GCM, the
//! nonce 4 zero bytes then the record number big-endian, no associated
//! data) under the two keys the handshake splits, sealing and opening each
//! record in place in the buffer it travels in.
//!
//! snow runs the handshake; its transport state would do the same sealing,
//! but copies every record from one buffer to another first
//! (`StatelessTransportState::write_message`/`read_message` take separate
//! input and output slices). On the stream's 64 KiB records that copy,
//! with the receive buffer's zero-fill, was a third of the shadow's stream
//! thread, so the keys are taken from the finished handshake
//! (`dangerously_get_raw_split`, snow's documented way to hand them to
//! another cipher implementation) and used with ring's AEAD directly. The
//! bytes on the wire are the same: the tests seal with one and open with
//! the other.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use zeroize::Zeroize;

use crate::error::{Result, TransportError};
use crate::frame::TAG_LEN;

/// The AEAD keys of an established session, one per direction.
pub(crate) struct RecordKeys {
    send: LessSafeKey,
    recv: LessSafeKey,
}

/// Keys shared by the two halves of a connection (each uses only its own
/// direction's key).
pub(crate) type Session = std::sync::Arc<RecordKeys>;

/// The failure of opening a record: a wrong key, a wrong record number, or
/// altered bytes (AES-GCM does not tell them apart).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OpenFailed;

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

fn key(raw: &[u8; 32]) -> Result<LessSafeKey> {
    let k = UnboundKey::new(&AES_256_GCM, raw)
        .map_err(|_| TransportError::Crypto("AES-256-GCM refused a 32-byte key".into()))?;
    Ok(LessSafeKey::new(k))
}

impl RecordKeys {
    /// The keys of a finished handshake, for the side it was built for.
    pub fn from_handshake(hs: &mut snow::HandshakeState) -> Result<RecordKeys> {
        if !hs.is_handshake_finished() {
            return Err(TransportError::Crypto(
                "the Noise handshake is not finished".into(),
            ));
        }
        // The first key encrypts from initiator to responder.
        let (mut i2r, mut r2i) = hs.dangerously_get_raw_split();
        let (send, recv) = if hs.is_initiator() {
            (&i2r, &r2i)
        } else {
            (&r2i, &i2r)
        };
        let keys = key(send).and_then(|send| {
            Ok(RecordKeys {
                send,
                recv: key(recv)?,
            })
        });
        i2r.zeroize();
        r2i.zeroize();
        keys
    }

    /// Encrypts `buf` in place as record number `n` and returns its tag
    /// (which follows the ciphertext on the wire).
    pub fn seal_in_place(&self, n: u64, buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(n), Aad::empty(), buf)
            .map_err(|_| TransportError::Crypto("AES-256-GCM refused to seal a record".into()))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `buf` (ciphertext only) in place as record number `n`, its
    /// tag given apart. On failure `buf` holds no plaintext the caller may
    /// use.
    pub fn open_in_place_separate_tag(
        &self,
        n: u64,
        tag: [u8; TAG_LEN],
        buf: &mut [u8],
    ) -> std::result::Result<(), OpenFailed> {
        self.recv
            .open_in_place_separate_tag(nonce(n), Aad::empty(), Tag::from(tag), buf, 0..)
            .map(|_| ())
            .map_err(|_| OpenFailed)
    }

    /// Decrypts `buf` (ciphertext then tag) in place as record number `n`;
    /// returns the plaintext's length (it starts at `buf[0]`). On failure
    /// `buf` holds no plaintext the caller may use.
    pub fn open_in_place(&self, n: u64, buf: &mut [u8]) -> std::result::Result<usize, OpenFailed> {
        self.recv
            .open_in_place(nonce(n), Aad::empty(), buf)
            .map(|p| p.len())
            .map_err(|_| OpenFailed)
    }
}

/// Both ends of an NNpsk0 session run in memory under `psk`:
/// (initiator's, responder's). For the cipher's measurement and tests.
pub(crate) fn memory_pair(psk: &[u8; 32], prologue: &[u8]) -> Result<(RecordKeys, RecordKeys)> {
    let crypto = |e: snow::Error| TransportError::Crypto(e.to_string());
    let build = || crate::handshake::builder().psk(0, psk).prologue(prologue);
    let mut i = build().build_initiator().map_err(crypto)?;
    let mut r = build().build_responder().map_err(crypto)?;
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m).map_err(crypto)?;
    r.read_message(&m[..n], &mut p).map_err(crypto)?;
    let n = r.write_message(&[], &mut m).map_err(crypto)?;
    i.read_message(&m[..n], &mut p).map_err(crypto)?;
    Ok((
        RecordKeys::from_handshake(&mut i)?,
        RecordKeys::from_handshake(&mut r)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_PLAINTEXT;

    /// A finished NNpsk0 handshake: (initiator, responder) states.
    fn handshakes() -> (snow::HandshakeState, snow::HandshakeState) {
        let psk = [7u8; 32];
        let build = || crate::handshake::builder().psk(0, &psk).prologue(b"c");
        let mut i = build().build_initiator().unwrap();
        let mut r = build().build_responder().unwrap();
        let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        (i, r)
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|k| (k * 131 % 251) as u8).collect()
    }

    const NONCES: [u64; 5] = [0, 1, 255, 1 << 32, u64::MAX - 1];
    const LENS: [usize; 5] = [0, 1, 15, 4096, MAX_PLAINTEXT];

    /// Our records open under snow's transport state, in both directions,
    /// and snow's open under ours: the same Noise transport messages.
    #[test]
    fn records_match_snow_both_ways() {
        let (mut i, mut r) = handshakes();
        let (ours_i, ours_r) = (
            RecordKeys::from_handshake(&mut i).unwrap(),
            RecordKeys::from_handshake(&mut r).unwrap(),
        );
        let (snow_i, snow_r) = (
            i.into_stateless_transport_mode().unwrap(),
            r.into_stateless_transport_mode().unwrap(),
        );
        for (ours, snow_peer, snow_self, ours_peer) in [
            (&ours_i, &snow_r, &snow_i, &ours_r),
            (&ours_r, &snow_i, &snow_r, &ours_i),
        ] {
            for n in NONCES {
                for len in LENS {
                    let plain = sample(len);
                    // Ours seals, snow opens.
                    let mut rec = plain.clone();
                    let tag = ours.seal_in_place(n, &mut rec).unwrap();
                    rec.extend_from_slice(&tag);
                    let mut out = vec![0u8; len + TAG_LEN];
                    let got = snow_peer.read_message(n, &rec, &mut out).unwrap();
                    assert_eq!(&out[..got], &plain[..], "nonce {n}, {len} bytes");
                    // Snow seals, ours opens.
                    let mut rec = vec![0u8; len + TAG_LEN];
                    let w = snow_self.write_message(n, &plain, &mut rec).unwrap();
                    assert_eq!(w, len + TAG_LEN);
                    let got = ours_peer.open_in_place(n, &mut rec).unwrap();
                    assert_eq!(&rec[..got], &plain[..], "nonce {n}, {len} bytes");
                }
            }
        }
    }

    /// A record opens only as its own number, under the other side's key,
    /// and unaltered.
    #[test]
    fn wrong_number_key_or_byte_fails() {
        let (i, r) = memory_pair(&[9u8; 32], b"t").unwrap();
        let mut rec = sample(100);
        let tag = i.seal_in_place(5, &mut rec).unwrap();
        rec.extend_from_slice(&tag);
        assert_eq!(r.open_in_place(6, &mut rec.clone()), Err(OpenFailed));
        // Our own key is the other direction's: it does not open our records.
        assert_eq!(i.open_in_place(5, &mut rec.clone()), Err(OpenFailed));
        for at in [0, 50, 99, 100, 115] {
            let mut bad = rec.clone();
            bad[at] ^= 1;
            assert_eq!(r.open_in_place(5, &mut bad), Err(OpenFailed), "byte {at}");
        }
        // With the tag apart: the same checks.
        let tag: [u8; TAG_LEN] = rec[100..].try_into().unwrap();
        let mut body = rec[..100].to_vec();
        assert_eq!(
            r.open_in_place_separate_tag(6, tag, &mut body.clone()),
            Err(OpenFailed)
        );
        let mut bad_tag = tag;
        bad_tag[15] ^= 1;
        assert_eq!(
            r.open_in_place_separate_tag(5, bad_tag, &mut body.clone()),
            Err(OpenFailed)
        );
        assert_eq!(r.open_in_place_separate_tag(5, tag, &mut body), Ok(()));
        assert_eq!(body, sample(100));
        assert_eq!(r.open_in_place(5, &mut rec), Ok(100));
        assert_eq!(rec[..100], sample(100)[..]);
    }

    /// Another pre-shared key gives other keys.
    #[test]
    fn another_psk_does_not_open() {
        let (i, _) = memory_pair(&[9u8; 32], b"t").unwrap();
        let (_, r2) = memory_pair(&[8u8; 32], b"t").unwrap();
        let mut rec = sample(64);
        let tag = i.seal_in_place(0, &mut rec).unwrap();
        rec.extend_from_slice(&tag);
        assert_eq!(r2.open_in_place(0, &mut rec), Err(OpenFailed));
    }

    #[test]
    fn an_unfinished_handshake_has_no_keys() {
        let mut i = crate::handshake::builder()
            .psk(0, &[1u8; 32])
            .build_initiator()
            .unwrap();
        assert!(matches!(
            RecordKeys::from_handshake(&mut i),
            Err(TransportError::Crypto(_))
        ));
    }
}
