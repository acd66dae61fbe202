//! capture -> restore (into a new VM) -> capture gives identical state,
//! except the fields that move with time (IA32_TSC, the LAPIC current-count
//! register, kvmclock).

mod common;

use std::time::Duration;

use checkpoint::dirty::DirtyLedger;
use checkpoint::kvm_state::VcpuState;
use engine::boot::BootSpec;
use engine::capture::{self, Epoch};
use engine::memory::PAGE_SIZE;
use engine::store::DirStore;
use engine::vm::{Vm, VmConfig};

const MSR_IA32_TSC: u32 = 0x10;
const APIC_TMCCT: usize = 0x390;

fn ledger(vm: &Vm) -> DirtyLedger {
    let n: Vec<usize> = vm
        .ram
        .regions
        .iter()
        .map(|r| (r.size / PAGE_SIZE) as usize)
        .collect();
    DirtyLedger::new(&n)
}

/// XSAVE's XSTATE_BV (bytes 512..520, u32 words 128 and 129) with the bit
/// of every component that is in its initial state cleared. A component in
/// its initial state may be reported with its bit set or clear (the init
/// optimisation of XSAVEOPT; seen here on an idle second vCPU: 0xe7 before
/// a restore, 0x2 after), and both mean the same state.
fn canonical_xsave(v: &mut VcpuState) {
    let x = &mut v.xsave;
    if x.len() < 130 {
        return;
    }
    let zero = |w: &[u32]| w.iter().all(|&b| b == 0);
    let mut bv = u64::from(x[128]) | u64::from(x[129]) << 32;
    // x87: FCW 0x37f, FSW, FTW, FOP, FIP, FDP and ST0-7 zero (words 0-5,
    // 8-39; words 6-7 are MXCSR and its mask, not x87 state).
    if x[0] == 0x37f && zero(&x[1..6]) && zero(&x[8..40]) {
        bv &= !1;
    }
    // SSE: XMM0-15 zero (bytes 160..416).
    if zero(&x[40..104]) {
        bv &= !2;
    }
    // Extended components: where CPUID leaf 0xd puts them, all zero.
    for e in v
        .cpuid
        .iter()
        .filter(|e| e.function == 0xd && e.index >= 2 && e.index < 64)
    {
        let (off, len) = (e.ebx as usize / 4, e.eax as usize / 4);
        if len > 0 && off + len <= x.len() && zero(&x[off..off + len]) {
            bv &= !(1u64 << e.index);
        }
    }
    x[128] = bv as u32;
    x[129] = (bv >> 32) as u32;
}

/// The vCPU state with the time-moving fields zeroed and XSAVE in a
/// canonical form.
fn timeless(v: &VcpuState) -> Vec<u8> {
    let mut v = v.clone();
    canonical_xsave(&mut v);
    for m in v.msrs.iter_mut().filter(|m| m.0 == MSR_IA32_TSC) {
        m.1 = 0;
    }
    for b in &mut v.lapic.regs[APIC_TMCCT..APIC_TMCCT + 4] {
        *b = 0;
    }
    postcard::to_stdvec(&v).unwrap()
}

/// The guest memory a full capture describes, as one buffer (64 MiB guests).
fn memory(e: &Epoch) -> Vec<u8> {
    let mut m = vec![0u8; 64 << 20];
    for (gpa, data) in e.pages.iter() {
        m[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
    }
    m
}

fn compare(a: &Epoch, b: &Epoch) {
    assert_eq!(a.vcpus.len(), b.vcpus.len());
    for (x, y) in a.vcpus.iter().zip(&b.vcpus) {
        assert_eq!(x.regs.rip, y.regs.rip, "vCPU {} RIP", x.id);
        assert!(
            timeless(x) == timeless(y),
            "vCPU {} state differs after restore:\n{x:?}\n{y:?}",
            x.id
        );
    }
    assert_eq!(
        postcard::to_stdvec(&a.vm.irqchips).unwrap(),
        postcard::to_stdvec(&b.vm.irqchips).unwrap(),
        "irqchip state differs"
    );
    assert_eq!(a.devices, b.devices, "device state differs");
    assert_eq!(a.console_pos, b.console_pos, "console position differs");
    // Full captures send never-written memory as zero markers, and a page
    // that held zeros restores as never written: compare contents.
    assert!(memory(a) == memory(b), "guest memory differs after restore");
}

fn roundtrip(guest: &str, cmdline: &str, vcpus: u32, run_for: Duration) {
    if !common::kvm_available() {
        return;
    }
    let dir = common::TempDir::new("roundtrip");
    let ckpt = dir.path("ckpt");
    let cfg = VmConfig {
        mem_bytes: 64 << 20,
        vcpus,
        log_dirty: true,
        vcpu_cpus: None,
        disks: Vec::new(),
        nets: Vec::new(),
    };
    let mut vm = Vm::create(&cfg, Box::new(std::io::sink()), None).unwrap();
    vm.boot(&BootSpec {
        kernel: hw_tests::guest_path(guest),
        cmdline: cmdline.into(),
        initrd: None,
    })
    .unwrap();
    vm.start().unwrap();
    std::thread::sleep(run_for);
    let mut l = ledger(&vm);
    let a = {
        let guard = vm.pause().unwrap();
        let (a, h) = capture::capture(&guard, &mut l, true, 1).unwrap();
        l.commit(h);
        // In a single-vCPU VM the first capture used the state the vCPU
        // thread took as it parked; a second one in the same pause asks the
        // parked thread. Both must describe the same stopped vCPUs.
        let again = guard.capture_vcpus().unwrap();
        for (x, y) in a.vcpus.iter().zip(&again) {
            assert!(
                timeless(x) == timeless(y),
                "vCPU {}: state taken at park differs from a capture in the same pause",
                x.id
            );
        }
        let mut store = DirStore::open(&ckpt, &vm.machine, None, &[]).unwrap();
        store.write_epoch(&a).unwrap();
        a
    };
    assert!(
        vm.shared.stop_reason().is_none(),
        "guest stopped before the capture: {:?}",
        vm.shared.stop_reason()
    );
    vm.shutdown(engine::vcpu::StopReason::Requested);

    let mut r = engine::restore::restore(&ckpt, Box::new(std::io::sink()), true, &[]).unwrap();
    let mut l2 = ledger(&r.vm);
    let guard = r.vm.start_paused().unwrap();
    let (b, h) = capture::capture(&guard, &mut l2, true, 1).unwrap();
    l2.commit(h);
    drop(guard);
    compare(&a, &b);
    r.vm.shutdown(engine::vcpu::StopReason::Requested);
}

#[test]
fn memtest_state_roundtrips_exactly() {
    roundtrip(
        "memtest",
        "rounds=100000 writes=30000",
        1,
        Duration::from_millis(300),
    );
}

#[test]
fn timer_state_roundtrips_exactly() {
    roundtrip("timer", "ticks=100000", 1, Duration::from_millis(300));
}

#[test]
fn smp_state_roundtrips_exactly() {
    roundtrip("smp", "rounds=100000", 2, Duration::from_millis(300));
}

#[test]
fn sse_state_roundtrips_exactly() {
    roundtrip("sse", "rounds=100000", 1, Duration::from_millis(300));
}

/// A 64 MiB VM with dirty logging, its memory tester sweeping pages for
/// the last 100 ms.
fn sweeping_vm() -> Vm {
    let cfg = VmConfig {
        mem_bytes: 64 << 20,
        vcpus: 1,
        log_dirty: true,
        vcpu_cpus: None,
        disks: Vec::new(),
        nets: Vec::new(),
    };
    let mut vm = Vm::create(&cfg, Box::new(std::io::sink()), None).unwrap();
    vm.boot(&BootSpec {
        kernel: hw_tests::guest_path("memtest"),
        cmdline: "rounds=100000 writes=30000 pattern=sweep".into(),
        initrd: None,
    })
    .unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    vm
}

/// The supervisor sleeps until its `Periodic` is due (here: in an hour),
/// and the VM's doorbell, rung from another thread, wakes it at once:
/// `rung` is called soon after the ring, and `tick` never.
#[test]
fn a_doorbell_wakes_the_supervisor_before_its_tick_is_due() {
    use engine::runner::{supervise, Periodic};
    use engine::vcpu::StopReason;
    use std::time::Instant;
    if !common::kvm_available() {
        return;
    }
    struct Sleepy {
        rung: Option<Instant>,
        ticks: u32,
    }
    impl Periodic for Sleepy {
        fn next_due(&self) -> Duration {
            Duration::from_secs(3600)
        }
        fn tick(&mut self, _vm: &Vm) -> engine::error::Result<()> {
            self.ticks += 1;
            Ok(())
        }
        fn rung(&mut self, vm: &Vm) -> engine::error::Result<()> {
            self.rung.get_or_insert_with(Instant::now);
            vm.shared.request_stop(StopReason::Requested);
            Ok(())
        }
    }
    let mut vm = sweeping_vm();
    let (bell, shared) = (vm.doorbell(), vm.shared.clone());
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let ringer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        bell.ring();
        // If the ring were lost, end the run anyway (the test then fails).
        if finished.recv_timeout(Duration::from_secs(10)).is_err() {
            shared.request_stop(StopReason::Requested);
        }
        at
    });
    let mut p = Sleepy {
        rung: None,
        ticks: 0,
    };
    let reason = supervise(&mut vm, Some(&mut p)).unwrap();
    let _ = done.send(());
    assert_eq!(reason, StopReason::Requested);
    let rang_at = ringer.join().unwrap();
    let woke = p.rung.expect("the doorbell did not wake the supervisor");
    assert!(woke >= rang_at);
    // Generous: the ring is a condition variable away.
    assert!(
        woke - rang_at < Duration::from_secs(2),
        "{:?}",
        woke - rang_at
    );
    assert_eq!(p.ticks, 0, "no tick was due");
}

/// An epoch whose write fails puts its dirty bits back; the next checkpoint
/// carries them, so restoring it gives the guest's exact memory. Without the
/// put-back, pages dirtied only during the failed epoch would be stale.
#[test]
fn failed_epoch_puts_its_dirty_bits_back() {
    if !common::kvm_available() {
        return;
    }
    let dir = common::TempDir::new("putback");
    let ckpt = dir.path("ckpt");
    let mut vm = sweeping_vm();
    let mut l = ledger(&vm);
    let mut store = DirStore::open(&ckpt, &vm.machine, None, &[]).unwrap();
    {
        let g = vm.pause().unwrap();
        let (a, h) = capture::capture(&g, &mut l, true, 1).unwrap();
        store.write_epoch(&a).unwrap();
        l.commit(h);
    }
    std::thread::sleep(Duration::from_millis(50));
    // Pages the guest never touches, written by the VMM itself (vm-memory
    // records them): only the failed epoch sees them dirty, so only the
    // put-back can carry them into the next checkpoint.
    let marker_gpa = 60u64 << 20;
    {
        use vm_memory::{Bytes, GuestAddress};
        vm.ram
            .mem
            .write_slice(&[0xa5u8; 3 * 4096], GuestAddress(marker_gpa))
            .unwrap();
    }
    let failed_pages = {
        let g = vm.pause().unwrap();
        let (b, h) = capture::capture(&g, &mut l, false, 2).unwrap();
        // The write of b "fails": its bits go back.
        l.put_back(h).unwrap();
        b.pages.runs.clone()
    };
    assert!(
        !failed_pages.is_empty(),
        "the guest dirtied nothing in 50 ms"
    );
    let in_runs = |runs: &[(u64, u32)], gpa: u64| {
        runs.iter()
            .any(|&(s, n)| gpa >= s && gpa < s + u64::from(n) * PAGE_SIZE)
    };
    assert!(
        in_runs(&failed_pages, marker_gpa),
        "the VMM's own write was not harvested"
    );
    std::thread::sleep(Duration::from_millis(20));
    let g = vm.pause().unwrap();
    let (c, h) = capture::capture(&g, &mut l, false, 2).unwrap();
    let covered = |gpa: u64| {
        c.pages
            .runs
            .iter()
            .any(|&(s, n)| gpa >= s && gpa < s + u64::from(n) * PAGE_SIZE)
    };
    for &(s, n) in &failed_pages {
        for p in 0..u64::from(n) {
            assert!(
                covered(s + p * PAGE_SIZE),
                "page {:#x} of the failed epoch was lost",
                s + p * PAGE_SIZE
            );
        }
    }
    store.write_epoch(&c).unwrap();
    l.commit(h);
    // While still paused: the chain (full + c) must equal guest memory exactly.
    let chain = engine::store::find_chain(&ckpt).unwrap();
    let image = engine::memory::Ram::new(64 << 20).unwrap();
    chain.apply(&image).unwrap();
    for (live, restored) in g.vm().ram.regions.iter().zip(&image.regions) {
        assert!(
            live.as_slice() == restored.as_slice(),
            "restored memory differs from the guest's"
        );
    }
    drop(g);
    vm.shutdown(engine::vcpu::StopReason::Requested);
}

/// A harvest clears what it took, in KVM's log and in the VMM's bitmap: a
/// second harvest in the same pause finds nothing (or every epoch would
/// resend the previous one's pages), and the guest's writes after the
/// pause are harvested by the next one.
#[test]
fn a_harvest_clears_the_dirty_log_and_the_next_one_sees_new_writes() {
    if !common::kvm_available() {
        return;
    }
    let mut vm = sweeping_vm();
    let mut l = ledger(&vm);
    {
        let g = vm.pause().unwrap();
        let (_, h) = capture::capture(&g, &mut l, true, 1).unwrap();
        l.commit(h);
        std::thread::sleep(Duration::from_millis(1));
        drop(g);
    }
    std::thread::sleep(Duration::from_millis(50));
    let g = vm.pause().unwrap();
    let (a, h) = capture::capture(&g, &mut l, false, 2).unwrap();
    l.commit(h);
    assert!(a.pages.pages() > 0, "the guest dirtied nothing in 50 ms");
    let (b, h) = capture::capture(&g, &mut l, false, 3).unwrap();
    l.commit(h);
    assert_eq!(
        b.pages.pages(),
        0,
        "a second harvest in the same pause found pages again"
    );
    drop(g);
    std::thread::sleep(Duration::from_millis(50));
    let g = vm.pause().unwrap();
    let (c, h) = capture::capture(&g, &mut l, false, 4).unwrap();
    l.commit(h);
    assert!(
        c.pages.pages() > 0,
        "writes after the pause were not logged"
    );
    drop(g);
    vm.shutdown(engine::vcpu::StopReason::Requested);
}
