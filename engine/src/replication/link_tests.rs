use super::*;

fn link(id: SpareId, kind: Kind) -> Arc<LinkShared> {
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let devices = Arc::new(DeviceManager::new(irq, Box::new(std::io::sink())).unwrap());
    Arc::new(LinkShared {
        id,
        name: format!("spare{id}"),
        kind,
        lost: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        inflight: Mutex::new(VecDeque::new()),
        ack_latency: Mutex::new(Vec::new()),
        acked_at: Mutex::new(None),
        commit: Arc::new(Commit {
            set: Mutex::new(CommitSet::new()),
            devices,
        }),
        io_failover: Arc::default(),
        reason: Mutex::new(None),
        superseded: AtomicU64::new(0),
        joined: AtomicBool::new(false),
        commit_from: AtomicU64::new(0),
        copied: AtomicBool::new(true),
        copy_read: Mutex::new(None),
        queued: AtomicU64::new(0),
        copy: Mutex::new(None),
        bell: crate::runner::Doorbell::new(crate::vcpu::Shared::new(1)),
    })
}

fn end(seq: u64) -> Arc<EpochEnd> {
    Arc::new(EpochEnd::empty(seq))
}

/// One epoch fanned out: every port past its join point gets the same
/// container; a spare whose queue passes its byte bound is dropped (it
/// rejoins with a copy) and never blocks the others.
#[test]
fn a_spare_past_its_queue_bound_is_dropped_without_stalling_the_others() {
    let fan = Fanout::default();
    let (a, c, late) = (
        link(1, Kind::Sync),
        link(2, Kind::Async),
        link(3, Kind::Sync),
    );
    let (tx_a, rx_a) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
    let (tx_c, rx_c) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
    let (tx_l, rx_l) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
    for (shared, tx, from, max_queued) in [
        (&a, tx_a, 0, 1 << 30),
        (&c, tx_c, 0, 3_000),
        (&late, tx_l, 3, 1 << 30),
    ] {
        fan.ports().push(Port {
            shared: shared.clone(),
            tx,
            route: JoinRoute::streaming(from),
            catch_up: None,
            max_queued,
        });
    }
    for seq in 1..=6u64 {
        let container = Arc::new(vec![seq as u8; 1_000]);
        fan.deliver(seq, container, end(seq));
        // A's sender keeps up; C's never reads.
        while let Ok(s) = rx_a.try_recv() {
            a.queued
                .fetch_sub(s.container.len() as u64, Ordering::SeqCst);
        }
    }
    assert!(!a.is_lost() && !late.is_lost());
    assert!(
        c.is_lost(),
        "the async spare past its bound was not dropped"
    );
    assert!(c.why().contains("too far behind"), "{}", c.why());
    // C got 1..=3 (3,000 bytes), then the 4th passed its bound.
    let got: Vec<u64> = rx_c.try_iter().map(|s| s.seq).collect();
    assert_eq!(got, vec![1, 2, 3]);
    // A joiner at 3 gets only the epochs after its join point, the same
    // bytes (one Arc) as everyone else.
    let late_got: Vec<Shipment> = rx_l.try_iter().collect();
    assert_eq!(
        late_got.iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert!(late_got.iter().all(|s| s.container[0] == s.seq as u8));
}

const LINK_TEST_QUEUE: usize = 64;

/// The backlog the encoder codes by: bytes handed to a live link's
/// sender and not yet written; a lost link's do not count.
#[test]
fn the_backlog_is_the_most_unwritten_bytes_of_a_live_link() {
    let fan = Fanout::default();
    let (a, b) = (link(1, Kind::Sync), link(2, Kind::Async));
    let (tx_a, rx_a) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
    let (tx_b, _rx_b) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
    for (shared, tx) in [(&a, tx_a), (&b, tx_b)] {
        fan.ports().push(Port {
            shared: shared.clone(),
            tx,
            route: JoinRoute::streaming(0),
            catch_up: None,
            max_queued: 1 << 30,
        });
    }
    assert_eq!(fan.backlog(), 0);
    fan.deliver(1, Arc::new(vec![0; 700]), end(1));
    fan.deliver(2, Arc::new(vec![0; 300]), end(2));
    assert_eq!(fan.backlog(), 1_000);
    // A's sender wrote both; B's is still behind.
    for s in rx_a.try_iter() {
        a.queued
            .fetch_sub(s.container.len() as u64, Ordering::SeqCst);
    }
    assert_eq!(fan.backlog(), 1_000);
    b.lose("test".into());
    assert_eq!(fan.backlog(), 0);
}

/// A connected heartbeat channel on loopback: (primary, shadow).
fn heartbeat_pair() -> (FramedConn, FramedConn) {
    crate::replication::loopback_pair(transport::Channel::Heartbeat)
}

/// The frames the shadow end reads until the primary closes it.
fn frames_until_close(mut shadow: FramedConn) -> Vec<Frame> {
    shadow
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    while let Ok(f) = shadow.recv() {
        got.push(f);
    }
    got
}

/// A standby claims the VM when the heartbeat connection closes without
/// a goodbye. So however the primary's heartbeat thread drops a live
/// shadow, the last frame before the close says its state is stale;
/// only a guest that ended says goodbye.
#[test]
fn a_dropped_link_tells_the_shadow_it_is_stale_before_closing() {
    let timing = Timing {
        heartbeat: Duration::from_millis(5),
        timeout: Duration::from_millis(40),
    };
    let flag = || Arc::new(AtomicBool::new(false));
    // (how the link ends, the frame the shadow sees last)
    for case in [
        "silent shadow",
        "stopped",
        "guest ended",
        "unexpected frame",
    ] {
        let (primary, mut shadow) = heartbeat_pair();
        let l = member();
        let (stop, bye, prot) = (flag(), flag(), Arc::new(AtomicBool::new(true)));
        let (l2, stop2, bye2, prot2) = (l.clone(), stop.clone(), bye.clone(), prot.clone());
        let t = std::thread::spawn(move || heartbeat(primary, 3, timing, l2, stop2, bye2, prot2));
        // The first heartbeat says protected.
        let first = shadow.recv().unwrap();
        assert_eq!(first.kind, FrameKind::Heartbeat, "{case}");
        assert!(
            wire::decode::<Heartbeat>("Heartbeat", &first.payload)
                .unwrap()
                .protected
        );
        match case {
            "silent shadow" => {}
            "stopped" => stop.store(true, Ordering::SeqCst),
            "guest ended" => bye.store(true, Ordering::SeqCst),
            _ => shadow.send(FrameKind::Ack, 3, &[]).unwrap(),
        }
        t.join().unwrap();
        let last = frames_until_close(shadow).pop().unwrap_or(first);
        if case == "guest ended" {
            assert_eq!(last.kind, FrameKind::Goodbye, "{case}");
            continue;
        }
        assert_eq!(last.kind, FrameKind::Heartbeat, "{case}");
        let hb = wire::decode::<Heartbeat>("Heartbeat", &last.payload).unwrap();
        assert!(!hb.protected, "{case}: the close would read as a crash");
        match case {
            "silent shadow" => assert!(l.why().contains("no heartbeat answer"), "{}", l.why()),
            "stopped" => assert!(!l.is_lost(), "{}", l.why()),
            _ => assert!(l.why().contains("unexpected Ack"), "{}", l.why()),
        }
    }
}

fn frame(kind: FrameKind, term: u64, payload: Vec<u8>) -> Frame {
    Frame {
        kind,
        term,
        seq: 1,
        payload,
    }
}

fn ack(term: u64, seq: u64) -> Frame {
    frame(FrameKind::Ack, term, wire::encode(&Ack { seq }))
}

/// A synchronous member of a protected commit set (output held from
/// epoch 0), with epochs 1 and 2 sent on its link of term 3.
fn member() -> Arc<LinkShared> {
    let l = link(1, Kind::Sync);
    {
        let mut set = l.commit.lock();
        set.add(1, "spare1", Kind::Sync, 0, true);
        assert_eq!(set.hold_from(0, &[1]), vec!["spare1".to_string()]);
    }
    l.track(1);
    l.track(2);
    l
}

/// Forged acks (an epoch after the last one sent, an epoch acked
/// already, another term) drop the link and release nothing.
#[test]
fn an_ack_for_an_epoch_not_sent_or_of_another_term_never_counts_as_a_commit() {
    let l = member();
    assert!(answer(&l, 3, &ack(3, 1)));
    assert_eq!(l.commit.lock().released(), Some(1));
    for (forged, why) in [
        (ack(3, 5), "after the last epoch sent"),
        (ack(3, 1), "awaits no ack"),
        (ack(4, 2), "of term 4 on a link of term 3"),
    ] {
        let l = member();
        assert!(answer(&l, 3, &ack(3, 1)));
        assert!(!answer(&l, 3, &forged), "{why}: the link lives on");
        assert!(l.is_lost());
        assert!(
            l.why().contains("protocol error") && l.why().contains(why),
            "{}",
            l.why()
        );
        assert_eq!(l.commit.lock().released(), Some(1), "{why}: released");
        assert_eq!(l.acked.load(Ordering::SeqCst), 1);
    }
    // The real ack of 2 still counts on a sound link.
    assert!(answer(&l, 3, &ack(3, 2)));
    assert_eq!(l.commit.lock().released(), Some(2));
}

/// A refusal claiming a takeover supersedes the primary only for a
/// newer term, from an answer naming an epoch sent on the link.
#[test]
fn a_refusal_supersedes_only_when_believed() {
    let nack = |term, seq, by| {
        frame(
            FrameKind::Nack,
            term,
            wire::encode(&Nack {
                seq,
                reason: "test".into(),
                superseded_by: by,
            }),
        )
    };
    for (f, by) in [
        (nack(3, 2, Some(4)), 4),
        (nack(3, 0, Some(9)), 9),
        (nack(3, 7, Some(4)), 0),
        (nack(3, 1, Some(3)), 0),
        (nack(2, 1, Some(4)), 0),
    ] {
        let l = member();
        assert!(!answer(&l, 3, &f));
        assert!(l.is_lost());
        assert_eq!(l.superseded.load(Ordering::SeqCst), by, "{}", l.why());
    }
}
