//! virtio-net driven as a guest driver would, with a `SOCK_SEQPACKET`
//! socket pair in place of the TAP: the test holds the wire's other end.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_mmio::*;

use super::*;
use crate::devices::conformance::device_conformance_tests;
use crate::devices::virtio::status;
use crate::devices::virtio::test_util::{peek, poke, rd32, wr32};
use crate::devices::OutputCommit;

const QSIZE: u16 = 16;
/// Per queue: descriptors, avail, used at base + 0, 0x1000, 0x2000.
const RX_RING: u64 = 0x10000;
const TX_RING: u64 = 0x20000;
const CTRL_RING: u64 = 0x30000;
const RX_BUF: u64 = 0x40000;
const TX_BUF: u64 = 0x80000;
const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;

struct Env {
    dev: Net,
    ram: Arc<Ram>,
    wire: std::fs::File,
    tx_avail: u16,
    rx_avail: u16,
}

fn pair() -> (OwnedFd, std::fs::File) {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which we own.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn make(limits: GateLimits) -> (Net, Arc<Ram>, std::fs::File) {
    let (ours, wire) = pair();
    let ram = Arc::new(Ram::new(2 << 20).unwrap());
    let notify = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    let dev = Net::new(
        "virtio-net.0",
        Arc::new(Tap::from_fd(ours, "test-wire")),
        [0x52, 0, 0, 0, 0, 1],
        limits,
        ram.clone(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        notify,
    )
    .unwrap();
    (dev, ram, wire)
}

/// §3.1.1 with VERSION_1 and MAC (no offloads, no mergeable buffers).
fn bring_up(d: &mut Net) {
    bring_up_with(d, 1 << VIRTIO_NET_F_MAC);
}

fn bring_up_with(d: &mut Net, features: u32) {
    wr32(d, VIRTIO_MMIO_STATUS, 0);
    wr32(d, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr32(d, VIRTIO_MMIO_DRIVER_FEATURES, features);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr32(d, VIRTIO_MMIO_STATUS, s);
    assert_ne!(rd32(d, VIRTIO_MMIO_STATUS) & status::FEATURES_OK, 0);
    // The control queue only with CTRL_VQ: a driver without it leaves the
    // queue alone, and the device must work all the same.
    let ctrl = features & (1 << VIRTIO_NET_F_CTRL_VQ) != 0;
    let queues: &[(u32, u64)] = if ctrl {
        &[(0, RX_RING), (1, TX_RING), (2, CTRL_RING)]
    } else {
        &[(0, RX_RING), (1, TX_RING)]
    };
    for &(q, base) in queues {
        wr32(d, VIRTIO_MMIO_QUEUE_SEL, q);
        wr32(d, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
        wr32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, base as u32);
        wr32(d, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
        wr32(d, VIRTIO_MMIO_QUEUE_USED_LOW, (base + 0x2000) as u32);
        wr32(d, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    wr32(d, VIRTIO_MMIO_STATUS, s | status::DRIVER_OK);
}

fn desc(ram: &Ram, ring: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    poke(ram, ring + u64::from(i) * 16, &b);
}

fn used_idx(ram: &Ram, ring: u64) -> u16 {
    u16::from_le_bytes(peek(ram, ring + 0x2002, 2).try_into().unwrap())
}

fn used_elem(ram: &Ram, ring: u64, i: u16) -> (u32, u32) {
    let b = peek(ram, ring + 0x2004 + u64::from(i % QSIZE) * 8, 8);
    (
        u32::from_le_bytes(b[..4].try_into().unwrap()),
        u32::from_le_bytes(b[4..].try_into().unwrap()),
    )
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Env {
    fn up(limits: GateLimits) -> Env {
        let (mut dev, ram, wire) = make(limits);
        bring_up(&mut dev);
        Env {
            dev,
            ram,
            wire,
            tx_avail: 0,
            rx_avail: 0,
        }
    }

    fn publish(&mut self, ring: u64, head: u16, queue: u32) {
        let idx = if ring == TX_RING {
            &mut self.tx_avail
        } else {
            &mut self.rx_avail
        };
        poke(
            &self.ram,
            ring + 0x1004 + u64::from(*idx % QSIZE) * 2,
            &head.to_le_bytes(),
        );
        *idx = idx.wrapping_add(1);
        poke(&self.ram, ring + 0x1002, &idx.to_le_bytes());
        wr32(&mut self.dev, VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    }

    /// Transmits `frame` (header prepended) as one descriptor in slot `i`.
    fn send(&mut self, i: u16, frame: &[u8]) {
        let mut b = vec![0u8; 12];
        b.extend_from_slice(frame);
        let at = TX_BUF + u64::from(i) * 0x1000;
        poke(&self.ram, at, &b);
        desc(&self.ram, TX_RING, i, at, b.len() as u32, 0, 0);
        self.publish(TX_RING, i, 1);
    }

    fn post_rx(&mut self, i: u16, len: u32) {
        let at = RX_BUF + u64::from(i) * 0x1000;
        desc(&self.ram, RX_RING, i, at, len, F_WRITE, 0);
        self.publish(RX_RING, i, 0);
    }

    fn wire_read(&mut self) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut b = vec![0u8; 70000];
        match self.wire.read(&mut b) {
            Ok(n) => Some(b[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }
}

fn eth(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[12] = 0x08;
    f[13] = 0x00;
    f
}

#[test]
fn frames_pass_through_unprotected_and_wait_for_their_epoch_when_held() {
    let mut e = Env::up(GateLimits::default());
    e.send(0, &eth(1, 60));
    wait("the unheld frame on the wire", || {
        used_idx(&e.ram, TX_RING) == 1
    });
    let got = e.wire_read().expect("an unheld frame goes straight out");
    assert_eq!(&got[12..], &eth(1, 60)[..]);
    assert_eq!(used_elem(&e.ram, TX_RING, 0), (0, 0));

    let gate = e.dev.gate();
    gate.lock().unwrap().set_holding(true);
    e.send(1, &eth(2, 100));
    wait("epoch 1's frame completed", || {
        used_idx(&e.ram, TX_RING) == 2
    });
    gate.lock().unwrap().seal(1);
    e.send(2, &eth(3, 80));
    wait("epoch 2's frame completed", || {
        used_idx(&e.ram, TX_RING) == 3
    });
    // The guest is not stalled, but nothing reached the wire.
    assert_eq!(e.wire_read(), None);
    let ep = gate.lock().unwrap().take_epoch();
    assert_eq!((ep.start, ep.frames.len()), (1, 2));
    gate.lock().unwrap().seal(2);
    gate.lock().unwrap().release(1);
    assert_eq!(&e.wire_read().unwrap()[12..], &eth(2, 100)[..]);
    assert_eq!(e.wire_read(), None, "epoch 2 is not committed yet");
    gate.lock().unwrap().release(2);
    assert_eq!(&e.wire_read().unwrap()[12..], &eth(3, 80)[..]);
    assert_eq!(gate.lock().unwrap().position(), 3);
}

#[test]
fn received_frames_land_in_guest_buffers_or_wait_for_one() {
    use std::io::Write;
    let mut e = Env::up(GateLimits::default());
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&eth(7, 90));
    e.wire.write_all(&f).unwrap();
    // No buffer yet: the frame waits, in the device's state.
    std::thread::sleep(Duration::from_millis(50));
    let rec = e.dev.save();
    let st: NetState = crate::devices::open_record("virtio-net.0", 1, &rec).unwrap();
    assert_eq!(st.rx_pending.as_deref().map(<[u8]>::len), Some(102));
    e.post_rx(0, 2048);
    wait("delivery", || used_idx(&e.ram, RX_RING) == 1);
    assert_eq!(used_elem(&e.ram, RX_RING, 0), (0, 102));
    let b = peek(&e.ram, RX_BUF, 102);
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers");
    assert_eq!(&b[12..], &eth(7, 90)[..]);
    assert_eq!(e.dev.counters().rx_frames, 1);
    // Written by the VMM: tracked as dirty for the next checkpoint.
    let dirty = e.ram.take_vmm_dirty();
    let page = (RX_BUF / 4096) as usize;
    assert_ne!(dirty[0][page / 64] & (1 << (page % 64)), 0);
}

#[test]
fn a_merged_frame_is_published_in_one_used_index_move() {
    use std::io::Write;
    let (mut dev, ram, mut wire) = make(GateLimits::default());
    bring_up_with(
        &mut dev,
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_MRG_RXBUF,
    );
    let mut e = Env {
        dev,
        ram,
        wire: wire.try_clone().unwrap(),
        tx_avail: 0,
        rx_avail: 0,
    };
    // Three 64-byte buffers; a 150-byte frame (header included) needs three.
    for i in 0..3 {
        e.post_rx(i, 64);
    }
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&eth(4, 138));
    wire.write_all(&f).unwrap();
    wait("delivery", || used_idx(&e.ram, RX_RING) != 0);
    assert_eq!(
        used_idx(&e.ram, RX_RING),
        3,
        "the index moved once, by three"
    );
    assert_eq!(used_elem(&e.ram, RX_RING, 0), (0, 64));
    assert_eq!(used_elem(&e.ram, RX_RING, 1), (1, 64));
    assert_eq!(used_elem(&e.ram, RX_RING, 2), (2, 22));
    let b = peek(&e.ram, RX_BUF, 12);
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 3, "num_buffers");
    assert_eq!(
        peek(&e.ram, RX_BUF + 0x2000, 22),
        eth(4, 138)[116..].to_vec()
    );
}

#[test]
fn malformed_chains_are_refused_and_the_device_goes_on() {
    let mut e = Env::up(GateLimits::default());
    // A writable descriptor in a transmit chain.
    desc(&e.ram, TX_RING, 0, TX_BUF, 64, F_NEXT, 1);
    desc(&e.ram, TX_RING, 1, TX_BUF + 0x100, 64, F_WRITE, 0);
    e.publish(TX_RING, 0, 1);
    // A transmit chain shorter than a header.
    desc(&e.ram, TX_RING, 2, TX_BUF, 8, 0, 0);
    e.publish(TX_RING, 2, 1);
    // A transmit buffer outside guest memory.
    desc(&e.ram, TX_RING, 3, 0x7000_0000, 100, 0, 0);
    e.publish(TX_RING, 3, 1);
    // An oversized frame (more than 64 KiB plus headers).
    desc(&e.ram, TX_RING, 4, TX_BUF, 70000, 0, 0);
    e.publish(TX_RING, 4, 1);
    wait("four refusals", || used_idx(&e.ram, TX_RING) == 4);
    assert_eq!(e.dev.counters().bad_chains, 4, "{:?}", e.dev.counters());
    assert_eq!(e.dev.counters().tx_frames, 0);
    assert_eq!(e.wire_read(), None);
    // A GSO frame the driver did not negotiate.
    let mut b = vec![0u8; 12];
    b[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    b.extend_from_slice(&eth(9, 60));
    poke(&e.ram, TX_BUF + 0x8000, &b);
    desc(&e.ram, TX_RING, 0, TX_BUF + 0x8000, b.len() as u32, 0, 0);
    let before = used_idx(&e.ram, TX_RING);
    e.publish(TX_RING, 0, 1);
    wait("the GSO frame refused", || {
        used_idx(&e.ram, TX_RING) > before
    });
    assert_eq!(e.dev.counters().bad_headers, 1);
    // And a good frame still goes out.
    let n = used_idx(&e.ram, TX_RING);
    e.send(1, &eth(5, 60));
    wait("the good frame", || used_idx(&e.ram, TX_RING) > n);
    assert_eq!(&e.wire_read().unwrap()[12..], &eth(5, 60)[..]);
}

#[test]
fn a_full_gate_stops_taking_frames_until_a_commit_drains_it() {
    let mut e = Env::up(GateLimits {
        bytes: 1 << 20,
        frames: 2,
    });
    let gate = e.dev.gate();
    gate.lock().unwrap().set_holding(true);
    for i in 0..4u16 {
        e.send(i, &eth(i as u8, 60));
    }
    wait("two frames taken", || used_idx(&e.ram, TX_RING) == 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        used_idx(&e.ram, TX_RING),
        2,
        "the gate is full: the rest wait in the ring"
    );
    assert_eq!(gate.lock().unwrap().stats().full, 1);
    gate.lock().unwrap().seal(1);
    gate.lock().unwrap().release(1);
    wait("the rest taken after the commit", || {
        used_idx(&e.ram, TX_RING) == 4
    });
    for i in 0..2u8 {
        assert_eq!(&e.wire_read().unwrap()[12..], &eth(i, 60)[..]);
    }
    assert_eq!(e.wire_read(), None, "frames 2 and 3 are held for epoch 2");
}

#[test]
fn a_record_restores_the_mac_the_position_and_the_pending_frame() {
    let (mut a, _ram, _w) = make(GateLimits::default());
    bring_up(&mut a);
    let mut st: NetState = crate::devices::open_record("virtio-net.0", 1, &a.save()).unwrap();
    st.mac = [0x52, 9, 9, 9, 9, 9];
    st.tx_pos = 41;
    st.rx_pending = Some(vec![0; 80]);
    st.ipv4 = Some([192, 168, 1, 5]);
    let rec = crate::devices::record("virtio-net.0", 1, &st);
    let (mut b, _ram2, _w2) = make(GateLimits::default());
    b.restore(&rec).unwrap();
    assert_eq!(b.mac(), [0x52, 9, 9, 9, 9, 9]);
    let mut cfg = [0u8; 6];
    b.read(0x100, &mut cfg);
    assert_eq!(
        cfg,
        [0x52, 9, 9, 9, 9, 9],
        "the guest reads the restored MAC"
    );
    assert_eq!(b.gate().lock().unwrap().position(), 41);
    assert_eq!(b.gate().lock().unwrap().ipv4(), Some([192, 168, 1, 5]));
    assert_eq!(b.save(), rec);
    // A multicast MAC or an oversized pending frame is refused.
    st.mac = [0x01, 0, 0, 0, 0, 1];
    let e = b
        .restore(&crate::devices::record("virtio-net.0", 1, &st))
        .unwrap_err();
    assert!(e.to_string().contains("multicast"), "{e}");
    st.mac = [0x52, 0, 0, 0, 0, 1];
    st.rx_pending = Some(vec![0; 70000]);
    let e = b
        .restore(&crate::devices::record("virtio-net.0", 1, &st))
        .unwrap_err();
    assert!(e.to_string().contains("pending frame"), "{e}");
    assert_eq!(b.save(), rec, "a refused record changed the device");
}

#[test]
fn the_guest_address_is_learned_from_its_arp_and_announced() {
    let mut e = Env::up(GateLimits::default());
    let mac = [0x52, 0, 0, 0, 0, 1];
    // An ARP reply from the guest: 10.0.0.7 is at its MAC.
    let mut arp = vec![0u8; 42];
    arp[..6].copy_from_slice(&[2, 2, 2, 2, 2, 2]);
    arp[6..12].copy_from_slice(&mac);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    arp[22..28].copy_from_slice(&mac);
    arp[28..32].copy_from_slice(&[10, 0, 0, 7]);
    e.send(0, &arp);
    wait("the ARP frame", || used_idx(&e.ram, TX_RING) == 1);
    e.wire_read().expect("the ARP frame went out");
    let gate = e.dev.gate();
    assert_eq!(gate.lock().unwrap().ipv4(), Some([10, 0, 0, 7]));
    let st: NetState = crate::devices::open_record("virtio-net.0", 1, &e.dev.save()).unwrap();
    assert_eq!(
        st.ipv4,
        Some([10, 0, 0, 7]),
        "the record carries it to a shadow"
    );
    gate.lock().unwrap().announce();
    let rarp = e.wire_read().expect("a RARP");
    assert_eq!(&rarp[12..18], &[0xff; 6]);
    assert_eq!(&rarp[18..24], &mac);
    assert_eq!(&rarp[24..26], &[0x80, 0x35]);
    let garp = e.wire_read().expect("a gratuitous ARP");
    assert_eq!(&garp[24..26], &[0x08, 0x06]);
    assert_eq!(&garp[12 + 28..12 + 32], &[10, 0, 0, 7], "sender IP");
    assert_eq!(
        &garp[12 + 38..12 + 42],
        &[10, 0, 0, 7],
        "target IP: its own"
    );
    // A frame from another MAC teaches nothing.
    let mut other = arp.clone();
    other[22..28].copy_from_slice(&[0x52, 9, 9, 9, 9, 9]);
    other[28..32].copy_from_slice(&[10, 0, 0, 99]);
    e.send(1, &other);
    wait("the other frame", || used_idx(&e.ram, TX_RING) == 2);
    assert_eq!(gate.lock().unwrap().ipv4(), Some([10, 0, 0, 7]));
}

#[test]
fn a_takeover_asks_a_driver_with_guest_announce_to_announce_itself() {
    let (mut dev, ram, wire) = make(GateLimits::default());
    // Without GUEST_ANNOUNCE negotiated the announcer does nothing.
    bring_up(&mut dev);
    let announcer = dev.gate().lock().unwrap().guest_announcer().unwrap();
    assert!(!announcer());
    assert_eq!(dev.cfg.status() & VIRTIO_NET_S_ANNOUNCE as u16, 0);
    bring_up_with(
        &mut dev,
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_GUEST_ANNOUNCE,
    );
    let mut e = Env {
        dev,
        ram,
        wire,
        tx_avail: 0,
        rx_avail: 0,
    };
    let gen = rd32(&mut e.dev, VIRTIO_MMIO_CONFIG_GENERATION);
    assert!(announcer());
    // The status field says ANNOUNCE, the generation moved, and a
    // configuration-change interrupt is pending.
    let mut st = [0u8; 2];
    e.dev.read(0x100 + 6, &mut st);
    assert_eq!(
        u16::from_le_bytes(st),
        (VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE) as u16
    );
    assert_ne!(rd32(&mut e.dev, VIRTIO_MMIO_CONFIG_GENERATION), gen);
    assert_ne!(
        rd32(&mut e.dev, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
        0
    );
    // The driver acks on the control queue: the bit clears, the ack is OK.
    let ctrl = |e: &mut Env, i: u16, class: u8, cmd: u8| {
        let at = TX_BUF + 0x10000 + u64::from(i) * 0x100;
        poke(&e.ram, at, &[class, cmd]);
        poke(&e.ram, at + 0x80, &[0xee]);
        desc(&e.ram, CTRL_RING, 2 * i, at, 2, F_NEXT, 2 * i + 1);
        desc(&e.ram, CTRL_RING, 2 * i + 1, at + 0x80, 1, F_WRITE, 0);
        poke(
            &e.ram,
            CTRL_RING + 0x1004 + u64::from(i) * 2,
            &(2 * i).to_le_bytes(),
        );
        poke(&e.ram, CTRL_RING + 0x1002, &(i + 1).to_le_bytes());
        wr32(&mut e.dev, VIRTIO_MMIO_QUEUE_NOTIFY, 2);
        wait("the control command", || {
            used_idx(&e.ram, CTRL_RING) == i + 1
        });
        peek(&e.ram, at + 0x80, 1)[0]
    };
    assert_eq!(
        ctrl(
            &mut e,
            0,
            VIRTIO_NET_CTRL_ANNOUNCE as u8,
            VIRTIO_NET_CTRL_ANNOUNCE_ACK as u8
        ),
        VIRTIO_NET_OK as u8
    );
    assert_eq!(e.dev.cfg.status(), VIRTIO_NET_S_LINK_UP as u16);
    // A command this device does not know is answered with an error.
    assert_eq!(ctrl(&mut e, 1, 0 /* RX mode */, 0), VIRTIO_NET_ERR as u8);
}

#[test]
fn a_wire_that_closes_stops_the_receive_side_without_spinning() {
    let e = Env::up(GateLimits::default());
    let Env { dev, wire, .. } = e;
    // The other end goes away: reads now return end-of-file.
    drop(wire);
    std::thread::sleep(Duration::from_millis(50));
    // The device thread is not spinning on end-of-file with the device's
    // lock held: the lock is free at least once in 100 tries.
    let free = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(1));
        dev.shared.inner.try_lock().is_ok()
    });
    if !free {
        // Dropping it would wait for the spinning thread forever.
        std::mem::forget(dev);
        panic!("the device thread holds its lock: it spins on a closed wire");
    }
    drop(dev);
}

#[test]
fn net_specs_parse_and_bad_ones_say_why() {
    let s: NetSpec = "tap=hs0".parse().unwrap();
    assert_eq!((s.tap.as_str(), s.mac), ("hs0", None));
    let s: NetSpec = "tap=hs1,mac=52:54:00:12:34:56".parse().unwrap();
    assert_eq!(s.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    for (bad, why) in [
        ("mac=52:54:00:12:34:56", "no tap"),
        ("tap=hs0,mac=52:54:00:12:34", "six hex bytes"),
        ("tap=hs0,mac=01:00:00:00:00:01", "multicast"),
        ("tap=hs0,speed=10", "unknown option"),
    ] {
        let e = bad.parse::<NetSpec>().unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert_eq!(derive_mac("vm-a", 0), derive_mac("vm-a", 0));
    assert_ne!(derive_mac("vm-a", 0), derive_mac("vm-b", 0));
    assert_ne!(derive_mac("vm-a", 0), derive_mac("vm-a", 1));
    assert_eq!(
        derive_mac("vm-a", 0)[0],
        0x52,
        "locally administered unicast"
    );
}

#[test]
fn a_tap_name_that_cannot_be_one_is_refused() {
    for bad in ["", "a/b", "name-that-is-far-too-long"] {
        let e = Tap::open(bad).unwrap_err();
        assert!(e.contains("TAP name"), "{e}");
    }
}

fn conformance_dev() -> Net {
    make(GateLimits::default()).0
}

device_conformance_tests!(conformance, conformance_dev(), |d: &mut Net| bring_up(d));
