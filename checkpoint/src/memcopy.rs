//! Copies of pages and page runs that stay fast whatever the two
//! addresses' alignment.
//!
//! Why not `copy_from_slice` (libc's `memcpy`): from 2,112 bytes up,
//! glibc 2.36's `memcpy` on this CPU (AMD EPYC, Zen 3, with FSRM) uses
//! `rep movsb`, and `rep movsb` runs 5-10x slower when the destination and
//! the source differ in their offset within a cache line: a 4 KiB page
//! copied from guest memory into a buffer 16 bytes past a page boundary
//! (where `malloc` puts a large `Vec`) took 1.4-2.0 µs against 0.15-0.5 µs
//! when both are page-aligned (docs/performance.md, "Copies that do not
//! depend on alignment"). Every large copy on the epoch path has such a
//! pair: guest pages into the pause's batch, the batch into a container
//! after its header, a record's payload into guest memory. Aligning every
//! buffer would couple the format's layout to a CPU quirk; copying with
//! vector loads and stores, the destination aligned as glibc's own vector
//! path does, is as fast aligned or not. No maintained crate offers this
//! (the `memcpy` of `compiler_builtins` is the slower generic one), and
//! glibc's tunable (`glibc.cpu.x86_rep_movsb_threshold`) is process-wide
//! and read only at exec.
//!
//! Below 2 KiB, and on CPUs without AVX2, the copy is `copy_from_slice`.

/// Copies shorter than this go to `copy_from_slice`: glibc copies them with
/// vector moves already (its `rep movsb` threshold is 2,112 bytes here).
const SMALL: usize = 2048;

/// Copies `src` into `dst`, which must be as long (panics otherwise, as
/// `copy_from_slice` does).
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "memcopy: destination and source lengths differ"
    );
    // SAFETY: both slices are valid for `len` bytes (checked equal above)
    // and cannot overlap: `dst` is a unique borrow.
    unsafe { copy_raw(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
}

/// Appends `src` to `v`, as `v.extend_from_slice(src)`.
pub fn extend(v: &mut Vec<u8>, src: &[u8]) {
    v.reserve(src.len());
    let len = v.len();
    // SAFETY: `reserve` made room for `src.len()` more bytes past `len`;
    // `src` cannot overlap `v`'s buffer, which `v` borrows uniquely. The
    // bytes up to `len + src.len()` are initialised by the copy before
    // `set_len` exposes them.
    unsafe {
        copy_raw(v.as_mut_ptr().add(len), src.as_ptr(), src.len());
        v.set_len(len + src.len());
    }
}

/// A `Vec<u8>` that appends written bytes with [`extend`]: the sink for a
/// container built in memory (`CheckpointWriter<VecSink>`), whose section
/// payloads land after headers at any offset.
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<u8>);

impl std::io::Write for VecSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        extend(&mut self.0, buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        extend(&mut self.0, buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copies `len` bytes from `src` to `dst`, as
/// `std::ptr::copy_nonoverlapping` does.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and
/// the two ranges must not overlap. Neither needs any alignment.
pub unsafe fn copy_raw(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= SMALL && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the caller's contract, AVX2 checked just above, and
        // `len >= SMALL >= 32` as `copy_avx2` needs.
        unsafe { copy_avx2(dst, src, len) };
        return;
    }
    // SAFETY: the caller's contract is `copy_nonoverlapping`'s.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// The vector copy: the first 32 bytes unaligned, then 32-byte stores
/// aligned to the destination (loads unaligned), four per round, and the
/// last 32 bytes unaligned again (they may rewrite bytes already copied,
/// with the same values).
///
/// # Safety
/// As [`copy_raw`], with `len >= 32`, on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_store_si256, _mm256_storeu_si256};
    const V: usize = 32;
    debug_assert!(len >= V);
    let s = src.cast::<__m256i>();
    let d = dst.cast::<__m256i>();
    // SAFETY: the first and last 32 bytes of `src`, inside `len` (>= 32),
    // which the caller vouches for; loaded before any store.
    let (head, tail) = unsafe {
        (
            _mm256_loadu_si256(s),
            _mm256_loadu_si256(src.add(len - V).cast()),
        )
    };
    // SAFETY: the first 32 bytes of `dst`, inside `len`.
    unsafe { _mm256_storeu_si256(d, head) };
    // From here, `dst + i` is 32-byte aligned.
    let mut i = V - (dst as usize & (V - 1));
    while i + 4 * V <= len {
        // SAFETY: bytes `i .. i + 128` of both, inside `len` by the loop
        // condition; the stores are aligned (`dst + i` is, and so each
        // 32 bytes on).
        unsafe {
            let a = _mm256_loadu_si256(src.add(i).cast());
            let b = _mm256_loadu_si256(src.add(i + V).cast());
            let c = _mm256_loadu_si256(src.add(i + 2 * V).cast());
            let e = _mm256_loadu_si256(src.add(i + 3 * V).cast());
            _mm256_store_si256(dst.add(i).cast(), a);
            _mm256_store_si256(dst.add(i + V).cast(), b);
            _mm256_store_si256(dst.add(i + 2 * V).cast(), c);
            _mm256_store_si256(dst.add(i + 3 * V).cast(), e);
        }
        i += 4 * V;
    }
    while i + V <= len {
        // SAFETY: bytes `i .. i + 32` of both, inside `len`; aligned store.
        unsafe { _mm256_store_si256(dst.add(i).cast(), _mm256_loadu_si256(src.add(i).cast())) };
        i += V;
    }
    // SAFETY: the last 32 bytes of `dst`, inside `len`; `tail` was loaded
    // before any store, so this is right even where it overlaps bytes
    // stored since (the ranges do not overlap, so those are `src`'s too).
    unsafe { _mm256_storeu_si256(dst.add(len - V).cast(), tail) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every destination offset within a cache line and then some, at the
    /// lengths around the vector path's edges: the bytes copied are the
    /// source's, and not one byte around the destination changes.
    #[test]
    fn copies_exactly_at_every_offset_and_edge_length() {
        let src_buf = pattern(3 * 4096 + 256, 7);
        for len in [
            0,
            1,
            31,
            SMALL - 1,
            SMALL,
            SMALL + 1,
            SMALL + 31,
            SMALL + 32,
            SMALL + 127,
            SMALL + 128,
            4095,
            4096,
            4097,
            2 * 4096 + 96,
        ] {
            for d_off in 0..70 {
                for s_off in [0usize, 1, 16, 33, 64] {
                    let mut dst = vec![0xa5u8; len + 256];
                    let src = &src_buf[s_off..s_off + len];
                    copy(&mut dst[d_off..d_off + len], src);
                    assert_eq!(
                        &dst[d_off..d_off + len],
                        src,
                        "len {len} d {d_off} s {s_off}"
                    );
                    assert!(
                        dst[..d_off].iter().all(|&b| b == 0xa5),
                        "wrote before, len {len} d {d_off}"
                    );
                    assert!(
                        dst[d_off + len..].iter().all(|&b| b == 0xa5),
                        "wrote past the end, len {len} d {d_off}"
                    );
                }
            }
        }
    }

    #[test]
    fn extend_appends_like_extend_from_slice() {
        let src = pattern(9000, 3);
        let mut a = b"head".to_vec();
        let mut b = a.clone();
        extend(&mut a, &src);
        extend(&mut a, &src[..100]);
        b.extend_from_slice(&src);
        b.extend_from_slice(&src[..100]);
        assert_eq!(a, b);
    }

    #[test]
    fn vec_sink_appends_what_is_written() {
        use std::io::Write;
        let src = pattern(5000, 9);
        let mut s = VecSink(b"x".to_vec());
        s.write_all(&src).unwrap();
        assert_eq!(s.write(&src[..3000]).unwrap(), 3000);
        let mut want = b"x".to_vec();
        want.extend_from_slice(&src);
        want.extend_from_slice(&src[..3000]);
        assert_eq!(s.0, want);
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn unequal_lengths_panic() {
        copy(&mut [0u8; 4096], &[0u8; 4095]);
    }

    proptest! {
        #[test]
        fn matches_copy_from_slice(len in 0usize..20_000, d_off in 0usize..64, s_off in 0usize..64, seed: u8) {
            let src_buf = pattern(len + 64, seed);
            let src = &src_buf[s_off..s_off + len];
            let mut a = vec![0u8; len + 64];
            let mut b = a.clone();
            copy(&mut a[d_off..d_off + len], src);
            b[d_off..d_off + len].copy_from_slice(src);
            prop_assert_eq!(a, b);
        }
    }
}
