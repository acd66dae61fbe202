//! The arbiter: the one place that says which copy of a VM is its primary.
//!
//! A VM's record `(term, primary, spares, protected, sync, stopped)` changes
//! only by compare-and-swap against the version the writer read, so of two
//! sides racing for it exactly one wins (`docs/fencing.md`). What each side
//! may write is decided by the pure rules in [`super::fencing`]; this module
//! only stores records:
//!
//! - [`etcd::EtcdArbiter`]: etcd v3 (a txn comparing the key's
//!   `mod_revision`), for hosts that do not share a machine;
//! - [`file::FileArbiter`]: an flock-protected file, valid only for
//!   processes on one host (the demo, tests, a single-host bench);
//! - [`memory::MemoryArbiter`]: in-process, for the decision tests.
//!
//! `--arbiter none` has no arbiter at all: the caller then decides alone.

pub mod etcd;
pub mod file;
pub mod memory;

use serde::{Deserialize, Serialize};

/// The most bytes a stored record may have (a record with a few spare
/// names is a few hundred bytes): a larger value is refused, not parsed.
pub const MAX_RECORD_BYTES: usize = 64 << 10;

/// Who is a VM's primary, and who may take over from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The primary's term: bumped by every takeover and every fresh start.
    pub term: u64,
    /// The primary's name.
    pub primary: String,
    /// The synchronous spares that hold the primary's committed state and
    /// may take over (by name: the address the primary streams to).
    pub spares: Vec<String>,
    /// The asynchronous (distant) spares: they never held output back and
    /// may take over only when no synchronous spare did.
    #[serde(default)]
    pub async_spares: Vec<String>,
    /// The spares protect the primary. False while the primary runs
    /// unprotected (it released output no spare holds): no spare may take over.
    pub protected: bool,
    /// The protection's generation: bumped whenever the primary (re)syncs
    /// its spares, so a spare holding a commit of an older sync can never
    /// win the record.
    pub sync: u64,
    /// The guest ended; a new primary may start the VM again.
    pub stopped: bool,
}

/// A record as read, with the version a swap must compare against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The record; `None` if the VM has none yet.
    pub record: Option<Record>,
    /// The record's version (etcd's `mod_revision`, the file's counter);
    /// 0 when there is no record.
    pub version: u64,
}

/// The result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// Written; the record's new version.
    Done(u64),
    /// The record changed since it was read: here it is now.
    Changed(Versioned),
}

/// Why the arbiter did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// No answer (network, timeout, server down): nothing was decided.
    #[error("arbiter {what} unreachable: {why}")]
    Unreachable {
        /// Which arbiter.
        what: String,
        /// What failed.
        why: String,
    },
    /// It answered with something that is not a record.
    #[error("arbiter {what}: malformed answer: {why}")]
    Malformed {
        /// Which arbiter.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The arbiter spec on the command line is not usable.
    #[error("--arbiter {spec:?}: {why}")]
    Spec {
        /// The spec given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A store of records that changes them only by compare-and-swap.
pub trait Arbiter: Send {
    /// What this arbiter is, for messages ("etcd at http://…").
    fn describe(&self) -> String;
    /// An identity both sides compare, so a primary and a standby that were
    /// given different arbiters (two etcd clusters, two files) refuse to
    /// replicate instead of each deciding alone.
    fn identity(&mut self) -> Result<String, ArbiterError>;
    /// Reads `vm`'s record.
    fn read(&mut self, vm: &str) -> Result<Versioned, ArbiterError>;
    /// Writes `new` as `vm`'s record if its version is still `expect` (0:
    /// only if there is no record).
    fn swap(&mut self, vm: &str, expect: u64, new: &Record) -> Result<Swap, ArbiterError>;
}

/// Encodes a record as stored (JSON: readable with `etcdctl get`).
pub fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a record always serializes")
}

/// Decodes a stored record, refusing oversized or malformed values.
pub fn decode(what: &str, b: &[u8]) -> Result<Record, ArbiterError> {
    if b.len() > MAX_RECORD_BYTES {
        return Err(ArbiterError::Malformed {
            what: what.into(),
            why: format!("a record of {} bytes (at most {MAX_RECORD_BYTES})", b.len()),
        });
    }
    serde_json::from_slice(b).map_err(|e| ArbiterError::Malformed {
        what: what.into(),
        why: format!("not a hotspare record: {e}"),
    })
}

/// VM ids are path and key components: keep them to a safe alphabet.
pub fn check_vm_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || id.starts_with('.')
    {
        return Err(format!(
            "--vm-id {id:?}: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

/// Opens the arbiter named by a `--arbiter` spec: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`,
/// `file:PATH`, or `none` (returns `None`).
pub fn open(spec: &str) -> Result<Option<Box<dyn Arbiter>>, ArbiterError> {
    let bad = |why: &str| ArbiterError::Spec {
        spec: spec.into(),
        why: why.into(),
    };
    if spec == "none" {
        return Ok(None);
    }
    if let Some(rest) = spec.strip_prefix("etcd://") {
        return Ok(Some(Box::new(
            etcd::EtcdArbiter::from_spec(rest).map_err(|why| bad(&why))?,
        )));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        if path.is_empty() {
            return Err(bad("file: needs a path"));
        }
        return Ok(Some(Box::new(
            file::FileArbiter::open(std::path::Path::new(path)).map_err(|why| bad(&why))?,
        )));
    }
    Err(bad(
        "expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX], file:PATH, or none",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            term: 3,
            primary: "a:1".into(),
            spares: vec!["b:2".into()],
            async_spares: vec![],
            protected: true,
            sync: 2,
            stopped: false,
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused_by_name() {
        assert_eq!(decode("t", &encode(&rec())).unwrap(), rec());
        let e = decode("t", b"{\"term\":1}").unwrap_err().to_string();
        assert!(e.contains("not a hotspare record"), "{e}");
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        let e = decode("t", &big).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn specs_are_parsed_or_refused_with_the_forms_named() {
        assert!(open("none").unwrap().is_none());
        let e = open("zookeeper://x").err().unwrap().to_string();
        assert!(e.contains("etcd://") && e.contains("file:"), "{e}");
        assert!(open("file:").is_err());
        assert!(open("etcd://").is_err());
        let a = open("etcd://127.0.0.1:1,127.0.0.1:2/hs").unwrap().unwrap();
        assert!(a.describe().contains("127.0.0.1:2"), "{}", a.describe());
    }

    #[test]
    fn vm_ids_keep_to_a_safe_alphabet() {
        assert!(check_vm_id("web-1.prod_a").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(check_vm_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
