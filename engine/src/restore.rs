//! Rebuilding a VM from the newest complete checkpoint chain in a directory.

use std::path::Path;

use crate::devices::virtio::block::DiskSpec;
use crate::error::{EngineError, Result};
use crate::memory::Ram;
use crate::store::{self, DirStore};
use crate::store_disks::DiskBases;
use crate::vm::{Vm, VmConfig};

/// A VM restored from a checkpoint directory, not started yet.
pub struct Restored {
    /// The VM.
    pub vm: Vm,
    /// The sequence number it was restored from.
    pub seq: u64,
    /// The console position the restored output starts at (the restore
    /// re-emits the last epoch's output from there).
    pub console_pos: u64,
}

/// Restores the newest checkpoint in `dir` into a new VM, its NICs on the
/// TAPs of `nets` (as many as the checkpoint's VM had; their MACs come
/// from the checkpoint).
pub fn restore(
    dir: &Path,
    console: Box<dyn std::io::Write + Send>,
    log_dirty: bool,
    nets: &[crate::devices::virtio::net::NetSpec],
) -> Result<Restored> {
    let chain = store::find_chain(dir)?;
    let bytes: u64 = chain.machine.mem_regions.iter().map(|r| r.size).sum();
    let ram = Ram::new(bytes)?;
    if ram.layout() != chain.machine.mem_regions {
        return Err(store::store_err(
            dir,
            "the checkpoint's memory layout is not one this engine builds",
        ));
    }
    let state = chain.apply(&ram)?;
    // Checked before the disks are touched.
    let nics = state
        .devices
        .iter()
        .filter(|r| r.id.starts_with("virtio-net."))
        .count();
    if nics != nets.len() {
        return Err(EngineError::Config(format!(
            "the checkpoint's VM has {nics} NICs but {} were given: pass one --net tap=NAME for each, in order",
            nets.len()
        )));
    }
    let disks = restore_disks(dir, &chain)?;
    let cfg = VmConfig {
        mem_bytes: bytes,
        vcpus: chain.machine.vcpus,
        log_dirty,
        vcpu_cpus: None,
        disks,
        nets: nets.to_vec(),
    };
    let mut vm = Vm::create(&cfg, Box::new(std::io::sink()), Some(ram))?;
    // The last epoch's output may never have been shown (the run held it
    // until the checkpoint was durable and may have died before releasing
    // it): continue from where that output starts and show it again; at
    // worst a byte-identical repeat of what was already shown.
    let resume = state.console_pos - state.output.len() as u64;
    vm.set_console(console, resume);
    vm.console_gate()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .emit(&state.output);
    if vm.machine.cpuid != chain.machine.cpuid {
        tracing::warn!("this host's CPUID differs from the checkpoint's; the guest keeps the checkpoint's CPUID");
    }
    vm.machine = chain.machine.clone();
    vm.restore_state(&state.vcpus, &state.vm)?;
    // After the irqchip and LAPICs: an interrupt a device raises as it
    // restores must not be wiped by them.
    vm.restore_devices(&state.devices)?;
    Ok(Restored {
        vm,
        seq: chain.seq,
        console_pos: resume,
    })
}

/// The end record of `dir`, if its guest ended on its own after the newest
/// checkpoint (`store_end.rs`); a record that follows another checkpoint
/// is an error naming both.
pub fn ended(dir: &Path) -> Result<Option<crate::store_end::EndRecord>> {
    let Some(end) = crate::store_end::EndRecord::read(dir)? else {
        return Ok(None);
    };
    let newest = store::find_chain(dir)?.seq;
    if end.after_seq != newest {
        return Err(store::store_err(
            dir,
            format!(
                "its end record follows checkpoint {} but the newest checkpoint is {newest}",
                end.after_seq
            ),
        ));
    }
    Ok(Some(end))
}

/// Opens `dir` to continue its chain after a restore: the store's memory
/// image starts as a copy of the restored guest memory.
pub fn continue_store(dir: &Path, r: &Restored) -> Result<DirStore> {
    let image = Ram::new(r.vm.ram.bytes)?;
    for (src, dst) in r.vm.ram.regions.iter().zip(&image.regions) {
        dst.write(0, src.as_slice());
    }
    DirStore::open(dir, &r.vm.machine, Some((r.seq, image)), &[])
}

/// Brings the directory's disk bases up to the chain's newest checkpoint
/// and copies them over the VM's images, so the restored disks go with the
/// restored memory (never ahead of it). Returns the disks to attach.
fn restore_disks(dir: &Path, chain: &store::Chain) -> Result<Vec<DiskSpec>> {
    if chain.machine.disks.is_empty() {
        return Ok(Vec::new());
    }
    let (mut bases, specs) = DiskBases::open(dir, &chain.machine.disks)?;
    let fp = chain.machine.fingerprint();
    for (seq, path) in chain.files() {
        if *seq > bases.seq() {
            bases.apply_file(*seq, path, &fp)?;
        }
    }
    for (i, spec) in specs.iter().enumerate() {
        bases.copy_to(i, &spec.path)?;
    }
    Ok(specs)
}
