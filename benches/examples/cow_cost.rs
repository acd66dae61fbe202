//! Would copy-before-write shorten the pause? Measures, on this host, what
//! each design puts inside the pause for the same dirty pages:
//!
//! - **copy** (what the engine does): memcpy every dirty page into a
//!   reused buffer;
//! - **write-protect** (copy-before-write with userfaultfd): one
//!   `UFFDIO_WRITEPROTECT` per run of consecutive dirty pages, so the
//!   guest's next write to a page faults and the page can be copied after
//!   the resume. Only the protect call is timed: it is the part that must
//!   stay in the pause. The un-protect and copy after the resume, and the
//!   KVM MMU-notifier work that the protect triggers in a real VM, are
//!   *not* timed, so this is a lower bound for copy-before-write.
//!
//! Both run on a 256 MiB memfd mapping (as guest RAM is), over the same
//! page sets: N random pages of a 64 MiB working set (scattered, like the
//! sparse and mixed profiles) and N consecutive pages (a sweep). Medians of
//! 30 repetitions, reported as write-protect / copy ratios.
//!
//! Run: `cargo run --release -p benches --example cow_cost`.

use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const MEM: usize = 256 << 20;
const WS_PAGES: usize = 16384;

// <linux/userfaultfd.h>
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, 24);

fn check(rc: libc::c_long, what: &str) -> Result<(), String> {
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn ioctl(fd: i32, req: u64, arg: &mut [u64], what: &str) -> Result<(), String> {
    // SAFETY: `arg` is a live, correctly sized (24 or 32 bytes, as `req`
    // encodes) u64 array laid out like the kernel's uffdio_* struct.
    let rc = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg.as_mut_ptr()) };
    check(rc as libc::c_long, what)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs of consecutive pages in a sorted page list.
fn runs(pages: &[usize]) -> Vec<(usize, usize)> {
    let mut r: Vec<(usize, usize)> = Vec::new();
    for &p in pages {
        match r.last_mut() {
            Some((s, n)) if *s + *n == p => *n += 1,
            _ => r.push((p, 1)),
        }
    }
    r
}

fn main() -> Result<(), String> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is checked.
    let fd = unsafe { libc::memfd_create(c"cow_cost".as_ptr(), libc::MFD_CLOEXEC) };
    check(fd as libc::c_long, "memfd_create")?;
    // SAFETY: fd is a fresh memfd we own.
    let rc = unsafe { libc::ftruncate(fd, MEM as libc::off_t) };
    check(rc as libc::c_long, "ftruncate")?;
    // SAFETY: a new shared mapping of the whole memfd; checked for failure
    // and only accessed through `mem` below, within MEM bytes.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `base` maps MEM bytes, readable and writable, for the life of
    // the process; nothing else aliases it.
    let mem = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, MEM) };
    for (i, b) in mem[..WS_PAGES * PAGE].iter_mut().enumerate().step_by(64) {
        *b = i as u8;
    }

    // SAFETY: the userfaultfd syscall takes flags only.
    let uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as i32;
    check(
        uffd as libc::c_long,
        "userfaultfd (needs root or vm.unprivileged_userfaultfd=1)",
    )?;
    let mut api = [UFFD_API, UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0];
    ioctl(uffd, UFFDIO_API, &mut api, "UFFDIO_API with WP on shmem")?;
    let mut reg = [base as u64, MEM as u64, UFFDIO_REGISTER_MODE_WP, 0];
    ioctl(uffd, UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER (WP)")?;

    let mut buf = vec![0u8; 4096 * PAGE];
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    println!("| dirty pages | layout | runs | copy (µs) | write-protect (µs) | protect / copy |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for n in [500usize, 2000, 4096] {
        let mut scattered: Vec<usize> = Vec::new();
        while scattered.len() < n {
            let p = (rnd() % WS_PAGES as u64) as usize;
            if !scattered.contains(&p) {
                scattered.push(p);
            }
        }
        scattered.sort_unstable();
        let sweep: Vec<usize> = (1000..1000 + n).collect();
        for (layout, pages) in [("scattered", &scattered), ("sweep", &sweep)] {
            let rs = runs(pages);
            let (mut copy, mut prot) = (Vec::new(), Vec::new());
            for _ in 0..30 {
                let t = Instant::now();
                let mut off = 0;
                for &(s, k) in &rs {
                    buf[off..off + k * PAGE].copy_from_slice(&mem[s * PAGE..(s + k) * PAGE]);
                    off += k * PAGE;
                }
                copy.push(t.elapsed());
                std::hint::black_box(&buf);

                let t = Instant::now();
                for &(s, k) in &rs {
                    let mut wp = [
                        base as u64 + (s * PAGE) as u64,
                        (k * PAGE) as u64,
                        UFFDIO_WRITEPROTECT_MODE_WP,
                    ];
                    ioctl(uffd, UFFDIO_WRITEPROTECT, &mut wp, "UFFDIO_WRITEPROTECT")?;
                }
                prot.push(t.elapsed());
                // Un-protect (after the resume in the real design; untimed).
                for &(s, k) in &rs {
                    let mut wp = [base as u64 + (s * PAGE) as u64, (k * PAGE) as u64, 0];
                    ioctl(
                        uffd,
                        UFFDIO_WRITEPROTECT,
                        &mut wp,
                        "UFFDIO_WRITEPROTECT off",
                    )?;
                }
            }
            let (c, p) = (median(copy), median(prot));
            println!(
                "| {n} | {layout} | {} | {:.0} | {:.0} | {:.2} |",
                rs.len(),
                c.as_secs_f64() * 1e6,
                p.as_secs_f64() * 1e6,
                p.as_secs_f64() / c.as_secs_f64().max(1e-12)
            );
        }
    }
    Ok(())
}
