//! Replication messages: the payloads of transport frames (postcard).
//!
//! An epoch travels as `EpochBegin`, any number of `EpochData` frames whose
//! payloads concatenate to one complete checkpoint container (the same bytes
//! a checkpoint file holds, `docs/checkpoint-format.md`), and `EpochEnd`
//! carrying the console output of the epoch. The shadow answers `Ack` once
//! the whole container is staged and verified, or `Nack`.

use serde::{Deserialize, Serialize};

/// Largest chunk of an epoch container in one `EpochData` frame.
pub const CHUNK: usize = 4 << 20;

/// Start of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochBegin {
    /// Epoch sequence number.
    pub seq: u64,
    /// Total container bytes that follow.
    pub len: u64,
    /// A pre-copy round of the initial sync: memory only, not a consistent
    /// state, never committed (the shadow cannot take over from it).
    pub precopy: bool,
}

/// End of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEnd {
    /// Epoch sequence number.
    pub seq: u64,
    /// Console position of the first byte of `output`.
    pub output_start: u64,
    /// Console bytes the guest emitted during this epoch (held on the primary
    /// until the ack).
    pub output: Vec<u8>,
    /// Console position up to which the primary had released output when it
    /// sent this epoch. The shadow keeps every committed byte from here on:
    /// after a takeover it re-emits them, because the primary may not have
    /// read the acks that would have released them.
    pub released: u64,
    /// Per NIC (in device order): the frames the guest transmitted during
    /// this epoch, held on the primary until the ack.
    pub net: Vec<NetOutput>,
    /// Per NIC: the frame number up to which the primary had sent frames
    /// when it sent this epoch (as `released` for the console).
    pub net_released: Vec<u64>,
    /// The primary's figures for this epoch (for reports on the shadow side).
    pub figures: EpochReport,
    /// Test mode (`--verify-memory`): BLAKE3 of all guest memory and every
    /// disk at the checkpoint, computed while paused. The shadow compares
    /// its own (memory and replicas) after applying the epoch.
    pub memory_hash: Option<[u8; 32]>,
    /// How the primary is fenced (`docs/fencing.md`); `None` with
    /// `--arbiter none`. The shadow refuses the epoch if it was given no
    /// arbiter, or another one.
    pub fence: Option<FenceInfo>,
}

#[cfg(test)]
impl EpochEnd {
    /// The end of epoch `seq` with no output, figures, hash or fence.
    pub(crate) fn empty(seq: u64) -> Self {
        EpochEnd {
            seq,
            output_start: 0,
            output: Vec::new(),
            released: 0,
            net: Vec::new(),
            net_released: Vec::new(),
            figures: EpochReport::default(),
            memory_hash: None,
            fence: None,
        }
    }
}

/// One NIC's transmitted frames of one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOutput {
    /// The number of the first frame (frames are numbered from the VM's
    /// first; the NIC's device record holds the next number).
    pub start: u64,
    /// The frames, each starting with its 12-byte virtio-net header.
    pub frames: Vec<Vec<u8>>,
}

/// What a shadow needs to claim the VM from the arbiter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceInfo {
    /// The VM's id (the record's key).
    pub vm: String,
    /// The arbiter's identity (`Arbiter::identity`).
    pub arbiter: String,
    /// The protection's generation this epoch belongs to.
    pub sync: u64,
    /// The receiving shadow's name in the record.
    pub spare: String,
    /// The receiving shadow is an asynchronous (distant) spare.
    pub async_spare: bool,
    /// The synchronous spares the record names (a winner re-protects
    /// itself with the others).
    pub peers: Vec<String>,
    /// The asynchronous spares the record names.
    pub async_peers: Vec<String>,
}

/// BLAKE3 of all guest memory, region by region, then of every disk's
/// contents (the primary's images while paused and drained; the shadow's
/// replicas once the epoch is applied). A read error hashes as a marker, so
/// it can only make the two sides differ, never match by accident.
pub fn memory_hash(
    ram: &crate::memory::Ram,
    disks: &[std::sync::Arc<crate::devices::virtio::block::DiskImage>],
) -> [u8; 32] {
    use std::os::unix::fs::FileExt;
    let mut h = blake3::Hasher::new();
    for r in &ram.regions {
        h.update(&r.gpa.to_le_bytes());
        h.update(r.as_slice());
    }
    let mut buf = vec![0u8; 1 << 20];
    for (i, d) in disks.iter().enumerate() {
        h.update(&(i as u64).to_le_bytes());
        let mut off = 0u64;
        while off < d.bytes {
            let n = (d.bytes - off).min(buf.len() as u64) as usize;
            match d.file.read_exact_at(&mut buf[..n], off) {
                Ok(()) => h.update(&buf[..n]),
                Err(_) => h.update(b"unreadable"),
            };
            off += n as u64;
        }
    }
    *h.finalize().as_bytes()
}

/// What the primary measured for one epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochReport {
    /// Full or incremental.
    pub full: bool,
    /// Pause in microseconds.
    pub pause_us: u64,
    /// Dirty pages.
    pub pages: u64,
    /// Raw page bytes.
    pub raw_bytes: u64,
    /// Ack latency of the latest acked epoch, in microseconds (0 if none yet).
    pub last_ack_us: u64,
}

/// Epoch `seq` is staged and verified: the primary may release its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The epoch.
    pub seq: u64,
}

/// Epoch `seq` was refused; the primary must resynchronise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The epoch.
    pub seq: u64,
    /// Why.
    pub reason: String,
    /// The shadow took the VM over in this term: the primary is superseded
    /// and must stop its guest at once.
    pub superseded_by: Option<u64>,
}

/// A primary's heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// False while the primary runs unprotected: the shadow's state is stale
    /// and it must not take over from it.
    pub protected: bool,
}

/// Encodes a message.
pub fn encode<T: Serialize>(m: &T) -> Vec<u8> {
    postcard::to_stdvec(m).expect("postcard encoding into a Vec cannot fail")
}

/// Decodes a message, naming it in the error.
pub fn decode<'a, T: Deserialize<'a>>(what: &str, b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed {what} message: {e}"))
}
