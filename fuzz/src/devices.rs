//! `device_records`: the `Devices` section (`checkpoint::devices`) and every
//! device's own record decoder, through the real `DeviceManager::restore`
//! of a VM with COM1, the platform ports, a virtio-blk disk and a
//! virtio-net NIC (on a socket pair instead of a TAP). The devices are
//! quiesced, so their threads touch nothing while records are restored.
//!
//! Input: a mode byte, then bytes.
//! - Mode 0: the bytes are a `Devices` section payload. One that decodes is
//!   canonical (encoding the records gives the bytes back), and the records
//!   are restored.
//! - Mode 1 to 5: the bytes are the record data of device `mode - 1` (in
//!   creation order), restored with every other device's baseline record.
//!
//! Checks, after a restore: if it succeeded, saving, restoring what was
//! saved and saving again gives the same records (a restored state is a
//! fixed point); in mode 1 to 5, if the record was refused, the device was
//! left as it was (in mode 0 the devices before the refusing one were
//! restored, as `DeviceManager::restore` documents). Every run starts
//! from, and returns to, the same baseline.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use checkpoint::devices as section;
use engine::devices::virtio::block::{Block, DiskImage, DiskSpec, IoFailover};
use engine::devices::virtio::net::{GateLimits, Net, Tap};
use engine::devices::{DeviceManager, DeviceRecord};
use engine::memory::Ram;
use vmm_sys_util::eventfd::EventFd;

/// A VM's devices, quiesced.
pub struct Env {
    /// The manager holding every device.
    pub manager: DeviceManager,
    /// The records every run starts from.
    pub baseline: Vec<DeviceRecord>,
    _ram: Arc<Ram>,
    _wire: UnixDatagram,
}

fn efd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

impl Env {
    /// Builds the devices (a 1 MiB disk image in the temporary directory,
    /// unlinked once open) and quiesces them.
    pub fn new() -> Env {
        let mut manager =
            DeviceManager::new(efd(), Box::new(std::io::sink())).expect("platform devices");
        let ram = Arc::new(Ram::new(2 << 20).expect("guest memory"));

        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hotspare-fuzz-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .expect("disk image");
        let disk = DiskImage::open(&DiskSpec {
            path: path.clone(),
            read_only: false,
        })
        .expect("disk image");
        let _ = std::fs::remove_file(&path);
        let blk = Block::new(
            "virtio-blk.0",
            Arc::new(disk),
            "fuzz-disk0",
            ram.clone(),
            efd(),
            efd(),
            Arc::new(IoFailover::default()),
        )
        .expect("virtio-blk");
        let slot = manager.allocate_mmio("virtio-blk.0").expect("mmio slot");
        manager
            .add_virtio_mmio(slot, Arc::new(Mutex::new(blk)))
            .expect("add virtio-blk");

        let (ours, wire) = UnixDatagram::pair().expect("socket pair");
        let tap = Tap::from_fd(OwnedFd::from(ours), "fuzz-wire");
        let net = Net::new(
            "virtio-net.0",
            Arc::new(tap),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            GateLimits::default(),
            ram.clone(),
            efd(),
            [efd(), efd(), efd()],
        )
        .expect("virtio-net");
        let slot = manager.allocate_mmio("virtio-net.0").expect("mmio slot");
        manager
            .add_virtio_mmio(slot, Arc::new(Mutex::new(net)))
            .expect("add virtio-net");

        manager.quiesce().expect("quiesce");
        let baseline = manager.save();
        Env {
            manager,
            baseline,
            _ram: ram,
            _wire: wire,
        }
    }

    /// Restores `records` and checks the properties above; leaves the
    /// devices at the baseline. `only_one`: every record but one is the
    /// baseline's, so a refusal must leave every device as it was.
    pub fn check(&self, records: &[DeviceRecord], only_one: bool) {
        let before = self.manager.save();
        assert_eq!(
            before, self.baseline,
            "a run did not start from the baseline"
        );
        match self.manager.restore(records) {
            Ok(()) => {
                let saved = self.manager.save();
                self.manager
                    .restore(&saved)
                    .unwrap_or_else(|e| panic!("a saved state is refused: {e}"));
                assert_eq!(
                    self.manager.save(),
                    saved,
                    "a restored state is not a fixed point"
                );
                self.manager
                    .restore(&self.baseline)
                    .expect("the baseline restores");
            }
            Err(e) if only_one => {
                assert_eq!(
                    self.manager.save(),
                    before,
                    "a refused record ({e}) changed a device"
                );
            }
            Err(_) => {
                // Devices before the one that refused its record were
                // restored (documented: the VM must then not start).
                self.manager
                    .restore(&self.baseline)
                    .expect("the baseline restores");
            }
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

thread_local! {
    static ENV: Env = Env::new();
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    ENV.with(|env| {
        let n = env.baseline.len();
        let mode = usize::from(mode) % (n + 1);
        if mode == 0 {
            let Ok(records) = section::decode(rest) else {
                return;
            };
            let again = section::encode(&records).expect("decoded records encode");
            assert_eq!(again, rest, "a Devices section is not canonical");
            env.check(&records, false);
        } else {
            let mut records = env.baseline.clone();
            records[mode - 1].data = rest.to_vec();
            env.check(&records, true);
        }
    });
}

/// Runs `f` on the fuzzing thread's devices (the seed generator records
/// their states).
pub fn with_env<R>(f: impl FnOnce(&Env) -> R) -> R {
    ENV.with(f)
}
