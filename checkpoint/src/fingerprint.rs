//! The VM-configuration fingerprint.
//!
//! A checkpoint may only be applied to a VM built from the same
//! configuration (memory layout, vCPU count, CPUID). The [`Fingerprint`] is
//! the SHA-256 of the postcard encoding of [`MachineConfig`]; it is stored in
//! every checkpoint header and compared before anything is applied.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CheckpointError, Result};

/// One guest-physical memory region.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemRegion {
    /// Guest-physical start address (page aligned).
    pub guest_addr: u64,
    /// Size in bytes (a multiple of the page size).
    pub size: u64,
}

/// One virtio-blk disk as the guest sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DiskLayout {
    /// Size in bytes (a whole number of 512-byte sectors).
    pub bytes: u64,
    /// Whether the guest sees it read-only.
    pub read_only: bool,
}

/// The parts of a VM's configuration a checkpoint depends on.
///
/// Its postcard encoding is the payload of the `Config` section and the
/// input of the [`Fingerprint`]. Field order is part of the format: do not
/// reorder fields without bumping the format version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Guest memory regions, in the order the VMM registers them (region
    /// index = KVM memory slot order used by the dirty log).
    pub mem_regions: Vec<MemRegion>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Opaque canonical bytes of the CPUID table given to the vCPUs.
    pub cpuid: Vec<u8>,
    /// The virtio-blk disks, in device order (`virtio-blk.0`, ...).
    pub disks: Vec<DiskLayout>,
}

impl MachineConfig {
    /// The canonical (postcard) encoding, as stored in the `Config` section.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain integers and vectors into a growable Vec cannot
        // fail: postcard only errors for unsupported serde features or a full
        // fixed-size buffer, neither of which applies here.
        postcard::to_stdvec(self).expect("postcard encoding of MachineConfig is infallible")
    }

    /// Decodes a `Config` section payload. Trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (cfg, rest) = postcard::take_from_bytes::<MachineConfig>(bytes)
            .map_err(|e| CheckpointError::Decode(format!("MachineConfig: {e}")))?;
        if !rest.is_empty() {
            return Err(CheckpointError::Decode(format!(
                "MachineConfig: {} trailing bytes",
                rest.len()
            )));
        }
        Ok(cfg)
    }

    /// The fingerprint of this configuration.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

/// SHA-256 of the postcard encoding of a [`MachineConfig`].
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// Computes the fingerprint of `cfg`.
    pub fn of(cfg: &MachineConfig) -> Self {
        Fingerprint(Sha256::digest(cfg.encode()).into())
    }

    /// Wraps raw bytes (e.g. read from a header).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for log lines and error messages.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for Fingerprint {
    /// Full lowercase hex (64 digits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MachineConfig {
        MachineConfig {
            mem_regions: vec![
                MemRegion {
                    guest_addr: 0,
                    size: 0xc000_0000,
                },
                MemRegion {
                    guest_addr: 0x1_0000_0000,
                    size: 0x4000_0000,
                },
            ],
            vcpus: 2,
            cpuid: vec![1, 2, 3, 4],
            disks: vec![DiskLayout {
                bytes: 1 << 30,
                read_only: false,
            }],
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_postcard() {
        let c = cfg();
        let expected: [u8; 32] = Sha256::digest(postcard::to_stdvec(&c).unwrap()).into();
        assert_eq!(c.fingerprint().as_bytes(), &expected);
        assert_eq!(c.fingerprint(), Fingerprint::of(&c.clone()));
    }

    #[test]
    fn every_field_changes_the_fingerprint() {
        let base = cfg().fingerprint();
        let mut c = cfg();
        c.vcpus = 3;
        assert_ne!(c.fingerprint(), base);
        let mut c = cfg();
        c.cpuid[0] ^= 1;
        assert_ne!(c.fingerprint(), base);
        let mut c = cfg();
        c.mem_regions[1].size += 4096;
        assert_ne!(c.fingerprint(), base);
        let mut c = cfg();
        c.mem_regions.swap(0, 1);
        assert_ne!(c.fingerprint(), base);
        let mut c = cfg();
        c.disks[0].bytes += 512;
        assert_ne!(c.fingerprint(), base);
        let mut c = cfg();
        c.disks[0].read_only = true;
        assert_ne!(c.fingerprint(), base);
        let mut c = cfg();
        c.disks.push(c.disks[0]);
        assert_ne!(c.fingerprint(), base);
    }

    #[test]
    fn display_and_short() {
        let mut b = [0u8; 32];
        b[0] = 0xde;
        b[1] = 0xad;
        b[31] = 0x0f;
        let f = Fingerprint::from_bytes(b);
        let s = f.to_string();
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("dead0000"));
        assert!(s.ends_with("0f"));
        assert_eq!(f.short(), "dead00000000");
        assert_eq!(format!("{f:?}"), format!("Fingerprint({s})"));
    }

    #[test]
    fn config_round_trip_and_trailing_bytes() {
        let c = cfg();
        let bytes = c.encode();
        assert_eq!(MachineConfig::decode(&bytes).unwrap(), c);
        let mut extra = bytes.clone();
        extra.push(0);
        let err = MachineConfig::decode(&extra).unwrap_err();
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
        let err = MachineConfig::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, CheckpointError::Decode(_)), "{err}");
    }
}
