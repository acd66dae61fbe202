//! Guest memory: a memfd split into KVM memory slots, mapped through vm-memory.
//!
//! Layout: RAM starts at 0. Guests larger than 3 GiB get a hole from 3 GiB to
//! 4 GiB (where the LAPIC/IOAPIC and other MMIO live on PCs) and the rest of
//! their RAM above 4 GiB. One memfd backs all regions so a later process (or a
//! write-protecting tracker) can share the same pages.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use checkpoint::fingerprint::MemRegion;
use checkpoint::memcopy;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::error::{EngineError, Result};
use crate::sparse_bitmap::SparseBitmap;

/// Guest memory with a VMM-write bitmap (vm-memory marks pages the VMM writes).
pub type GuestMemory = vm_memory::GuestMemoryMmap<SparseBitmap>;

/// Page size used for dirty tracking and checkpoints.
pub const PAGE_SIZE: u64 = 4096;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 4 << 30;

/// The regions of guest RAM for a given size in bytes.
pub fn layout(mem_bytes: u64) -> Vec<MemRegion> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![MemRegion {
            guest_addr: 0,
            size: mem_bytes,
        }]
    } else {
        vec![
            MemRegion {
                guest_addr: 0,
                size: MMIO_HOLE_START,
            },
            MemRegion {
                guest_addr: MMIO_HOLE_END,
                size: mem_bytes - MMIO_HOLE_START,
            },
        ]
    }
}

/// A host view of one RAM region, for bulk page copies.
#[derive(Clone, Copy, Debug)]
pub struct HostRegion {
    /// Guest physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of the region in the memfd.
    pub file_off: u64,
    host: *mut u8,
}

// SAFETY: `host` points into a mapping owned by the `GuestMemory` that the
// owner of a `HostRegion` keeps alive; the pointer itself is freely sendable.
unsafe impl Send for HostRegion {}
// SAFETY: as above; concurrent access goes through volatile-style raw copies.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// Copies `len` bytes starting at region offset `off` into `dst`.
    pub fn read(&self, off: u64, dst: &mut [u8]) {
        assert!(off + dst.len() as u64 <= self.size, "read beyond region");
        // SAFETY: bounds checked above; the mapping outlives `self` (see the
        // Send impl); the guest may write concurrently only while running,
        // and callers copy pages only while vCPUs are paused or accept a torn
        // copy that will be re-sent because its dirty bit is set again.
        // `dst` is a unique borrow, so it cannot overlap the mapping.
        unsafe { memcopy::copy_raw(dst.as_mut_ptr(), self.host.add(off as usize), dst.len()) }
    }

    /// Copies `src` into the region at offset `off`.
    pub fn write(&self, off: u64, src: &[u8]) {
        assert!(off + src.len() as u64 <= self.size, "write beyond region");
        // SAFETY: bounds checked above; the mapping outlives `self`; `src`
        // does not overlap it (callers pass staged or decoded bytes, or
        // another memory's).
        unsafe { memcopy::copy_raw(self.host.add(off as usize), src.as_ptr(), src.len()) }
    }

    /// Writes `len` zero bytes at offset `off`.
    pub fn write_zeros(&self, off: u64, len: u64) {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.size),
            "zeroing beyond region"
        );
        // SAFETY: bounds checked above; the mapping outlives `self`.
        unsafe { std::ptr::write_bytes(self.host.add(off as usize), 0, len as usize) }
    }

    /// XORs `delta` into the region at offset `off`, in place.
    pub fn xor_in(&self, off: u64, delta: &[u8]) {
        assert!(off + delta.len() as u64 <= self.size, "xor beyond region");
        let mut words = delta.chunks_exact(8);
        let mut at = off as usize;
        for w in words.by_ref() {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            // SAFETY: `at + 8 <= off + delta.len()`, inside the region
            // (checked above), and the mapping outlives `self`. Raw,
            // unaligned reads and writes, as `read` and `write` do: no
            // reference to guest memory is formed.
            unsafe {
                let p = self.host.add(at).cast::<u64>();
                p.write_unaligned(p.read_unaligned() ^ u64::from_ne_bytes(b));
            }
            at += 8;
        }
        for &x in words.remainder() {
            // SAFETY: as above, one byte inside the region.
            unsafe {
                let p = self.host.add(at);
                p.write(p.read() ^ x);
            }
            at += 1;
        }
    }

    /// Asks the CPU to start loading the cache line at offset `off` (a
    /// hint: it reads nothing the program sees and never faults).
    pub fn prefetch(&self, off: u64) {
        if off >= self.size {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: PREFETCHT0 neither faults nor changes memory, and the
        // address is inside the mapping (checked above).
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.host.add(off as usize).cast::<i8>());
        }
    }

    /// A read-only view of the whole region (for bulk copies while paused).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `size` bytes long and lives as long as the
        // owning GuestMemory; see `read` on concurrent guest writes.
        unsafe { std::slice::from_raw_parts(self.host, self.size as usize) }
    }
}

/// Writes at least this long go to guest RAM with `pwrite` (see
/// [`Ram::write`]).
pub const PWRITE_MIN: usize = 64 << 10;

/// Zero ranges at least this long are punched out of the memfd (see
/// [`Ram::zero_range`]); shorter ones are written with zeros. A hole
/// costs a syscall, an unmap and a TLB flush (and KVM's notifier, when the
/// memory backs a VM): a single page of populated memory took 4.0 µs on
/// the development host with no VM, against 0.4 µs for writing its zeros
/// (`cargo run --release -p benches --example first_touch 256 3`), and
/// the zero pages of a running guest's epochs come one or a few at a time.
pub const PUNCH_MIN: u64 = 2 << 20;

/// Guest RAM: the memfd, its vm-memory mapping and a host view of each region.
pub struct Ram {
    /// vm-memory view (used by loaders and devices; it records VMM writes).
    pub mem: GuestMemory,
    /// The regions, in guest address order.
    pub regions: Vec<HostRegion>,
    /// Total RAM in bytes.
    pub bytes: u64,
    memfd: File,
}

impl Ram {
    /// Creates `bytes` of zeroed guest RAM backed by a memfd.
    pub fn new(bytes: u64) -> Result<Ram> {
        if bytes == 0 || !bytes.is_multiple_of(2 << 20) {
            return Err(EngineError::Config(format!(
                "memory size must be a non-zero multiple of 2 MiB, got {bytes} bytes"
            )));
        }
        let name = c"hotspare-guest-ram";
        // SAFETY: memfd_create with a valid NUL-terminated name; the returned
        // fd is checked and owned below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(EngineError::Memory(format!(
                "memfd_create: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: fd is a fresh, valid descriptor we exclusively own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(bytes)
            .map_err(|e| EngineError::Memory(format!("sizing memfd to {bytes} bytes: {e}")))?;
        let mut regions = Vec::new();
        let mut file_off = 0u64;
        for r in layout(bytes) {
            let fo = FileOffset::new(
                file.try_clone()
                    .map_err(|e| EngineError::Memory(format!("dup memfd: {e}")))?,
                file_off,
            );
            let mmap = MmapRegionBuilder::new_with_bitmap(
                r.size as usize,
                SparseBitmap::new(r.size as usize, PAGE_SIZE as usize),
            )
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| EngineError::Memory(format!("mmap {} bytes: {e}", r.size)))?;
            let region = GuestRegionMmap::new(mmap, GuestAddress(r.guest_addr))
                .ok_or_else(|| EngineError::Memory("region overflows address space".into()))?;
            regions.push(region);
            file_off += r.size;
        }
        let mem = GuestMemory::from_regions(regions)
            .map_err(|e| EngineError::Memory(format!("building guest memory: {e}")))?;
        let mut off = 0;
        let regions = mem
            .iter()
            .map(|r| {
                let h = HostRegion {
                    gpa: r.start_addr().0,
                    size: r.len(),
                    file_off: off,
                    host: r.as_ptr(),
                };
                off += r.len();
                h
            })
            .collect();
        Ok(Ram {
            mem,
            regions,
            bytes,
            memfd: file,
        })
    }

    /// Allocates and maps every page of guest memory now
    /// (`MADV_POPULATE_WRITE`), so later writes neither allocate nor fault.
    /// A standby reserving memory for the VM it will shadow does this
    /// before any primary connects (`hotspare standby --reserve-mib`): on
    /// the development host a page first touched costs 5-20 µs, which a
    /// live copy would otherwise pay per page (docs/performance.md, "The
    /// live copy"). Needs Linux 5.14.
    pub fn populate(&self) -> Result<()> {
        for r in &self.regions {
            // SAFETY: `host` maps `size` bytes of our memfd, read-write, for
            // as long as `self` lives; populating writes no data (it only
            // allocates zeroed pages the mapping already refers to).
            let rc = unsafe {
                libc::madvise(
                    r.host as *mut libc::c_void,
                    r.size as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(EngineError::Memory(format!(
                    "populating {} MiB of guest memory at {:#x} (MADV_POPULATE_WRITE, Linux 5.14 or later): {e}",
                    r.size >> 20,
                    r.gpa
                )));
            }
        }
        Ok(())
    }

    /// The size of guest memory in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The layout as checkpoint metadata.
    pub fn layout(&self) -> Vec<MemRegion> {
        self.regions
            .iter()
            .map(|r| MemRegion {
                guest_addr: r.gpa,
                size: r.size,
            })
            .collect()
    }

    /// Registers every region as a KVM memory slot (slot i = region i).
    pub fn register(&self, vm: &VmFd, log_dirty: bool) -> Result<()> {
        for (slot, r) in self.regions.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if log_dirty {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: r.gpa,
                memory_size: r.size,
                userspace_addr: r.host as u64,
            };
            // SAFETY: the mapping is valid for `size` bytes and lives as long
            // as `self`, which the VM owner keeps alive as long as the VM.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(EngineError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Finds the region holding `gpa` and the offset in it.
    pub fn locate(&self, gpa: u64) -> Option<(&HostRegion, u64)> {
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa && gpa < r.gpa + r.size)
            .map(|r| (r, gpa - r.gpa))
    }

    /// Page ranges of region `i` that were ever written (memfd data, not
    /// holes). Memory never touched reads as zero and costs nothing to send.
    pub fn allocated_pages(&self, i: usize) -> Vec<std::ops::Range<usize>> {
        use std::os::fd::AsRawFd;
        let r = &self.regions[i];
        let fd = self.memfd.as_raw_fd();
        let (start, end) = (r.file_off as i64, (r.file_off + r.size) as i64);
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            // SAFETY: lseek on our own memfd; no memory is touched.
            let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
            if data < 0 || data >= end {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) }.min(end);
            if hole <= data {
                // No hole support: treat the rest as data.
                out.push(
                    ((data - start) as usize / PAGE_SIZE as usize)..(r.size / PAGE_SIZE) as usize,
                );
                break;
            }
            let first = (data - start) as usize / PAGE_SIZE as usize;
            let last = ((hole - start) as usize).div_ceil(PAGE_SIZE as usize);
            out.push(first..last);
            pos = hole;
        }
        out
    }

    /// Writes `data` at `gpa`, inside one region. Runs of
    /// [`PWRITE_MIN`] bytes or more go through the memfd (`pwrite`): the
    /// kernel allocates untouched pages without a page fault each, which
    /// is most of the cost of a shadow's first full sync; shorter ones are
    /// copied through the mapping (no system call).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let (r, off) = self.span_or_err(gpa, data.len() as u64, "write")?;
        if data.len() >= PWRITE_MIN {
            self.pwrite(r, off, data)
                .map_err(EngineError::io(format!("writing guest memory at {gpa:#x}")))
        } else {
            r.write(off, data);
            Ok(())
        }
    }

    /// Writes `data` at offset `off` of region `r` through the memfd
    /// (`pwrite`): no page fault per page of memory not yet allocated.
    fn pwrite(&self, r: &HostRegion, off: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.memfd.write_all_at(data, r.file_off + off)
    }

    /// XORs `delta` into the `delta.len()` bytes at `gpa` (inside one
    /// region), in place.
    pub fn xor(&self, gpa: u64, delta: &[u8]) -> Result<()> {
        let (r, off) = self.span_or_err(gpa, delta.len() as u64, "delta")?;
        r.xor_in(off, delta);
        Ok(())
    }

    /// Fills guest RAM from `src`, page by page from the start of RAM in
    /// region order (the MMIO hole skipped), as a file backing a QEMU
    /// guest's RAM would: the peer harness's `--prefill mixed`. All-zero
    /// pages are not written, so they stay unallocated and read as zero.
    /// `what` names the source in errors. Returns the pages written.
    ///
    /// Refuses a source that is not a whole number of pages or is longer
    /// than RAM, before writing past the end; a read error stops it.
    pub fn prefill_from(&self, src: &mut impl std::io::Read, what: &str) -> Result<u64> {
        const CHUNK: usize = 1 << 20;
        const PAGE_BYTES: usize = 4096;
        let total: u64 = self.regions.iter().map(|r| r.size).sum();
        let mut buf = vec![0u8; CHUNK];
        let (mut at, mut written) = (0u64, 0u64);
        loop {
            // Fill the chunk (a short read is not the end).
            let mut got = 0;
            while got < CHUNK {
                match src.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(EngineError::Io {
                            context: format!("reading the prefill {what}"),
                            source: e,
                        })
                    }
                }
            }
            if got == 0 {
                return Ok(written);
            }
            if got % PAGE_BYTES != 0 {
                return Err(EngineError::Config(format!(
                    "the prefill {what} is not a whole number of 4 KiB pages ({} bytes)",
                    at + got as u64
                )));
            }
            if at + got as u64 > total {
                return Err(EngineError::Config(format!(
                    "the prefill {what} is longer than the guest's {total} bytes of RAM"
                )));
            }
            // Runs of non-zero pages within one region go to the memfd with
            // one `pwrite` each, not through the mapping with a page fault
            // per page (a 1 GiB prefill took 7.25 s that way in one run,
            // 0.65-3.7 s with `pwrite`). The run being gathered: its
            // region, offset there, and start in `buf`.
            let mut run: Option<(&HostRegion, u64, usize)> = None;
            for (i, page) in buf[..got].chunks_exact(PAGE_BYTES).enumerate() {
                let b = i * PAGE_BYTES;
                let zero = checkpoint::pages::is_zero(page);
                // A run ends at a zero page or at the end of its region.
                let full = run.is_some_and(|(r, off, start)| off + (b - start) as u64 == r.size);
                if zero || full {
                    if let Some((r, off, start)) = run.take() {
                        self.prefill_run(r, off, &buf[start..b], what)?;
                    }
                }
                if !zero {
                    if run.is_none() {
                        let (r, off) = self.linear(at + b as u64);
                        run = Some((r, off, b));
                    }
                    written += 1;
                }
            }
            if let Some((r, off, start)) = run.take() {
                self.prefill_run(r, off, &buf[start..got], what)?;
            }
            at += got as u64;
        }
    }

    /// Writes one run of a prefill at offset `off` of region `r`.
    fn prefill_run(&self, r: &HostRegion, off: u64, data: &[u8], what: &str) -> Result<()> {
        self.pwrite(r, off, data).map_err(EngineError::io(format!(
            "writing the prefill {what} into guest memory at {:#x}",
            r.gpa + off
        )))
    }

    /// The region and offset of byte `at` of RAM counted in region order.
    fn linear(&self, mut at: u64) -> (&HostRegion, u64) {
        for r in &self.regions {
            if at < r.size {
                return (r, at);
            }
            at -= r.size;
        }
        unreachable!("prefill_from checks the length against RAM first")
    }

    /// Asks the CPU to start loading the cache line at `gpa`, which is
    /// about to be read (a hint; nothing happens outside guest memory).
    pub fn prefetch(&self, gpa: u64) {
        if let Some((r, off)) = self.locate(gpa) {
            r.prefetch(off);
        }
    }

    /// The region holding the `len` bytes at `gpa` and their offset in it,
    /// when they all lie inside one region.
    pub fn span(&self, gpa: u64, len: u64) -> Option<(&HostRegion, u64)> {
        self.locate(gpa)
            .filter(|(r, off)| off.checked_add(len).is_some_and(|e| e <= r.size))
    }

    fn span_or_err(&self, gpa: u64, len: u64, what: &str) -> Result<(&HostRegion, u64)> {
        self.span(gpa, len).ok_or_else(|| {
            EngineError::Memory(format!(
                "{what} of {len} bytes at {gpa:#x} is not inside one memory region"
            ))
        })
    }

    /// Makes `len` bytes at `gpa` zero: a range of [`PUNCH_MIN`] or more
    /// by dropping it from the memfd (punching a hole), which frees the
    /// memory instead of writing zeros; a shorter one by writing zeros.
    pub fn zero_range(&self, gpa: u64, len: u64) -> Result<()> {
        self.zero_by(gpa, len, PUNCH_MIN)
    }

    /// [`Ram::zero_range`] with holes punched from `punch_min` bytes on
    /// (for the benchmark that compares the two ways).
    pub fn zero_by(&self, gpa: u64, len: u64, punch_min: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let (r, off) = self.locate(gpa).ok_or_else(|| {
            EngineError::Memory(format!("zero range at {gpa:#x} outside guest memory"))
        })?;
        if off + len > r.size {
            return Err(EngineError::Memory(format!(
                "zero range of {len} bytes at {gpa:#x} crosses the end of its region"
            )));
        }
        if len < punch_min {
            r.write_zeros(off, len);
            return Ok(());
        }
        // SAFETY: fallocate on our own memfd within the region's file range;
        // the mapping stays valid and reads the punched range as zeros.
        let rc = unsafe {
            libc::fallocate(
                self.memfd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (r.file_off + off) as i64,
                len as i64,
            )
        };
        if rc != 0 {
            // No hole punching here: write the zeros instead.
            r.write_zeros(off, len);
        }
        Ok(())
    }

    /// Takes and clears the bitmap of pages written by the VMM through vm-memory.
    pub fn take_vmm_dirty(&self) -> Vec<Vec<u64>> {
        self.mem
            .iter()
            .map(|r| r.get_mmap().bitmap().take())
            .collect()
    }

    /// Takes and clears the pages of region `slot` written by the VMM,
    /// ORing them into `out` (one bit per page, `u64` words); visits only
    /// the words the VMM wrote to (see [`SparseBitmap`]).
    ///
    /// # Panics
    /// If `slot` is not a region, or `out` is not its bitmap's length.
    pub fn take_vmm_dirty_into(&self, slot: usize, out: &mut [u64]) {
        let r = self.mem.iter().nth(slot).expect("a region of this memory");
        r.get_mmap().bitmap().take_into(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delta XORs in at any offset and length, words and tail bytes
    /// alike, and touches nothing around it; a prefetch anywhere (even
    /// past the end) changes nothing.
    #[test]
    fn a_delta_xors_in_place_at_any_offset_and_length() {
        let ram = Ram::new(2 << 20).unwrap();
        let before: Vec<u8> = (0..64u32).map(|i| (i * 7) as u8).collect();
        ram.write(0x1000, &before).unwrap();
        let delta: Vec<u8> = (0..19u8).map(|i| 0x80 | i).collect();
        ram.xor(0x1000 + 5, &delta).unwrap();
        ram.prefetch(0x1000);
        ram.prefetch(u64::MAX);
        let mut after = vec![0u8; 64];
        ram.regions[0].read(0x1000, &mut after);
        for (i, (&a, &b)) in after.iter().zip(&before).enumerate() {
            let want = if (5..24).contains(&i) {
                b ^ delta[i - 5]
            } else {
                b
            };
            assert_eq!(a, want, "byte {i}");
        }
        let e = ram.xor((2 << 20) - 8, &delta).unwrap_err().to_string();
        assert!(e.contains("not inside one memory region"), "{e}");
    }

    /// Populating allocates every page of every region (the memfd then
    /// holds data everywhere) and leaves guest memory zero.
    #[test]
    fn populating_allocates_all_of_guest_memory_as_zeros() {
        let ram = Ram::new(4 << 20).unwrap();
        assert_eq!(ram.bytes(), 4 << 20);
        assert!(ram.allocated_pages(0).is_empty());
        ram.populate().unwrap();
        let pages = (4 << 20) / PAGE_SIZE as usize;
        assert_eq!(ram.allocated_pages(0), vec![0..pages]);
        assert!(ram.regions[0].as_slice().iter().all(|&b| b == 0));
    }

    /// A prefill lands page by page from address 0, leaves zero pages
    /// unallocated, and a source of a partial page or longer than RAM is
    /// refused by name.
    #[test]
    fn a_prefill_fills_ram_in_order_and_bad_sources_are_refused() {
        let ram = Ram::new(4 << 20).unwrap();
        let mut src = vec![0u8; 3 << 20];
        src[0] = 1;
        src[(2 << 20) + 4095] = 2;
        let written = ram.prefill_from(&mut src.as_slice(), "file t").unwrap();
        assert_eq!(written, 2);
        let (mut a, mut b) = ([0u8; 1], [0u8; 1]);
        ram.regions[0].read(0, &mut a);
        ram.regions[0].read((2 << 20) + 4095, &mut b);
        assert_eq!((a[0], b[0]), (1, 2));
        // Only the two written pages are allocated.
        let pages: usize = ram.allocated_pages(0).iter().map(|r| r.len()).sum();
        assert_eq!(pages, 2);
        let e = ram
            .prefill_from(&mut [1u8; 5000].as_slice(), "file p")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("file p is not a whole number of 4 KiB pages"),
            "{e}"
        );
        let long = vec![0u8; 5 << 20];
        let e = ram
            .prefill_from(&mut long.as_slice(), "file l")
            .unwrap_err();
        assert!(
            e.to_string().contains("file l is longer than the guest's"),
            "{e}"
        );
    }
}
