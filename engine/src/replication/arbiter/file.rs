//! The embedded arbiter: records in one file on one host.
//!
//! Each swap takes an exclusive `flock` on `PATH.lock`, reads `PATH` (a
//! JSON map from VM id to version and record), compares, and writes a new
//! `PATH` by rename, so a crash mid-write leaves the old file whole.
//!
//! It is valid only for processes that share the host (and the file): a
//! primary and a standby on two machines each with "the same" path would
//! each win their own file. Its identity names this host's boot id and the
//! file's inode, so such a pair refuses to replicate instead.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Arbiter, ArbiterError, Record, Swap, Versioned, MAX_RECORD_BYTES};

/// The longest a caller waits for another process's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Most VMs one file holds (a bound on what a read parses).
const MAX_VMS: usize = 4096;

#[derive(Default, Serialize, Deserialize)]
struct Table {
    vms: BTreeMap<String, Entry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    version: u64,
    record: Record,
}

/// Records in a file on this host.
pub struct FileArbiter {
    path: PathBuf,
    lock: PathBuf,
}

impl FileArbiter {
    /// Opens (creating if needed) the arbiter file at `path`.
    pub fn open(path: &Path) -> Result<FileArbiter, String> {
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let a = FileArbiter {
            path: path.to_path_buf(),
            lock: PathBuf::from(lock),
        };
        // Fail now, naming the path, if it cannot be used.
        a.locked().map_err(|e| e.to_string())?;
        Ok(a)
    }

    fn err(&self, why: impl std::fmt::Display) -> ArbiterError {
        // A local file that cannot be read or written decides nothing.
        ArbiterError::Unreachable {
            what: self.describe(),
            why: why.to_string(),
        }
    }

    fn locked(&self) -> Result<Flock<File>, ArbiterError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock)
            .map_err(|e| self.err(format!("{}: {e}", self.lock.display())))?;
        // Never wait on the lock forever: a holder that is frozen (SIGSTOP,
        // a stalled host) must make this arbiter unreachable for a while,
        // not block the caller's decision loop until it thaws.
        let until = std::time::Instant::now() + LOCK_WAIT;
        let mut f = f;
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(l),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                    if std::time::Instant::now() >= until {
                        return Err(self.err(format!(
                            "{} stayed locked for {LOCK_WAIT:?} (its holder may be frozen)",
                            self.lock.display()
                        )));
                    }
                    f = back;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err((_, e)) => {
                    return Err(self.err(format!("locking {}: {e}", self.lock.display())))
                }
            }
        }
    }

    fn load(&self) -> Result<Table, ArbiterError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Table::default()),
            Err(e) => return Err(self.err(format!("{}: {e}", self.path.display()))),
        };
        if bytes.len() > MAX_RECORD_BYTES * 16 {
            return Err(ArbiterError::Malformed {
                what: self.describe(),
                why: format!("{} bytes is too large for an arbiter file", bytes.len()),
            });
        }
        let t: Table = serde_json::from_slice(&bytes).map_err(|e| ArbiterError::Malformed {
            what: self.describe(),
            why: format!("{}: {e}", self.path.display()),
        })?;
        if t.vms.len() > MAX_VMS {
            return Err(ArbiterError::Malformed {
                what: self.describe(),
                why: format!("{} VMs (at most {MAX_VMS})", t.vms.len()),
            });
        }
        Ok(t)
    }

    fn store(&self, t: &Table) -> Result<(), ArbiterError> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(t).expect("a table serializes"))?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| self.err(format!("writing {}: {e}", self.path.display())))
    }
}

impl Arbiter for FileArbiter {
    fn describe(&self) -> String {
        format!(
            "file {} (valid only for processes on this host)",
            self.path.display()
        )
    }

    fn identity(&mut self) -> Result<String, ArbiterError> {
        let _l = self.locked()?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map_err(|e| self.err(format!("reading this host's boot id: {e}")))?;
        let m = std::fs::metadata(&self.lock).map_err(|e| self.err(e))?;
        Ok(format!(
            "file arbiter on host {} (device {}, inode {})",
            boot.trim(),
            m.dev(),
            m.ino()
        ))
    }

    fn read(&mut self, vm: &str) -> Result<Versioned, ArbiterError> {
        let _l = self.locked()?;
        let t = self.load()?;
        Ok(match t.vms.get(vm) {
            Some(e) => Versioned {
                record: Some(e.record.clone()),
                version: e.version,
            },
            None => Versioned {
                record: None,
                version: 0,
            },
        })
    }

    fn swap(&mut self, vm: &str, expect: u64, new: &Record) -> Result<Swap, ArbiterError> {
        let _l = self.locked()?;
        let mut t = self.load()?;
        let now = t.vms.get(vm).map_or(0, |e| e.version);
        if now != expect {
            let record = t.vms.get(vm).map(|e| e.record.clone());
            return Ok(Swap::Changed(Versioned {
                record,
                version: now,
            }));
        }
        let version = now + 1;
        t.vms.insert(
            vm.to_string(),
            Entry {
                version,
                record: new.clone(),
            },
        );
        self.store(&t)?;
        Ok(Swap::Done(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(term: u64, who: &str) -> Record {
        Record {
            term,
            primary: who.into(),
            spares: vec![],
            async_spares: vec![],
            protected: false,
            sync: 0,
            stopped: false,
        }
    }

    #[test]
    fn swaps_compare_versions_and_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("hs-farb-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("arbiter");
        let _ = std::fs::remove_file(&path);
        let mut a = FileArbiter::open(&path).unwrap();
        let mut b = FileArbiter::open(&path).unwrap();
        assert_eq!(a.read("vm").unwrap().version, 0);
        assert_eq!(a.swap("vm", 0, &rec(1, "a")).unwrap(), Swap::Done(1));
        // b read nothing, then tries to create: it loses and sees a's record.
        match b.swap("vm", 0, &rec(1, "b")).unwrap() {
            Swap::Changed(v) => {
                assert_eq!(v.version, 1);
                assert_eq!(v.record.unwrap().primary, "a");
            }
            other => panic!("b won a stale swap: {other:?}"),
        }
        assert_eq!(b.swap("vm", 1, &rec(2, "b")).unwrap(), Swap::Done(2));
        assert!(matches!(
            a.swap("vm", 1, &rec(2, "a")).unwrap(),
            Swap::Changed(_)
        ));
        // Other VMs are independent.
        assert_eq!(a.swap("other", 0, &rec(1, "a")).unwrap(), Swap::Done(1));
        let mut c = FileArbiter::open(&path).unwrap();
        assert_eq!(c.read("vm").unwrap().record.unwrap().primary, "b");
        assert_eq!(a.identity().unwrap(), c.identity().unwrap());
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            c.read("vm").unwrap_err(),
            ArbiterError::Malformed { .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_held_by_a_frozen_process_makes_the_arbiter_unreachable_not_stuck() {
        let dir = std::env::temp_dir().join(format!("hs-farb3-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("arbiter");
        let mut a = FileArbiter::open(&path).unwrap();
        // Another holder that never lets go (a SIGSTOPped peer).
        let held = a.locked().unwrap();
        let t = std::time::Instant::now();
        let e = a.read("vm").unwrap_err();
        assert!(matches!(e, ArbiterError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("stayed locked"), "{e}");
        assert!(t.elapsed() >= LOCK_WAIT, "gave up after {:?}", t.elapsed());
        drop(held);
        assert_eq!(a.read("vm").unwrap().version, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_swappers_each_win_exactly_once_per_version() {
        let dir = std::env::temp_dir().join(format!("hs-farb2-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("arbiter");
        let _ = std::fs::remove_file(&path);
        FileArbiter::open(&path).unwrap();
        // Four threads each try to move the record from every version to
        // the next; every version is won by exactly one.
        let wins: Vec<Vec<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let path = path.clone();
                    s.spawn(move || {
                        let mut a = FileArbiter::open(&path).unwrap();
                        let mut won = Vec::new();
                        for _ in 0..50 {
                            let v = a.read("vm").unwrap().version;
                            if let Swap::Done(n) =
                                a.swap("vm", v, &rec(v + 1, &i.to_string())).unwrap()
                            {
                                won.push(n);
                            }
                        }
                        won
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = wins.into_iter().flatten().collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "a version was won twice");
        assert_eq!(all, (1..=n as u64).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
