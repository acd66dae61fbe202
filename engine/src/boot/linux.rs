//! The 64-bit Linux boot protocol (Documentation/arch/x86/boot.rst) for
//! bzImage and vmlinux ELF images: a zero page (`boot_params`) with the e820
//! map, command line and initrd, entered in long mode with `rsi` pointing at it.
//!
//! A Linux kernel cannot run on a `kvm_pvm` host (its ring-0 code is
//! emulated and the emulator lacks SSE/x87...), so tests check what is placed
//! in memory and registers; real boots are for hardware-KVM hosts.

use kvm_bindings::{kvm_regs, kvm_sregs};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{Bytes, GuestAddress};

use super::{BootRegs, BootSpec, CpuMode, ImageKind, CMDLINE_START, EBDA_START, HIMEM_START};
use crate::error::{EngineError, Result};
use crate::memory::Ram;

/// Where `boot_params` (the zero page) is placed.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the boot page tables.
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT of the boot page tables.
pub const PDPT_ADDR: u64 = 0xa000;
/// First page directory (four, mapping 4 GiB with 2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Fills the zero page and returns the entry registers.
pub fn setup(
    ram: &Ram,
    spec: &BootSpec,
    res: &KernelLoaderResult,
    bzimage: bool,
) -> Result<BootRegs> {
    super::write_cmdline(ram, &spec.cmdline)?;
    let mut params = boot_params::default();
    let entry = if bzimage {
        let hdr: setup_header = res.setup_header.ok_or_else(|| EngineError::Image {
            path: spec.kernel.clone(),
            msg: "bzImage without a setup header".into(),
        })?;
        params.hdr = hdr;
        // The 64-bit entry point is 0x200 past the protected-mode code start.
        res.kernel_load.0 + 0x200
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        res.kernel_load.0
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = spec.cmdline.len() as u32 + 1;
    if let Some(initrd) = &spec.initrd {
        let (addr, size) = super::load_initrd(ram, initrd, ram.regions[0].size)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let mut add = |addr: u64, size: u64, type_: u32| {
        let i = params.e820_entries as usize;
        params.e820_table[i].addr = addr;
        params.e820_table[i].size = size;
        params.e820_table[i].r#type = type_;
        params.e820_entries += 1;
    };
    add(0, EBDA_START, E820_RAM);
    add(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED);
    for (i, r) in ram.regions.iter().enumerate() {
        let start = if i == 0 { HIMEM_START } else { r.gpa };
        add(start, r.gpa + r.size - start, E820_RAM);
    }
    LinuxBootConfigurator::write_bootparams::<
        vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>,
    >(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR)),
        &ram.mem,
    )
    .map_err(|e| EngineError::Memory(format!("writing boot_params: {e}")))?;
    let regs = kvm_regs {
        rip: entry,
        rsi: ZERO_PAGE_ADDR,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rflags: 0x2,
        ..Default::default()
    };
    Ok(BootRegs {
        regs,
        mode: CpuMode::Long64,
        kind: if bzimage {
            ImageKind::BzImage
        } else {
            ImageKind::Vmlinux
        },
    })
}

/// Identity-maps the first 4 GiB with 2 MiB pages and enables long mode.
pub fn setup_page_tables(ram: &Ram, sregs: &mut kvm_sregs) -> Result<()> {
    let w = |v: u64, at: u64| {
        ram.mem
            .write_obj(v, GuestAddress(at))
            .map_err(|e| EngineError::Memory(format!("writing boot page tables: {e}")))
    };
    w(PDPT_ADDR | 0x03, PML4_ADDR)?;
    for i in 0..4u64 {
        w((PD_ADDR + i * 0x1000) | 0x03, PDPT_ADDR + i * 8)?;
    }
    for i in 0..(4 * 512u64) {
        w((i << 21) | 0x83, PD_ADDR + i * 8)?;
    }
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= 0x20; // PAE
    sregs.cr0 |= 0x8000_0011; // PG | ET | PE
    sregs.efer |= 0x500; // LME | LMA
    Ok(())
}
