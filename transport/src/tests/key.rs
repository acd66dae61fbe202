//! The pre-shared key file: length, permissions, links, redaction.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::{Psk, TransportError};

fn key_file(bytes: &[u8], mode: u32) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    std::fs::set_permissions(f.path(), Permissions::from_mode(mode)).unwrap();
    f
}

#[test]
fn a_32_byte_private_file_is_the_key() {
    let f = key_file(&[7u8; 32], 0o600);
    Psk::from_file(f.path()).unwrap();
    let f = key_file(&[7u8; 32], 0o400);
    Psk::from_file(f.path()).unwrap();
}

#[test]
fn any_other_length_is_refused_naming_path_and_size() {
    for (len, shown) in [
        (31usize, "31"),
        (0, "0"),
        (33, "more than 32"),
        (4096, "more than 32"),
    ] {
        let f = key_file(&vec![7u8; len], 0o600);
        let e = Psk::from_file(f.path()).unwrap_err();
        assert!(matches!(e, TransportError::KeyFileBadLength { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains(&format!("holds {shown} bytes")), "{msg}");
        assert!(msg.contains("hotspare keygen"), "{msg}");
    }
}

#[test]
fn group_or_world_access_is_refused_as_ssh_does() {
    for mode in [0o640, 0o604, 0o644, 0o620, 0o602, 0o666] {
        let f = key_file(&[7u8; 32], mode);
        let e = Psk::from_file(f.path()).unwrap_err();
        assert!(
            matches!(e, TransportError::KeyFileInsecure { .. }),
            "{mode:o}: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
    }
}

#[test]
fn a_symlink_is_refused_even_to_a_good_key() {
    let f = key_file(&[7u8; 32], 0o600);
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(f.path(), &link).unwrap();
    let e = Psk::from_file(&link).unwrap_err();
    assert!(matches!(e, TransportError::KeyFileInsecure { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[test]
fn a_directory_or_missing_file_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = Psk::from_file(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let path = dir.path().join("no-such-key");
    let e = Psk::from_file(&path).unwrap_err();
    assert!(matches!(e, TransportError::KeyFileUnreadable { .. }), "{e}");
    assert!(e.to_string().contains("no-such-key"), "{e}");
}

#[test]
fn generated_keys_are_written_private_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let k = Psk::generate().unwrap();
    k.write_new_file(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let back = Psk::from_file(&path).unwrap();
    assert_eq!(back.bytes(), k.bytes());
    let e = Psk::generate().unwrap().write_new_file(&path).unwrap_err();
    assert!(matches!(e, TransportError::KeyFileUnwritable { .. }), "{e}");
    assert_eq!(
        Psk::from_file(&path).unwrap().bytes(),
        k.bytes(),
        "unchanged"
    );
}

#[test]
fn key_bytes_must_be_exactly_32() {
    assert!(Psk::from_bytes(&[1u8; 32]).is_ok());
    for len in [0, 31, 33, 64] {
        let e = Psk::from_bytes(&vec![1u8; len]).unwrap_err();
        assert!(
            matches!(e, TransportError::KeyBadLength { len: l } if l == len),
            "{e}"
        );
    }
}

#[test]
fn debug_never_shows_the_key() {
    let k = Psk::from_bytes(&[0x41; 32]).unwrap();
    let s = format!("{k:?}");
    assert_eq!(s, "Psk(32 bytes, redacted)");
}
