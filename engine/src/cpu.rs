//! CPU-time accounting and thread placement.
//!
//! Engine CPU time is the process's CPU time minus its vCPU threads': guest
//! code (natively run ring 3 included) is charged to the vCPU threads.
//!
//! Placement: pausing a vCPU takes tens of µs when the vCPU threads and the
//! controlling thread run on different CPUs, milliseconds when they share
//! one (measured on the development hosts). With two or more CPUs the
//! engine's threads stay on CPU 0 and the vCPU threads on the others.

use std::time::Duration;

fn timespec(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    timespec(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process.
pub fn process_cpu_time() -> Duration {
    timespec(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Number of CPUs this process may run on.
pub fn available_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // fills it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size of the set.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the initialised set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread to `cpus` (best effort; returns whether it worked).
pub fn pin_current_thread(cpus: &[usize]) -> bool {
    if cpus.is_empty() {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < CPU_SETSIZE (it came from available_cpus).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: valid pointer and size; 0 = the calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// The CPUs for the engine's threads and for the vCPU threads, or `None`
/// when there are fewer than two CPUs (nothing to separate).
pub fn placement() -> Option<(Vec<usize>, Vec<usize>)> {
    let cpus = available_cpus();
    if cpus.len() < 2 {
        return None;
    }
    Some((vec![cpus[0]], cpus[1..].to_vec()))
}

/// The TSC frequency in kHz, measured against the monotonic clock over
/// about 50 ms. KVM guests on this kind of host read the host TSC unscaled,
/// so a guest paced by the TSC (the memory tester's `rate=`) needs this.
pub fn tsc_khz() -> u64 {
    fn rdtsc() -> u64 {
        // SAFETY: RDTSC only reads the time-stamp counter; every x86-64 CPU
        // has it and user mode may execute it (the kernel leaves CR4.TSD
        // clear on Linux).
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    let (t0, c0) = (std::time::Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(50));
    let (dt, dc) = (t0.elapsed(), rdtsc().wrapping_sub(c0));
    (dc as u128 * 1_000_000 / dt.as_nanos().max(1)) as u64
}
