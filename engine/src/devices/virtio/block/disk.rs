//! A raw disk image: a regular file (sparse files stay sparse) or a block
//! device, opened read-write or read-only.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::str::FromStr;

use nix::fcntl::{fallocate, FallocateFlags};

use super::request::SECTOR;

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
        Ok(DiskImage {
            file,
            path: spec.path.clone(),
            bytes,
            read_only: spec.read_only,
        })
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
}
