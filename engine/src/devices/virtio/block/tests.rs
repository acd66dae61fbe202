//! virtio-blk driven as a guest driver would: registers through the bus
//! interface, descriptors and rings in guest memory, the disk a real file.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_mmio::*;

use super::*;
use crate::devices::conformance::device_conformance_tests;
use crate::devices::virtio::status;
use crate::devices::virtio::test_util::{peek, rd32, wr32};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x4000;
const STATUS: u64 = 0x5000;
const DATA: u64 = 0x10000;
const QSIZE: u16 = 16;
const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;

struct Env {
    dev: Block,
    ram: Arc<Ram>,
    path: PathBuf,
    irq: EventFd,
    avail_idx: u16,
    next_desc: u16,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn disk_file(tag: &str, bytes: u64) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "hs-blk-{tag}-{}-{:?}.img",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path
}

fn env(tag: &str, read_only: bool) -> Env {
    let path = disk_file(tag, 1 << 20);
    let disk = DiskImage::open(&DiskSpec {
        path: path.clone(),
        read_only,
    })
    .unwrap();
    let ram = Arc::new(Ram::new(2 << 20).unwrap());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dev = Block::new(
        "virtio-blk.0",
        Arc::new(disk),
        "hotspare-disk0",
        ram.clone(),
        irq.try_clone().unwrap(),
        notify,
        Arc::new(IoFailover::default()),
    )
    .unwrap();
    Env {
        dev,
        ram,
        path,
        irq,
        avail_idx: 0,
        next_desc: 0,
    }
}

/// The driver's initialisation sequence (§3.1.1) with VERSION_1 only.
fn bring_up(d: &mut Block) {
    wr32(d, VIRTIO_MMIO_STATUS, 0);
    wr32(d, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr32(d, VIRTIO_MMIO_STATUS, s);
    assert_ne!(rd32(d, VIRTIO_MMIO_STATUS) & status::FEATURES_OK, 0);
    wr32(d, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr32(d, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
    wr32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
    wr32(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
    wr32(d, VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
    wr32(d, VIRTIO_MMIO_QUEUE_READY, 1);
    wr32(d, VIRTIO_MMIO_STATUS, s | status::DRIVER_OK);
}

impl Env {
    fn up(tag: &str, read_only: bool) -> Env {
        let mut e = env(tag, read_only);
        bring_up(&mut e.dev);
        e
    }

    /// Posts a chain of (addr, len, device-writable) descriptors.
    fn post(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let mut flags = if w { F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&self.next_desc.to_le_bytes());
            self.ram.write(DESC + 16 * u64::from(idx), &d).unwrap();
        }
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.ram.write(slot, &head.to_le_bytes()).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram
            .write(AVAIL + 2, &self.avail_idx.to_le_bytes())
            .unwrap();
        head
    }

    fn header(&self, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.ram.write(HDR, &h).unwrap();
        self.ram.write(STATUS, &[0xee]).unwrap();
    }

    fn notify(&mut self) {
        wr32(&mut self.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    }

    fn used_idx(&self) -> u16 {
        u16::from_le_bytes(peek(&self.ram, USED + 2, 2).try_into().unwrap())
    }

    /// Waits until the used ring holds `n` entries; returns the last (id, len).
    fn wait_used(&self, n: u16) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() != n {
            assert!(
                Instant::now() < deadline,
                "the device completed {} of {n}",
                self.used_idx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let e = peek(&self.ram, USED + 4 + 8 * u64::from((n - 1) % QSIZE), 8);
        (
            u32::from_le_bytes(e[0..4].try_into().unwrap()),
            u32::from_le_bytes(e[4..8].try_into().unwrap()),
        )
    }

    fn status(&self) -> u8 {
        peek(&self.ram, STATUS, 1)[0]
    }

    /// One request: header, data, status; returns (status, used length).
    fn request(&mut self, ty: u32, sector: u64, data: Option<(u32, bool)>) -> (u8, u32) {
        self.header(ty, sector);
        let mut descs = vec![(HDR, 16, false)];
        if let Some((len, w)) = data {
            descs.push((DATA, len, w));
        }
        descs.push((STATUS, 1, true));
        let head = self.post(&descs);
        self.notify();
        let (id, len) = self.wait_used(self.avail_idx);
        assert_eq!(id, u32::from(head));
        (self.status(), len)
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn writes_reach_the_file_and_reads_come_back() {
    let mut e = Env::up("rw", false);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    e.ram.write(DATA, &pattern).unwrap();
    assert_eq!(e.request(VIRTIO_BLK_T_OUT, 8, Some((4096, false))), (OK, 1));
    let mut on_disk = vec![0u8; 4096];
    std::fs::File::open(&e.path)
        .unwrap()
        .read_exact_at(&mut on_disk, 8 * 512)
        .unwrap();
    assert_eq!(on_disk, pattern);
    e.ram.write(DATA, &[0u8; 4096]).unwrap();
    e.ram.take_vmm_dirty();
    assert_eq!(
        e.request(VIRTIO_BLK_T_IN, 8, Some((4096, true))),
        (OK, 4097)
    );
    assert_eq!(peek(&e.ram, DATA, 4096), pattern);
    // The read wrote guest memory behind KVM's back: the VMM's bitmap has it.
    let dirty = e.ram.take_vmm_dirty();
    let page = (DATA / 4096) as usize;
    assert_ne!(
        dirty[0][page / 64] & (1 << (page % 64)),
        0,
        "read buffer page not marked dirty"
    );
    assert_eq!(e.request(VIRTIO_BLK_T_FLUSH, 0, None), (OK, 1));
    // The interrupt line was raised, and InterruptStatus says why.
    assert!(e.irq.read().unwrap() > 0);
    assert_eq!(rd32(&mut e.dev, VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
    assert_eq!(e.dev.errors(), 0);
}

#[test]
fn bad_requests_get_an_error_status_and_the_device_survives() {
    let mut e = Env::up("bad", false);
    // Past the end of the 2048-sector disk, and straddling it.
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 2048, Some((512, true))).0, IOERR);
    assert_eq!(
        e.request(VIRTIO_BLK_T_OUT, 2047, Some((1024, false))).0,
        IOERR
    );
    assert_eq!(
        e.request(VIRTIO_BLK_T_IN, u64::MAX / 2, Some((512, true)))
            .0,
        IOERR
    );
    // Not a whole sector; data the wrong way; unknown type.
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((100, true))).0, IOERR);
    assert_eq!(e.request(VIRTIO_BLK_T_OUT, 0, Some((512, true))).0, IOERR);
    assert_eq!(e.request(2, 0, None).0, UNSUPP);
    // A buffer outside guest memory.
    e.header(VIRTIO_BLK_T_IN, 0);
    e.post(&[(HDR, 16, false), (64 << 20, 512, true), (STATUS, 1, true)]);
    e.notify();
    e.wait_used(e.avail_idx);
    assert_eq!(e.status(), IOERR);
    // No status byte at all: nothing can be reported, the chain is returned.
    e.header(VIRTIO_BLK_T_IN, 0);
    e.post(&[(HDR, 16, false)]);
    e.notify();
    assert_eq!(e.wait_used(e.avail_idx).1, 0);
    assert_eq!(e.status(), 0xee, "no status byte was written");
    assert_eq!(e.dev.errors(), 8);
    // And it still works.
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((512, true))).0, OK);
}

#[test]
fn read_only_disks_refuse_writes_and_offer_ro() {
    let mut e = Env::up("ro", true);
    wr32(&mut e.dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        rd32(&mut e.dev, VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_BLK_F_RO),
        0
    );
    e.ram.write(DATA, &[9u8; 512]).unwrap();
    assert_eq!(e.request(VIRTIO_BLK_T_OUT, 0, Some((512, false))).0, IOERR);
    let mut b = [1u8; 512];
    std::fs::File::open(&e.path)
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    assert_eq!(b, [0u8; 512], "a read-only disk was written");
    assert_eq!(e.request(VIRTIO_BLK_T_IN, 0, Some((512, true))).0, OK);
}

#[test]
fn get_id_discard_and_write_zeroes() {
    let mut e = Env::up("ops", false);
    assert_eq!(
        e.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, true))),
        (OK, 21)
    );
    assert_eq!(&peek(&e.ram, DATA, 14), b"hotspare-disk0");
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&e.path)
        .unwrap();
    f.write_all_at(&[0x5a; 16384], 0).unwrap();
    f.sync_all().unwrap();
    // Discard sectors 8..16 (4 KiB at 4 KiB): a hole; the rest stays.
    let mut range = [0u8; 16];
    range[0..8].copy_from_slice(&8u64.to_le_bytes());
    range[8..12].copy_from_slice(&8u32.to_le_bytes());
    e.ram.write(DATA, &range).unwrap();
    assert_eq!(e.request(VIRTIO_BLK_T_DISCARD, 0, Some((16, false))).0, OK);
    // Write zeroes with UNMAP over sectors 16..24.
    range[0..8].copy_from_slice(&16u64.to_le_bytes());
    range[12..16].copy_from_slice(&1u32.to_le_bytes());
    e.ram.write(DATA, &range).unwrap();
    assert_eq!(
        e.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((16, false))).0,
        OK
    );
    let mut b = vec![0u8; 16384];
    f.read_exact_at(&mut b, 0).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0x5a));
    assert!(b[4096..12288].iter().all(|&x| x == 0));
    assert!(b[12288..].iter().all(|&x| x == 0x5a));
    // Discard with flags is unsupported; a range past the end is an error.
    e.ram.write(DATA, &range).unwrap();
    assert_eq!(
        e.request(VIRTIO_BLK_T_DISCARD, 0, Some((16, false))).0,
        UNSUPP
    );
    range[0..8].copy_from_slice(&2047u64.to_le_bytes());
    range[12..16].copy_from_slice(&0u32.to_le_bytes());
    e.ram.write(DATA, &range).unwrap();
    assert_eq!(
        e.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((16, false))).0,
        IOERR
    );
}

#[test]
fn quiesce_drains_requests_in_flight_and_wake_serves_what_waited() {
    let mut e = Env::up("drain", false);
    for i in 0..8u64 {
        // Separate headers so the requests can fly together.
        let hdr = HDR + 0x100 * i;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        h[8..16].copy_from_slice(&(i * 8).to_le_bytes());
        e.ram.write(hdr, &h).unwrap();
        e.post(&[(hdr, 16, false), (DATA, 4096, false), (STATUS + i, 1, true)]);
    }
    e.notify();
    // Let the device pick them up, then pause it with (likely) some in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.dev.shared.lock().inflight == 0 && e.used_idx() == 0 {
        assert!(Instant::now() < deadline, "the device never started");
        std::hint::spin_loop();
    }
    e.dev.quiesce().unwrap();
    let done = e.used_idx();
    assert_eq!(
        done, 8,
        "quiesce returned before every popped request completed"
    );
    assert_eq!(
        e.dev.shared.lock().inflight,
        0,
        "quiesced with requests in flight"
    );
    // While quiesced, posted requests wait.
    e.header(VIRTIO_BLK_T_FLUSH, 0);
    e.post(&[(HDR, 16, false), (STATUS, 1, true)]);
    e.notify();
    std::thread::sleep(Duration::from_millis(50));
    let record = e.dev.save();
    assert_eq!(e.used_idx(), done, "a quiesced device completed a request");
    e.dev.wake();
    e.wait_used(e.avail_idx);
    // A device restored from the record (as a shadow's would be) serves the
    // request that was posted but not popped when the record was taken.
    let mut f = env("drain2", false);
    f.ram.write(0, &peek(&e.ram, 0, 1 << 20)).unwrap();
    f.ram.write(USED, &[0u8; 256]).unwrap();
    f.ram.write(USED + 2, &done.to_le_bytes()).unwrap();
    f.dev.restore(&record).unwrap();
    f.avail_idx = e.avail_idx;
    f.wait_used(f.avail_idx);
}

#[test]
fn a_record_of_another_disk_size_is_refused() {
    let e = env("size-a", false);
    let rec = e.dev.save();
    let path = disk_file("size-b", 2 << 20);
    let disk = DiskImage::open(&DiskSpec {
        path: path.clone(),
        read_only: false,
    })
    .unwrap();
    let ram = Arc::new(Ram::new(2 << 20).unwrap());
    let fd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut other = Block::new(
        "virtio-blk.0",
        Arc::new(disk),
        "x",
        ram,
        fd(),
        fd(),
        Default::default(),
    )
    .unwrap();
    let err = other.restore(&rec).unwrap_err().to_string();
    assert!(
        err.contains("2048 sectors") && err.contains("4096 sectors"),
        "{err}"
    );
    std::fs::remove_file(path).unwrap();
}

fn conformance_dev() -> Block {
    // The env's file is removed when the env drops; the device keeps it open.
    let e = env("conf", false);
    let path = disk_file("conf-dev", 1 << 20);
    let disk = DiskImage::open(&DiskSpec {
        path: path.clone(),
        read_only: false,
    })
    .unwrap();
    std::fs::remove_file(path).unwrap();
    let fd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    Block::new(
        "virtio-blk.0",
        Arc::new(disk),
        "c",
        e.ram.clone(),
        fd(),
        fd(),
        Default::default(),
    )
    .unwrap()
}

device_conformance_tests!(conformance, conformance_dev(), |d: &mut Block| bring_up(d));

#[test]
fn an_invalid_queue_at_driver_ok_fails_the_device_and_interrupts() {
    let mut e = env("badq", false);
    let d = &mut e.dev;
    wr32(d, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr32(d, VIRTIO_MMIO_STATUS, s);
    wr32(d, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
    // Rings outside the 2 MiB of guest memory.
    wr32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4000_0000);
    wr32(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
    wr32(d, VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
    wr32(d, VIRTIO_MMIO_QUEUE_READY, 1);
    wr32(d, VIRTIO_MMIO_STATUS, s | status::DRIVER_OK);
    assert_ne!(rd32(d, VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(
        rd32(d, VIRTIO_MMIO_INTERRUPT_STATUS) & 2,
        2,
        "configuration change"
    );
    assert!(e.irq.read().unwrap() > 0, "no interrupt raised");
}
