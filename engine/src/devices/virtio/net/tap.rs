//! The host side of a virtio-net device: a TAP interface opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every frame read or written
//! starts with the 12-byte `virtio_net_hdr_v1` the guest uses too.
//!
//! One `read` is one frame and one `write` sends one frame. The same type
//! wraps any datagram-preserving fd (a `SOCK_SEQPACKET` socket pair in the
//! unit tests), which has no offloads.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes of the header before every frame (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// An open TAP (or a test socket).
#[derive(Debug)]
pub struct Tap {
    file: File,
    /// The interface name (`hs0`), or a description of a test fd.
    pub name: String,
    /// Whether TUNSETOFFLOAD works (false for a test socket).
    can_offload: bool,
}

fn os_err(what: &str, name: &str) -> String {
    format!("TAP {name:?}: {what}: {}", std::io::Error::last_os_error())
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (or, where the caller may, creates) the TAP `name`, with the
    /// vnet header and non-blocking reads. A created interface is brought
    /// up; bridging it is the host's business.
    pub fn open(name: &str) -> Result<Tap, String> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(format!(
                "TAP name {name:?} must be 1 to {} characters with no '/', space or NUL",
                libc::IFNAMSIZ - 1
            ));
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: `path` is a valid NUL-terminated string; the returned fd is
        // checked before use and owned by the File below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(os_err("opening /dev/net/tun", name));
        }
        // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back the name into) an
        // ifreq-sized buffer; `req` is one and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(os_err(
                "TUNSETIFF (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR): is it a TAP this user may open, or may this user create one?",
                name,
            ));
        }
        let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which
        // points at `hdr`.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr) } < 0 {
            return Err(os_err("TUNSETVNETHDRSZ 12", name));
        }
        let tap = Tap {
            file,
            name: name.to_owned(),
            can_offload: true,
        };
        // No offloads until the driver asks for them: the TAP hands over
        // whole, checksummed frames.
        tap.set_offload(0)?;
        bring_up(name)?;
        Ok(tap)
    }

    /// Wraps a datagram-preserving fd (tests): frames carry the vnet
    /// header as on a TAP; offloads are never enabled.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Tap {
        Tap {
            file: File::from(fd),
            name: name.to_owned(),
            can_offload: false,
        }
    }

    /// Whether the guest may be offered receive offloads.
    pub fn can_offload(&self) -> bool {
        self.can_offload
    }

    /// Sets the receive offloads (`TUN_F_*`) the guest accepted.
    pub fn set_offload(&self, flags: u32) -> Result<(), String> {
        if !self.can_offload {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(os_err(&format!("TUNSETOFFLOAD {flags:#x}"), &self.name));
        }
        Ok(())
    }

    /// Reads one frame (header included); `WouldBlock` when none waits.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<()> {
        let n = (&self.file).write(frame)?;
        if n != frame.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    /// The fd, for epoll.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Sets IFF_UP on interface `name` (a created TAP starts down).
fn bring_up(name: &str) -> Result<(), String> {
    // SAFETY: a plain socket call; the fd is checked and owned below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(os_err("socket for SIOCGIFFLAGS", name));
    }
    // SAFETY: `s` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS fills the flags of an ifreq-sized buffer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(os_err("SIOCGIFFLAGS", name));
    }
    if req.flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an ifreq-sized buffer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        // Not fatal: the host may bring it up itself (and may forbid us).
        tracing::warn!(
            "{}",
            os_err("bringing the interface up (SIOCSIFFLAGS)", name)
        );
    }
    Ok(())
}
