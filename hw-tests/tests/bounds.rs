//! A standby told the largest VM it shadows (`--max-mem-mib`) refuses a
//! primary that announces more, with a message naming the field, the
//! announced value and the cap, before it stages or creates anything of
//! that size. The refused primary runs unprotected and says why. The
//! standby is unchanged by the refusal: it then protects a primary of an
//! accepted size and takes it over correctly.

mod common;

use std::time::Duration;

use common::{reference, spawn_primary, GuestSpec, Rng, TempDir};

#[test]
fn a_primary_with_more_memory_than_the_standby_cap_is_refused_and_the_standby_stays_usable() {
    if !common::kvm_available() {
        return;
    }
    let mut rng = Rng::from_env("memory-cap");
    let dir = TempDir::new("memcap");
    let key = common::key_file(&dir, "key", rng.next());
    let scon = dir.path("s.txt");
    let (mut standby, addr) =
        common::spawn_standby_with(&key, &scon, "127.0.0.1:0", &["--max-mem-mib", "64"]);

    // 128 MiB of guest memory: refused.
    let big = GuestSpec::new("memtest", "rounds=20 writes=2000");
    assert_eq!(big.mem_mib, 128);
    let (r, _) = reference(&big);
    let pcon = dir.path("big.txt");
    let mut p = spawn_primary(&big, &pcon, &addr, &key, 25);
    let line = standby
        .wait_line("--max-mem-mib", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no refusal naming the cap:\n{}", standby.stderr()));
    assert!(
        line.contains(
            "guest memory: the primary announces 134217728 bytes (128 MiB) \
             but this standby's cap is 67108864 bytes (64 MiB) (set by --max-mem-mib)"
        ),
        "{line}"
    );
    let st = p.wait(Duration::from_secs(120), "the refused primary");
    let perr = p.stderr();
    assert!(st.success(), "{perr}");
    assert!(
        perr.contains("shadow refused epoch")
            && perr.contains("guest memory: the primary announces 134217728 bytes"),
        "the primary was not told why:\n{perr}"
    );
    assert!(perr.contains("UNPROTECTED"), "{perr}");
    assert_eq!(
        std::fs::read(&pcon).unwrap(),
        r,
        "the refused primary's output differs from an unprotected run"
    );
    assert!(
        !standby.stderr().contains("standby in sync"),
        "{}",
        standby.stderr()
    );
    assert!(
        standby.child.try_wait().unwrap().is_none(),
        "the standby ended:\n{}",
        standby.stderr()
    );

    // 64 MiB: protected, then taken over as usual.
    let mut small = GuestSpec::new("memtest", "rounds=300 writes=30000 pattern=mixed");
    small.mem_mib = 64;
    let pcon = dir.path("small.txt");
    let mut p = spawn_primary(&small, &pcon, &addr, &key, 25);
    standby
        .wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "the standby never synced with an accepted primary:\nprimary:\n{}\nstandby:\n{}",
                p.stderr(),
                standby.stderr()
            )
        });
    std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the guest finished before the kill: the test proves nothing"
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let (_, at) = common::finished_takeover(&mut standby, "after a refusal");
    let first = std::fs::read(&pcon).unwrap_or_default();
    let second = std::fs::read(&scon).unwrap_or_default();
    common::check_agrees("after a refusal", &first, at, &second);
}
