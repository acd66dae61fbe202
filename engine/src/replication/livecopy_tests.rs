//! The live copy's two threads over a real (loopback) connection: what the
//! spare receives, in order, and how a failure on either side ends it.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use checkpoint::fingerprint::MachineConfig;
use checkpoint::format::Limits;
use transport::{Channel, FrameKind, FramedConn};

use super::*;
use crate::replication::catchup::UnitSet;
use crate::replication::wire::{self, EpochBegin};
use crate::staged::{Prior, StagedEpoch};

const MIB: u64 = 1 << 20;
const PAGES: u64 = 16 * MIB / PAGE_SIZE;

/// A connected stream channel on loopback: (primary, spare).
fn stream_pair() -> (FramedConn, FramedConn) {
    crate::replication::loopback_pair(Channel::Stream)
}

/// 16 MiB of guest memory: text-like and random pages, the last MiB never
/// written (sent as a zero run).
fn guest() -> (Arc<Ram>, MachineConfig) {
    let ram = Ram::new(16 * MIB).unwrap();
    let mut next = crate::replication::xorshift(11);
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for p in 0..PAGES - 256 {
        for (i, b) in page.iter_mut().enumerate() {
            *b = if p % 3 == 0 {
                next() as u8
            } else {
                b"a live copy of a running guest "[(i + p as usize) % 31]
            };
        }
        ram.write(p * PAGE_SIZE, &page).unwrap();
    }
    let machine = MachineConfig {
        vcpus: 1,
        mem_regions: ram.layout(),
        cpuid: Vec::new(),
        disks: Vec::new(),
    };
    (Arc::new(ram), machine)
}

fn copy_of(
    ram: &Arc<Ram>,
    machine: &MachineConfig,
    runs: Vec<(u64, u64)>,
    catch_up: Receiver<CatchUpRound>,
) -> LiveCopy {
    LiveCopy {
        seq: 5,
        plan: PrecopyRound {
            runs,
            zero_runs: vec![((PAGES - 256) * PAGE_SIZE, 256)],
            disks: Vec::new(),
        },
        ram: ram.clone(),
        disks: Vec::new(),
        machine: machine.clone(),
        compression: Compression::Zstd { level: 1 },
        end: EpochEnd::empty(5),
        catch_up,
    }
}

/// What the spare end received until the primary closed it: each
/// container's label and bytes, applied in order to `into`.
fn receive(mut spare: FramedConn, machine: &MachineConfig, into: &Ram) -> Vec<(u64, usize)> {
    spare
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut got, mut container, mut stage) = (Vec::new(), Vec::new(), StagedEpoch::default());
    while let Ok(f) = spare.recv() {
        match f.kind {
            FrameKind::EpochBegin => {
                let b: EpochBegin = wire::decode("EpochBegin", &f.payload).unwrap();
                assert!(b.precopy);
                container.clear();
            }
            FrameKind::EpochData => container.extend_from_slice(&f.payload),
            FrameKind::EpochEnd => {
                let end: EpochEnd = wire::decode("EpochEnd", &f.payload).unwrap();
                let fp = machine.fingerprint();
                let h = stage
                    .parse(&container, &Limits::default(), Some(&fp), u64::MAX)
                    .unwrap();
                assert_eq!(h.seq, end.seq);
                stage.apply(&container, into, Prior::Unknown).unwrap();
                got.push((end.seq, container.len()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// Sends `copy` to a spare on loopback that applies it to `shadow`, with
/// `read` told when the copy was read (the link is never lost): what the
/// copy returned, and what the spare received.
fn copy_to_spare(
    copy: &LiveCopy,
    machine: &MachineConfig,
    shadow: &Ram,
    read: &(dyn Fn() + Sync),
) -> (Result<CopyFigures>, Vec<(u64, usize)>) {
    let (primary, spare) = stream_pair();
    let (mut send, acks) = primary.split();
    let signals = CopySignals {
        sent: &|_| {},
        read,
        lost: &|| false,
    };
    std::thread::scope(|s| {
        let r = s.spawn(|| receive(spare, machine, shadow));
        let f = copy.send(&mut send, 3, &signals);
        // Closed: the spare's end reads to the end.
        drop((send, acks));
        (f, r.join().unwrap())
    })
}

#[test]
fn a_pipelined_copy_and_its_catch_up_round_reach_the_spare_whole_and_in_order() {
    let (ram, machine) = guest();
    let (tx, rx) = crossbeam::channel::bounded(1);
    let copy = copy_of(&ram, &machine, vec![(0, PAGES - 256)], rx);
    // Once the copy is read, the guest writes pages the copy already read
    // (and two in the never-written MiB); the encoder hands them over as
    // the catch-up round, labelled 6.
    let written = [(10 * PAGE_SIZE, 8u64), ((PAGES - 2) * PAGE_SIZE, 2)];
    let read = || {
        for &(gpa, n) in &written {
            ram.write(gpa, &vec![0xee; (n * PAGE_SIZE) as usize])
                .unwrap();
        }
        let mut set = UnitSet::default();
        set.add_memory(written);
        tx.send(CatchUpRound { label: 6, set }).unwrap();
    };
    let shadow = Ram::new(16 * MIB).unwrap();
    let (figures, got) = copy_to_spare(&copy, &machine, &shadow, &read);
    let figures = figures.unwrap();
    // 15 MiB copied in 1 MiB containers, then the round's 10 pages.
    let labels: Vec<u64> = got.iter().map(|g| g.0).collect();
    let mut want = vec![5; 15];
    want.push(6);
    assert_eq!(labels, want);
    assert_eq!(figures.units, PAGES - 256 + 10);
    assert_eq!(figures.catch_up_units, 10);
    assert_eq!(
        figures.wire_bytes,
        got.iter().map(|g| g.1 as u64).sum::<u64>()
    );
    // The spare holds the guest's memory as it was after the writes.
    let (mut a, mut b) = (vec![0u8; PAGE_SIZE as usize], vec![0u8; PAGE_SIZE as usize]);
    for p in 0..PAGES {
        let (ra, oa) = ram.locate(p * PAGE_SIZE).unwrap();
        ra.read(oa, &mut a);
        let (rb, ob) = shadow.locate(p * PAGE_SIZE).unwrap();
        rb.read(ob, &mut b);
        assert!(a == b, "page {p} differs");
    }
}

#[test]
fn a_copy_whose_reading_fails_half_way_is_an_error_not_a_shorter_copy() {
    let (ram, machine) = guest();
    let (_tx, rx) = crossbeam::channel::bounded(1);
    // Eight containers' worth of pages, then a run past the guest's end.
    let copy = copy_of(
        &ram,
        &machine,
        vec![(0, 8 * SYNC_CHUNK_PAGES), (64 * MIB, 4)],
        rx,
    );
    let read_called = AtomicBool::new(false);
    let read = || read_called.store(true, Ordering::SeqCst);
    let shadow = Ram::new(16 * MIB).unwrap();
    let (r, got) = copy_to_spare(&copy, &machine, &shadow, &read);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("outside guest memory"), "{e}");
    // The containers read before the failure went out; the copy was never
    // reported read.
    assert_eq!(got.len(), 8);
    assert!(!read_called.load(Ordering::SeqCst));
}

#[test]
fn a_copy_to_a_spare_that_hangs_up_ends_with_the_sending_error() {
    let (ram, machine) = guest();
    // No catch-up round ever comes and the link is never reported lost:
    // the reader, done with the copy and waiting for its round, must still
    // stop when sending failed.
    let (_tx, rx) = crossbeam::channel::bounded(1);
    let copy = copy_of(&ram, &machine, vec![(0, PAGES - 256)], rx);
    let (primary, mut spare) = stream_pair();
    // The receiving half stays open: the primary learns of the hang-up
    // only by writing.
    let (mut send, _acks) = primary.split();
    let (read_tx, read_rx) = crossbeam::channel::bounded(1);
    let (gone_tx, gone_rx) = crossbeam::channel::bounded::<()>(1);
    let (done_tx, done) = crossbeam::channel::bounded(1);
    // Not scoped: a copy that never ends must fail the test, not hang it.
    std::thread::spawn(move || {
        let shipped = AtomicU64::new(0);
        // The last container goes out only once the reader is waiting for
        // its catch-up round and the spare has hung up.
        let sent = |_| {
            if shipped.fetch_add(1, Ordering::SeqCst) == 14 {
                let _ = gone_rx.recv();
            }
        };
        let read = || {
            let _ = read_tx.send(());
        };
        let signals = CopySignals {
            sent: &sent,
            read: &read,
            lost: &|| false,
        };
        let r = copy.send(&mut send, 3, &signals);
        let _ = done_tx.send(r.map(|f| f.units));
    });
    let mut ends = 0;
    while ends < 14 {
        if spare.recv().unwrap().kind == FrameKind::EpochEnd {
            ends += 1;
        }
    }
    read_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the copy was never read");
    drop(spare);
    drop(gone_tx);
    // A generous bound: the copy fails at its first write after the reset.
    let r = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the copy did not end");
    let e = r.unwrap_err();
    assert!(matches!(e, EngineError::Transport(_)), "{e}");
}
