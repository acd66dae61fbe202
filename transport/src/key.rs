//! The pre-shared key and every key derived from it.
//!
//! | key | derivation (BLAKE3 `derive_key`) | used for |
//! | --- | --- | --- |
//! | handshake MAC key | context `"hotspare v1 handshake"`, material = PSK | MACs of handshake frames |
//! | proof key | context `"hotspare v1 proof"`, material = PSK | the handshake's challenge-response proofs |
//! | initiator→responder session key | context `"hotspare v1 i->r"`, material = PSK ‖ nonce_i ‖ nonce_r | MACs of frames the initiator sends |
//! | responder→initiator session key | context `"hotspare v1 r->i"`, material = PSK ‖ nonce_i ‖ nonce_r | MACs of frames the responder sends |
//!
//! Every secret is wiped from memory when dropped.

use std::fmt;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

use crate::error::{Result, TransportError};

/// Minimum length of a pre-shared key, in bytes.
pub const MIN_PSK_LEN: usize = 32;

/// Handshake nonce length in bytes.
pub(crate) const NONCE_LEN: usize = 32;

/// A handshake nonce.
pub(crate) type Nonce = [u8; NONCE_LEN];

/// The pre-shared key both hosts hold. At least 32 bytes, any content.
///
/// Its `Debug` output shows only the length, and the bytes are wiped from
/// memory when it is dropped.
pub struct Psk {
    bytes: Zeroizing<Vec<u8>>,
}

impl Psk {
    /// Reads the whole file at `path` as the key (every byte counts,
    /// including any trailing newline).
    ///
    /// Fails naming the path if the file cannot be read or holds fewer than
    /// 32 bytes.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Psk> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| TransportError::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_PSK_LEN {
            return Err(TransportError::KeyFileTooShort {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(Psk { bytes })
    }

    /// Uses `bytes` as the key. Fails if it is shorter than 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Psk> {
        if bytes.len() < MIN_PSK_LEN {
            return Err(TransportError::KeyTooShort { len: bytes.len() });
        }
        Ok(Psk {
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// The key for MACs of handshake frames.
    pub(crate) fn handshake_mac_key(&self) -> MacKey {
        MacKey(blake3::derive_key("hotspare v1 handshake", &self.bytes))
    }

    /// The key for the handshake proofs.
    pub(crate) fn proof_key(&self) -> MacKey {
        MacKey(blake3::derive_key("hotspare v1 proof", &self.bytes))
    }

    /// The two session keys: (initiator→responder, responder→initiator).
    pub(crate) fn session_keys(&self, nonce_i: &Nonce, nonce_r: &Nonce) -> (MacKey, MacKey) {
        let derive = |context: &str| {
            let mut h = blake3::Hasher::new_derive_key(context);
            h.update(&self.bytes);
            h.update(nonce_i);
            h.update(nonce_r);
            MacKey(*h.finalize().as_bytes())
        };
        (derive("hotspare v1 i->r"), derive("hotspare v1 r->i"))
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk({} bytes, redacted)", self.bytes.len())
    }
}

/// A 32-byte key for keyed BLAKE3, wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MacKey(pub(crate) [u8; 32]);

impl MacKey {
    /// Keyed BLAKE3 of the concatenation of `parts` (full 32 bytes).
    pub(crate) fn hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(redacted)")
    }
}

impl Drop for MacKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// 32 random bytes from the OS.
pub(crate) fn random_nonce() -> Result<Nonce> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).map_err(|e| TransportError::Random(e.to_string()))?;
    Ok(n)
}

/// Compares two byte strings without an early exit on the first
/// difference (for MACs and proofs).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
