/* netcheck: a virtio-net driver in ring 3 that answers ARP, ICMP echo and
 * a small UDP request/response service whose replies carry guest state.
 *
 * The device is found the way Linux finds it: a `virtio_mmio.device=
 * <size>@<base>:<irq>` entry on the kernel command line; the first
 * virtio-mmio version-2 network device (type 1) is used. It is driven by
 * plain loads and stores to the registers and by polling the used rings:
 * no interrupts. Only VIRTIO_F_VERSION_1 and VIRTIO_NET_F_MAC are
 * negotiated, so it runs against any virtio 1.x network device: the header
 * is the 12-byte virtio_net_hdr_v1 (num_buffers included), receive buffers
 * hold a whole frame each, and transmit frames are one descriptor each.
 *
 * Params: ip=A.B.C.D (required), port=P (UDP service, default 7777),
 *         requests=N (exit 0 after N distinct requests; default 0 = never).
 *
 * The service: a request's first 8 bytes are its id (any u64, chosen by the
 * client). A new id increments the counter and gets the reply
 *   id (8) | counter (8) | TSC at the reply (8) | hash of the state (8)
 * A request with the id of the last one gets the same reply bytes again
 * (the client's retransmission is idempotent). The TSC makes every reply
 * unique to the execution that produced it: a reply that a failover
 * contradicts would show as a different reply to the same id, or a counter
 * that goes back.
 *
 * At start it sends a gratuitous ARP for its address.
 *
 * Output:
 *   netcheck up base=<hex> mac=<mac> ip=<ip>
 *   netcheck served=<n> counter=<c>           (every 100 new requests)
 *   netcheck done requests=<n> result=ok      (with requests=N)
 *   netcheck FAIL <what>                      (exit 4: no device; 2: params)
 */
#include "ulib.h"
#include "virtio_mmio.h"

#define NET_TYPE 1
#define QSIZE 16
#define BUF 2048
#define HDR 12

#define F_MAC (1u << 5)

#define RXQ 0
#define TXQ 1

/* Identity-mapped RAM at 48 MiB: rings, then buffers. */
#define AREA 0x3000000ULL

struct ring {
    struct desc desc[QSIZE];
    u8 pad0[4096 - sizeof(struct desc) * QSIZE];
    u16 avail_flags, avail_idx, avail_ring[QSIZE], used_event;
    u8 pad1[4096 - 6 - 2 * QSIZE];
    u16 used_flags;
    volatile u16 used_idx;
    struct { u32 id, len; } used_ring[QSIZE];
    u8 pad2[4096 - 4 - 8 * QSIZE];
};

static volatile u32 *regs;
static struct ring *rxr = (struct ring *)AREA;
static struct ring *txr = (struct ring *)(AREA + 0x3000);
static u8 *rxbuf = (u8 *)(AREA + 0x10000);
static u8 *txbuf = (u8 *)(AREA + 0x20000);
static u16 rx_used, tx_used, tx_next, tx_inflight;
static u8 mac[6];
static u32 myip; /* network order bytes packed as a, b, c, d (a lowest) */
static u16 port;

/* Service state: all of it lives in guest memory and is checkpointed. */
static u64 counter, state_hash = HASH_INIT, last_id, served;
static int have_last;
static u8 last_reply[32];

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static u32 rd(u32 off) { return regs[off / 4]; }
static void wr(u32 off, u32 v) { regs[off / 4] = v; }
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static void fail(const char *what, int code)
{
    u_puts("netcheck FAIL ");
    u_puts(what);
    u_putc('\n');
    u_exit(code);
}

static u64 find_device(const char *cmdline)
{
    u64 base = virtio_mmio_find(cmdline, NET_TYPE);
    if (base)
        regs = (volatile u32 *)base;
    return base;
}

static int parse_ip(const char *s, u32 *out)
{
    u32 v = 0;
    for (int part = 0; part < 4; part++) {
        u32 n = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9') {
            n = n * 10 + (u32)(*s++ - '0');
            digits++;
        }
        if (!digits || n > 255)
            return 0;
        v |= n << (8 * part);
        if (part < 3 && *s++ != '.')
            return 0;
    }
    if (*s)
        return 0;
    *out = v;
    return 1;
}

static void queue_setup(u32 q, struct ring *r)
{
    wr(R_QUEUE_SEL, q);
    if (rd(R_QUEUE_READY) != 0 || rd(R_QUEUE_NUM_MAX) < QSIZE)
        fail("queue unusable", 4);
    memset(r, 0, sizeof(*r));
    wr(R_QUEUE_NUM, QSIZE);
    wr(R_DESC_LO, (u32)(u64)&r->desc[0]);
    wr(R_DESC_HI, 0);
    wr(R_AVAIL_LO, (u32)(u64)&r->avail_flags);
    wr(R_AVAIL_HI, 0);
    wr(R_USED_LO, (u32)(u64)&r->used_flags);
    wr(R_USED_HI, 0);
    wr(R_QUEUE_READY, 1);
}

static void rx_post(u16 i)
{
    rxr->desc[i] = (struct desc){(u64)(rxbuf + (u64)i * BUF), BUF, D_WRITE, 0};
    rxr->avail_ring[rxr->avail_idx % QSIZE] = i;
    barrier();
    rxr->avail_idx++;
    barrier();
}

static void setup(void)
{
    wr(R_STATUS, 0);
    wr(R_STATUS, S_ACK);
    wr(R_STATUS, S_ACK | S_DRIVER);
    wr(R_DEV_FEAT_SEL, 1);
    if (!(rd(R_DEV_FEAT) & 1))
        fail("device does not offer VIRTIO_F_VERSION_1", 4);
    wr(R_DEV_FEAT_SEL, 0);
    u32 f0 = rd(R_DEV_FEAT) & F_MAC;
    wr(R_DRV_FEAT_SEL, 0);
    wr(R_DRV_FEAT, f0);
    wr(R_DRV_FEAT_SEL, 1);
    wr(R_DRV_FEAT, 1);
    wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd(R_STATUS) & S_FEATURES_OK))
        fail("FEATURES_OK refused", 4);
    if (f0 & F_MAC) {
        u32 gen;
        do {
            gen = rd(R_CONFIG_GEN);
            for (int i = 0; i < 6; i++)
                mac[i] = ((volatile u8 *)regs)[R_CONFIG + i];
        } while (gen != rd(R_CONFIG_GEN));
    } else {
        /* A locally administered address of our own. */
        u8 m[6] = {0x02, 0x68, 0x73, (u8)(myip >> 8), (u8)(myip >> 16), (u8)(myip >> 24)};
        memcpy(mac, m, 6);
    }
    queue_setup(RXQ, rxr);
    queue_setup(TXQ, txr);
    for (u16 i = 0; i < QSIZE; i++)
        rx_post(i);
    wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    wr(R_QUEUE_NOTIFY, RXQ);
}

static void tx_reclaim(void)
{
    while (txr->used_idx != tx_used) {
        tx_used++;
        tx_inflight--;
    }
}

/* Sends the frame at txbuf slot `slot` (header + frame already there). */
static u8 *tx_slot(void)
{
    while (tx_inflight == QSIZE) {
        tx_reclaim();
        cpu_relax();
    }
    return txbuf + (u64)(tx_next % QSIZE) * BUF;
}

static void tx_send(u32 frame_len)
{
    u16 i = tx_next % QSIZE;
    u8 *b = txbuf + (u64)i * BUF;
    memset(b, 0, HDR);
    txr->desc[i] = (struct desc){(u64)b, HDR + frame_len, 0, 0};
    txr->avail_ring[txr->avail_idx % QSIZE] = i;
    barrier();
    txr->avail_idx++;
    barrier();
    tx_next++;
    tx_inflight++;
    wr(R_QUEUE_NOTIFY, TXQ);
}

static u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static void put16(u8 *p, u16 v)
{
    p[0] = (u8)(v >> 8);
    p[1] = (u8)v;
}
static void put64(u8 *p, u64 v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (u8)(v >> (8 * i));
}
static u64 get64(const u8 *p)
{
    u64 v = 0;
    for (int i = 0; i < 8; i++)
        v |= (u64)p[i] << (8 * i);
    return v;
}

static u16 csum(const u8 *p, u32 n)
{
    u32 s = 0;
    for (u32 i = 0; i + 1 < n; i += 2)
        s += (u32)(p[i] << 8 | p[i + 1]);
    if (n & 1)
        s += (u32)p[n - 1] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

static u32 ip_of(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

/* Sends an Ethernet/IPv4 ARP frame from us (our MAC and address) to
 * `dst` with operation `op` and target `tha`/`tpa`. */
static void arp_send(const u8 *dst, u16 op, const u8 *tha, const u8 *tpa)
{
    u8 *o = tx_slot() + HDR;
    memcpy(o, dst, 6);
    memcpy(o + 6, mac, 6);
    put16(o + 12, 0x0806);
    u8 *r = o + 14;
    put16(r, 1);
    put16(r + 2, 0x0800);
    r[4] = 6;
    r[5] = 4;
    put16(r + 6, op);
    memcpy(r + 8, mac, 6);
    memcpy(r + 14, &myip, 4);
    memcpy(r + 18, tha, 6);
    memcpy(r + 24, tpa, 4);
    tx_send(42);
}

/* A gratuitous ARP (a request for our own address, broadcast), as an OS
 * sends when its link comes up: switches learn where our MAC is. */
static void garp(void)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const u8 zero[6];
    arp_send(bcast, 1, zero, (const u8 *)&myip);
}

static void arp(const u8 *f, u32 len)
{
    if (len < 42)
        return;
    const u8 *a = f + 14;
    /* Ethernet/IPv4 request for our address */
    if (be16(a) != 1 || be16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4 || be16(a + 6) != 1)
        return;
    if (ip_of(a + 24) != myip)
        return;
    /* A reply to the sender: its MAC and address become the target. */
    arp_send(a + 8, 2, a + 8, a + 14);
}

/* Builds Ethernet + IPv4 headers answering frame f; returns the IP payload. */
static u8 *ip_reply(u8 *o, const u8 *f, u8 proto, u32 payload_len)
{
    const u8 *ip = f + 14;
    memcpy(o, f + 6, 6);
    memcpy(o + 6, mac, 6);
    put16(o + 12, 0x0800);
    u8 *h = o + 14;
    h[0] = 0x45;
    h[1] = 0;
    put16(h + 2, (u16)(20 + payload_len));
    put16(h + 4, 0);
    put16(h + 6, 0x4000); /* DF */
    h[8] = 64;
    h[9] = proto;
    put16(h + 10, 0);
    memcpy(h + 12, ip + 16, 4); /* from our address */
    memcpy(h + 16, ip + 12, 4); /* to the sender */
    put16(h + 10, csum(h, 20));
    return h + 20;
}

static void icmp(const u8 *f, u32 len, u32 ihl, u32 tot)
{
    const u8 *m = f + 14 + ihl;
    u32 n = tot - ihl;
    if (n < 8 || m[0] != 8 || n > BUF - HDR - 34)
        return;
    u8 *o = tx_slot() + HDR;
    u8 *r = ip_reply(o, f, 1, n);
    memcpy(r, m, n);
    r[0] = 0; /* echo reply */
    put16(r + 2, 0);
    put16(r + 2, csum(r, n));
    (void)len;
    tx_send(14 + 20 + n);
}

static void udp(const u8 *f, u32 ihl, u32 tot)
{
    const u8 *u = f + 14 + ihl;
    u32 n = tot - ihl;
    if (n < 8 + 8 || be16(u + 2) != port)
        return;
    u64 id = get64(u + 8);
    if (!have_last || id != last_id) {
        counter++;
        u64 tsc = rdtsc();
        state_hash = hash_u64(hash_u64(state_hash, id), tsc);
        put64(last_reply, id);
        put64(last_reply + 8, counter);
        put64(last_reply + 16, tsc);
        put64(last_reply + 24, hash_final(state_hash));
        last_id = id;
        have_last = 1;
        served++;
        if (served % 100 == 0) {
            u_puts("netcheck served=");
            u_putu(served);
            u_puts(" counter=");
            u_putu(counter);
            u_putc('\n');
        }
    }
    u8 *o = tx_slot() + HDR;
    u8 *r = ip_reply(o, f, 17, 8 + 32);
    put16(r, port);
    memcpy(r + 2, u, 2); /* to the source port */
    put16(r + 4, 8 + 32);
    put16(r + 6, 0); /* no checksum (IPv4) */
    memcpy(r + 8, last_reply, 32);
    tx_send(14 + 20 + 8 + 32);
}

static void frame(const u8 *f, u32 len)
{
    if (len < 14)
        return;
    u16 type = be16(f + 12);
    if (type == 0x0806) {
        arp(f, len);
        return;
    }
    if (type != 0x0800 || len < 34)
        return;
    const u8 *ip = f + 14;
    u32 ihl = (u32)(ip[0] & 15) * 4;
    u32 tot = be16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl || 14 + tot > len)
        return;
    if (ip_of(ip + 16) != myip || (be16(ip + 6) & 0x3fff) != 0)
        return; /* not ours, or a fragment */
    if (ip[9] == 1)
        icmp(f, len, ihl, tot);
    else if (ip[9] == 17)
        udp(f, ihl, tot);
}

int user_main(const char *cmdline)
{
    char ipstr[32];
    if (!arg_str(cmdline, "ip", ipstr, sizeof(ipstr)) || !parse_ip(ipstr, &myip))
        fail("ip=A.B.C.D is required", 2);
    port = (u16)arg_u64_or(cmdline, "port", 7777);
    u64 requests = arg_u64_or(cmdline, "requests", 0);
    u64 base = find_device(cmdline);
    if (!base)
        fail("no virtio-mmio network device on the command line", 4);
    setup();
    u_puts("netcheck up base=");
    u_puthex(base, 8);
    u_puts(" mac=");
    for (int i = 0; i < 6; i++) {
        if (i)
            u_putc(':');
        u_puthex(mac[i], 2);
    }
    u_puts(" ip=");
    u_puts(ipstr);
    u_putc('\n');
    garp();
    for (;;) {
        tx_reclaim();
        if (rxr->used_idx == rx_used) {
            cpu_relax();
            continue;
        }
        barrier();
        u32 id = rxr->used_ring[rx_used % QSIZE].id;
        u32 len = rxr->used_ring[rx_used % QSIZE].len;
        rx_used++;
        if (id >= QSIZE)
            fail("used id out of range", 3);
        if (len > HDR && len <= BUF)
            frame(rxbuf + (u64)id * BUF + HDR, len - HDR);
        rx_post((u16)id);
        wr(R_QUEUE_NOTIFY, RXQ);
        if (requests && served >= requests) {
            /* Let the last reply leave before exiting. */
            while (tx_inflight) {
                tx_reclaim();
                cpu_relax();
            }
            u_puts("netcheck done requests=");
            u_putu(served);
            u_puts(" result=ok\n");
            return 0;
        }
    }
}
