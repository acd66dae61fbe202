//! Tests of the standby's decisions.

use super::*;

#[test]
fn the_primarys_figures_are_summed_without_overflow() {
    let big = wire::EpochReport {
        pages: u64::MAX,
        raw_bytes: u64::MAX - 1,
        ..Default::default()
    };
    let small = wire::EpochReport {
        pages: 5,
        raw_bytes: 5,
        ..Default::default()
    };
    let s = super::takeover::report(&[(big, u64::MAX), (small, 7)]);
    assert!(
        s.contains(&format!("{} dirty pages", u64::MAX))
            && s.contains(&format!(
                "{} bytes raw, {} bytes on the wire",
                u64::MAX,
                u64::MAX
            )),
        "{s}"
    );
}
