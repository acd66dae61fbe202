//! hw-tests: tests that run real guests on KVM, and the test-guest kit.
//!
//! The guests live in `hw-tests/guests/` as source (GNU as + freestanding C)
//! and are built by `build.rs` (`make -C hw-tests/guests O=$OUT_DIR/guests`)
//! into standard PVH ELF images. See `hw-tests/guests/README.md` for their
//! parameters, output formats and the system-call ABI.

use std::path::PathBuf;

/// Every guest built by `hw-tests/guests/Makefile`.
pub const GUESTS: &[&str] = &[
    "hello",
    "memtest",
    "smp",
    "timer",
    "sse",
    "diskcheck",
    "netcheck",
    "hello32",
    "memtest32",
];

/// Directory holding the built guests (`<name>.elf`).
pub fn guest_dir() -> PathBuf {
    PathBuf::from(env!("HOTSPARE_GUEST_DIR"))
}

/// Path of the built guest image `name` (e.g. `"memtest"` ->
/// `.../guests/memtest.elf`).
///
/// # Panics
/// If the image does not exist (unknown name, or the guest build failed).
pub fn guest_path(name: &str) -> PathBuf {
    let path = guest_dir().join(format!("{name}.elf"));
    if !path.is_file() {
        panic!(
            "test guest {name:?} not found at {} (known guests: {GUESTS:?}); guests are built from \
             hw-tests/guests by hw-tests/build.rs (`make -C hw-tests/guests O=<dir>`)",
            path.display()
        );
    }
    path
}

/// Reads the PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY` note in a
/// `PT_NOTE` segment) of an ELF image, as a PVH loader does.
pub fn pvh_entry(elf: &[u8]) -> Option<u32> {
    let rd16 = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if elf.get(0..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = usize::try_from(rd64(0x20)?).ok()?;
    let phentsize = usize::from(rd16(0x36)?);
    let phnum = usize::from(rd16(0x38)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd32(ph)? != 4 {
            continue;
        }
        let off = usize::try_from(rd64(ph + 8)?).ok()?;
        let size = usize::try_from(rd64(ph + 32)?).ok()?;
        let mut n = off;
        while n + 12 <= off + size {
            let namesz = rd32(n)? as usize;
            let descsz = rd32(n + 4)? as usize;
            let ty = rd32(n + 8)?;
            let name = elf.get(n + 12..n + 12 + namesz)?;
            let desc = n + 12 + namesz.next_multiple_of(4);
            if ty == 18 && name == b"Xen\0" && descsz >= 4 {
                return rd32(desc);
            }
            n = desc + descsz.next_multiple_of(4);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_is_built_with_a_pvh_note() {
        for name in GUESTS {
            let path = guest_path(name);
            let elf = std::fs::read(&path).expect("read guest");
            if name.ends_with("32") {
                assert_eq!(elf[4], 1, "{name}: not ELFCLASS32");
                let info = engine::boot::elf32::parse(&path, &elf).expect("parse ELF32");
                assert!(
                    info.pvh_entry.is_some_and(|e| e >= 0x10_0000),
                    "{name}: no PVH note"
                );
                continue;
            }
            let entry = pvh_entry(&elf).unwrap_or_else(|| panic!("{name}: no PVH note"));
            assert!(
                entry >= 0x10_0000,
                "{name}: PVH entry {entry:#x} below 1 MiB"
            );
        }
    }

    #[test]
    #[should_panic(expected = "not found")]
    fn unknown_guest_panics() {
        guest_path("no-such-guest");
    }
}
