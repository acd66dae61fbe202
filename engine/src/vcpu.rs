//! vCPU threads and the pause protocol.
//!
//! Each vCPU runs `KVM_RUN` on its own thread. To stop it, the controller
//! sets `pause_requested` and sends the thread a real-time signal ("kick");
//! the signal handler sets `kvm_run.immediate_exit`, so `KVM_RUN` returns
//! `EINTR` whether the signal lands inside the guest or just before entry.
//! A guest spinning in ring 3 never exits on its own; the kick still stops it.
//!
//! Before parking, the thread makes the vCPU safe to capture:
//! - it re-enters `KVM_RUN` once with `immediate_exit` set, which completes a
//!   pending port-I/O or MMIO instruction without running further;
//! - if the vCPU stopped in ring 3 right after a software interrupt
//!   (`int3`, `int n`, `into`), the exception may still be queued inside KVM,
//!   invisible to `KVM_GET_VCPU_EVENTS` and lost by a restore; the thread
//!   then runs on to its next stop instead of parking (the controller kicks
//!   again).
//!
//! In a single-vCPU VM the thread captures its vCPU's state as it parks
//! (so the controller needs no round trip to it). A parked thread serves
//! commands (capture, probe, resume, exit) from its channel; only parked
//! vCPUs are ever captured.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use checkpoint::kvm_state::{self, VcpuState};
use crossbeam::channel::{Receiver, Sender};
use kvm_bindings::{
    kvm_run, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{BusAction, DeviceManager};
use crate::memory::Ram;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
    /// Every vCPU halted with interrupts disabled (or never started).
    Halted,
    /// The guest asked for a reset through the i8042 or a system event.
    Reset,
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u32, rip: u64 },
    /// The VMM stopped the VM (e.g. on request).
    Requested,
    /// KVM or the VMM failed.
    Error(String),
}

impl StopReason {
    /// The process exit status for this stop.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::GuestExit(c) => i32::from(*c),
            StopReason::Halted | StopReason::Reset | StopReason::Requested => 0,
            StopReason::TripleFault { .. } => 2,
            StopReason::Error(_) => 1,
        }
    }
}

/// Commands a parked vCPU thread serves.
pub enum VcpuCmd {
    /// Capture the full vCPU state.
    Capture(Sender<Result<VcpuState, kvm_state::StateError>>),
    /// Report whether the vCPU is stopped for good (halted with IF=0, or never started).
    Probe(Sender<bool>),
    /// Leave the parked state and run.
    Resume,
}

/// State shared between the controller and all vCPU threads.
pub struct Shared {
    /// Set by the controller before kicking; cleared before resuming.
    pub pause_requested: AtomicBool,
    /// Set once the VM is stopping for good.
    pub stopping: AtomicBool,
    /// Number of vCPUs.
    vcpus: usize,
    /// CPU time each vCPU thread used (guest and KVM), recorded at exit.
    pub vcpu_cpu: Mutex<Vec<std::time::Duration>>,
    /// When each vCPU thread last took its `Resume` and went back to the
    /// guest: the end of the pause as the guest sees it (the pausing
    /// thread's own figure ends when it has sent `Resume`, before a vCPU
    /// thread slow to wake is back). With the number of the resume it took
    /// ([`Shared::resumes`]).
    resumed: Mutex<Vec<Option<(std::time::Instant, u64)>>>,
    /// How many times [`Shared::resume_all`] ran.
    resumes: std::sync::atomic::AtomicU64,
    ctl: Mutex<Ctl>,
    cv: Condvar,
}

/// How [`Shared::wait_stop`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Woken {
    /// The VM is stopping, for this reason.
    Stopped(StopReason),
    /// Someone rang the supervisor's doorbell.
    Nudged,
    /// The timeout passed.
    TimedOut,
}

/// A vCPU's state as captured by its own thread.
type Captured = std::result::Result<VcpuState, kvm_state::StateError>;

#[derive(Default)]
struct Ctl {
    parked: Vec<bool>,
    /// State each parked vCPU captured just before parking (taken by the
    /// first capture of the pause, dropped at resume).
    states: Vec<Option<Captured>>,
    exited: usize,
    stop: Option<StopReason>,
    /// The supervisor's doorbell rang since its last wait.
    nudged: bool,
}

impl Shared {
    /// Shared state for `n` vCPUs.
    pub fn new(n: usize) -> Arc<Shared> {
        Arc::new(Shared {
            pause_requested: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            vcpus: n,
            vcpu_cpu: Mutex::new(Vec::new()),
            resumed: Mutex::new(vec![None; n]),
            resumes: std::sync::atomic::AtomicU64::new(0),
            ctl: Mutex::new(Ctl {
                parked: vec![false; n],
                states: (0..n).map(|_| None).collect(),
                ..Default::default()
            }),
            cv: Condvar::new(),
        })
    }

    /// Records the first stop reason and wakes the controller.
    pub fn request_stop(&self, reason: StopReason) {
        let mut c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if c.stop.is_none() {
            c.stop = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// The stop reason, if the VM is stopping.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.ctl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop
            .clone()
    }

    /// Waits up to `timeout` for a stop, or until [`nudge`](Self::nudge)
    /// is called (since the last wait ended).
    pub fn wait_stop(&self, timeout: std::time::Duration) -> Woken {
        let c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let (mut c, _) = self
            .cv
            .wait_timeout_while(c, timeout, |c| c.stop.is_none() && !c.nudged)
            .unwrap_or_else(|e| e.into_inner());
        let nudged = std::mem::take(&mut c.nudged);
        match (c.stop.clone(), nudged) {
            (Some(reason), _) => Woken::Stopped(reason),
            (None, true) => Woken::Nudged,
            (None, false) => Woken::TimedOut,
        }
    }

    /// Ends the supervisor's current (or next) [`wait_stop`](Self::wait_stop)
    /// early, without stopping anything: something it must act on happened.
    pub fn nudge(&self) {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner()).nudged = true;
        self.cv.notify_all();
    }

    /// Whether this VM has one vCPU. Only then is a state captured at park
    /// time a snapshot of a stopped VM: with several, the others may still
    /// run after it (and send it IPIs, INIT/SIPI, NMIs) until they park too.
    fn single_vcpu(&self) -> bool {
        self.vcpus == 1
    }

    /// Marks vCPU `id` parked, with the state it captured on the way (single
    /// vCPU only), unless the pause was already withdrawn.
    fn park(&self, id: usize, state: Option<Captured>) -> bool {
        let mut c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if !self.pause_requested.load(Ordering::SeqCst) {
            return false;
        }
        c.parked[id] = true;
        c.states[id] = state;
        self.cv.notify_all();
        true
    }

    /// The state vCPU `id` captured when it parked for this pause, once.
    pub fn take_parked_state(&self, id: usize) -> Option<Captured> {
        let mut c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        if !c.parked.get(id).copied().unwrap_or(false) {
            return None;
        }
        c.states.get_mut(id).and_then(Option::take)
    }

    /// Withdraws the pause and sends `Resume` to every parked vCPU, atomically
    /// with respect to vCPUs deciding to park.
    pub fn resume_all(&self, senders: &[Sender<VcpuCmd>]) {
        let mut c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        self.pause_requested.store(false, Ordering::SeqCst);
        // Under the lock: a vCPU taking this `Resume` reads this number.
        self.resumes.fetch_add(1, Ordering::SeqCst);
        let Ctl { parked, states, .. } = &mut *c;
        for (id, parked) in parked.iter_mut().enumerate() {
            // A resumed vCPU's parked state goes stale at once.
            states[id] = None;
            if *parked {
                // Marked running here, under the lock, so a pause that starts
                // before the vCPU has consumed `Resume` does not count it as parked.
                *parked = false;
                let _ = senders[id].send(VcpuCmd::Resume);
            }
        }
    }

    fn stamp_resumed(&self, id: usize) {
        let now = std::time::Instant::now();
        let n = self.resumes.load(Ordering::SeqCst);
        if let Some(t) = self
            .resumed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            *t = Some((now, n));
        }
    }

    /// The number of the latest resume (see [`Shared::resumed_at`]).
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::SeqCst)
    }

    /// When the last vCPU went back to the guest after resume number `n`:
    /// `None` unless every vCPU's latest resume is that one (one that has
    /// not woken yet, or a later pause and resume, leave nothing to tell).
    pub fn resumed_at(&self, n: u64) -> Option<std::time::Instant> {
        let r = self.resumed.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = None;
        for s in r.iter() {
            match s {
                Some((t, k)) if *k == n => last = last.max(Some(*t)),
                _ => return None,
            }
        }
        last
    }

    fn set_exited(&self) {
        let mut c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        c.exited += 1;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` until every vCPU is parked; returns the ids still running.
    pub fn wait_parked(&self, timeout: std::time::Duration) -> Vec<usize> {
        let c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let (c, _) = self
            .cv
            .wait_timeout_while(c, timeout, |c| {
                c.stop.is_none() && c.parked.iter().any(|p| !p)
            })
            .unwrap_or_else(|e| e.into_inner());
        c.parked
            .iter()
            .enumerate()
            .filter(|(_, p)| !**p)
            .map(|(i, _)| i)
            .collect()
    }

    /// Waits until all `n` vCPU threads have exited.
    pub fn wait_exited(&self, n: usize, timeout: std::time::Duration) -> bool {
        let c = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let (c, _) = self
            .cv
            .wait_timeout_while(c, timeout, |c| c.exited < n)
            .unwrap_or_else(|e| e.into_inner());
        c.exited >= n
    }
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The access size of the current KVM_EXIT_IO (1, 2 or 4 bytes), read from
/// this thread's `kvm_run`. The exit's data holds `count` accesses of this
/// size (`rep outsb` gives `count` > 1).
fn io_access_size() -> usize {
    let p = KVM_RUN_PTR.with(|p| p.get());
    if p.is_null() {
        return 1;
    }
    // SAFETY: called only while handling a KVM_EXIT_IO on this thread, so
    // `p` is this thread's mapped `kvm_run` and its `io` union member is the
    // one the kernel filled.
    let size = unsafe { (*p).__bindgen_anon_1.io.size };
    usize::from(size).clamp(1, 4)
}

/// The kick signal.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN_PTR.with(|p| p.get());
    if !p.is_null() {
        // SAFETY: `p` is this thread's own mapped `kvm_run`, valid while the
        // vCPU fd lives (the pointer is cleared before the fd is dropped);
        // a volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).immediate_exit), 1) };
    }
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| e.errno())
    })
    .map_err(std::io::Error::from_raw_os_error)
}

/// Everything a vCPU thread owns.
pub struct VcpuThread {
    /// vCPU index.
    pub id: u32,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// MSRs to capture.
    pub msr_list: Arc<Vec<u32>>,
    /// Shared control state.
    pub shared: Arc<Shared>,
    /// The devices.
    pub devices: Arc<DeviceManager>,
    /// Guest RAM (to inspect the instruction before RIP).
    pub ram: Arc<Ram>,
    /// Commands while parked.
    pub cmds: Receiver<VcpuCmd>,
    /// Host CPUs to pin this thread to.
    pub pin: Option<Vec<usize>>,
}

enum Parked {
    Resumed,
    NotSafe,
    Exit,
}

impl VcpuThread {
    /// The thread body: runs the vCPU until the VM stops.
    pub fn run(mut self) {
        if let Some(cpus) = &self.pin {
            if !crate::cpu::pin_current_thread(cpus) {
                tracing::warn!("vCPU {}: could not pin to CPUs {cpus:?}", self.id);
            }
        }
        let p: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|c| c.set(p));
        self.run_loop();
        KVM_RUN_PTR.with(|c| c.set(std::ptr::null_mut()));
        self.shared
            .vcpu_cpu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(crate::cpu::thread_cpu_time());
        self.shared.set_exited();
    }

    fn run_loop(&mut self) {
        // After a stop that was not safe to capture, the guest must run at
        // least once more before the next attempt to park.
        let mut must_run = false;
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            if !must_run && self.shared.pause_requested.load(Ordering::SeqCst) {
                match self.park() {
                    Parked::Exit => return,
                    Parked::Resumed => continue,
                    Parked::NotSafe => must_run = true,
                }
            } else {
                must_run = false;
            }
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(self.id, &self.devices, exit),
                Err(e) if e.errno() == libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(e) if e.errno() == libc::EAGAIN => None,
                Err(e) => Some(StopReason::Error(format!("vCPU {}: KVM_RUN: {e}", self.id))),
            };
            if let Some(reason) = action {
                self.shared.request_stop(self.with_rip(reason));
                return;
            }
        }
    }

    /// Fills in the faulting RIP of stop reasons that report one.
    fn with_rip(&self, reason: StopReason) -> StopReason {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        match reason {
            StopReason::TripleFault { vcpu, .. } => StopReason::TripleFault { vcpu, rip },
            StopReason::Error(m) if m.contains("internal error") => {
                StopReason::Error(format!("{m} at rip {rip:#x}"))
            }
            r => r,
        }
    }

    /// Brings the vCPU to a capturable stop and serves commands until resumed.
    fn park(&mut self) -> Parked {
        // Complete any instruction whose I/O we handled but KVM has not
        // finished: with immediate_exit set, KVM_RUN finishes it and returns
        // EINTR without running the guest further.
        loop {
            self.fd.set_kvm_immediate_exit(1);
            match self.fd.run() {
                Err(e) if e.errno() == libc::EINTR => break,
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    self.shared
                        .request_stop(StopReason::Error(format!("vCPU {}: KVM_RUN: {e}", self.id)));
                    return Parked::Exit;
                }
                Ok(exit) => {
                    // A string I/O instruction can need another round trip.
                    if let Some(r) = handle_exit(self.id, &self.devices, exit) {
                        self.shared.request_stop(self.with_rip(r));
                        return Parked::Exit;
                    }
                }
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        if self.software_exception_in_flight() {
            return Parked::NotSafe;
        }
        // With a single vCPU, capture the state now, on this thread, while
        // the whole VM is stopped: the controller's capture then needs no
        // round trip to this thread (that round trip was half the pause's
        // state phase). With several, other vCPUs may still run and send
        // this one interrupts until they park, so the controller asks for
        // the states once all are parked.
        let state = self
            .shared
            .single_vcpu()
            .then(|| kvm_state::save_vcpu(&self.fd, self.id, &self.msr_list));
        if !self.shared.park(self.id as usize, state) {
            return Parked::Resumed;
        }
        loop {
            match self.cmds.recv() {
                Ok(VcpuCmd::Capture(reply)) => {
                    let _ = reply.send(kvm_state::save_vcpu(&self.fd, self.id, &self.msr_list));
                }
                Ok(VcpuCmd::Probe(reply)) => {
                    let _ = reply.send(self.is_stopped_for_good());
                }
                Ok(VcpuCmd::Resume) => {
                    self.shared.stamp_resumed(self.id as usize);
                    break Parked::Resumed;
                }
                Err(_) => break Parked::Exit,
            }
        }
    }

    /// True when the vCPU stopped in ring 3 right after `int3`/`int n`/`into`.
    fn software_exception_in_flight(&self) -> bool {
        let Ok(sregs) = self.fd.get_sregs() else {
            return false;
        };
        if sregs.cs.selector & 3 != 3 {
            return false;
        }
        let Ok(regs) = self.fd.get_regs() else {
            return false;
        };
        let mut bytes = [0u8; 2];
        for (i, b) in bytes.iter_mut().enumerate() {
            let gva = regs.rip.wrapping_sub(2 - i as u64);
            let Ok(t) = self.fd.translate_gva(gva) else {
                return false;
            };
            if t.valid == 0 {
                return false;
            }
            let Some((region, off)) = self.ram.locate(t.physical_address) else {
                return false;
            };
            let mut one = [0u8; 1];
            region.read(off, &mut one);
            *b = one[0];
        }
        bytes[1] == 0xcc || bytes[1] == 0xce || bytes[0] == 0xcd
    }

    fn is_stopped_for_good(&self) -> bool {
        let Ok(mp) = self.fd.get_mp_state() else {
            return false;
        };
        match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
            KVM_MP_STATE_HALTED => self
                .fd
                .get_regs()
                .map(|r| r.rflags & (1 << 9) == 0)
                .unwrap_or(false),
            _ => false,
        }
    }
}

/// Handles one exit; returns a stop reason if the VM must stop.
fn handle_exit(id: u32, devices: &DeviceManager, exit: VcpuExit<'_>) -> Option<StopReason> {
    let action = |a: BusAction| match a {
        BusAction::Continue => None,
        BusAction::Exit(code) => Some(StopReason::GuestExit(code)),
        BusAction::Reset => Some(StopReason::Reset),
    };
    match exit {
        VcpuExit::IoOut(port, data) => action(devices.pio_write(port, data, io_access_size())),
        VcpuExit::IoIn(port, data) => {
            devices.pio_read(port, data, io_access_size());
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            devices.mmio_read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => action(devices.mmio_write(addr, data)),
        VcpuExit::Hlt => Some(StopReason::Halted),
        VcpuExit::Shutdown => Some(StopReason::TripleFault { vcpu: id, rip: 0 }),
        VcpuExit::SystemEvent(t, _) => {
            if t == kvm_bindings::KVM_SYSTEM_EVENT_RESET {
                Some(StopReason::Reset)
            } else {
                Some(StopReason::Halted)
            }
        }
        VcpuExit::FailEntry(reason, cpu) => Some(StopReason::Error(format!(
            "vCPU {id}: KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::InternalError => Some(StopReason::Error(format!(
            "vCPU {id}: KVM internal error (emulation failure?)"
        ))),
        other => Some(StopReason::Error(format!(
            "vCPU {id}: unexpected exit {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's pause ends when the last vCPU takes the resume the
    /// primary sent; a vCPU that has not taken it, or one that was paused
    /// and resumed again since, leaves nothing to tell.
    #[test]
    fn resumed_at_names_the_last_vcpu_back_from_that_resume_only() {
        let s = Shared::new(2);
        let (tx, _rx0) = crossbeam::channel::unbounded();
        let (tx1, _rx1) = crossbeam::channel::unbounded();
        s.resume_all(&[tx, tx1]);
        let n = s.resumes();
        assert_eq!(s.resumed_at(n), None, "no vCPU back yet");
        s.stamp_resumed(0);
        assert_eq!(s.resumed_at(n), None, "vCPU 1 not back yet");
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.stamp_resumed(1);
        let both = s.resumed_at(n).expect("both back");
        let first = s.resumed.lock().unwrap()[0].unwrap().0;
        assert!(both > first, "the later of the two");
        // Another resume, taken by one vCPU: the earlier one is no longer
        // whole, and the new one not yet.
        let (a, _ra) = crossbeam::channel::unbounded();
        let (b, _rb) = crossbeam::channel::unbounded();
        s.resume_all(&[a, b]);
        s.stamp_resumed(0);
        assert_eq!(s.resumed_at(n), None);
        assert_eq!(s.resumed_at(s.resumes()), None);
    }
}
