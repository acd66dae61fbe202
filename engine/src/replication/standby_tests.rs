//! Tests of the standby's decisions on a poisoned shadow: after a panic
//! while applying, it neither claims nor takes over the VM.

use super::takeover::{claim, seize};
use super::*;

/// A shadow whose lock a commit held when it panicked, half-way through.
fn poisoned() -> Arc<Mutex<Shadow>> {
    let shadow = Arc::new(Mutex::new(Shadow::default()));
    let s = shadow.clone();
    let res = std::thread::spawn(move || {
        let mut sh = s.lock().unwrap();
        sh.seq = 7;
        panic!("a panic while applying epoch 7 (test)");
    })
    .join();
    assert!(res.is_err());
    shadow
}

#[test]
fn a_panic_while_applying_poisons_the_shadow_and_refuses_the_takeover() {
    let shadow = poisoned();
    assert!(matches!(lock(&shadow), Err(EngineError::ShadowPoisoned)));
    let msg = EngineError::ShadowPoisoned.to_string();
    assert!(
        msg.contains("half-applied") && msg.contains("refuses to take over"),
        "{msg}"
    );
    // No claim, with or without an arbiter.
    let now = Instant::now();
    assert_eq!(
        claim(&shadow, &mut None, 2, 7, now, Duration::ZERO),
        StandbyInput::ClaimRefused
    );
    // No takeover: refused before anything changes.
    let took_over = AtomicU64::new(0);
    assert!(matches!(
        seize(&shadow, 2, &took_over),
        Err(EngineError::ShadowPoisoned)
    ));
    assert_eq!(took_over.load(Ordering::SeqCst), 0);
}

#[test]
fn a_sound_shadow_is_claimed_and_seized() {
    let shadow = Arc::new(Mutex::new(Shadow::default()));
    let now = Instant::now();
    assert_eq!(
        claim(&shadow, &mut None, 2, 7, now, Duration::ZERO),
        StandbyInput::ClaimGranted
    );
    let took_over = AtomicU64::new(0);
    let sh = seize(&shadow, 2, &took_over).unwrap();
    assert!(sh.taken_over && sh.term == 2);
    assert_eq!(took_over.load(Ordering::SeqCst), 2);
}

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

/// Reserved memory serves the first VM of exactly its size, once; a VM of
/// another size gets fresh memory and the reservation is released.
#[test]
fn reserved_memory_serves_only_a_vm_of_its_size() {
    let reserve = |mib: u64| {
        let r = Ram::new(mib << 20).unwrap();
        r.populate().unwrap();
        r
    };
    let base = |r: &Ram| r.span(0, 1).unwrap().0.as_slice().as_ptr();
    let mut reserved = Some(reserve(4));
    let host = base(reserved.as_ref().unwrap());
    let got = memory_for(&mut reserved, 4 << 20).unwrap();
    assert_eq!(base(&got), host, "the reserved memory itself");
    assert!(reserved.is_none());
    // Nothing left: the next VM gets memory of its own.
    let next = memory_for(&mut reserved, 4 << 20).unwrap();
    assert_ne!(base(&next), host);

    let mut reserved = Some(reserve(4));
    let got = memory_for(&mut reserved, 6 << 20).unwrap();
    assert_eq!(got.bytes(), 6 << 20);
    assert!(got.allocated_pages(0).is_empty(), "fresh, not populated");
    assert!(
        reserved.is_none(),
        "a reservation of the wrong size is released"
    );
}
