//! A raw disk image: a regular file (sparse files stay sparse) or a block
//! device, opened read-write or read-only.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;

use std::path::PathBuf;
use std::str::FromStr;

use checkpoint::DiskLayout;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};

use super::request::SECTOR;

/// The unit of disk replication: blocks of 4 KiB (one bit each in the
/// written-bitmap, one page record each on the wire).
pub const BLOCK: u64 = 4096;

/// `--disk PATH[,readonly]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image.
    pub path: PathBuf,
    /// Guest writes are refused (VIRTIO_BLK_F_RO), the file opened read-only.
    pub read_only: bool,
}

impl FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("--disk {s:?}: expected PATH[,readonly]"))?;
        let mut read_only = false;
        for opt in parts {
            match opt {
                "readonly" | "ro" => read_only = true,
                other => {
                    return Err(format!(
                        "--disk {s:?}: unknown option {other:?} (expected PATH[,readonly])"
                    ))
                }
            }
        }
        Ok(DiskSpec {
            path: path.into(),
            read_only,
        })
    }
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskImage {
    /// The file.
    pub file: File,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes (a whole number of sectors).
    pub bytes: u64,
    /// Whether guest writes are refused.
    pub read_only: bool,
    /// Blocks written since the last capture took them (completed guest
    /// writes, discards and write-zeroes; failed ones too: their content
    /// is whatever the disk now holds).
    written: crate::sparse_bitmap::SparseBitmap,
}

impl DiskImage {
    /// Opens an image, refusing a missing file, a directory, and a size that
    /// is not a whole number of 512-byte sectors, with the path in the message.
    pub fn open(spec: &DiskSpec) -> Result<DiskImage, String> {
        let p = spec.path.display();
        let file = OpenOptions::new()
            .read(true)
            .write(!spec.read_only)
            .open(&spec.path)
            .map_err(|e| format!("disk image {p}: cannot open: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("disk image {p}: {e}"))?;
        let bytes = if meta.file_type().is_block_device() {
            use std::io::{Seek, SeekFrom};
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|e| format!("disk image {p}: size: {e}"))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(format!(
                "disk image {p}: not a regular file or block device"
            ));
        };
        if bytes == 0 || bytes % SECTOR != 0 {
            return Err(format!(
                "disk image {p}: size {bytes} bytes is not a non-zero multiple of {SECTOR}"
            ));
        }
        let written = crate::sparse_bitmap::SparseBitmap::new(
            bytes.div_ceil(BLOCK) as usize * BLOCK as usize,
            BLOCK as usize,
        );
        Ok(DiskImage {
            file,
            path: spec.path.clone(),
            bytes,
            read_only: spec.read_only,
            written,
        })
    }

    /// What the guest sees: size and mode (part of the VM's fingerprint).
    pub fn layout(&self) -> DiskLayout {
        DiskLayout {
            bytes: self.bytes,
            read_only: self.read_only,
        }
    }

    /// Number of 4 KiB blocks (the last one may be partial).
    pub fn blocks(&self) -> usize {
        self.bytes.div_ceil(BLOCK) as usize
    }

    /// Records that `len` bytes at `offset` changed.
    pub fn mark_written(&self, offset: u64, len: u64) {
        if len > 0 && offset < self.bytes {
            let len = len.min(self.bytes - offset);
            self.written.set_range(offset as usize, len as usize);
        }
    }

    /// Takes and clears the written-bitmap (one bit per block).
    pub fn take_written(&self) -> Vec<u64> {
        self.written.take()
    }

    /// The block ranges that hold data (everything else is a hole, which
    /// reads as zeros), from `SEEK_DATA`/`SEEK_HOLE`; the whole disk where
    /// the file system cannot tell.
    pub fn allocated_blocks(&self) -> Vec<std::ops::Range<usize>> {
        let fd = self.file.as_raw_fd();
        let size = self.bytes as i64;
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        let mut at = 0i64;
        while at < size {
            let data = match lseek(fd, at, Whence::SeekData) {
                Ok(d) => d,
                Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
                Err(_) => return std::iter::once(0..self.blocks()).collect(),
            };
            let hole = lseek(fd, data, Whence::SeekHole).unwrap_or(size).min(size);
            let (a, b) = (
                (data as u64 / BLOCK) as usize,
                (hole as u64).div_ceil(BLOCK) as usize,
            );
            match out.last_mut() {
                Some(r) if a <= r.end => r.end = r.end.max(b),
                _ => out.push(a..b),
            }
            at = hole;
        }
        out
    }

    /// Writes block data at byte `off`, cut at the end of the disk (the
    /// partial last block of a disk whose size is not a multiple of 4 KiB);
    /// returns the bytes written.
    pub fn write_blocks(&self, off: u64, data: &[u8]) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let len = (data.len() as u64).min(self.bytes.saturating_sub(off));
        self.file.write_all_at(&data[..len as usize], off)?;
        Ok(len)
    }

    /// [`punch`](Self::punch) cut at the end of the disk; returns the bytes.
    pub fn punch_blocks(&self, off: u64, len: u64) -> std::io::Result<u64> {
        let len = len.min(self.bytes.saturating_sub(off));
        self.punch(off, len)?;
        Ok(len)
    }

    /// Reads `n` blocks from block `first` and appends them to `out`,
    /// zero-padding the partial block at the end of the disk.
    pub fn read_blocks(&self, first: u64, n: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let off = first * BLOCK;
        let want = (n * BLOCK) as usize;
        let have = self.bytes.saturating_sub(off).min(n * BLOCK) as usize;
        let start = out.len();
        out.resize(start + want, 0);
        self.file.read_exact_at(&mut out[start..start + have], off)
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.bytes / SECTOR
    }

    /// Makes `len` bytes at `offset` read as zeros by punching a hole (the
    /// file stays sparse); where the file system cannot punch holes, zeros
    /// are written instead.
    pub fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), flags, o, l) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                use std::os::unix::fs::FileExt;
                let zeros = vec![0u8; 1 << 20];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_name_the_problem() {
        assert_eq!(
            "a.img".parse::<DiskSpec>().unwrap(),
            DiskSpec {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert!("a.img,readonly".parse::<DiskSpec>().unwrap().read_only);
        assert!("a.img,rw"
            .parse::<DiskSpec>()
            .unwrap_err()
            .contains("\"rw\""));
        assert!(",readonly"
            .parse::<DiskSpec>()
            .unwrap_err()
            .contains("PATH"));
    }

    #[test]
    fn bad_images_are_refused_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("hs-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("odd.img");
        std::fs::write(&odd, [0u8; 1000]).unwrap();
        for (path, why) in [
            (odd.clone(), "multiple of 512"),
            (dir.join("missing.img"), "cannot open"),
            (dir.clone(), "not a regular file"),
        ] {
            let spec = DiskSpec {
                path: path.clone(),
                read_only: true,
            };
            let e = DiskImage::open(&spec).unwrap_err();
            assert!(
                e.contains(why) && e.contains(&*path.to_string_lossy()),
                "{e}"
            );
        }
        let good = dir.join("good.img");
        let f = File::create(&good).unwrap();
        f.set_len(1 << 20).unwrap();
        let d = DiskImage::open(&DiskSpec {
            path: good,
            read_only: false,
        })
        .unwrap();
        assert_eq!(d.sectors(), 2048);
        use std::os::unix::fs::FileExt;
        d.file.write_all_at(&[7u8; 8192], 4096).unwrap();
        d.punch(4096, 4096).unwrap();
        let mut b = [1u8; 8192];
        d.file.read_exact_at(&mut b, 4096).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0) && b[4096..].iter().all(|&x| x == 7));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_blocks_allocated_extents_and_block_reads() {
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("hs-disk-ext-{}.img", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 * BLOCK + 512)
            .unwrap();
        let d = DiskImage::open(&DiskSpec {
            path: path.clone(),
            read_only: false,
        })
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(d.blocks(), 65, "the partial last block counts");
        assert!(
            d.allocated_blocks().is_empty(),
            "a fresh sparse image has no data"
        );
        d.file.write_all_at(&[1u8; 4096], 10 * BLOCK).unwrap();
        d.file.write_all_at(&[2u8; 512], 64 * BLOCK).unwrap();
        let alloc = d.allocated_blocks();
        assert!(
            alloc.iter().any(|r| r.contains(&10)) && alloc.iter().any(|r| r.contains(&64)),
            "{alloc:?}"
        );
        assert!(!alloc.iter().any(|r| r.contains(&30)), "{alloc:?}");
        // A write that straddles blocks marks both; one past the end nothing.
        d.mark_written(3 * BLOCK + 4000, 200);
        d.mark_written(100 * BLOCK, 4096);
        let w = d.take_written();
        assert_eq!(w[0], 0b11000, "{:#b}", w[0]);
        assert!(d.take_written().iter().all(|&x| x == 0), "taking clears");
        // The last, partial block reads zero-padded.
        let mut out = vec![9u8; 3];
        d.read_blocks(64, 1, &mut out).unwrap();
        assert_eq!(out.len(), 3 + 4096);
        assert!(out[3..515].iter().all(|&x| x == 2) && out[515..].iter().all(|&x| x == 0));
    }
}
