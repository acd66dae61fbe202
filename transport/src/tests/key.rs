//! The pre-shared key: loading rules, redaction, derivations.

use std::io::Write;

use crate::key::MacKey;
use crate::{Psk, TransportError};

fn key_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

#[test]
fn key_file_of_31_bytes_is_refused_naming_path_and_size() {
    let f = key_file(&[7u8; 31]);
    let e = Psk::from_file(f.path()).unwrap_err();
    assert!(
        matches!(e, TransportError::KeyFileTooShort { len: 31, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    assert!(
        msg.contains("is 31 bytes; at least 32 are required"),
        "{msg}"
    );
    assert!(msg.contains("head -c 32 /dev/urandom > key"), "{msg}");
}

#[test]
fn key_file_uses_every_byte() {
    let f32 = key_file(&[7u8; 32]);
    Psk::from_file(f32.path()).unwrap();
    // A trailing newline is part of the key: a different key.
    let mut with_newline = vec![7u8; 32];
    with_newline.push(b'\n');
    let f33 = key_file(&with_newline);
    let a = Psk::from_file(f32.path()).unwrap();
    let b = Psk::from_file(f33.path()).unwrap();
    assert_ne!(a.handshake_mac_key(), b.handshake_mac_key());
}

#[test]
fn missing_key_file_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-key");
    let e = Psk::from_file(&path).unwrap_err();
    assert!(matches!(e, TransportError::KeyFileUnreadable { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.starts_with("cannot read key file"), "{msg}");
}

#[test]
fn directory_as_key_file_is_unreadable() {
    // Tests may run as root, where permission bits do not stop a read; a
    // directory cannot be read as a file by anyone.
    let dir = tempfile::tempdir().unwrap();
    let e = Psk::from_file(dir.path()).unwrap_err();
    assert!(matches!(e, TransportError::KeyFileUnreadable { .. }), "{e}");
    assert!(e.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn key_bytes_follow_the_same_length_rule() {
    let e = Psk::from_bytes(&[1u8; 31]).unwrap_err();
    assert!(matches!(e, TransportError::KeyTooShort { len: 31 }), "{e}");
    Psk::from_bytes(&[1u8; 32]).unwrap();
    Psk::from_bytes(&[1u8; 100]).unwrap();
}

#[test]
fn debug_never_shows_the_key() {
    let k = Psk::from_bytes(b"SECRET-SECRET-SECRET-SECRET-SECRET").unwrap();
    let dbg = format!("{k:?}");
    assert!(!dbg.contains("SECRET"), "{dbg}");
    assert_eq!(dbg, "Psk(34 bytes, redacted)");
    assert_eq!(format!("{:?}", k.handshake_mac_key()), "MacKey(redacted)");
}

#[test]
fn derived_keys_are_distinct_per_purpose_direction_and_session() {
    let k = Psk::from_bytes(&[9u8; 32]).unwrap();
    let (n1, n2, n3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let (ir, ri) = k.session_keys(&n1, &n2);
    let (ir_other, _) = k.session_keys(&n1, &n3);
    let keys: Vec<MacKey> = vec![
        k.handshake_mac_key(),
        k.proof_key(),
        ir.clone(),
        ri,
        ir_other,
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Deterministic: both sides derive the same keys from the same nonces.
    assert_eq!(k.session_keys(&n1, &n2).0, ir);
    // Another PSK, same nonces: other keys.
    let other = Psk::from_bytes(&[8u8; 32]).unwrap();
    assert_ne!(other.session_keys(&n1, &n2).0, ir);
}
