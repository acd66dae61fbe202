//! Named fault points, for tests that must crash a process at an exact
//! moment rather than at a random one.
//!
//! `HOTSPARE_FAULT=<point>[:<n>]` makes the process SIGKILL itself the
//! `n`-th time (default: the first) it reaches `<point>`, after saying so on
//! stderr. A SIGKILL is what a crash looks like to everyone else: no
//! cleanup, no goodbye, the kernel closes the sockets. Without the variable
//! a point costs one relaxed atomic load.
//!
//! `HOTSPARE_FAULT=<point>:<n>:panic` panics the thread there instead (a
//! bug, not a crash): the process lives on with whatever locks that thread
//! held poisoned.
//!
//! The points (`hw-tests/tests/fault_points.rs` has a test for each):
//! - `primary-mid-epoch`: the primary has sent part of an epoch's data;
//! - `primary-before-ack`: the primary has sent a whole epoch and not yet
//!   read its ack;
//! - `primary-before-release`: the primary has read an ack and not yet
//!   released the epoch's output;
//! - `standby-before-apply`: the standby has acknowledged an epoch and not
//!   yet applied it;
//! - `store-mid-write`: a local checkpoint is partly written, not yet
//!   fsynced or renamed into place;
//! - `end-before-release`: the guest ended on its own, its end record is
//!   durable and its last output not yet released.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A place where a test may crash the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// Part of an epoch's data is on the wire.
    PrimaryMidEpoch,
    /// A whole epoch is on the wire, its ack not read.
    PrimaryBeforeAck,
    /// An ack was read, the epoch's output not released.
    PrimaryBeforeRelease,
    /// The standby acked an epoch and has not applied it.
    StandbyBeforeApply,
    /// A local checkpoint is partly written.
    StoreMidWrite,
    /// The guest ended; its end record is durable, its output held.
    EndBeforeRelease,
}

impl Point {
    /// Every point.
    pub const ALL: [Point; 6] = [
        Point::PrimaryMidEpoch,
        Point::PrimaryBeforeAck,
        Point::PrimaryBeforeRelease,
        Point::StandbyBeforeApply,
        Point::StoreMidWrite,
        Point::EndBeforeRelease,
    ];

    /// The name `HOTSPARE_FAULT` uses.
    pub fn name(self) -> &'static str {
        match self {
            Point::PrimaryMidEpoch => "primary-mid-epoch",
            Point::PrimaryBeforeAck => "primary-before-ack",
            Point::PrimaryBeforeRelease => "primary-before-release",
            Point::StandbyBeforeApply => "standby-before-apply",
            Point::StoreMidWrite => "store-mid-write",
            Point::EndBeforeRelease => "end-before-release",
        }
    }
}

/// The armed point, the hit that fires it, and whether it panics (else
/// SIGKILL).
struct Armed {
    point: Point,
    at: u64,
    panic: bool,
}

/// Parses `<point>[:<n>][:panic]`.
fn parse(spec: &str) -> Result<Armed, String> {
    let (rest, panic) = match spec.strip_suffix(":panic") {
        Some(rest) if rest.contains(':') => (rest, true),
        _ => (spec, false),
    };
    let (name, n) = match rest.split_once(':') {
        Some((name, n)) => (
            name,
            n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("HOTSPARE_FAULT={spec:?}: the count must be a positive number")
            })?,
        ),
        None => (rest, 1),
    };
    let point = Point::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            format!(
                "HOTSPARE_FAULT={spec:?}: unknown fault point; known: {}",
                Point::ALL.map(Point::name).join(", ")
            )
        })?;
    Ok(Armed {
        point,
        at: n,
        panic,
    })
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("HOTSPARE_FAULT").ok()?;
            match parse(&spec) {
                Ok(a) => Some(a),
                Err(e) => {
                    // A test that names a point wrongly must not pass
                    // because nothing crashed.
                    eprintln!("hotspare: {e}");
                    std::process::exit(2);
                }
            }
        })
        .as_ref()
}

/// Checks `HOTSPARE_FAULT` at start, so a misspelt point fails at once.
pub fn check_env() {
    let _ = armed();
}

static HITS: AtomicU64 = AtomicU64::new(0);

/// Marks that `point` was reached; crashes the process if it is armed
/// and this is the armed hit.
pub fn hit(point: Point) {
    let Some(a) = armed() else {
        return;
    };
    if a.point != point {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
        if a.panic {
            panic!(
                "hotspare: fault point {} hit (#{}): panic",
                point.name(),
                a.at
            );
        }
        eprintln!(
            "hotspare: fault point {} hit (#{}): SIGKILL",
            point.name(),
            a.at
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // Not reached: SIGKILL cannot be caught.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_point_and_a_positive_count() {
        let a = parse("primary-before-ack:7").unwrap();
        assert_eq!(
            (a.point, a.at, a.panic),
            (Point::PrimaryBeforeAck, 7, false)
        );
        let a = parse("standby-before-apply:3:panic").unwrap();
        assert_eq!(
            (a.point, a.at, a.panic),
            (Point::StandbyBeforeApply, 3, true)
        );
        assert!(parse("standby-before-apply:panic").is_err());
        assert_eq!(parse("store-mid-write").unwrap().at, 1);
        let e = parse("primary-mid-epoch:0").err().unwrap();
        assert!(e.contains("positive"), "{e}");
        let e = parse("nowhere").err().unwrap();
        assert!(
            e.contains("unknown fault point") && e.contains("standby-before-apply"),
            "{e}"
        );
    }
}
