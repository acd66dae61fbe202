//! Parsing a virtio-blk request out of a descriptor chain (virtio 1.x §5.2.6).
//!
//! virtio 1.x lets a driver frame a request any way it likes (no
//! assumption about descriptor boundaries may be made), so a chain is read
//! as two byte streams: the device-readable descriptors, then the
//! device-writable ones. The readable stream starts with the 16-byte header
//! (type, reserved, sector); the last writable byte is the status. What
//! lies between is the data. Every rule a well-formed request follows is
//! checked here; a request that breaks one is answered with IOERR when it
//! has a status byte, and dropped with a used length of 0 when it has none.

use std::fmt;

use virtio_bindings::virtio_blk::*;

/// Bytes of a request header.
pub const HEADER_LEN: u32 = 16;
/// Bytes of one discard / write-zeroes segment.
pub const RANGE_LEN: u32 = 16;
/// Bytes of the device id GET_ID returns.
pub const ID_LEN: u32 = VIRTIO_BLK_ID_BYTES;
/// The sector size of the protocol.
pub const SECTOR: u64 = 512;
/// Most data bytes in one IN or OUT request (the host transfers at most
/// about 2 GiB in one read or write; Linux's driver sends far less).
pub const MAX_DATA: u64 = 1 << 30;

/// One descriptor of a chain, as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub write: bool,
}

/// The request types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the device id string.
    GetId,
    /// Discard ranges (holes are punched).
    Discard,
    /// Zero ranges (holes are punched).
    WriteZeroes,
}

/// A request, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: Kind,
    /// The first sector (In, Out).
    pub sector: u64,
    /// The data: device-readable for Out, Discard and WriteZeroes,
    /// device-writable for In and GetId.
    pub data: Vec<(u64, u32)>,
    /// Total bytes of `data`.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: u64,
}

/// A request that breaks the rules, and where its status byte is (if it has one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// The status byte's address, when the chain has one.
    pub status: Option<u64>,
    /// Whether the request type is one this device does not know (answered
    /// with UNSUPP rather than IOERR).
    pub unsupported: bool,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The `len` bytes of `segs` starting `skip` bytes in, as guest ranges.
fn slice(segs: &[Seg], mut skip: u64, mut len: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    for s in segs {
        if len == 0 {
            break;
        }
        let l = u64::from(s.len);
        if skip >= l {
            skip -= l;
            continue;
        }
        let take = (l - skip).min(len);
        out.push((s.addr.wrapping_add(skip), take as u32));
        len -= take;
        skip = 0;
    }
    out
}

/// Limits the device announces in its configuration space.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most data segments in a request (SEG_MAX).
    pub seg_max: u32,
    /// Most ranges in a discard or write-zeroes request.
    pub max_ranges: u32,
}

/// Parses a chain. `read` copies guest bytes at an address (the header is
/// read through it); it fails when the address is not in guest memory.
pub fn parse(
    segs: &[Seg],
    limits: Limits,
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> Result<Request, BadRequest> {
    let bad = |status, reason: String| BadRequest {
        status,
        unsupported: false,
        reason,
    };
    let first_w = segs.iter().position(|s| s.write).unwrap_or(segs.len());
    let (readable, writable) = segs.split_at(first_w);
    if writable.iter().any(|s| !s.write) {
        return Err(bad(
            None,
            "a device-readable descriptor follows a device-writable one".into(),
        ));
    }
    let r_len: u64 = readable.iter().map(|s| u64::from(s.len)).sum();
    let w_len: u64 = writable.iter().map(|s| u64::from(s.len)).sum();
    if w_len == 0 {
        return Err(bad(None, "no device-writable status byte".into()));
    }
    let status = slice(writable, w_len - 1, 1)[0].0;
    if r_len < u64::from(HEADER_LEN) {
        return Err(bad(
            Some(status),
            format!("{r_len} device-readable bytes cannot hold the 16-byte header"),
        ));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    let mut at = 0usize;
    for (addr, len) in slice(readable, 0, u64::from(HEADER_LEN)) {
        if !read(addr, &mut header[at..at + len as usize]) {
            return Err(bad(
                Some(status),
                format!("header at {addr:#x} is outside guest memory"),
            ));
        }
        at += len as usize;
    }
    let ty = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let r_data = r_len - u64::from(HEADER_LEN);
    let w_data = w_len - 1;
    let kind = match ty {
        VIRTIO_BLK_T_IN => Kind::In,
        VIRTIO_BLK_T_OUT => Kind::Out,
        VIRTIO_BLK_T_FLUSH => Kind::Flush,
        VIRTIO_BLK_T_GET_ID => Kind::GetId,
        VIRTIO_BLK_T_DISCARD => Kind::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => Kind::WriteZeroes,
        other => {
            return Err(BadRequest {
                status: Some(status),
                unsupported: true,
                reason: format!("request type {other} is not supported"),
            })
        }
    };
    let (data, data_len) = match kind {
        Kind::In | Kind::GetId => (slice(writable, 0, w_data), w_data),
        Kind::Out | Kind::Discard | Kind::WriteZeroes => {
            (slice(readable, u64::from(HEADER_LEN), r_data), r_data)
        }
        Kind::Flush => (Vec::new(), 0),
    };
    let (wrong_way, what) = match kind {
        Kind::In | Kind::GetId => (r_data, "device-readable"),
        _ => (w_data, "device-writable"),
    };
    if wrong_way != 0 && kind != Kind::Flush {
        return Err(bad(
            Some(status),
            format!("{kind:?} request carries {wrong_way} {what} data bytes"),
        ));
    }
    match kind {
        Kind::In | Kind::Out if data_len > MAX_DATA => {
            return Err(bad(
                Some(status),
                format!(
                    "{kind:?} of {data_len} bytes is over the {MAX_DATA}-byte limit of one request"
                ),
            ))
        }
        Kind::In | Kind::Out if data_len == 0 || data_len % SECTOR != 0 => {
            return Err(bad(
                Some(status),
                format!("{kind:?} of {data_len} bytes is not a whole number of 512-byte sectors"),
            ))
        }
        Kind::Discard | Kind::WriteZeroes => {
            let n = data_len / u64::from(RANGE_LEN);
            if data_len == 0
                || data_len % u64::from(RANGE_LEN) != 0
                || n > u64::from(limits.max_ranges)
            {
                return Err(bad(
                    Some(status),
                    format!(
                        "{kind:?} carries {data_len} bytes: not 1 to {} ranges of 16 bytes",
                        limits.max_ranges
                    ),
                ));
            }
        }
        Kind::GetId if data_len == 0 => {
            return Err(bad(Some(status), "GET_ID without a buffer".into()))
        }
        _ => {}
    }
    if data.len() > limits.seg_max as usize {
        return Err(bad(
            Some(status),
            format!(
                "{} data segments, more than SEG_MAX ({})",
                data.len(),
                limits.seg_max
            ),
        ));
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        seg_max: 8,
        max_ranges: 1,
    };

    /// Guest memory for the tests: headers live at 0x1000.
    fn mem(ty: u32, sector: u64) -> impl Fn(u64, &mut [u8]) -> bool {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        move |addr, out: &mut [u8]| {
            let Some(off) = addr.checked_sub(0x1000) else {
                return false;
            };
            let off = off as usize;
            if off + out.len() > 16 {
                return false;
            }
            out.copy_from_slice(&h[off..off + out.len()]);
            true
        }
    }

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

    #[test]
    fn the_usual_three_descriptor_layout() {
        let segs = [r(0x1000, 16), w(0x8000, 4096), w(0x9000, 1)];
        let req = parse(&segs, LIMITS, mem(VIRTIO_BLK_T_IN, 7)).unwrap();
        assert_eq!(
            req,
            Request {
                kind: Kind::In,
                sector: 7,
                data: vec![(0x8000, 4096)],
                data_len: 4096,
                status: 0x9000
            }
        );
        let segs = [r(0x1000, 16), r(0x8000, 1024), w(0x9000, 1)];
        let req = parse(&segs, LIMITS, mem(VIRTIO_BLK_T_OUT, 9)).unwrap();
        assert_eq!(
            (req.kind, req.data_len, req.data),
            (Kind::Out, 1024, vec![(0x8000, 1024)])
        );
    }

    #[test]
    fn any_framing_is_accepted() {
        // Header split over two descriptors, data and header sharing one,
        // status sharing the last data descriptor.
        let segs = [r(0x1000, 10), r(0x100a, 6), w(0x8000, 512 + 1)];
        let req = parse(&segs, LIMITS, mem(VIRTIO_BLK_T_IN, 1)).unwrap();
        assert_eq!(req.data, vec![(0x8000, 512)]);
        assert_eq!(req.status, 0x8000 + 512);
    }

    #[test]
    fn malformed_chains_are_refused_with_a_reason() {
        let cases: Vec<(Vec<Seg>, u32, Option<u64>, &str)> = vec![
            (vec![r(0x1000, 16)], VIRTIO_BLK_T_IN, None, "status byte"),
            (vec![], VIRTIO_BLK_T_IN, None, "status byte"),
            (
                vec![w(0x9000, 1), r(0x1000, 16)],
                VIRTIO_BLK_T_IN,
                None,
                "follows",
            ),
            (
                vec![r(0x1000, 8), w(0x9000, 1)],
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "16-byte header",
            ),
            (
                vec![r(0x7000, 16), w(0x9000, 1)],
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "outside guest memory",
            ),
            (
                vec![r(0x1000, 16), w(0x8000, 100), w(0x9000, 1)],
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "512-byte sectors",
            ),
            (
                vec![r(0x1000, 16), w(0x9000, 1)],
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "512-byte sectors",
            ),
            (
                vec![r(0x1000, 16), r(0x8000, 512), w(0x9000, 1)],
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "device-readable data",
            ),
            (
                vec![r(0x1000, 16), w(0x8000, 512), w(0x9000, 1)],
                VIRTIO_BLK_T_OUT,
                Some(0x9000),
                "device-writable data",
            ),
            (
                vec![r(0x1000, 16), r(0x8000, 32), w(0x9000, 1)],
                VIRTIO_BLK_T_DISCARD,
                Some(0x9000),
                "ranges",
            ),
            (
                vec![r(0x1000, 16), r(0x8000, 15), w(0x9000, 1)],
                VIRTIO_BLK_T_WRITE_ZEROES,
                Some(0x9000),
                "ranges",
            ),
            (
                vec![r(0x1000, 16), w(0x8000, 1 << 31), w(0x9000, 1)],
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "limit of one request",
            ),
            (
                vec![r(0x1000, 16), w(0x9000, 1)],
                VIRTIO_BLK_T_GET_ID,
                Some(0x9000),
                "GET_ID",
            ),
            (
                std::iter::once(r(0x1000, 16))
                    .chain((0..9).map(|i| w(0x10000 + i * 0x1000, 512)))
                    .chain(std::iter::once(w(0x9000, 1)))
                    .collect(),
                VIRTIO_BLK_T_IN,
                Some(0x9000),
                "SEG_MAX",
            ),
        ];
        for (segs, ty, status, why) in cases {
            let e = parse(&segs, LIMITS, mem(ty, 0)).unwrap_err();
            assert_eq!(e.status, status, "{segs:?}: {e}");
            assert!(e.reason.contains(why), "{segs:?}: {e}");
            assert!(!e.unsupported);
        }
        let e = parse(&[r(0x1000, 16), w(0x9000, 1)], LIMITS, mem(2, 0)).unwrap_err();
        assert!(e.unsupported && e.status == Some(0x9000), "{e}");
    }

    proptest! {
        /// Whatever the framing of a valid In request, the data and status
        /// come out the same.
        #[test]
        fn framing_does_not_change_the_request(
            sectors in 1u32..8,
            cuts in prop::collection::vec(1u32..600, 0..6),
        ) {
            let total = sectors * 512 + 1;
            let mut segs = vec![r(0x1000, 16)];
            let mut at = 0u32;
            for c in cuts {
                if at + c >= total { break; }
                segs.push(w(0x100000 + u64::from(at), c));
                at += c;
            }
            segs.push(w(0x100000 + u64::from(at), total - at));
            let req = parse(&segs, Limits { seg_max: 16, max_ranges: 1 }, mem(VIRTIO_BLK_T_IN, 3)).unwrap();
            prop_assert_eq!(req.data_len, u64::from(sectors) * 512);
            prop_assert_eq!(req.status, 0x100000 + u64::from(total) - 1);
            // The data ranges are contiguous and cover exactly the data.
            let mut next = 0x100000u64;
            for (a, l) in &req.data {
                prop_assert_eq!(*a, next);
                next += u64::from(*l);
            }
            prop_assert_eq!(next, 0x100000 + req.data_len);
        }

        /// No chain makes the parser panic.
        #[test]
        fn arbitrary_chains_never_panic(
            segs in prop::collection::vec((any::<u64>(), any::<u32>(), any::<bool>()), 0..12),
            ty in 0u32..20,
        ) {
            let segs: Vec<Seg> = segs.into_iter().map(|(addr, len, write)| Seg { addr, len, write }).collect();
            let _ = parse(&segs, LIMITS, mem(ty, u64::MAX));
        }
    }
}
