//! Helpers of the virtio device tests: a driver's register accesses and
//! guest memory peeks and pokes.

use crate::devices::Device;
use crate::memory::Ram;

/// A 32-bit register read, as a driver does.
pub(crate) fn rd32(d: &mut dyn Device, off: u32) -> u32 {
    let mut b = [0u8; 4];
    d.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

/// A 32-bit register write.
pub(crate) fn wr32(d: &mut dyn Device, off: u32, v: u32) {
    d.write(u64::from(off), &v.to_le_bytes());
}

/// Guest memory at `gpa`.
pub(crate) fn peek(ram: &Ram, gpa: u64, len: usize) -> Vec<u8> {
    let (r, off) = ram.locate(gpa).unwrap();
    let mut b = vec![0u8; len];
    r.read(off, &mut b);
    b
}

/// Writes guest memory at `gpa`, as the guest would (not marked dirty).
pub(crate) fn poke(ram: &Ram, gpa: u64, b: &[u8]) {
    let (r, off) = ram.locate(gpa).unwrap();
    r.write(off, b);
}
