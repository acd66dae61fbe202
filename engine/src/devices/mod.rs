//! Emulated devices on one model built for persistence (`docs/devices.md`).
//!
//! A [`Device`] is reached through a bus (port I/O or MMIO), saves its whole
//! guest-visible state as one versioned [`DeviceRecord`], restores one in
//! place, and is quiesced while the VM is paused for a capture. Devices
//! whose effects the outside world sees hold them behind an
//! [`OutputCommit`](output::OutputCommit) gate. The [`DeviceManager`] owns
//! the buses, allocates addresses and IRQs, and saves and restores every
//! device as a list of records.

pub mod bus;
#[cfg(test)]
pub(crate) mod conformance;
pub mod console;
pub mod manager;
pub mod output;
pub mod platform;
pub mod serial;
pub mod virtio;

pub use bus::Bus;
pub use checkpoint::devices::DeviceRecord;
pub use manager::DeviceManager;
pub use output::OutputCommit;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What the vCPU loop must do after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusAction {
    /// Keep running.
    Continue,
    /// The guest asked to exit with this status.
    Exit(u8),
    /// The guest asked for a reset (treated as a power-off).
    Reset,
}

/// Errors of the device model: building devices and restoring records.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A checkpoint holds a record for a device this VM does not have.
    #[error("the checkpoint has a record for device {id:?}, which this VM does not have")]
    UnknownDevice {
        /// The record's device id.
        id: String,
    },
    /// A device of this VM has no record in the checkpoint.
    #[error("the checkpoint has no record for device {id:?}")]
    MissingRecord {
        /// The device id.
        id: String,
    },
    /// A record was handed to a device with another id.
    #[error("device {id:?} was given the record of device {found:?}")]
    WrongRecord {
        /// The device id.
        id: String,
        /// The record's id.
        found: String,
    },
    /// A record is newer than what this engine's device understands.
    #[error("device {id:?}: record version {found} is newer than version {supported}, the newest this engine reads")]
    NewerVersion {
        /// The device id.
        id: String,
        /// The record's version.
        found: u32,
        /// The newest version this device reads.
        supported: u32,
    },
    /// A record's bytes are not a valid state for its device.
    #[error("device {id:?}: invalid record: {msg}")]
    BadRecord {
        /// The device id.
        id: String,
        /// What is wrong.
        msg: String,
    },
    /// Two devices were given overlapping bus ranges.
    #[error("bus range {base:#x}+{len:#x} of {id:?} overlaps {other:?}")]
    Overlap {
        /// The device being added.
        id: String,
        /// Its base address.
        base: u64,
        /// Its length.
        len: u64,
        /// The device already there.
        other: String,
    },
    /// The MMIO window or the IRQ lines are used up.
    #[error("no room for device {id:?}: {what}")]
    NoRoom {
        /// The device id.
        id: String,
        /// What ran out.
        what: String,
    },
    /// A device could not finish its work in flight for a capture.
    #[error("device {id:?} cannot be quiesced: {msg}")]
    Quiesce {
        /// The device id.
        id: String,
        /// Why.
        msg: String,
    },
    /// A device could not be set up (file descriptors, threads, files).
    #[error("device {id:?}: {msg}")]
    Setup {
        /// The device id.
        id: String,
        /// What failed.
        msg: String,
    },
}

/// An emulated device. Accesses come with the offset into the device's bus
/// range; a wide port access is split into byte accesses by the bus.
pub trait Device: Send {
    /// The stable id of this device instance (`serial.com1`, `virtio-blk.0`):
    /// the name its record carries.
    fn id(&self) -> &str;

    /// A guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);

    /// A guest write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction;

    /// The device's whole guest-visible state. Called only on a paused,
    /// quiesced VM; it cannot fail.
    fn save(&self) -> DeviceRecord;

    /// Loads a saved state into this device, which was built with its
    /// host-side arguments already. A refused record leaves the device as
    /// it was.
    fn restore(&mut self, record: &DeviceRecord) -> Result<(), DeviceError>;

    /// Called after every vCPU has parked: finish what is in flight and
    /// stop touching guest memory. A device that cannot (a hung disk) says
    /// so, and the pause fails instead of capturing a half-done device.
    fn quiesce(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Called when the pause ends.
    fn wake(&mut self) {}
}

/// Builds a record from a device's plain state struct.
pub fn record<T: Serialize>(id: &str, version: u32, state: &T) -> DeviceRecord {
    DeviceRecord {
        id: id.to_owned(),
        version,
        // Encoding plain data into a growable Vec has no failure mode.
        data: postcard::to_stdvec(state).expect("postcard encoding into a Vec cannot fail"),
    }
}

/// Opens a record for device `id`, which reads versions up to `supported`:
/// refuses another device's record, a newer version, and bytes that do not
/// decode.
pub fn open_record<T: DeserializeOwned>(
    id: &str,
    supported: u32,
    rec: &DeviceRecord,
) -> Result<T, DeviceError> {
    if rec.id != id {
        return Err(DeviceError::WrongRecord {
            id: id.to_owned(),
            found: rec.id.clone(),
        });
    }
    if rec.version > supported {
        return Err(DeviceError::NewerVersion {
            id: id.to_owned(),
            found: rec.version,
            supported,
        });
    }
    let bad = |msg: String| DeviceError::BadRecord {
        id: id.to_owned(),
        msg,
    };
    let (state, rest) = postcard::take_from_bytes(&rec.data).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes follow the state", rest.len())));
    }
    Ok(state)
}

/// Test helpers shared by the device tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::{Arc, Mutex};

    /// A console writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
