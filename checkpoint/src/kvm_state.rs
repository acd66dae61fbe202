//! Capture and restore of KVM vCPU and VM state.
//!
//! The state structs are plain data (serde), so they can be written into a
//! checkpoint section and shipped to a shadow. Capturing from a running vCPU
//! gives a torn state; the engine only calls these functions on parked vCPU
//! threads while its pause guard is held.
//!
//! Restore order (see `docs/checkpoint-format.md`):
//! per vCPU: CPUID2, SREGS, REGS, XSAVE, XCRS, MSRS, LAPIC, VCPU_EVENTS,
//! DEBUGREGS, MP_STATE; then per VM: IRQCHIP (PIC master, PIC slave,
//! IOAPIC), PIT2, CLOCK.
//!
//! FPU/SSE state travels only through XSAVE: `KVM_GET_FPU`/`KVM_SET_FPU` keep
//! a stale copy on some backends (`kvm_pvm`) and are not used.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors of KVM state capture and restore.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The ioctl that failed, e.g. `KVM_GET_SREGS`.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than were asked for.
    #[error("KVM {op} handled {done} of {wanted} MSRs (first missing: {first_missing:#x})")]
    MsrCount {
        /// `KVM_GET_MSRS` or `KVM_SET_MSRS`.
        op: &'static str,
        /// How many were processed.
        done: usize,
        /// How many were requested.
        wanted: usize,
        /// The index of the first MSR not processed.
        first_missing: u32,
    },
    /// The state does not fit the target (e.g. more entries than KVM allows).
    #[error("invalid state: {0}")]
    Invalid(String),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { op, source }
}

/// MSRs guests use that `KVM_GET_MSR_INDEX_LIST` may omit.
pub const EXTRA_MSRS: &[u32] = &[
    0xc000_0103, // TSC_AUX
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0x0000_0174, // SYSENTER_CS
    0x0000_0175, // SYSENTER_ESP
    0x0000_0176, // SYSENTER_EIP
    0x0000_0277, // PAT
    0x0000_06e0, // TSC_DEADLINE
    0x0000_001b, // APIC_BASE
    0x0000_0010, // TSC
    0x0000_01a0, // MISC_ENABLE
];

/// MSRs that must not be restored (writing them is refused or meaningless).
const SKIP_ON_RESTORE: &[u32] = &[];

/// The complete architectural state of one vCPU.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// vCPU index (also its APIC id).
    pub id: u32,
    /// CPUID table given to this vCPU.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// The legacy 4096-byte XSAVE area (x87, SSE, AVX...) as KVM returns it.
    pub xsave: Vec<u32>,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Model-specific registers as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Multiprocessing state (runnable, halted, waiting for SIPI...).
    pub mp_state: kvm_mp_state,
}

/// VM-wide in-kernel device state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC (in that order).
    pub irqchips: Vec<kvm_irqchip>,
    /// The i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// Probes which MSRs this host lets a vCPU read: KVM's index list plus
/// [`EXTRA_MSRS`], each kept only if a single-MSR `KVM_GET_MSRS` succeeds.
pub fn probe_msrs(sys: &kvm_ioctls::Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, StateError> {
    let mut list: Vec<u32> = sys
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    for m in EXTRA_MSRS {
        if !list.contains(m) {
            list.push(*m);
        }
    }
    let mut usable = Vec::with_capacity(list.len());
    for idx in list {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: idx,
            ..Default::default()
        }])
        .map_err(|e| StateError::Invalid(format!("msr list: {e:?}")))?;
        if matches!(vcpu.get_msrs(&mut msrs), Ok(1)) {
            usable.push(idx);
        }
    }
    Ok(usable)
}

/// Captures the state of a stopped vCPU.
pub fn save_vcpu(vcpu: &VcpuFd, id: u32, msr_list: &[u32]) -> Result<VcpuState, StateError> {
    let cpuid = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let xsave = vcpu
        .get_xsave()
        .map_err(kvm("KVM_GET_XSAVE"))?
        .region
        .to_vec();
    let xcrs = vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
    let entries: Vec<kvm_msr_entry> = msr_list
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries)
        .map_err(|e| StateError::Invalid(format!("too many MSRs: {e:?}")))?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
    if n != entries.len() {
        return Err(StateError::MsrCount {
            op: "KVM_GET_MSRS",
            done: n,
            wanted: entries.len(),
            first_missing: entries[n].index,
        });
    }
    let msrs = msrs.as_slice().iter().map(|e| (e.index, e.data)).collect();
    let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let events = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    let debugregs = vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    Ok(VcpuState {
        id,
        cpuid,
        regs,
        sregs,
        xsave,
        xcrs,
        msrs,
        lapic,
        events,
        debugregs,
        mp_state,
    })
}

/// Loads a captured state into a vCPU that has not run yet (or is stopped).
pub fn restore_vcpu(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), StateError> {
    let cpuid = CpuId::from_entries(&s.cpuid)
        .map_err(|e| StateError::Invalid(format!("cpuid table: {e:?}")))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    vcpu.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    let mut xsave = kvm_xsave::default();
    if s.xsave.len() != xsave.region.len() {
        return Err(StateError::Invalid(format!(
            "XSAVE area has {} words, expected {}",
            s.xsave.len(),
            xsave.region.len()
        )));
    }
    xsave.region.copy_from_slice(&s.xsave);
    // SAFETY: `xsave` is a complete legacy 4096-byte `kvm_xsave`, the size
    // KVM_SET_XSAVE reads when KVM_CAP_XSAVE2 is not used.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .filter(|(i, _)| !SKIP_ON_RESTORE.contains(i))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| StateError::Invalid(format!("too many MSRs: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(StateError::MsrCount {
            op: "KVM_SET_MSRS",
            done: n,
            wanted: entries.len(),
            first_missing: entries[n].index,
        });
    }
    vcpu.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    vcpu.set_vcpu_events(&s.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    Ok(())
}

/// Captures the VM-wide in-kernel device state.
pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    let mut irqchips = Vec::with_capacity(3);
    for chip_id in [
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
        irqchips.push(chip);
    }
    let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
    let clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    Ok(VmState {
        irqchips,
        pit,
        clock,
    })
}

/// Loads VM-wide state; call after every vCPU has been restored.
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), StateError> {
    if s.irqchips.len() != 3 {
        return Err(StateError::Invalid(format!(
            "expected 3 irqchips (PIC master, PIC slave, IOAPIC), found {}",
            s.irqchips.len()
        )));
    }
    for chip in &s.irqchips {
        vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&s.pit).map_err(kvm("KVM_SET_PIT2"))?;
    // Only the clock value is restored; flags such as KVM_CLOCK_TSC_STABLE
    // describe the source host and are rejected by KVM_SET_CLOCK.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    Ok(())
}
