//! PVH boot: 32-bit protected-mode entry with paging off and `ebx` pointing
//! at an `hvm_start_info` (<https://xenbits.xen.org/docs/unstable/misc/pvh.html>).

use kvm_bindings::kvm_regs;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

use super::{BootRegs, BootSpec, CpuMode, ImageKind, CMDLINE_START, EBDA_START, HIMEM_START};
use crate::error::{EngineError, Result};
use crate::memory::Ram;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Where `hvm_start_info` is placed.
pub const START_INFO_ADDR: u64 = 0x6000;
/// Where the module list (initrd) is placed.
pub const MODLIST_ADDR: u64 = 0x6040;
/// Where the memory map is placed.
pub const MEMMAP_ADDR: u64 = 0x7000;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The PVH memory map for this RAM layout.
pub fn memmap(ram: &Ram) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr, size, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (i, r) in ram.regions.iter().enumerate() {
        let start = if i == 0 { HIMEM_START } else { r.gpa };
        map.push(entry(start, r.gpa + r.size - start, E820_RAM));
    }
    map
}

/// Writes start info, memory map, command line (and initrd) and returns the
/// entry registers.
pub fn setup(ram: &Ram, spec: &BootSpec, entry: GuestAddress) -> Result<BootRegs> {
    let mem_err = |what: &str| {
        let what = what.to_string();
        move |e: vm_memory::GuestMemoryError| EngineError::Memory(format!("writing {what}: {e}"))
    };
    super::write_cmdline(ram, &spec.cmdline)?;
    let map = memmap(ram);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = &spec.initrd {
        let (addr, size) = super::load_initrd(ram, initrd, ram.regions[0].size)?;
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        ram.mem
            .write_obj(module, GuestAddress(MODLIST_ADDR))
            .map_err(mem_err("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_ADDR;
    }
    ram.mem
        .write_obj(info, GuestAddress(START_INFO_ADDR))
        .map_err(mem_err("hvm_start_info"))?;
    for (i, e) in map.iter().enumerate() {
        ram.mem
            .write_obj(
                *e,
                GuestAddress(
                    MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64,
                ),
            )
            .map_err(mem_err("PVH memory map"))?;
    }
    let regs = kvm_regs {
        rip: entry.0,
        rbx: START_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    Ok(BootRegs {
        regs,
        mode: CpuMode::Protected32,
        kind: ImageKind::PvhElf,
    })
}
