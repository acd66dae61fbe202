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
    LinuxBootConfigurator::write_bootparams::<crate::memory::GuestMemory>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{self, BootSpec};
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::Bytes;

    /// A minimal bzImage: 2 setup sectors with a valid setup header, then a
    /// recognisable "protected-mode kernel".
    fn synthetic_bzimage() -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut img = vec![0u8; 3 * 512];
        img[0x1f1] = 2; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
        img[0x211] = 0x01; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img.extend_from_slice(&payload);
        (img, payload)
    }

    #[test]
    fn bzimage_is_placed_per_the_boot_protocol() {
        let dir = std::env::temp_dir().join(format!("hotspare-bz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (img, payload) = synthetic_bzimage();
        let kernel = dir.join("bzImage");
        std::fs::write(&kernel, &img).unwrap();
        let initrd_bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, &initrd_bytes).unwrap();
        let ram = Ram::new(64 << 20).unwrap();
        let spec = BootSpec {
            kernel,
            cmdline: "console=ttyS0 root=/dev/vda".into(),
            initrd: Some(initrd),
        };
        let b = boot::load(&ram, &spec).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(b.kind, ImageKind::BzImage);
        assert_eq!(b.mode, CpuMode::Long64);
        assert_eq!(
            b.regs.rip, 0x10_0200,
            "64-bit entry is code32_start + 0x200"
        );
        assert_eq!(b.regs.rsi, ZERO_PAGE_ADDR);
        let mut kernel_bytes = vec![0u8; payload.len()];
        ram.mem
            .read_slice(&mut kernel_bytes, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(kernel_bytes, payload, "protected-mode code not at 1 MiB");

        let params: boot_params = ram.mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(hdr.type_of_loader, KERNEL_LOADER_OTHER);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        let mut cmd = vec![0u8; spec.cmdline.len() + 1];
        ram.mem
            .read_slice(&mut cmd, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd[..spec.cmdline.len()], spec.cmdline.as_bytes());
        assert_eq!(
            cmd[spec.cmdline.len()],
            0,
            "command line not NUL-terminated"
        );

        let (rd_addr, rd_size) = ({ hdr.ramdisk_image }, { hdr.ramdisk_size });
        assert_eq!(rd_size as usize, initrd_bytes.len());
        assert_eq!(rd_addr % 4096, 0, "initrd not page aligned");
        let mut rd = vec![0u8; initrd_bytes.len()];
        ram.mem
            .read_slice(&mut rd, GuestAddress(u64::from(rd_addr)))
            .unwrap();
        assert_eq!(rd, initrd_bytes);

        let n = params.e820_entries as usize;
        let table: Vec<(u64, u64, u32)> = params.e820_table[..n]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(
            table,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM),
            ]
        );

        let mut sregs = kvm_sregs::default();
        b.apply_sregs(&ram, &mut sregs).unwrap();
        assert_eq!(sregs.efer & 0x500, 0x500, "long mode not enabled");
        assert_ne!(sregs.cr0 & 0x8000_0000, 0, "paging off");
        assert_eq!(sregs.cs.l, 1, "CS is not a 64-bit code segment");
        assert_eq!(sregs.cr3, PML4_ADDR);
        // The page tables identity-map the initrd's address.
        let pde: u64 = ram
            .mem
            .read_obj(GuestAddress(PD_ADDR + (u64::from(rd_addr) >> 21) * 8))
            .unwrap();
        assert_eq!(pde & !0x1f_ffff, u64::from(rd_addr) & !0x1f_ffff);
    }

    #[test]
    fn guests_above_3_gib_get_a_hole_in_the_memory_map() {
        let ram = Ram::new(4 << 30).unwrap();
        let map = crate::boot::pvh::memmap(&ram);
        let ram_entries: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.type_ == 1)
            .map(|e| (e.addr, e.size))
            .collect();
        assert_eq!(
            ram_entries,
            vec![
                (0, EBDA_START),
                (HIMEM_START, (3 << 30) - HIMEM_START),
                (4 << 30, 1 << 30)
            ]
        );
    }
}
