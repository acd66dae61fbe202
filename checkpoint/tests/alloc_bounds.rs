//! Lengths read from a stream never drive allocation.
//!
//! This test binary installs a global allocator that records the largest
//! single allocation, so "refused without allocating" is measured rather
//! than assumed. The allocator needs `unsafe` (implementing `GlobalAlloc`);
//! it only forwards to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use checkpoint::{
    decode_records, CheckpointError, CheckpointReader, Fingerprint, Header, Limits, MachineConfig,
    SectionId,
};

struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Serializes the tests of this binary so measurements do not mix.
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the only extra work is an
// atomic update that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, which GlobalAlloc's
        // contract requires to be valid and non-zero-sized.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through `alloc` or
        // `realloc` above) with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr`/`layout` come from `System` as above; `new_size`
        // obeys the caller's GlobalAlloc::realloc contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Held for the whole of each test, so one test's setup (which may allocate
/// a lot) never overlaps another's measurement.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` and returns the largest single allocation made meanwhile.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    f();
    LARGEST.load(Ordering::Relaxed)
}

const MIB: usize = 1 << 20;

fn claim(len: u64, actual: usize) -> Vec<u8> {
    let mut b = Header::full(1, Fingerprint::from_bytes([0; 32]))
        .encode()
        .to_vec();
    b.extend_from_slice(&SectionId::Memory.as_u32().to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.resize(b.len() + actual, 0x55);
    b
}

fn next_err(bytes: &[u8], limits: &Limits) -> CheckpointError {
    let mut r = CheckpointReader::new(bytes, limits, None).unwrap();
    r.next_section().unwrap_err()
}

#[test]
fn section_claiming_2_pow_60_bytes_allocates_nothing_big() {
    let _serial = serial();
    let bytes = claim(1 << 60, 100);
    let mut err = None;
    let big = largest_allocation(|| err = Some(next_err(&bytes, &Limits::default())));
    assert!(matches!(
        err,
        Some(CheckpointError::SectionTooLarge { len, .. }) if len == 1 << 60
    ));
    assert!(big < 64 * 1024, "largest allocation {big} bytes");

    let unlimited = Limits {
        max_section_len: u64::MAX,
        max_sections: u32::MAX,
    };
    let big = largest_allocation(|| err = Some(next_err(&bytes, &unlimited)));
    assert!(matches!(
        err,
        Some(CheckpointError::Truncated { got: 100, .. })
    ));
    assert!(big <= 2 * MIB, "largest allocation {big} bytes");
}

#[test]
fn lying_length_within_limits_costs_only_the_bytes_present() {
    let _serial = serial();
    // Claims 60 MiB (allowed), delivers 10 bytes.
    let bytes = claim(60 * MIB as u64, 10);
    let mut err = None;
    let big = largest_allocation(|| err = Some(next_err(&bytes, &Limits::default())));
    assert!(matches!(
        err,
        Some(CheckpointError::Truncated { got: 10, .. })
    ));
    assert!(big <= 2 * MIB, "largest allocation {big} bytes");
}

#[test]
fn config_claiming_a_huge_vector_allocates_nothing_big() {
    let _serial = serial();
    // postcard: mem_regions length as a varint claiming 2^62 entries.
    let mut payload = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    payload.extend_from_slice(&[0; 16]);
    let mut res = None;
    let big = largest_allocation(|| res = Some(MachineConfig::decode(&payload)));
    assert!(matches!(res, Some(Err(CheckpointError::Decode(_)))));
    assert!(big <= 2 * MIB, "largest allocation {big} bytes");
}

#[test]
fn zstd_record_decodes_into_a_bounded_buffer() {
    let _serial = serial();
    // One page claimed, a frame of 64 MiB of ones supplied.
    let frame = zstd::bulk::compress(&vec![1u8; 64 * MIB], 3).unwrap();
    let mut rec = Vec::new();
    rec.extend_from_slice(&0u64.to_le_bytes());
    rec.extend_from_slice(&1u32.to_le_bytes());
    rec.push(2);
    rec.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    rec.extend_from_slice(&frame);
    let mut res = None;
    let big = largest_allocation(|| res = Some(decode_records(&rec, |_, _| Ok(()))));
    assert!(matches!(res, Some(Err(CheckpointError::BadRecord { .. }))));
    // The output buffer is one page, never the 64 MiB the frame holds
    // (zstd's context is allocated by C malloc and not counted here).
    assert!(big < 64 * 1024, "largest allocation {big} bytes");
}

#[test]
fn xor_runs_zstd_record_claiming_a_huge_length_allocates_nothing_big() {
    let _serial = serial();
    // One page, a claimed 1 GiB of entries, a frame of 64 MiB of zeros.
    let frame = zstd::bulk::compress(&vec![0u8; 64 * MIB], 3).unwrap();
    let mut rec = Vec::new();
    rec.extend_from_slice(&0u64.to_le_bytes());
    rec.extend_from_slice(&1u32.to_le_bytes());
    rec.push(7);
    rec.extend_from_slice(&(4 + frame.len() as u32).to_le_bytes());
    rec.extend_from_slice(&(1u32 << 30).to_le_bytes());
    rec.extend_from_slice(&frame);
    let mut res = None;
    let big = largest_allocation(|| {
        res = Some(checkpoint::pages::decode_records_with_deltas(
            &rec,
            |_, _| Ok(()),
            |_, _| Ok(()),
            |_, _| Ok(()),
        ))
    });
    let err = res.unwrap().unwrap_err().to_string();
    assert!(err.contains("more than 1 pages can have"), "{err}");
    assert!(big < 64 * 1024, "largest allocation {big} bytes");
}
