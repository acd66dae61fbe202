//! Capturing one epoch of a paused VM: vCPU, VM and device state plus the
//! contents of the pages dirtied since the previous capture.
//!
//! Dirty pages come from KVM's dirty log (guest writes) merged with
//! vm-memory's bitmap (writes the VMM made itself), and with any bits an
//! earlier capture put back because it never became durable. `KVM_GET_DIRTY_LOG`
//! clears KVM's log as it reads it, so the harvested bits live in a
//! [`Harvest`] until the epoch is durable (`commit`) or is put back.

use std::time::{Duration, Instant};

use checkpoint::dirty::{DirtyBitmap, DirtyLedger, Harvest};
use checkpoint::kvm_state::{VcpuState, VmState};
use checkpoint::DeviceRecord;

use crate::devices::virtio::block::disk::BLOCK;
use crate::error::{EngineError, Result};
use crate::memory::PAGE_SIZE;
use crate::snapshot::EpochState;
use crate::vm::{PauseGuard, Vm};

/// Copied page contents: runs of consecutive pages and their bytes.
#[derive(Clone, Debug, Default)]
pub struct PageBatch {
    /// (guest physical address, number of pages), in address order.
    pub runs: Vec<(u64, u32)>,
    /// The pages' bytes, concatenated in run order.
    pub data: Vec<u8>,
    /// (guest physical address, number of pages) known to be zero (memory
    /// never written), sent as markers without copying or scanning.
    pub zero_runs: Vec<(u64, u64)>,
}

impl PageBatch {
    /// Number of pages in the batch.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| u64::from(r.1)).sum()
    }

    /// Iterates (gpa, bytes) over the runs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut off = 0usize;
        self.runs.iter().map(move |&(gpa, n)| {
            let len = n as usize * PAGE_SIZE as usize;
            let s = &self.data[off..off + len];
            off += len;
            (gpa, s)
        })
    }
}

/// Per-phase pause timings of one capture.
#[derive(Clone, Copy, Debug, Default)]
pub struct PauseTimes {
    /// Time to stop all vCPUs.
    pub stop: Duration,
    /// Quiescing the devices (draining disk requests in flight).
    pub quiesce: Duration,
    /// Capturing vCPU, VM and device state.
    pub state: Duration,
    /// Harvesting the dirty logs.
    pub harvest: Duration,
    /// Copying dirty pages.
    pub copy: Duration,
}

/// Everything captured at one epoch boundary.
#[derive(Clone, Debug)]
pub struct Epoch {
    /// True for a full capture (every page), false for an incremental one.
    pub full: bool,
    /// vCPU states.
    pub vcpus: Vec<VcpuState>,
    /// In-kernel irqchip, PIT, clock.
    pub vm: VmState,
    /// Every emulated device's record.
    pub devices: Vec<DeviceRecord>,
    /// Console bytes emitted up to this point.
    pub console_pos: u64,
    /// The console bytes emitted during this epoch: (start position, bytes).
    /// A shadow taking over re-emits them (the primary may not have).
    pub output: (u64, Vec<u8>),
    /// Per NIC (in device order): the frames transmitted during this
    /// epoch, numbered. A shadow taking over sends them (the primary may
    /// not have).
    pub net: Vec<crate::devices::virtio::net::EpochFrames>,
    /// Page contents.
    pub pages: PageBatch,
    /// Per disk (in device order): the blocks written since the previous
    /// capture, as read at this one. `runs` and `zero_runs` hold byte
    /// offsets in the disk and counts of 4 KiB blocks.
    pub disks: Vec<PageBatch>,
    /// Pause timings.
    pub times: PauseTimes,
}

/// Reads and clears KVM's dirty log and the VMM-write bitmap of every slot.
/// On a failure it still returns every bit it took, with the error, so the
/// caller can put them back: `KVM_GET_DIRTY_LOG` cleared them in KVM.
fn fresh_dirty(vm: &Vm) -> Result<(Vec<DirtyBitmap>, Option<EngineError>)> {
    let mut out = Vec::with_capacity(vm.ram.regions.len() + vm.disks.len());
    let mut err = None;
    for (slot, r) in vm.ram.regions.iter().enumerate() {
        let npages = (r.size / PAGE_SIZE) as usize;
        // KVM's log (guest writes) first, then the VMM's own writes ORed
        // into it: one bitmap, no second pass over it.
        let mut words = Vec::new();
        if vm.log_dirty && err.is_none() {
            match vm.fd.get_dirty_log(slot as u32, r.size as usize) {
                Ok(w) => words = w,
                Err(e) => err = Some(EngineError::kvm("KVM_GET_DIRTY_LOG")(e)),
            }
        }
        let need = npages.div_ceil(64);
        if words.is_empty() {
            words = vec![0; need];
        } else if words.len() != need {
            err.get_or_insert(EngineError::Memory(format!(
                "KVM_GET_DIRTY_LOG of slot {slot} gave {} words for {npages} pages",
                words.len()
            )));
            words.resize(need, 0);
        }
        vm.ram.take_vmm_dirty_into(slot, &mut words);
        out.push(DirtyBitmap::from_words(words, npages)?);
    }
    // Then one region per disk: the blocks the device wrote.
    for d in &vm.disks {
        out.push(DirtyBitmap::from_words(d.take_written(), d.blocks())?);
    }
    Ok((out, err))
}

impl Epoch {
    /// The non-memory part.
    pub fn state(&self) -> EpochState {
        EpochState {
            vcpus: self.vcpus.clone(),
            vm: self.vm.clone(),
            devices: self.devices.clone(),
            console_pos: self.console_pos,
            output: self.output.1.clone(),
        }
    }
}

/// Captures epoch `seq` from a paused VM: its state, its dirty pages, and
/// the seal of every device's held output as `seq`'s. On success the
/// returned [`Harvest`] must be committed (once the epoch is durable) or
/// put back.
pub fn capture(
    guard: &PauseGuard<'_>,
    ledger: &mut DirtyLedger,
    full: bool,
    seq: u64,
) -> Result<(Epoch, Harvest)> {
    capture_into(guard, ledger, full, seq, Vec::new())
}

/// [`capture`] copying the pages into `buf` (a recycled buffer: its pages
/// are already faulted in, so the copy inside the pause is a plain memcpy).
pub fn capture_into(
    guard: &PauseGuard<'_>,
    ledger: &mut DirtyLedger,
    full: bool,
    seq: u64,
    buf: Vec<u8>,
) -> Result<(Epoch, Harvest)> {
    let (stop, quiesce) = guard.stop_and_quiesce();
    let t = Instant::now();
    let vcpus = guard.capture_vcpus()?;
    let vmstate = guard.capture_vm()?;
    let devices = guard.capture_devices();
    let state_t = t.elapsed();

    let t = Instant::now();
    let ram = &guard.vm().ram;
    let (mut fresh, err) = fresh_dirty(guard.vm())?;
    if let Some(e) = err {
        let h = ledger.harvest(fresh)?;
        ledger.put_back(h)?;
        return Err(e);
    }
    let (zero_runs, disk_zero) = if full {
        (
            mark_all(&mut fresh, ram),
            mark_all_disks(&mut fresh, guard.vm()),
        )
    } else {
        (Vec::new(), vec![Vec::new(); guard.vm().disks.len()])
    };
    let harvest = ledger.harvest(fresh)?;
    let harvest_t = t.elapsed();

    let t = Instant::now();
    let mut pages = copy_pages(&harvest, ram, buf);
    pages.zero_runs = zero_runs;
    // The device is drained: the disk holds exactly what goes with memory.
    let disks = match copy_blocks(&harvest, guard.vm(), disk_zero) {
        Ok(d) => d,
        Err(e) => {
            ledger.put_back(harvest)?;
            // A disk that cannot be read is a failing disk: hand the VM over
            // if a shadow holds a committed state (the replicator checks).
            guard.vm().io_failover.report(&e.to_string());
            return Err(e);
        }
    };
    let copy_t = t.elapsed();
    // Last, once nothing can fail: the epoch's output, and the seal that
    // ties what was emitted so far to this epoch (a failed capture leaves
    // both for the next one).
    let (console_pos, output) = {
        let mut g = guard
            .vm()
            .devices
            .console()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (g.position(), g.take_epoch_output())
    };
    let net = guard
        .vm()
        .nets
        .iter()
        .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).take_epoch())
        .collect();
    guard.vm().devices.seal_outputs(seq);
    Ok((
        Epoch {
            full,
            vcpus,
            vm: vmstate,
            devices,
            console_pos,
            output,
            net,
            pages,
            disks,
            times: PauseTimes {
                stop,
                quiesce,
                state: state_t,
                harvest: harvest_t,
                copy: copy_t,
            },
        },
        harvest,
    ))
}

/// What a joining spare's live copy reads: every page and disk block ever
/// written, and the never-written ranges as zero markers. Touches neither
/// the dirty ledger nor KVM's dirty log: a page written after this plan is
/// made is dirty in the next epoch, which the joiner receives after its copy.
pub fn live_copy_plan(vm: &Vm) -> Result<PrecopyRound> {
    let mut fresh = Vec::with_capacity(vm.ram.regions.len() + vm.disks.len());
    for r in &vm.ram.regions {
        fresh.push(DirtyBitmap::new((r.size / PAGE_SIZE) as usize));
    }
    for d in &vm.disks {
        fresh.push(DirtyBitmap::new(d.blocks()));
    }
    let zero_runs = mark_all(&mut fresh, &vm.ram);
    let disk_zero = mark_all_disks(&mut fresh, vm);
    let nmem = vm.ram.regions.len();
    let runs = fresh[..nmem]
        .iter()
        .zip(&vm.ram.regions)
        .flat_map(|(bm, r)| {
            bm.ranges()
                .map(move |range| (r.gpa + range.start as u64 * PAGE_SIZE, range.len() as u64))
        })
        .collect();
    let disks = fresh[nmem..]
        .iter()
        .zip(disk_zero)
        .map(|(bm, zero_runs)| DiskRound {
            runs: bm
                .ranges()
                .map(|r| (r.start as u64 * BLOCK, r.len() as u64))
                .collect(),
            zero_runs,
        })
        .collect();
    Ok(PrecopyRound {
        runs,
        zero_runs,
        disks,
    })
}

/// One disk's part of a pre-copy round: (byte offset, blocks) of the
/// blocks to read from the running disk, and of the holes.
#[derive(Clone, Debug, Default)]
pub struct DiskRound {
    /// Dirty block runs.
    pub runs: Vec<(u64, u64)>,
    /// Holes (never written): sent as zero markers.
    pub zero_runs: Vec<(u64, u64)>,
}

/// Marks every allocated block of every disk for a full capture, and
/// returns per disk the holes, which read as zeros and go out as markers.
fn mark_all_disks(fresh: &mut [DirtyBitmap], vm: &Vm) -> Vec<Vec<(u64, u64)>> {
    let nmem = vm.ram.regions.len();
    vm.disks
        .iter()
        .zip(&mut fresh[nmem..])
        .map(|(d, bm)| {
            let mut holes = Vec::new();
            mark_allocated(bm, d.allocated_blocks(), d.blocks(), 0, &mut holes);
            holes
        })
        .collect()
}

// Disk blocks and memory pages are the same 4 KiB unit: one dirty-bitmap
// bit, one page record.
const _: () = assert!(BLOCK == PAGE_SIZE);

/// Marks the `allocated` ranges of 4 KiB units in `bm` and appends the
/// gaps among the `units` (never-written memory, disk holes) to `zero` as
/// (address of the unit at `base`, units).
fn mark_allocated(
    bm: &mut DirtyBitmap,
    allocated: Vec<std::ops::Range<usize>>,
    units: usize,
    base: u64,
    zero: &mut Vec<(u64, u64)>,
) {
    let mut next = 0usize;
    for range in allocated {
        if range.start > next {
            zero.push((base + next as u64 * PAGE_SIZE, (range.start - next) as u64));
        }
        bm.set_range(range.clone());
        next = range.end;
    }
    if next < units {
        zero.push((base + next as u64 * PAGE_SIZE, (units - next) as u64));
    }
}

/// Reads the blocks named by the disk regions of `harvest` from the disks.
fn copy_blocks(
    harvest: &Harvest,
    vm: &Vm,
    zero_runs: Vec<Vec<(u64, u64)>>,
) -> Result<Vec<PageBatch>> {
    let nmem = vm.ram.regions.len();
    let mut out = Vec::with_capacity(vm.disks.len());
    for ((bm, d), zero_runs) in harvest.regions()[nmem..]
        .iter()
        .zip(&vm.disks)
        .zip(zero_runs)
    {
        let mut b = PageBatch {
            zero_runs,
            ..PageBatch::default()
        };
        for r in bm.ranges() {
            d.read_blocks(r.start as u64, r.len() as u64, &mut b.data)
                .map_err(EngineError::io(format!(
                    "reading written blocks of {} for the epoch",
                    d.path.display()
                )))?;
            b.runs.push((r.start as u64 * BLOCK, r.len() as u32));
        }
        out.push(b);
    }
    Ok(out)
}

/// What a live copy sends: the pages are read from the running guest while
/// they are encoded (a page written meanwhile is dirty again and goes out in
/// a later epoch); the same for disk blocks.
#[derive(Clone, Debug, Default)]
pub struct PrecopyRound {
    /// (guest physical address, pages) of the dirty runs, in address order.
    pub runs: Vec<(u64, u64)>,
    /// Runs known to be zero (never written), sent as markers.
    pub zero_runs: Vec<(u64, u64)>,
    /// Per disk.
    pub disks: Vec<DiskRound>,
}

impl PrecopyRound {
    /// Number of dirty pages.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

/// How many runs ahead [`copy_pages`] prefetches.
const COPY_PREFETCH_AHEAD: usize = 4;

/// Copies the pages named by `harvest` out of guest memory, one run per
/// range of consecutive dirty pages.
fn copy_pages(harvest: &Harvest, ram: &crate::memory::Ram, mut buf: Vec<u8>) -> PageBatch {
    buf.clear();
    let mut pages = PageBatch {
        data: buf,
        ..PageBatch::default()
    };
    pages.data.reserve(harvest.count() * PAGE_SIZE as usize);
    // Scattered dirty pages are cold in this CPU's caches and TLB: start
    // loading the first line of the run a few runs ahead, so its TLB walk
    // and first miss overlap the copies before it. One pass over the
    // bitmap: the runs between the one copied and the one prefetched wait
    // in `window`.
    let mut runs = dirty_runs(harvest, ram);
    let mut window: std::collections::VecDeque<_> =
        runs.by_ref().take(COPY_PREFETCH_AHEAD).collect();
    while let Some((r, range)) = window.pop_front() {
        if let Some((nr, next)) = runs.next() {
            nr.prefetch(next.start as u64 * PAGE_SIZE);
            window.push_back((nr, next));
        }
        let off = range.start * PAGE_SIZE as usize;
        let len = range.len() * PAGE_SIZE as usize;
        checkpoint::memcopy::extend(&mut pages.data, &r.as_slice()[off..off + len]);
        pages.runs.push((r.gpa + off as u64, range.len() as u32));
    }
    pages
}

/// The runs of consecutive pages named by `harvest`: each run's region and
/// its page range in that region, in address order.
fn dirty_runs<'a>(
    harvest: &'a Harvest,
    ram: &'a crate::memory::Ram,
) -> impl Iterator<Item = (&'a crate::memory::HostRegion, std::ops::Range<usize>)> + 'a {
    harvest
        .regions()
        .iter()
        .zip(&ram.regions)
        .flat_map(|(bm, r)| bm.ranges().map(move |range| (r, range)))
}

/// Marks every page that was ever written (memfd data) for a full capture
/// and returns the never-written ranges, which are zero and go out as markers.
fn mark_all(fresh: &mut [DirtyBitmap], ram: &crate::memory::Ram) -> Vec<(u64, u64)> {
    let mut zero_runs = Vec::new();
    for (i, (bm, r)) in fresh.iter_mut().zip(&ram.regions).enumerate() {
        let npages = (r.size / PAGE_SIZE) as usize;
        mark_allocated(bm, ram.allocated_pages(i), npages, r.gpa, &mut zero_runs);
    }
    zero_runs
}
