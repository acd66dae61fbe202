//! The pre-shared key: how it is stored, loaded and wiped.
//!
//! The key file holds exactly 32 bytes, the output of a random generator
//! (`hotspare keygen FILE`, or `head -c 32 /dev/urandom > key` followed by
//! `chmod 600 key`). It is the Noise handshake's PSK (`docs/security.md`):
//! nothing else is derived from it here.
//!
//! Loading refuses, as ssh does for private keys:
//! - a symbolic link (the file itself must be the key, not a pointer that
//!   someone else may redirect);
//! - anything but a regular file;
//! - a file that its group or other users may read or write
//!   (`mode & 0o077 != 0`);
//! - any length but 32 bytes. The read is capped at 33 bytes, so a huge
//!   file costs nothing.
//!
//! Every copy of the key this crate makes (the read buffer, the [`Psk`])
//! is wiped from memory when dropped.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Result, TransportError};

/// Length of the pre-shared key, in bytes.
pub const PSK_LEN: usize = 32;

/// The pre-shared key both hosts hold: exactly 32 bytes.
///
/// Its `Debug` output never shows the bytes, and they are wiped from memory
/// when it is dropped.
pub struct Psk {
    bytes: Zeroizing<[u8; PSK_LEN]>,
}

impl Psk {
    /// Loads the key file at `path`; see the module documentation for what
    /// is refused. Every error names the path and what is wrong.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Psk> {
        let path = path.as_ref();
        let unreadable = |source| TransportError::KeyFileUnreadable {
            path: path.to_path_buf(),
            source,
        };
        let insecure = |why: String| TransportError::KeyFileInsecure {
            path: path.to_path_buf(),
            why,
        };
        let link = std::fs::symlink_metadata(path).map_err(unreadable)?;
        if link.file_type().is_symlink() {
            return Err(insecure(
                "it is a symbolic link; point --key-file at the key itself".into(),
            ));
        }
        if !link.file_type().is_file() {
            return Err(insecure("it is not a regular file".into()));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(unreadable)?;
        // Check the file actually opened (no race with a swap after the
        // check above: O_NOFOLLOW refuses a link, fstat sees the opened
        // file).
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.file_type().is_file() {
            return Err(insecure("it is not a regular file".into()));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(insecure(format!(
                "its mode is {mode:04o}: its group or other users may read or change it \
                 (run `chmod 600 {}`)",
                path.display()
            )));
        }
        let mut buf = Zeroizing::new([0u8; PSK_LEN + 1]);
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(unreadable(e)),
            }
        }
        if len != PSK_LEN {
            return Err(TransportError::KeyFileBadLength {
                path: path.to_path_buf(),
                len: if len > PSK_LEN {
                    format!("more than {PSK_LEN}")
                } else {
                    len.to_string()
                },
            });
        }
        let mut bytes = Zeroizing::new([0u8; PSK_LEN]);
        bytes.copy_from_slice(&buf[..PSK_LEN]);
        Ok(Psk { bytes })
    }

    /// Uses `bytes` as the key. Fails unless it is exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Psk> {
        let array: &[u8; PSK_LEN] = bytes
            .try_into()
            .map_err(|_| TransportError::KeyBadLength { len: bytes.len() })?;
        Ok(Psk {
            bytes: Zeroizing::new(*array),
        })
    }

    /// A fresh key from the OS random generator.
    pub fn generate() -> Result<Psk> {
        let mut bytes = Zeroizing::new([0u8; PSK_LEN]);
        getrandom::getrandom(&mut bytes[..]).map_err(|e| TransportError::Random(e.to_string()))?;
        Ok(Psk { bytes })
    }

    /// Writes the key to a new file at `path`, created with mode 0600 (it
    /// refuses to overwrite an existing file, so it never changes who may
    /// read an old one).
    pub fn write_new_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let err = |source| TransportError::KeyFileUnwritable {
            path: path.to_path_buf(),
            source,
        };
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(&self.bytes[..]).map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// The key's bytes (for the Noise handshake).
    pub(crate) fn bytes(&self) -> &[u8; PSK_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(32 bytes, redacted)")
    }
}
