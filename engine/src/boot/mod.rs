//! Loading guest images and setting the boot vCPU's initial registers.
//!
//! Supported formats (detected from the file's contents, not its name):
//! - ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note: PVH boot ([`pvh`]).
//! - ELF without that note (a Linux `vmlinux`): 64-bit Linux boot protocol.
//! - Linux bzImage: 64-bit Linux boot protocol ([`linux`]).

pub mod elf32;
pub mod gdt;
pub mod linux;
pub mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_regs, kvm_sregs};
use linux_loader::loader::{self, KernelLoader};
use vm_memory::GuestAddress;

use crate::error::{EngineError, Result};
use crate::memory::Ram;

/// Start of high memory where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Where the kernel command line is placed.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line accepted (including the NUL).
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the EBDA; RAM below 1 MiB ends here in the memory map.
pub const EBDA_START: u64 = 0x9_fc00;

/// What to boot.
#[derive(Clone, Debug, Default)]
pub struct BootSpec {
    /// The kernel image.
    pub kernel: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
}

/// The detected image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// ELF with a PVH entry note.
    PvhElf,
    /// ELF without PVH note (Linux vmlinux, 64-bit boot protocol).
    Vmlinux,
    /// Linux bzImage.
    BzImage,
}

/// The CPU mode the boot vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// 32-bit protected mode, paging off (PVH).
    Protected32,
    /// 64-bit long mode with identity-mapped page tables (Linux boot protocol).
    Long64,
}

/// The boot vCPU's initial register state.
#[derive(Clone, Debug)]
pub struct BootRegs {
    /// General registers.
    pub regs: kvm_regs,
    /// The mode to set up in the special registers ([`BootRegs::apply_sregs`]).
    pub mode: CpuMode,
    /// The format that was booted.
    pub kind: ImageKind,
}

impl BootRegs {
    /// Writes the boot GDT (and page tables for long mode) and sets the
    /// special registers on top of the vCPU's defaults in `sregs`.
    pub fn apply_sregs(&self, ram: &Ram, sregs: &mut kvm_sregs) -> Result<()> {
        match self.mode {
            CpuMode::Protected32 => {
                gdt::setup(ram, sregs, false)?;
                sregs.cr0 = 0x11; // PE | ET, paging off
                sregs.cr4 = 0;
                sregs.efer = 0;
            }
            CpuMode::Long64 => {
                gdt::setup(ram, sregs, true)?;
                linux::setup_page_tables(ram, sregs)?;
            }
        }
        Ok(())
    }
}

fn image_err(path: &Path, msg: impl Into<String>) -> EngineError {
    EngineError::Image {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Detects the image format from its first bytes.
pub fn detect(path: &Path) -> Result<ImageKind> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| image_err(path, format!("cannot open: {e}")))?;
    let mut head = vec![0u8; 0x208];
    let n = f
        .read(&mut head)
        .map_err(|e| image_err(path, format!("cannot read: {e}")))?;
    head.truncate(n);
    if head.len() >= 4 && &head[..4] == b"\x7fELF" {
        // The PVH note decides between PVH and vmlinux; the ELF loader tells.
        return Ok(ImageKind::Vmlinux);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(ImageKind::BzImage);
    }
    Err(image_err(
        path,
        "not a recognised kernel image (expected an ELF with a PVH note, a Linux vmlinux ELF or a bzImage)",
    ))
}

/// Loads the image and boot data into guest memory and returns the boot
/// vCPU's registers.
pub fn load(ram: &Ram, spec: &BootSpec) -> Result<BootRegs> {
    let path = &spec.kernel;
    let kind = detect(path)?;
    if spec.cmdline.len() + 1 > CMDLINE_MAX {
        return Err(EngineError::Config(format!(
            "command line is {} bytes, the limit is {}",
            spec.cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    let mut f = File::open(path).map_err(|e| image_err(path, format!("cannot open: {e}")))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if size + HIMEM_START > ram.bytes {
        return Err(image_err(
            path,
            format!(
                "image is {} KiB but guest memory is only {} MiB: use a larger --mem-mib",
                size >> 10,
                ram.bytes >> 20
            ),
        ));
    }
    match kind {
        ImageKind::BzImage => {
            let res =
                loader::BzImage::load(&ram.mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
                    .map_err(|e| load_err(path, ram, e))?;
            linux::setup(ram, spec, &res, true)
        }
        _ => {
            let bytes =
                std::fs::read(path).map_err(|e| image_err(path, format!("cannot read: {e}")))?;
            let info = elf32::parse(path, &bytes)?;
            check_overlap(path, &info, spec)?;
            if !info.is64 {
                // linux-loader loads ELF64 only; PVH kernels are often ELF32.
                let entry = info.pvh_entry.ok_or_else(|| {
                    image_err(path, "32-bit ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): not bootable")
                })?;
                elf32::load(ram, path, &bytes, &info)?;
                return pvh::setup(ram, spec, GuestAddress(entry));
            }
            // No high-memory floor: PVH images may place segments below 1 MiB
            // (checked above against the boot data instead).
            let res = loader::Elf::load(&ram.mem, None, &mut f, None)
                .map_err(|e| load_err(path, ram, e))?;
            match res.pvh_boot_cap {
                loader::elf::PvhBootCapability::PvhEntryPresent(entry) => {
                    pvh::setup(ram, spec, entry)
                }
                _ => linux::setup(ram, spec, &res, false),
            }
        }
    }
}

/// Guest-physical ranges the VMM writes boot data into (GDT/IDT; PVH start
/// info and memory map or the Linux zero page, boot stack and page tables;
/// the command line).
fn boot_data_ranges(spec: &BootSpec) -> [(u64, u64); 3] {
    [
        (gdt::GDT_ADDR, gdt::IDT_ADDR + 8),
        (pvh::START_INFO_ADDR, linux::PD_ADDR + 4 * 0x1000),
        (CMDLINE_START, CMDLINE_START + spec.cmdline.len() as u64 + 1),
    ]
}

/// Refuses an image whose segments would be overwritten by boot data.
fn check_overlap(path: &Path, info: &elf32::ElfInfo, spec: &BootSpec) -> Result<()> {
    for s in &info.segments {
        let (a, b) = (s.paddr, s.paddr.saturating_add(s.memsz));
        for (x, y) in boot_data_ranges(spec) {
            if a < y && x < b {
                return Err(image_err(
                    path,
                    format!(
                        "segment at {a:#x}..{b:#x} overlaps the VMM's boot data at {x:#x}..{y:#x}; \
                         link the image above {:#x} or at 1 MiB",
                        CMDLINE_START + CMDLINE_MAX as u64
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn load_err(path: &Path, ram: &Ram, e: loader::Error) -> EngineError {
    let msg = e.to_string();
    if msg.contains("memory") || msg.contains("Memory") || msg.contains("guest") {
        image_err(
            path,
            format!(
                "does not fit in {} MiB of guest memory ({msg}): use a larger --mem-mib",
                ram.bytes >> 20
            ),
        )
    } else {
        image_err(path, format!("cannot be loaded: {msg}"))
    }
}

/// Loads the initrd as high as possible below the end of low RAM; returns (addr, size).
pub fn load_initrd(ram: &Ram, path: &Path, below: u64) -> Result<(u64, u64)> {
    let data =
        std::fs::read(path).map_err(|e| image_err(path, format!("initrd: cannot read: {e}")))?;
    let size = data.len() as u64;
    let top = below.min(ram.regions[0].size);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= HIMEM_START)
        .ok_or_else(|| {
            image_err(
                path,
                format!("initrd of {} KiB does not fit in guest memory", size >> 10),
            )
        })?;
    use vm_memory::Bytes;
    ram.mem
        .write_slice(&data, GuestAddress(addr))
        .map_err(|e| image_err(path, format!("initrd: writing to guest memory: {e}")))?;
    Ok((addr, size))
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`].
pub fn write_cmdline(ram: &Ram, cmdline: &str) -> Result<()> {
    use vm_memory::Bytes;
    let mut bytes = cmdline.as_bytes().to_vec();
    if bytes.contains(&0) {
        return Err(EngineError::Config(
            "command line contains a NUL byte".into(),
        ));
    }
    bytes.push(0);
    ram.mem
        .write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| EngineError::Memory(format!("writing command line: {e}")))
}
