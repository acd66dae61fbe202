//! ELF images: PT_LOAD ranges of any ELF (for overlap checks), and a loader
//! for 32-bit (ELFCLASS32) PVH kernels.
//!
//! linux-loader loads ELF64 only, and PVH kernels are often ELF32 (the PVH
//! entry is 32-bit code anyway), so ELF32 images with a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note are loaded here: every PT_LOAD segment at
//! its physical address (`p_paddr`), the bytes past `p_filesz` zeroed.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use super::image_err;
use crate::error::Result;
use crate::memory::Ram;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One PT_LOAD segment: physical address, bytes in the file, bytes in memory, file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address.
    pub paddr: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (the rest zeroed).
    pub memsz: u64,
    /// Offset in the file.
    pub offset: u64,
}

/// A parsed ELF image: its class, segments and PVH entry.
#[derive(Clone, Debug)]
pub struct ElfInfo {
    /// True for ELFCLASS64.
    pub is64: bool,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
    /// The PVH 32-bit entry, if the image has the note.
    pub pvh_entry: Option<u64>,
}

fn rd(b: &[u8], off: usize, n: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(n)?)?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(s);
    Some(u64::from_le_bytes(v))
}

/// Parses an ELF image's program headers (little-endian, 32- or 64-bit).
pub fn parse(path: &Path, b: &[u8]) -> Result<ElfInfo> {
    let bad = |m: &str| image_err(path, format!("malformed ELF: {m}"));
    if b.len() < 52 || &b[..4] != b"\x7fELF" {
        return Err(bad("too short or no ELF magic"));
    }
    if b[5] != 1 {
        return Err(bad("not little-endian"));
    }
    let is64 = match b[4] {
        1 => false,
        2 => true,
        c => return Err(bad(&format!("unknown class {c}"))),
    };
    let (phoff, phentsize, phnum) = if is64 {
        (rd(b, 0x20, 8), rd(b, 0x36, 2), rd(b, 0x38, 2))
    } else {
        (rd(b, 0x1c, 4), rd(b, 0x2a, 2), rd(b, 0x2c, 2))
    };
    let (phoff, phentsize, phnum) = match (phoff, phentsize, phnum) {
        (Some(o), Some(e), Some(n)) => (o as usize, e as usize, n as usize),
        _ => return Err(bad("truncated header")),
    };
    let min_ent = if is64 { 56 } else { 32 };
    if phnum > 0 && phentsize < min_ent {
        return Err(bad(&format!("program header entries of {phentsize} bytes")));
    }
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for i in 0..phnum {
        let ph = phoff
            .checked_add(
                i.checked_mul(phentsize)
                    .ok_or_else(|| bad("program header table overflows"))?,
            )
            .ok_or_else(|| bad("program header table overflows"))?;
        let field = |o64: usize, o32: usize, n64: usize| {
            if is64 {
                rd(b, ph + o64, n64)
            } else {
                rd(b, ph + o32, 4)
            }
        };
        let ptype = rd(b, ph, 4).ok_or_else(|| bad("truncated program header"))? as u32;
        let (offset, paddr, filesz, memsz) = match (
            field(8, 4, 8),
            field(24, 12, 8),
            field(32, 16, 8),
            field(40, 20, 8),
        ) {
            (Some(a), Some(p), Some(f), Some(m)) => (a, p, f, m),
            _ => return Err(bad("truncated program header")),
        };
        match ptype {
            PT_LOAD if memsz > 0 => {
                if filesz > memsz
                    || offset
                        .checked_add(filesz)
                        .is_none_or(|e| e > b.len() as u64)
                {
                    return Err(bad(&format!("segment {i} lies outside the file")));
                }
                segments.push(Segment {
                    paddr,
                    filesz,
                    memsz,
                    offset,
                });
            }
            PT_NOTE => {
                let end = offset.saturating_add(filesz).min(b.len() as u64) as usize;
                let mut n = offset as usize;
                while n + 12 <= end {
                    let (Some(namesz), Some(descsz), Some(ty)) =
                        (rd(b, n, 4), rd(b, n + 4, 4), rd(b, n + 8, 4))
                    else {
                        break;
                    };
                    let name_at = n + 12;
                    let desc_at = name_at + (namesz as usize).next_multiple_of(4);
                    if ty as u32 == XEN_ELFNOTE_PHYS32_ENTRY
                        && b.get(name_at..name_at + namesz as usize) == Some(b"Xen\0")
                        && descsz >= 4
                    {
                        // The entry is 32 bits; some images store it as 64.
                        pvh_entry = rd(b, desc_at, if descsz >= 8 { 8 } else { 4 })
                            .map(|e| e & 0xffff_ffff);
                    }
                    n = desc_at + (descsz as usize).next_multiple_of(4);
                }
            }
            _ => {}
        }
    }
    Ok(ElfInfo {
        is64,
        segments,
        pvh_entry,
    })
}

/// Loads every PT_LOAD segment of an ELF32 image into guest memory.
pub fn load(ram: &Ram, path: &Path, b: &[u8], info: &ElfInfo) -> Result<()> {
    for s in &info.segments {
        let end = s
            .paddr
            .checked_add(s.memsz)
            .ok_or_else(|| image_err(path, "segment address overflows"))?;
        if ram.locate(s.paddr).is_none() || ram.locate(end - 1).is_none() {
            return Err(image_err(
                path,
                format!(
                    "segment at {:#x}..{end:#x} does not fit in {} MiB of guest memory: use a larger --mem-mib",
                    s.paddr,
                    ram.bytes >> 20
                ),
            ));
        }
        let data = &b[s.offset as usize..(s.offset + s.filesz) as usize];
        ram.mem
            .write_slice(data, GuestAddress(s.paddr))
            .map_err(|e| image_err(path, format!("writing segment at {:#x}: {e}", s.paddr)))?;
        let zeros = vec![0u8; (s.memsz - s.filesz) as usize];
        ram.mem
            .write_slice(&zeros, GuestAddress(s.paddr + s.filesz))
            .map_err(|e| image_err(path, format!("zeroing segment at {:#x}: {e}", s.paddr)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{self, BootSpec, CpuMode, ImageKind};

    /// A minimal ELF32 image: one PT_LOAD at `paddr` holding `code`, with
    /// `bss` zero bytes after it, and a PT_NOTE with the PVH entry.
    fn elf32(paddr: u32, code: &[u8], bss: u32, entry: u32) -> Vec<u8> {
        let mut b = vec![0u8; 0x100];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1; // ELFCLASS32
        b[5] = 1; // little-endian
        b[6] = 1;
        b[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[0x12..0x14].copy_from_slice(&3u16.to_le_bytes()); // EM_386
        b[0x18..0x1c].copy_from_slice(&entry.to_le_bytes());
        b[0x1c..0x20].copy_from_slice(&0x34u32.to_le_bytes()); // e_phoff
        b[0x28..0x2a].copy_from_slice(&0x34u16.to_le_bytes()); // e_ehsize
        b[0x2a..0x2c].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
        b[0x2c..0x2e].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let note_off = 0x80u32;
        let code_off = 0x100u32;
        let ph = |b: &mut Vec<u8>, at: usize, t: u32, off: u32, addr: u32, fsz: u32, msz: u32| {
            for (i, v) in [t, off, addr, addr, fsz, msz, 7, 4].iter().enumerate() {
                b[at + i * 4..at + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
        };
        ph(
            &mut b,
            0x34,
            PT_LOAD,
            code_off,
            paddr,
            code.len() as u32,
            code.len() as u32 + bss,
        );
        ph(&mut b, 0x54, PT_NOTE, note_off, 0, 20, 20);
        let note = [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY];
        for (i, v) in note.iter().enumerate() {
            b[0x80 + i * 4..0x84 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        b[0x8c..0x90].copy_from_slice(b"Xen\0");
        b[0x90..0x94].copy_from_slice(&entry.to_le_bytes());
        b.extend_from_slice(code);
        b
    }

    fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("hotspare-elf32-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn elf32_pvh_image_is_loaded_at_its_physical_addresses() {
        let code: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        let path = write("ok", &elf32(0x20_0000, &code, 5000, 0x20_0010));
        let ram = Ram::new(64 << 20).unwrap();
        // Dirty the bss area first: the loader must zero it.
        ram.mem
            .write_slice(&[0xee; 5000], GuestAddress(0x20_0000 + 300))
            .unwrap();
        let spec = BootSpec {
            kernel: path.clone(),
            cmdline: "a=b".into(),
            initrd: None,
        };
        let b = boot::load(&ram, &spec).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((b.kind, b.mode), (ImageKind::PvhElf, CpuMode::Protected32));
        assert_eq!(b.regs.rip, 0x20_0010);
        assert_eq!(b.regs.rbx, crate::boot::pvh::START_INFO_ADDR);
        let mut got = vec![0u8; 300];
        ram.mem
            .read_slice(&mut got, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(got, code);
        let mut bss = vec![1u8; 5000];
        ram.mem
            .read_slice(&mut bss, GuestAddress(0x20_0000 + 300))
            .unwrap();
        assert!(bss.iter().all(|&x| x == 0), "bss not zeroed");
        let magic: u32 = ram
            .mem
            .read_obj(GuestAddress(crate::boot::pvh::START_INFO_ADDR))
            .unwrap();
        assert_eq!(magic, crate::boot::pvh::XEN_HVM_START_MAGIC);
    }

    #[test]
    fn segments_over_the_boot_data_are_refused_by_address() {
        let path = write("overlap", &elf32(0x6000, &[0x90; 64], 0, 0x6000));
        let ram = Ram::new(64 << 20).unwrap();
        let spec = BootSpec {
            kernel: path.clone(),
            ..Default::default()
        };
        let err = boot::load(&ram, &spec).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            err.contains("overlaps the VMM's boot data") && err.contains("0x6000"),
            "{err}"
        );
    }

    #[test]
    fn elf32_without_pvh_note_and_truncated_headers_are_refused() {
        let mut img = elf32(0x20_0000, &[0x90; 16], 0, 0x20_0000);
        img[0x88..0x8c].copy_from_slice(&99u32.to_le_bytes()); // note type
        let path = write("nonote", &img);
        let ram = Ram::new(64 << 20).unwrap();
        let spec = BootSpec {
            kernel: path.clone(),
            ..Default::default()
        };
        let err = boot::load(&ram, &spec).unwrap_err().to_string();
        assert!(err.contains("without a PVH entry note"), "{err}");
        std::fs::write(&path, &img[..0x40]).unwrap();
        let err = boot::load(&ram, &spec).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("malformed ELF"), "{err}");
    }

    #[test]
    fn segment_beyond_memory_says_use_more_memory() {
        let path = write("big", &elf32(0x3f0_0000, &[0x90; 16], 2 << 20, 0x3f0_0000));
        let ram = Ram::new(64 << 20).unwrap();
        let spec = BootSpec {
            kernel: path.clone(),
            ..Default::default()
        };
        let err = boot::load(&ram, &spec).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("--mem-mib"), "{err}");
    }
}
