//! CPU-time accounting and thread placement.
//!
//! Engine CPU time is the process's CPU time minus its vCPU threads': guest
//! code (natively run ring 3 included) is charged to the vCPU threads.
//!
//! Placement: pausing a vCPU takes tens of µs when the vCPU threads and the
//! controlling thread run on different CPUs, milliseconds when they share
//! one (measured on the development hosts). With two or more CPUs the
//! engine's threads stay on CPU 0 and the vCPU threads on the others.

use std::collections::BTreeMap;
use std::sync::Mutex;
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

/// Per-thread CPU accounting, by thread name: each engine thread holds a
/// [`ThreadAccount`] for its life. Live threads are read through their
/// CPU-time clocks; a thread that ends adds its total to its name's sum, so
/// the table stays bounded by the number of names however many threads come
/// and go (reconnections, dials).
struct Accounts {
    next: u64,
    live: BTreeMap<u64, (String, libc::clockid_t)>,
    ended: BTreeMap<String, Duration>,
}

static ACCOUNTS: Mutex<Accounts> = Mutex::new(Accounts {
    next: 0,
    live: BTreeMap::new(),
    ended: BTreeMap::new(),
});

fn accounts() -> std::sync::MutexGuard<'static, Accounts> {
    ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts the calling thread's CPU time under `name` until dropped (hold it
/// for the thread's whole life). See [`cpu_by_thread`].
pub struct ThreadAccount {
    id: u64,
}

impl ThreadAccount {
    /// Starts counting the calling thread under `name`.
    pub fn start(name: &str) -> ThreadAccount {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self() is the calling thread, alive for this call;
        // pthread_getcpuclockid writes one clockid_t into the valid pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        let clock = if rc == 0 {
            clock
        } else {
            libc::CLOCK_THREAD_CPUTIME_ID
        };
        let mut a = accounts();
        a.next += 1;
        let id = a.next;
        a.live.insert(id, (name.to_owned(), clock));
        ThreadAccount { id }
    }
}

impl Drop for ThreadAccount {
    fn drop(&mut self) {
        // Read before taking the lock: this is the calling thread's own time.
        let t = thread_cpu_time();
        let mut a = accounts();
        if let Some((name, _)) = a.live.remove(&self.id) {
            *a.ended.entry(name).or_default() += t;
        }
    }
}

/// CPU time so far of every accounted thread, summed by thread name (ended
/// threads included), plus the calling thread under `caller` when given.
pub fn cpu_by_thread(caller: Option<&str>) -> BTreeMap<String, Duration> {
    // The lock is held while live clocks are read: a live thread's
    // ThreadAccount::drop waits for it, so the thread (and its clock) is
    // still alive when read.
    let a = accounts();
    let mut out = a.ended.clone();
    for (name, clock) in a.live.values() {
        *out.entry(name.clone()).or_default() += timespec(*clock);
    }
    drop(a);
    if let Some(name) = caller {
        *out.entry(name.to_owned()).or_default() += thread_cpu_time();
    }
    out
}

/// [`cpu_by_thread`] in seconds, as the stats and events report it.
pub fn cpu_seconds_by_thread(caller: Option<&str>) -> BTreeMap<String, f64> {
    cpu_by_thread(caller)
        .into_iter()
        .map(|(n, d)| (n, d.as_secs_f64()))
        .collect()
}

/// Spawns a named thread whose CPU time is accounted under its name.
pub fn spawn_accounted<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let n = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _account = ThreadAccount::start(&n);
            f()
        })
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

/// Epochs between two [`CpuMark`]s: a mark every half second at 50 Hz
/// costs a dozen clock reads.
pub const MARK_EVERY: u64 = 25;

/// The engine's CPU time by thread name, s, taken once the work of every
/// epoch through `through` was done (a standby: right after committing it;
/// a primary: right after the next epoch's pause). Two marks of the same
/// process give the CPU of the epochs between them, without the run's
/// start-up and initial sync that a whole-run total includes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuMark {
    /// The last epoch whose work the mark includes.
    pub through: u64,
    /// The whole process's CPU time, s (a primary's includes its vCPUs').
    pub process_cpu_s: f64,
    /// CPU time by thread name, s (see [`cpu_seconds_by_thread`]).
    pub threads_cpu_s: BTreeMap<String, f64>,
}

/// A [`CpuMark`] through epoch `through` if it is one to take (every
/// [`MARK_EVERY`]th epoch). `caller` names the calling thread when it is
/// not an accounted one (see [`cpu_by_thread`]).
pub fn mark_at(through: u64, caller: Option<&str>) -> Option<CpuMark> {
    (through > 0 && through.is_multiple_of(MARK_EVERY)).then(|| CpuMark {
        through,
        process_cpu_s: process_cpu_time().as_secs_f64(),
        threads_cpu_s: cpu_seconds_by_thread(caller),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn(d: Duration) {
        let t = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() - t < d {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[test]
    fn marks_come_every_mark_every_epochs_and_carry_the_caller() {
        assert!(mark_at(0, None).is_none());
        assert!(mark_at(MARK_EVERY - 1, None).is_none());
        assert!(mark_at(MARK_EVERY + 1, None).is_none());
        let m = mark_at(2 * MARK_EVERY, Some("mark-test-caller")).expect("a mark");
        assert_eq!(m.through, 2 * MARK_EVERY);
        assert!(m.threads_cpu_s.contains_key("mark-test-caller"));
        assert!(m.process_cpu_s >= m.threads_cpu_s["mark-test-caller"]);
    }

    #[test]
    fn threads_are_accounted_by_name_alive_and_ended() {
        let name = "acct-test-ended";
        let h = spawn_accounted(name, || burn(Duration::from_millis(30))).unwrap();
        h.join().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let live = spawn_accounted("acct-test-live", move || {
            burn(Duration::from_millis(20));
            ready_tx.send(()).unwrap();
            rx.recv().unwrap();
        })
        .unwrap();
        ready_rx.recv().unwrap();
        let by = cpu_by_thread(Some("acct-test-caller"));
        assert!(by[name] >= Duration::from_millis(30), "{by:?}");
        assert!(by["acct-test-live"] >= Duration::from_millis(20), "{by:?}");
        assert!(by.contains_key("acct-test-caller"));
        tx.send(()).unwrap();
        live.join().unwrap();
        // Ended threads keep their total; a second thread of a name adds to it.
        let before = cpu_by_thread(None)[name];
        spawn_accounted(name, || burn(Duration::from_millis(10)))
            .unwrap()
            .join()
            .unwrap();
        assert!(cpu_by_thread(None)[name] >= before + Duration::from_millis(10));
    }
}
