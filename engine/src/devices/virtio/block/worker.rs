//! The virtio-blk device thread: pops requests, runs reads and writes
//! through io_uring with several in flight, completes them into the used
//! ring and raises the interrupt.
//!
//! One io_uring carries everything the thread waits for: the queue's
//! ioeventfd (the guest's QueueNotify, caught by KVM), a control eventfd
//! (pause, wake, stop, restore) and the disk I/O. The thread blocks in
//! `submit_and_wait` only.
//!
//! Requests in flight at a pause are drained, not recorded: [`Shared`]
//! counts them, a paused device pops nothing new, and the pause waits until
//! the count is zero. A captured device therefore never has a request
//! whose completion is not yet in guest memory, and a restored one never
//! re-issues anything (see `docs/devices.md`).

use std::sync::{Arc, Condvar, Mutex};

use io_uring::{opcode, types, IoUring};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_queue::QueueT;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::disk::DiskImage;
use super::request::{self, Kind, Request, Seg, RANGE_LEN, SECTOR};
use super::BlockConfig;
use crate::devices::virtio::MmioTransport;
use crate::memory::Ram;

/// Entries of the ring; at most this many minus two requests are in flight.
const RING_ENTRIES: u32 = 128;
const TAG_NOTIFY: u64 = 0;
const TAG_CTL: u64 = 1;
const FIRST_SLOT: u64 = 2;

/// State shared by the bus side (vCPU threads) and the device thread.
pub struct Inner {
    /// Registers and queues.
    pub transport: MmioTransport,
    /// Pop nothing new (a capture is under way).
    pub paused: bool,
    /// The device is being dropped.
    pub stop: bool,
    /// Requests submitted and not completed.
    pub inflight: usize,
    /// Bumped at every device reset: completions of an older generation
    /// never touch the (reset) queue.
    pub generation: u64,
    /// Requests completed with an error (for the log and tests).
    pub errors: u64,
    /// The disk failed and the VM is handed over: serve nothing more.
    pub halted: bool,
}

/// [`Inner`] and the condition "no request in flight".
pub struct Shared {
    /// The state.
    pub inner: Mutex<Inner>,
    /// Signalled whenever `inflight` drops to zero.
    pub idle: Condvar,
}

impl Shared {
    /// Locks the state (a panic elsewhere does not stop the device).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Pending {
    head: u16,
    generation: u64,
    req: Request,
    /// The iovecs the kernel reads; their buffer must not move until completion.
    _iovecs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `_iovecs` point into guest memory owned by
// the worker's `Arc<Ram>`; they are only handed to the kernel, never
// dereferenced by Rust code, so moving them between threads is sound.
unsafe impl Send for Pending {}

/// The device thread.
pub struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: Arc<BlockConfig>,
    pub(super) disk: Arc<DiskImage>,
    pub(super) ram: Arc<Ram>,
    pub(super) notify: EventFd,
    pub(super) ctl: EventFd,
    pub(super) irq: EventFd,
    pub(super) name: String,
    pub(super) failover: Arc<super::IoFailover>,
}

struct Run {
    w: Worker,
    ring: IoUring,
    slots: Vec<Option<Pending>>,
    /// Eventfd read buffers (stable addresses: boxed).
    bufs: Box<[u64; 2]>,
    armed: [bool; 2],
}

impl Worker {
    /// Runs until the device is dropped.
    pub fn run(self) {
        let ring = match IoUring::new(RING_ENTRIES) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    "{}: io_uring unavailable ({e}); the device fails",
                    self.name
                );
                self.shared.lock().transport.fail();
                // Tell the driver (a configuration-change interrupt, §2.1.2).
                let _ = self.irq.write(1);
                return;
            }
        };
        let slots = (0..RING_ENTRIES as usize - FIRST_SLOT as usize)
            .map(|_| None)
            .collect();
        let mut run = Run {
            w: self,
            ring,
            slots,
            bufs: Box::new([0; 2]),
            armed: [false; 2],
        };
        run.run();
    }
}

/// The iovecs of guest ranges, or None if one is not inside guest memory.
fn iovecs(ram: &Ram, ranges: &[(u64, u32)]) -> Option<Vec<libc::iovec>> {
    ranges
        .iter()
        .map(|&(addr, len)| {
            let s = ram.mem.get_slice(GuestAddress(addr), len as usize).ok()?;
            Some(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: len as usize,
            })
        })
        .collect()
}

impl Run {
    fn run(&mut self) {
        loop {
            self.arm();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!("{}: io_uring failed ({e}); the device fails", self.w.name);
                    self.w.shared.lock().transport.fail();
                    let _ = self.w.irq.write(1);
                    return;
                }
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            let shared = self.w.shared.clone();
            let mut inner = shared.lock();
            let mut interrupt = false;
            for (tag, res) in done {
                match tag {
                    TAG_NOTIFY => self.armed[0] = false,
                    TAG_CTL => self.armed[1] = false,
                    t => interrupt |= self.complete(&mut inner, (t - FIRST_SLOT) as usize, res),
                }
            }
            if inner.stop {
                if inner.inflight == 0 {
                    return;
                }
                continue;
            }
            if !inner.paused && !inner.halted && inner.transport.active() {
                interrupt |= self.pop(&mut inner);
            }
            if inner.inflight == 0 {
                shared.idle.notify_all();
            }
            if interrupt {
                inner.transport.interrupt_status |= VIRTIO_MMIO_INT_VRING;
                if let Err(e) = self.w.irq.write(1) {
                    tracing::warn!("{}: raising the interrupt: {e}", self.w.name);
                }
            }
        }
    }

    /// Keeps a read posted on each eventfd.
    fn arm(&mut self) {
        for (i, tag) in [TAG_NOTIFY, TAG_CTL].into_iter().enumerate() {
            if self.armed[i] {
                continue;
            }
            let fd = if i == 0 { &self.w.notify } else { &self.w.ctl };
            use std::os::fd::AsRawFd;
            let buf = std::ptr::addr_of_mut!(self.bufs[i]).cast::<u8>();
            let e = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf, 8)
                .build()
                .user_data(tag);
            // SAFETY: `buf` points into `self.bufs`, a boxed array that lives
            // (and stays put) as long as the ring; the eventfd stays open as
            // long as the worker.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                self.armed[i] = true;
            }
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    /// Pops and starts every available request; true if any completed at once.
    fn pop(&mut self, inner: &mut Inner) -> bool {
        let ram = self.w.ram.clone();
        let mem = &ram.mem;
        let mut interrupt = false;
        while let Some(slot) = self.free_slot() {
            let Some(chain) = inner.transport.queues[0].pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let segs: Vec<Seg> = chain
                .map(|d| Seg {
                    addr: d.addr().0,
                    len: d.len(),
                    write: d.is_write_only(),
                })
                .collect();
            let parsed = request::parse(&segs, self.w.cfg.limits, |a, b| {
                mem.read_slice(b, GuestAddress(a)).is_ok()
            });
            let req = match parsed {
                Ok(r) => r,
                Err(bad) => {
                    tracing::warn!("{}: bad request (head {head}): {bad}", self.w.name);
                    inner.errors += 1;
                    let len = match bad.status {
                        Some(s) => {
                            let st = if bad.unsupported {
                                VIRTIO_BLK_S_UNSUPP
                            } else {
                                VIRTIO_BLK_S_IOERR
                            };
                            u32::from(self.put_status(s, st as u8))
                        }
                        None => 0,
                    };
                    interrupt |= self.used(inner, head, len);
                    continue;
                }
            };
            match self.start(inner, slot, head, req) {
                Started::Submitted => inner.inflight += 1,
                Started::Held => {
                    inner.paused = true;
                    inner.halted = true;
                    break;
                }
                Started::Done(req, st, written) => {
                    if st != VIRTIO_BLK_S_OK {
                        inner.errors += 1;
                    }
                    let len = written + u32::from(self.put_status(req.status, st as u8));
                    interrupt |= self.used(inner, head, len);
                }
            }
        }
        interrupt
    }

    fn put_status(&self, at: u64, st: u8) -> bool {
        self.w.ram.mem.write_obj(st, GuestAddress(at)).is_ok()
    }

    fn used(&self, inner: &mut Inner, head: u16, len: u32) -> bool {
        let mem = &self.w.ram.mem;
        let q = &mut inner.transport.queues[0];
        if let Err(e) = q.add_used(mem, head, len) {
            tracing::error!("{}: used ring: {e}; the device fails", self.w.name);
            inner.transport.fail();
            return true;
        }
        q.needs_notification(mem).unwrap_or(true)
    }

    /// The byte range of `req` on the disk, if it lies inside it.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR)?;
        (off.checked_add(len)? <= self.w.disk.bytes).then_some(off)
    }

    fn start(&mut self, inner: &Inner, slot: usize, head: u16, req: Request) -> Started {
        let name = &self.w.name;
        let ioerr = |req, why: &str| {
            tracing::warn!("{name}: request refused: {why}");
            Started::Done(req, VIRTIO_BLK_S_IOERR, 0)
        };
        match req.kind {
            Kind::In | Kind::Out => {
                if req.kind == Kind::Out && self.w.disk.read_only {
                    return ioerr(req, "write to a read-only disk");
                }
                let Some(off) = self.range(req.sector, req.data_len) else {
                    let why = format!(
                        "{:?} of {} bytes at sector {} is beyond the disk's {} sectors",
                        req.kind,
                        req.data_len,
                        req.sector,
                        self.w.disk.sectors()
                    );
                    return ioerr(req, &why);
                };
                let Some(iov) = iovecs(&self.w.ram, &req.data) else {
                    return ioerr(req, "a data buffer is outside guest memory");
                };
                use std::os::fd::AsRawFd;
                let fd = types::Fd(self.w.disk.file.as_raw_fd());
                let e = if req.kind == Kind::In {
                    opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                        .offset(off)
                        .build()
                } else {
                    opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                        .offset(off)
                        .build()
                };
                self.submit(e, slot, head, inner.generation, req, iov)
            }
            Kind::Flush => {
                use std::os::fd::AsRawFd;
                let e = opcode::Fsync::new(types::Fd(self.w.disk.file.as_raw_fd()))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                self.submit(e, slot, head, inner.generation, req, Vec::new())
            }
            Kind::GetId => {
                let id = &self.w.cfg.id;
                let mut at = 0usize;
                for &(addr, len) in &req.data {
                    let n = (len as usize).min(id.len() - at);
                    if n == 0 {
                        break;
                    }
                    if self
                        .w
                        .ram
                        .mem
                        .write_slice(&id[at..at + n], GuestAddress(addr))
                        .is_err()
                    {
                        return ioerr(req, "GET_ID buffer outside guest memory");
                    }
                    at += n;
                }
                Started::Done(req, VIRTIO_BLK_S_OK, at as u32)
            }
            Kind::Discard | Kind::WriteZeroes => {
                if self.w.disk.read_only {
                    return ioerr(req, "discard or write-zeroes on a read-only disk");
                }
                let mut raw = vec![0u8; req.data_len as usize];
                let mut at = 0usize;
                for &(addr, len) in &req.data {
                    if self
                        .w
                        .ram
                        .mem
                        .read_slice(&mut raw[at..at + len as usize], GuestAddress(addr))
                        .is_err()
                    {
                        return ioerr(req, "range buffer outside guest memory");
                    }
                    at += len as usize;
                }
                for r in raw.chunks(RANGE_LEN as usize) {
                    let sector = u64::from_le_bytes(r[0..8].try_into().expect("8 bytes"));
                    let n = u64::from(u32::from_le_bytes(r[8..12].try_into().expect("4 bytes")));
                    let flags = u32::from_le_bytes(r[12..16].try_into().expect("4 bytes"));
                    // Discard has no flags; write-zeroes may ask to unmap (bit 0).
                    let allowed = if req.kind == Kind::Discard { 0 } else { 1 };
                    if flags & !allowed != 0 {
                        return Started::Done(req, VIRTIO_BLK_S_UNSUPP, 0);
                    }
                    let Some(off) = self.range(sector, n * SECTOR) else {
                        let why = format!(
                            "{:?} of {n} sectors at {sector} is beyond the disk",
                            req.kind
                        );
                        return ioerr(req, &why);
                    };
                    let punched = self.w.disk.punch(off, n * SECTOR);
                    self.w.disk.mark_written(off, n * SECTOR);
                    if let Err(e) = punched {
                        let why = format!(
                            "{name}: {:?} on {} failed: {e}",
                            req.kind,
                            self.w.disk.path.display()
                        );
                        if self.w.failover.report(&why) {
                            tracing::error!("{why}: handing the VM over to the shadow");
                            return Started::Held;
                        }
                        return ioerr(req, &why);
                    }
                }
                Started::Done(req, VIRTIO_BLK_S_OK, 0)
            }
        }
    }

    fn submit(
        &mut self,
        e: io_uring::squeue::Entry,
        slot: usize,
        head: u16,
        generation: u64,
        req: Request,
        iov: Vec<libc::iovec>,
    ) -> Started {
        let e = e.user_data(slot as u64 + FIRST_SLOT);
        // SAFETY: the iovec array is moved into `self.slots[slot]` below and
        // stays there (its heap buffer does not move) until this entry's
        // completion is reaped in `complete`; the guest memory it points to
        // is kept mapped by `self.w.ram`; the disk file by `self.w.disk`.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            // Cannot happen: one slot per free SQ entry. Answer rather than lose it.
            return Started::Done(req, VIRTIO_BLK_S_IOERR, 0);
        }
        self.slots[slot] = Some(Pending {
            head,
            generation,
            req,
            _iovecs: iov,
        });
        Started::Submitted
    }

    /// Completes slot `slot` with result `res`; true if the guest needs an interrupt.
    fn complete(&mut self, inner: &mut Inner, slot: usize, res: i32) -> bool {
        let Some(p) = self.slots.get_mut(slot).and_then(Option::take) else {
            tracing::error!("{}: completion for unknown slot {slot}", self.w.name);
            return false;
        };
        inner.inflight -= 1;
        // Marked whatever the result, and even for a device reset meanwhile:
        // the disk and guest memory hold what the kernel did, and the next
        // epoch must carry it.
        if p.req.kind == Kind::Out {
            self.w
                .disk
                .mark_written(p.req.sector * SECTOR, p.req.data_len);
        }
        if p.req.kind == Kind::In {
            // The kernel wrote guest memory behind vm-memory's back: record
            // the pages in the VMM's dirty bitmap.
            for &(addr, len) in &p.req.data {
                if let Ok(s) = self.w.ram.mem.get_slice(GuestAddress(addr), len as usize) {
                    s.bitmap().mark_dirty(0, len as usize);
                }
            }
        }
        if p.generation != inner.generation {
            return false; // the device was reset meanwhile: no used entry
        }
        let expect = if p.req.kind == Kind::Flush {
            0
        } else {
            p.req.data_len
        };
        let ok = res >= 0 && res as u64 == expect;
        if !ok {
            let why = if res < 0 {
                std::io::Error::from_raw_os_error(-res).to_string()
            } else {
                format!("short transfer of {res} of {expect} bytes")
            };
            let what = format!(
                "{}: {:?} at sector {} failed on {}: {why}",
                self.w.name,
                p.req.kind,
                p.req.sector,
                self.w.disk.path.display()
            );
            if self.w.failover.report(&what) {
                // A shadow holds a committed state without this request
                // completed: it will serve it on its own disk. The guest
                // never sees the error; the device stops here.
                tracing::error!("{what}: handing the VM over to the shadow");
                inner.paused = true;
                inner.halted = true;
                return false;
            }
            inner.errors += 1;
            tracing::error!("{what}: the guest gets IOERR (no shadow to hand over to)");
        }
        let written = if p.req.kind == Kind::In {
            p.req.data_len as u32
        } else {
            0
        };
        let st = if ok {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        };
        let len = written + u32::from(self.put_status(p.req.status, st as u8));
        self.used(inner, p.head, len)
    }
}

enum Started {
    Submitted,
    /// Never answered: the disk failed and the VM is handed over.
    Held,
    /// Answered at once: status and bytes written into the data buffers.
    Done(Request, u32, u32),
}
