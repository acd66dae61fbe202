//! A KVM virtual machine: in-kernel irqchip and PIT, memfd RAM, COM1, N vCPU
//! threads, and the pause guard through which all state is captured.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use checkpoint::fingerprint::MachineConfig;
use checkpoint::kvm_state::{self, VcpuState, VmState};
use crossbeam::channel::{self, Sender};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootSpec};
use crate::devices::console::OutputGate;
use crate::devices::manager::COM1_GSI;
use crate::devices::virtio::block::{Block, DiskImage, DiskSpec, IoFailover};
use crate::devices::virtio::net::{derive_mac, GateLimits, Net, NetGate, NetSpec, Tap};
use crate::devices::{DeviceError, DeviceManager, DeviceRecord};
use crate::error::{EngineError, Result};
use crate::memory::Ram;
use crate::vcpu::{self, Shared, StopReason, VcpuCmd, VcpuThread};

/// Where KVM puts the TSS it needs for real-mode emulation (below 4 GiB, in the MMIO hole).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// How long a pause may take before it is reported as failed.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between kicks of a vCPU that has not parked yet.
const KICK_INTERVAL: Duration = Duration::from_micros(500);
/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;

/// How to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// RAM in bytes.
    pub mem_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Enable KVM dirty logging on every slot.
    pub log_dirty: bool,
    /// Pin the vCPU threads to these host CPUs (see `cpu::placement`).
    pub vcpu_cpus: Option<Vec<usize>>,
    /// virtio-blk disks, in order (`virtio-blk.0`, `virtio-blk.1`, ...).
    pub disks: Vec<DiskSpec>,
    /// virtio-net NICs, in order (`virtio-net.0`, ...). A NIC with no MAC
    /// gets `derive_mac("vm", i)` until a record restores the real one.
    pub nets: Vec<NetSpec>,
}

struct VcpuSlot {
    fd: Option<VcpuFd>,
    tx: Sender<VcpuCmd>,
    rx: Option<channel::Receiver<VcpuCmd>>,
    handle: Option<JoinHandle<()>>,
}

/// A VM, built but possibly not started yet.
pub struct Vm {
    /// The KVM system fd.
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: Arc<VmFd>,
    /// Guest RAM.
    pub ram: Arc<Ram>,
    /// Every emulated device, on its bus.
    pub devices: Arc<DeviceManager>,
    /// The disk images behind the virtio-blk devices, in device order.
    pub disks: Vec<Arc<DiskImage>>,
    /// What a disk I/O error does: IOERR to the guest, or a handover to
    /// the shadow (the replicator decides).
    pub io_failover: Arc<IoFailover>,
    /// The output-commit gates of the virtio-net devices, in device order.
    pub nets: Vec<Arc<Mutex<NetGate>>>,
    /// Shared vCPU control.
    pub shared: Arc<Shared>,
    /// MSRs captured per vCPU.
    pub msr_list: Arc<Vec<u32>>,
    /// The configuration the fingerprint is computed from.
    pub machine: MachineConfig,
    /// Whether dirty logging is on.
    pub log_dirty: bool,
    vcpu_cpus: Option<Vec<usize>>,
    vcpus: Vec<VcpuSlot>,
    senders: Vec<Sender<VcpuCmd>>,
}

/// The KVM device: `/dev/kvm`, or `HOTSPARE_KVM_DEVICE` (for tests of the
/// error paths and hosts with the device elsewhere).
pub fn kvm_device() -> std::path::PathBuf {
    std::env::var_os("HOTSPARE_KVM_DEVICE")
        .map(Into::into)
        .unwrap_or_else(|| "/dev/kvm".into())
}

/// Opens the KVM device with errors that say what to do.
pub fn open_kvm() -> Result<Kvm> {
    let path = kvm_device();
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| EngineError::Config("KVM device path contains a NUL byte".into()))?;
    let kvm = match Kvm::new_with_path(&cpath) {
        Ok(k) => k,
        Err(e) if e.errno() == libc::ENOENT => return Err(EngineError::NoKvm(path)),
        Err(e) if e.errno() == libc::EACCES || e.errno() == libc::EPERM => {
            return Err(EngineError::KvmPermission(path))
        }
        Err(e) => return Err(EngineError::kvm("open KVM device")(e)),
    };
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v if v < 0 => Err(EngineError::NotKvm(path)),
        v => Err(EngineError::Config(format!(
            "{} speaks KVM API version {v}; hotspare needs version 12",
            path.display()
        ))),
    }
}

/// The host's supported CPUID table, canonical bytes included.
fn base_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(EngineError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(cpuid.as_slice().to_vec())
}

/// CPUID for vCPU `id`: the APIC ids in leaves 1, 0xB and 0x1F.
fn vcpu_cpuid(base: &[kvm_cpuid_entry2], id: u32, count: u32) -> Result<CpuId> {
    let mut entries = base.to_vec();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (count.min(255) << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    CpuId::from_entries(&entries).map_err(|e| EngineError::Config(format!("CPUID table: {e:?}")))
}

/// Canonical bytes of a CPUID table for the fingerprint. The APIC ids the
/// host reports (leaf 1 EBX[31:24], leaves 0xB/0x1F EDX) belong to whichever
/// host CPU ran the ioctl, so they are masked out.
fn cpuid_bytes(entries: &[kvm_cpuid_entry2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 40);
    for e in entries {
        let ebx = if e.function == 1 {
            e.ebx & 0x00ff_ffff
        } else {
            e.ebx
        };
        let edx = if e.function == 0xb || e.function == 0x1f {
            0
        } else {
            e.edx
        };
        for v in [e.function, e.index, e.flags, e.eax, ebx, e.ecx, edx] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Builds `virtio-blk.<i>` on `spec`: an MMIO window, an irqfd on its GSI
/// and an ioeventfd on its QueueNotify register.
fn add_disk(
    fd: &VmFd,
    devices: &mut DeviceManager,
    ram: &Arc<Ram>,
    i: usize,
    spec: &DiskSpec,
    failover: &Arc<IoFailover>,
) -> Result<Arc<DiskImage>> {
    let id = format!("virtio-blk.{i}");
    let setup = |msg: String| {
        EngineError::Devices(DeviceError::Setup {
            id: id.clone(),
            msg,
        })
    };
    let disk = Arc::new(DiskImage::open(spec).map_err(setup)?);
    let slot = devices.allocate_mmio(&id)?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| setup(format!("eventfd: {e}")))?;
    fd.register_irqfd(&irq, slot.irq)
        .map_err(|e| setup(format!("KVM_IRQFD on GSI {}: {e}", slot.irq)))?;
    let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| setup(format!("eventfd: {e}")))?;
    let notify_reg = slot.base + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
    fd.register_ioevent(&notify, &IoEventAddress::Mmio(notify_reg), NoDatamatch)
        .map_err(|e| setup(format!("KVM_IOEVENTFD at {notify_reg:#x}: {e}")))?;
    let serial = format!("hotspare-disk{i}");
    let blk = Block::new(
        &id,
        disk.clone(),
        &serial,
        ram.clone(),
        irq,
        notify,
        failover.clone(),
    )?;
    devices.add_virtio_mmio(slot, Arc::new(Mutex::new(blk)))?;
    Ok(disk)
}

/// Builds `virtio-net.<i>` on `spec`: the TAP, an MMIO window, an irqfd
/// on its GSI and an ioeventfd per queue on its QueueNotify register; its
/// gate joins the device manager's outputs.
fn add_net(
    fd: &VmFd,
    devices: &mut DeviceManager,
    ram: &Arc<Ram>,
    i: usize,
    spec: &NetSpec,
) -> Result<Arc<Mutex<NetGate>>> {
    let id = format!("virtio-net.{i}");
    let setup = |msg: String| {
        EngineError::Devices(DeviceError::Setup {
            id: id.clone(),
            msg,
        })
    };
    let tap = Arc::new(Tap::open(&spec.tap).map_err(setup)?);
    let slot = devices.allocate_mmio(&id)?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| setup(format!("eventfd: {e}")))?;
    fd.register_irqfd(&irq, slot.irq)
        .map_err(|e| setup(format!("KVM_IRQFD on GSI {}: {e}", slot.irq)))?;
    let notify_reg = slot.base + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
    let mut notify = Vec::new();
    for q in 0..3u32 {
        let n = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| setup(format!("eventfd: {e}")))?;
        // The driver writes the queue's index to QueueNotify.
        fd.register_ioevent(&n, &IoEventAddress::Mmio(notify_reg), q)
            .map_err(|e| {
                setup(format!(
                    "KVM_IOEVENTFD at {notify_reg:#x} for queue {q}: {e}"
                ))
            })?;
        notify.push(n);
    }
    let notify: [EventFd; 3] = notify.try_into().expect("three queues");
    let mac = spec.mac.unwrap_or_else(|| derive_mac("vm", i));
    let net = Net::new(
        &id,
        tap,
        mac,
        GateLimits::default(),
        ram.clone(),
        irq,
        notify,
    )?;
    let gate = net.gate();
    devices.add_output(gate.clone());
    devices.add_virtio_mmio(slot, Arc::new(Mutex::new(net)))?;
    Ok(gate)
}

impl Vm {
    /// Creates the VM, its devices and vCPUs (not started), with the
    /// console writing to `console` from byte 0 (see [`Vm::set_console`]).
    pub fn create(
        cfg: &VmConfig,
        console: Box<dyn std::io::Write + Send>,
        ram: Option<Ram>,
    ) -> Result<Vm> {
        if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
            return Err(EngineError::Config(format!(
                "--vcpus must be between 1 and {MAX_VCPUS}, got {}",
                cfg.vcpus
            )));
        }
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(EngineError::MissingCap(name));
            }
        }
        vcpu::install_kick_handler()
            .map_err(EngineError::io("installing the vCPU kick signal handler"))?;
        let fd = kvm.create_vm().map_err(EngineError::kvm("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(EngineError::kvm("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip()
            .map_err(EngineError::kvm("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(EngineError::kvm("KVM_CREATE_PIT2"))?;
        let ram = match ram {
            Some(r) if r.bytes == cfg.mem_bytes => r,
            Some(r) => {
                return Err(EngineError::Config(format!(
                    "prepared RAM is {} bytes, configuration says {}",
                    r.bytes, cfg.mem_bytes
                )))
            }
            None => Ram::new(cfg.mem_bytes)?,
        };
        let ram = Arc::new(ram);
        ram.register(&fd, cfg.log_dirty)?;

        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(EngineError::io("eventfd for COM1"))?;
        fd.register_irqfd(&irq, COM1_GSI)
            .map_err(EngineError::kvm("KVM_IRQFD (COM1)"))?;
        let mut devices = DeviceManager::new(irq, console)?;
        let mut disks = Vec::new();
        let shared = Shared::new(cfg.vcpus as usize);
        let io_failover = Arc::new(IoFailover::default());
        // A disk failure to hand over is acted on at once, not at the
        // supervisor's next tick.
        io_failover.set_doorbell(crate::runner::Doorbell::new(shared.clone()));
        for (i, spec) in cfg.disks.iter().enumerate() {
            disks.push(add_disk(&fd, &mut devices, &ram, i, spec, &io_failover)?);
        }
        let mut nets = Vec::new();
        for (i, spec) in cfg.nets.iter().enumerate() {
            nets.push(add_net(&fd, &mut devices, &ram, i, spec)?);
        }
        let devices = Arc::new(devices);

        let base = base_cpuid(&kvm)?;
        let mut vcpus = Vec::new();
        let mut senders = Vec::new();
        for id in 0..cfg.vcpus {
            let vfd = fd
                .create_vcpu(u64::from(id))
                .map_err(EngineError::kvm("KVM_CREATE_VCPU"))?;
            vfd.set_cpuid2(&vcpu_cpuid(&base, id, cfg.vcpus)?)
                .map_err(EngineError::kvm("KVM_SET_CPUID2"))?;
            let (tx, rx) = channel::unbounded();
            senders.push(tx.clone());
            vcpus.push(VcpuSlot {
                fd: Some(vfd),
                tx,
                rx: Some(rx),
                handle: None,
            });
        }
        let msr_list = kvm_state::probe_msrs(&kvm, vcpus[0].fd.as_ref().expect("vcpu fd"))?;
        let machine = MachineConfig {
            mem_regions: ram.layout(),
            vcpus: cfg.vcpus,
            cpuid: cpuid_bytes(&base),
            disks: disks.iter().map(|d| d.layout()).collect(),
        };
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            ram,
            devices,
            disks,
            io_failover,
            nets,
            shared,
            msr_list: Arc::new(msr_list),
            machine,
            log_dirty: cfg.log_dirty,
            vcpu_cpus: cfg.vcpu_cpus.clone(),
            vcpus,
            senders,
        })
    }

    /// The regions of this VM's dirty ledger: pages of each memory region,
    /// then 4 KiB blocks of each disk.
    pub fn ledger_regions(&self) -> Vec<usize> {
        let mem = self
            .ram
            .regions
            .iter()
            .map(|r| (r.size / crate::memory::PAGE_SIZE) as usize);
        mem.chain(self.disks.iter().map(|d| d.blocks())).collect()
    }

    /// Loads a kernel and sets the boot vCPU's registers (fresh boot). The
    /// devices' additions (`virtio_mmio.device=...`) are appended to the
    /// command line.
    pub fn boot(&mut self, spec: &BootSpec) -> Result<boot::ImageKind> {
        let mut spec = spec.clone();
        let extra = self.devices.cmdline();
        if !extra.is_empty() {
            spec.cmdline = if spec.cmdline.is_empty() {
                extra
            } else {
                format!("{} {extra}", spec.cmdline)
            };
        }
        let boot = boot::load(&self.ram, &spec)?;
        let vfd = self.vcpus[0].fd.as_ref().expect("vCPU not started yet");
        let mut sregs = vfd.get_sregs().map_err(EngineError::kvm("KVM_GET_SREGS"))?;
        boot.apply_sregs(&self.ram, &mut sregs)?;
        vfd.set_sregs(&sregs)
            .map_err(EngineError::kvm("KVM_SET_SREGS"))?;
        vfd.set_regs(&boot.regs)
            .map_err(EngineError::kvm("KVM_SET_REGS"))?;
        Ok(boot.kind)
    }

    /// Loads saved vCPU and VM state (restore order: every vCPU, then the VM).
    pub fn restore_state(&mut self, vcpus: &[VcpuState], vm: &VmState) -> Result<()> {
        if vcpus.len() != self.vcpus.len() {
            return Err(EngineError::Config(format!(
                "checkpoint has {} vCPUs, VM has {}",
                vcpus.len(),
                self.vcpus.len()
            )));
        }
        for (slot, state) in self.vcpus.iter().zip(vcpus) {
            let vfd = slot.fd.as_ref().expect("vCPU not started yet");
            kvm_state::restore_vcpu(vfd, state)?;
        }
        kvm_state::restore_vm(&self.fd, vm)?;
        Ok(())
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<()> {
        for (id, slot) in self.vcpus.iter_mut().enumerate() {
            let t = VcpuThread {
                id: id as u32,
                fd: slot.fd.take().expect("vCPU started twice"),
                msr_list: self.msr_list.clone(),
                shared: self.shared.clone(),
                devices: self.devices.clone(),
                ram: self.ram.clone(),
                cmds: slot.rx.take().expect("vCPU started twice"),
                pin: self.vcpu_cpus.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || t.run())
                .map_err(EngineError::io("spawning a vCPU thread"))?;
            slot.handle = Some(h);
        }
        Ok(())
    }

    /// Starts the vCPU threads already parked: no guest instruction runs
    /// until the returned guard drops.
    pub fn start_paused(&mut self) -> Result<PauseGuard<'_>> {
        self.start_parked()?;
        self.pause()
    }

    /// Starts the vCPU threads parked: no guest instruction runs until a
    /// `pause()` guard taken afterwards drops.
    pub fn start_parked(&mut self) -> Result<()> {
        let start = Instant::now();
        self.shared.pause_requested.store(true, Ordering::SeqCst);
        self.start()?;
        loop {
            let running = self.shared.wait_parked(KICK_INTERVAL);
            if running.is_empty() {
                break;
            }
            if start.elapsed() > PAUSE_TIMEOUT {
                self.shared.resume_all(&self.senders);
                return Err(EngineError::Vcpu(format!(
                    "vCPUs {running:?} did not park at start"
                )));
            }
        }
        Ok(())
    }

    /// Bytes the guest has written to its console so far.
    pub fn console_position(&self) -> u64 {
        self.console_gate()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .position()
    }

    /// The console's output-commit gate.
    pub fn console_gate(&self) -> Arc<Mutex<OutputGate>> {
        self.devices.console().clone()
    }

    /// Points the console at `console`, continuing the guest's output at
    /// byte `position` (a restored guest, or a standby taking over).
    pub fn set_console(&self, console: Box<dyn std::io::Write + Send>, position: u64) {
        self.console_gate()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reopen(console, position);
    }

    /// Restores every device from its record (before `start`).
    pub fn restore_devices(&self, records: &[DeviceRecord]) -> Result<()> {
        Ok(self.devices.restore(records)?)
    }

    fn kick(&self, id: usize) {
        if let Some(h) = &self.vcpus[id].handle {
            let _ = h.kill(vcpu::kick_signal());
        }
    }

    /// Stops every vCPU at a capturable point; they stay stopped while the
    /// guard lives and resume when it drops (also on every error path).
    pub fn pause(&self) -> Result<PauseGuard<'_>> {
        let start = Instant::now();
        self.shared.pause_requested.store(true, Ordering::SeqCst);
        let mut running: Vec<usize> = (0..self.vcpus.len()).collect();
        loop {
            for &id in &running {
                self.kick(id);
            }
            running = self.shared.wait_parked(KICK_INTERVAL);
            if running.is_empty() {
                break;
            }
            if self.shared.stopping.load(Ordering::SeqCst) || start.elapsed() > PAUSE_TIMEOUT {
                self.shared.resume_all(&self.senders);
                return Err(EngineError::Vcpu(
                    if self.shared.stopping.load(Ordering::SeqCst) {
                        "VM stopped while pausing".into()
                    } else {
                        format!("vCPUs {running:?} did not stop within {PAUSE_TIMEOUT:?}")
                    },
                ));
            }
        }
        let stop = start.elapsed();
        let t = Instant::now();
        if let Err(e) = self.devices.quiesce() {
            self.shared.resume_all(&self.senders);
            return Err(e.into());
        }
        Ok(PauseGuard {
            vm: self,
            paused_at: start,
            stop,
            quiesce: t.elapsed(),
        })
    }

    /// Waits up to `timeout` for the VM to stop, or for the supervisor's
    /// doorbell ([`Vm::doorbell`]).
    pub fn wait_stop(&self, timeout: Duration) -> crate::vcpu::Woken {
        self.shared.wait_stop(timeout)
    }

    /// The supervisor's doorbell ([`crate::runner::Doorbell`]).
    pub fn doorbell(&self) -> crate::runner::Doorbell {
        crate::runner::Doorbell::new(self.shared.clone())
    }

    /// Stops the VM (if still running) and joins the vCPU threads.
    pub fn shutdown(&mut self, reason: StopReason) -> StopReason {
        self.shared.request_stop(reason);
        let n = self.vcpus.iter().filter(|s| s.handle.is_some()).count();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shared.wait_exited(n, Duration::from_millis(1)) && Instant::now() < deadline {
            self.shared.resume_all(&self.senders);
            for id in 0..self.vcpus.len() {
                self.kick(id);
            }
        }
        for slot in self.vcpus.iter_mut() {
            if let Some(h) = slot.handle.take() {
                let _ = h.join();
            }
        }
        self.shared.stop_reason().unwrap_or(StopReason::Requested)
    }
}

/// Proof that every vCPU is parked. Capturing state requires one.
pub struct PauseGuard<'a> {
    vm: &'a Vm,
    paused_at: Instant,
    stop: Duration,
    quiesce: Duration,
}

impl PauseGuard<'_> {
    /// The paused VM.
    pub fn vm(&self) -> &Vm {
        self.vm
    }

    /// When the pause began (for pause-time figures).
    pub fn paused_at(&self) -> Instant {
        self.paused_at
    }

    /// How long stopping the vCPUs took, and then quiescing the devices
    /// (draining requests in flight).
    pub fn stop_and_quiesce(&self) -> (Duration, Duration) {
        (self.stop, self.quiesce)
    }

    /// Captures every vCPU's state. Each vCPU thread captured its own state
    /// as it parked (in parallel, with no round trip); a second capture in
    /// the same pause asks the parked threads again.
    pub fn capture_vcpus(&self) -> Result<Vec<VcpuState>> {
        let pending: Vec<_> = self
            .vm
            .vcpus
            .iter()
            .enumerate()
            .map(|(id, s)| match self.vm.shared.take_parked_state(id) {
                Some(st) => Ok(st),
                None => {
                    let (tx, rx) = channel::bounded(1);
                    let _ = s.tx.send(VcpuCmd::Capture(tx));
                    Err(rx)
                }
            })
            .collect();
        pending
            .into_iter()
            .enumerate()
            .map(|(id, p)| match p {
                Ok(st) => st.map_err(EngineError::from),
                Err(rx) => rx
                    .recv()
                    .map_err(|_| {
                        EngineError::Vcpu(format!("vCPU {id} thread gone during capture"))
                    })?
                    .map_err(EngineError::from),
            })
            .collect()
    }

    /// Captures the in-kernel irqchip, PIT and clock.
    pub fn capture_vm(&self) -> Result<VmState> {
        Ok(kvm_state::save_vm(&self.vm.fd)?)
    }

    /// Captures every device's record.
    pub fn capture_devices(&self) -> Vec<DeviceRecord> {
        self.vm.devices.save()
    }

    /// True when every vCPU is halted with interrupts off or was never started.
    pub fn all_stopped_for_good(&self) -> bool {
        self.vm.vcpus.iter().all(|s| {
            let (tx, rx) = channel::bounded(1);
            let _ = s.tx.send(VcpuCmd::Probe(tx));
            rx.recv().unwrap_or(false)
        })
    }
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.vm.devices.wake();
        self.vm.shared.resume_all(&self.vm.senders);
    }
}
