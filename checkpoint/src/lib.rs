//! The hotspare checkpoint format.
//!
//! A checkpoint is a self-checking, streamable container of VM state: a
//! fixed header (magic, version, kind, sequence numbers, configuration
//! [`Fingerprint`], CRC) followed by CRC-protected sections and a closing
//! End section. The byte layout is specified in `docs/checkpoint-format.md`.
//!
//! Modules, one concern each:
//! - [`format`](mod@format) is the container ([`CheckpointWriter`],
//!   [`CheckpointReader`]);
//! - [`verify`](mod@verify) checks a whole checkpoint before it is applied;
//! - [`pages`] holds the page records inside Memory sections
//!   ([`MemoryEncoder`], [`decode_records`]);
//! - [`delta`] is the XOR-delta cache of pages sent before;
//! - [`memcopy`] copies pages at the same speed whatever their alignment;
//! - [`devices`] holds the device records inside the `Devices` section;
//! - [`disk`] frames the disk blocks inside `Disk` sections;
//! - [`dirty`] has dirty bitmaps and the [`DirtyLedger`] that never loses a
//!   bit;
//! - [`fingerprint`] defines [`MachineConfig`] and its [`Fingerprint`];
//! - [`error`] defines [`CheckpointError`].
//!
//! Nothing here needs KVM; the KVM vCPU/VM state structs live in their own
//! module.

pub mod delta;
pub mod devices;
pub mod dirty;
pub mod disk;
pub mod error;
pub mod fingerprint;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod kvm_state;
pub mod memcopy;
pub mod pages;
pub mod verify;

pub use devices::DeviceRecord;
pub use dirty::{DirtyBitmap, DirtyLedger, Harvest};
pub use error::{CheckpointError, Result};
pub use fingerprint::{DiskLayout, Fingerprint, MachineConfig, MemRegion};
pub use format::{
    verify, CheckpointKind, CheckpointReader, CheckpointWriter, Header, Limits, SectionId, Sink,
    FORMAT_VERSION,
};
pub use pages::{decode_records, Compression, Encoding, MemoryEncoder, MemoryStats, PAGE_SIZE};
