//! The rules a virtio-net descriptor chain must follow (virtio 1.x §5.1.6),
//! checked before any guest byte is copied.
//!
//! A transmit chain is device-readable only: the 12-byte header, then the
//! frame, framed across descriptors any way the driver likes. A receive
//! chain is device-writable only and must hold at least the header. What
//! breaks a rule is refused with a reason; the device completes the chain
//! with a used length of 0 and drops the frame, and the VMM goes on.

use std::fmt;

use super::tap::VNET_HDR_LEN;
pub use crate::devices::virtio::block::request::Seg;

/// Largest frame after the header: a 64 KiB GSO packet plus its Ethernet
/// header (and a VLAN tag), as the TAP accepts.
pub const MAX_FRAME: usize = 65535 + 14 + 4;
/// Smallest frame after the header: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Why a chain was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadChain {
    /// A TX chain has a device-writable descriptor.
    WritableInTx,
    /// An RX chain has a device-readable descriptor.
    ReadableInRx,
    /// A TX chain's bytes are fewer than header + Ethernet header.
    TooShort(u64),
    /// A TX chain's bytes are more than header + the largest frame.
    TooLong(u64),
    /// An RX chain cannot even hold the header.
    NoRoomForHeader(u64),
    /// A descriptor lies outside guest memory.
    OutsideMemory(u64, u32),
}

impl fmt::Display for BadChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadChain::WritableInTx => write!(f, "a transmit chain has a device-writable descriptor"),
            BadChain::ReadableInRx => write!(f, "a receive chain has a device-readable descriptor"),
            BadChain::TooShort(n) => write!(
                f,
                "a transmit chain of {n} bytes is shorter than the {VNET_HDR_LEN}-byte header and an Ethernet header"
            ),
            BadChain::TooLong(n) => write!(
                f,
                "a transmit chain of {n} bytes exceeds the {VNET_HDR_LEN}-byte header plus the {MAX_FRAME}-byte largest frame"
            ),
            BadChain::NoRoomForHeader(n) => write!(
                f,
                "a receive chain of {n} bytes cannot hold the {VNET_HDR_LEN}-byte header"
            ),
            BadChain::OutsideMemory(a, l) => {
                write!(f, "a descriptor at {a:#x}+{l:#x} lies outside guest memory")
            }
        }
    }
}

/// Checks a TX chain; returns its total length (header included).
pub fn tx_len(segs: &[Seg], inside: impl Fn(u64, u32) -> bool) -> Result<usize, BadChain> {
    let mut total = 0u64;
    for s in segs {
        if s.write {
            return Err(BadChain::WritableInTx);
        }
        if !inside(s.addr, s.len) {
            return Err(BadChain::OutsideMemory(s.addr, s.len));
        }
        total += u64::from(s.len);
        if total > (VNET_HDR_LEN + MAX_FRAME) as u64 {
            return Err(BadChain::TooLong(total));
        }
    }
    if total < (VNET_HDR_LEN + MIN_FRAME) as u64 {
        return Err(BadChain::TooShort(total));
    }
    Ok(total as usize)
}

/// Checks an RX chain; returns how many bytes it can take.
pub fn rx_room(segs: &[Seg], inside: impl Fn(u64, u32) -> bool) -> Result<usize, BadChain> {
    let mut total = 0u64;
    for s in segs {
        if !s.write {
            return Err(BadChain::ReadableInRx);
        }
        if !inside(s.addr, s.len) {
            return Err(BadChain::OutsideMemory(s.addr, s.len));
        }
        total += u64::from(s.len);
    }
    if total < VNET_HDR_LEN as u64 {
        return Err(BadChain::NoRoomForHeader(total));
    }
    // Never more than one frame needs.
    Ok(total.min((VNET_HDR_LEN + MAX_FRAME) as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(addr: u64, len: u32) -> Seg {
        Seg {
            addr,
            len,
            write: false,
        }
    }
    fn w(addr: u64, len: u32) -> Seg {
        Seg {
            addr,
            len,
            write: true,
        }
    }
    fn all(_: u64, _: u32) -> bool {
        true
    }

    #[test]
    fn transmit_chains_are_framed_any_way_but_bounded() {
        assert_eq!(tx_len(&[r(0, 12), r(100, 60)], all), Ok(72));
        assert_eq!(tx_len(&[r(0, 72)], all), Ok(72));
        assert_eq!(tx_len(&[r(0, 6), r(10, 6), r(20, 14)], all), Ok(26));
        assert_eq!(tx_len(&[r(0, 25)], all), Err(BadChain::TooShort(25)));
        assert_eq!(tx_len(&[], all), Err(BadChain::TooShort(0)));
        assert_eq!(
            tx_len(&[r(0, 12), w(100, 60)], all),
            Err(BadChain::WritableInTx)
        );
        let max = (VNET_HDR_LEN + MAX_FRAME) as u32;
        assert_eq!(tx_len(&[r(0, max)], all), Ok(max as usize));
        assert_eq!(
            tx_len(&[r(0, max), r(0, 1)], all),
            Err(BadChain::TooLong(u64::from(max) + 1))
        );
        // Lengths that would overflow 32 bits are refused, not wrapped.
        let e = tx_len(&[r(0, u32::MAX), r(0, u32::MAX)], all).unwrap_err();
        assert!(matches!(e, BadChain::TooLong(_)), "{e}");
        let e = tx_len(&[r(0x1000, 100)], |a, _| a < 0x1000).unwrap_err();
        assert_eq!(e, BadChain::OutsideMemory(0x1000, 100));
        assert!(e.to_string().contains("outside guest memory"), "{e}");
    }

    #[test]
    fn receive_chains_must_be_writable_and_hold_the_header() {
        assert_eq!(rx_room(&[w(0, 2048)], all), Ok(2048));
        assert_eq!(rx_room(&[w(0, 6), w(10, 6)], all), Ok(12));
        assert_eq!(
            rx_room(&[w(0, 11)], all),
            Err(BadChain::NoRoomForHeader(11))
        );
        assert_eq!(
            rx_room(&[w(0, 100), r(0, 100)], all),
            Err(BadChain::ReadableInRx)
        );
        assert_eq!(
            rx_room(&[w(0, u32::MAX)], all),
            Ok(VNET_HDR_LEN + MAX_FRAME)
        );
        assert!(matches!(
            rx_room(&[w(0x5000, 100)], |a, _| a < 0x1000),
            Err(BadChain::OutsideMemory(0x5000, 100))
        ));
    }
}
