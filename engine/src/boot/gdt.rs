//! A boot GDT written into guest memory and the matching segment registers.

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{EngineError, Result};
use crate::memory::Ram;

/// Where the boot GDT lives.
pub const GDT_ADDR: u64 = 0x500;
/// Where an empty IDT lives.
pub const IDT_ADDR: u64 = 0x520;

/// Code segment selector in the boot GDT.
pub const CODE_SEL: u16 = 0x08;
/// Data segment selector in the boot GDT.
pub const DATA_SEL: u16 = 0x10;
/// TSS selector in the boot GDT.
pub const TSS_SEL: u16 = 0x18;

/// Packs a GDT entry from flags (access byte in bits 0-7, flags in 12-15), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// Decodes a GDT entry into the form KVM takes.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes a flat GDT (32-bit or 64-bit code) and loads the segment registers.
pub fn setup(ram: &Ram, sregs: &mut kvm_sregs, long_mode: bool) -> Result<()> {
    let code_flags = if long_mode { 0xa09b } else { 0xc09b };
    let gdt = [
        0,
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0xfffff),
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    ram.mem
        .write_slice(&bytes, GuestAddress(GDT_ADDR))
        .map_err(|e| EngineError::Memory(format!("writing boot GDT: {e}")))?;
    ram.mem
        .write_slice(&[0u8; 8], GuestAddress(IDT_ADDR))
        .map_err(|e| EngineError::Memory(format!("writing boot IDT: {e}")))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (bytes.len() - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = segment(gdt[1], CODE_SEL);
    let data = segment(gdt[2], DATA_SEL);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], TSS_SEL);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes() {
        let s = segment(gdt_entry(0xc09b, 0, 0xfffff), CODE_SEL);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.type_, 0xb);
        assert_eq!((s.present, s.s, s.db, s.g, s.l, s.dpl), (1, 1, 1, 1, 0, 0));
        let l = segment(gdt_entry(0xa09b, 0, 0xfffff), CODE_SEL);
        assert_eq!((l.l, l.db), (1, 0));
    }

    #[test]
    fn base_bits_are_split_correctly() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment(e, 0x10);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.g, 0);
    }
}
