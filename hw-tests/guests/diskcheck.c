/* diskcheck: a virtio-blk driver in ring 3 that checks its disk against its
 * memory.
 *
 * The device is found the way Linux finds it: a `virtio_mmio.device=
 * <size>@<base>:<irq>` entry on the kernel command line (several may be
 * given; the first virtio-mmio version-2 block device is used). It is
 * driven by plain loads and stores to the virtio-mmio registers (the page
 * tables map 3-4 GiB user-accessible and uncached), one split virtqueue,
 * and polling of the used ring: no interrupts. Only VIRTIO_F_VERSION_1 is
 * negotiated, so it runs against any virtio 1.x block device.
 *
 * The disk is `blocks` blocks of 4 KiB. Block b at version v >= 1 holds
 *   word 0 = 0x4453_4b43_0000_0000 | b, word 1 = v,
 *   words 2..511 = mix64(seed-independent function of b, v, i);
 * version 0 is all zeros (a fresh sparse image). The guest keeps the version
 * of every block in memory. At start it scans the whole disk (every block
 * must be a valid version) and adopts what it finds; then each op picks a
 * random block, reads it, checks it is exactly at the version memory
 * recorded, and writes the next version (the memory table is updated once
 * the write has completed). A disk out of step with memory fails the check.
 *
 * Params: blocks=N (default 256), ops=K (default 2000), seed=S (default 1),
 *         every=E (print every E ops, default 100), flush=F (FLUSH every F
 *         ops, default 50; 0 = never).
 *
 * Output (deterministic for a given disk and cmdline):
 *   diskcheck device base=<hex> capacity=<sectors>
 *   diskcheck scan blocks=<N> written=<blocks with v>0> digest=<16 hex>
 *   diskcheck op=<k> digest=<16 hex>            (every E ops)
 *   diskcheck done ops=<K> digest=<16 hex> result=ok
 * The digests hash the version table. On a mismatch:
 *   diskcheck FAIL op=<k> block=<b> what=<tag|version|data|status> expected=<hex> got=<hex>
 * and exit 1; no device: exit 4; bad parameters: exit 2.
 */
#include "ulib.h"
#include "virtio_mmio.h"

#define BLK_TYPE 2
#define SECTOR 512
#define BLOCK 4096
#define TAG 0x44534b4300000000ULL
#define QSIZE 8

/* virtio-mmio registers */

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4

/* Everything the device reads or writes lives here: identity-mapped RAM at
 * 48 MiB (physical address = virtual address). */
#define AREA 0x3000000ULL

struct ring {
    struct desc desc[QSIZE];          /* AREA + 0      */
    u8 pad0[4096 - sizeof(struct desc) * QSIZE];
    u16 avail_flags, avail_idx, avail_ring[QSIZE], used_event;
    u8 pad1[4096 - 6 - 2 * QSIZE];
    u16 used_flags;
    volatile u16 used_idx;
    struct { u32 id, len; } used_ring[QSIZE];
};

struct req_hdr {
    u32 type, reserved;
    u64 sector;
};

static volatile u32 *regs;
static struct ring *ring = (struct ring *)AREA;
static struct req_hdr *hdr = (struct req_hdr *)(AREA + 0x3000);
static volatile u8 *status = (volatile u8 *)(AREA + 0x3100);
static u64 *buf = (u64 *)(AREA + 0x4000);
static u32 *ver = (u32 *)(AREA + 0x10000);
static u16 last_used;
static u64 op;

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static u32 rd(u32 off) { return regs[off / 4]; }
static void wr(u32 off, u32 v) { regs[off / 4] = v; }

static void fail(u64 block, const char *what, u64 expected, u64 got)
{
    u_puts("diskcheck FAIL op=");
    u_putu(op);
    u_puts(" block=");
    u_putu(block);
    u_puts(" what=");
    u_puts(what);
    u_puts(" expected=");
    u_puthex(expected, 16);
    u_puts(" got=");
    u_puthex(got, 16);
    u_putc('\n');
    u_exit(1);
}

static u64 find_device(const char *cmdline)
{
    u64 base = virtio_mmio_find(cmdline, BLK_TYPE);
    if (base)
        regs = (volatile u32 *)base;
    return base;
}

static u64 setup(void)
{
    wr(R_STATUS, 0);
    wr(R_STATUS, S_ACK);
    wr(R_STATUS, S_ACK | S_DRIVER);
    wr(R_DEV_FEAT_SEL, 1);
    if (!(rd(R_DEV_FEAT) & 1)) {
        u_puts("diskcheck FAIL device does not offer VIRTIO_F_VERSION_1\n");
        u_exit(4);
    }
    wr(R_DRV_FEAT_SEL, 0);
    wr(R_DRV_FEAT, 0);
    wr(R_DRV_FEAT_SEL, 1);
    wr(R_DRV_FEAT, 1); /* VERSION_1, nothing else */
    wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd(R_STATUS) & S_FEATURES_OK)) {
        u_puts("diskcheck FAIL FEATURES_OK refused\n");
        u_exit(4);
    }
    wr(R_QUEUE_SEL, 0);
    if (rd(R_QUEUE_READY) != 0 || rd(R_QUEUE_NUM_MAX) < QSIZE) {
        u_puts("diskcheck FAIL queue 0 unusable\n");
        u_exit(4);
    }
    memset(ring, 0, sizeof(*ring));
    wr(R_QUEUE_NUM, QSIZE);
    wr(R_DESC_LO, (u32)(u64)&ring->desc[0]);
    wr(R_DESC_HI, 0);
    wr(R_AVAIL_LO, (u32)(u64)&ring->avail_flags);
    wr(R_AVAIL_HI, 0);
    wr(R_USED_LO, (u32)(u64)&ring->used_flags);
    wr(R_USED_HI, 0);
    wr(R_QUEUE_READY, 1);
    wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    /* capacity: a 64-bit field read as two 32-bit halves, stable across
     * the configuration generation */
    u32 gen, lo, hi;
    do {
        gen = rd(R_CONFIG_GEN);
        lo = rd(R_CONFIG);
        hi = rd(R_CONFIG + 4);
    } while (gen != rd(R_CONFIG_GEN));
    return ((u64)hi << 32) | lo;
}

/* One request: header, optional data (device-writable for IN), status. */
static void request(u32 type, u64 sector, void *data, u32 len, u64 block)
{
    hdr->type = type;
    hdr->reserved = 0;
    hdr->sector = sector;
    *status = 0xff;
    ring->desc[0] = (struct desc){(u64)hdr, sizeof(*hdr), D_NEXT, 1};
    u16 s = 1;
    if (len) {
        ring->desc[1] = (struct desc){(u64)data, len, (u16)(D_NEXT | (type == T_IN ? D_WRITE : 0)), 2};
        s = 2;
    }
    ring->desc[s] = (struct desc){(u64)status, 1, D_WRITE, 0};
    ring->avail_ring[ring->avail_idx % QSIZE] = 0;
    barrier();
    ring->avail_idx++;
    barrier();
    wr(R_QUEUE_NOTIFY, 0);
    while (ring->used_idx == last_used)
        cpu_relax();
    barrier();
    u32 used_len = ring->used_ring[last_used % QSIZE].len;
    last_used++;
    if (*status != 0)
        fail(block, "status", 0, *status);
    if (type == T_IN && used_len != len + 1)
        fail(block, "used_len", len + 1, used_len);
}

static u64 word(u64 block, u64 v, u64 i)
{
    return mix64((block << 40) ^ (v << 12) ^ i ^ 0x5bd1e995ULL);
}

static void fill(u64 block, u64 v)
{
    buf[0] = TAG | block;
    buf[1] = v;
    for (u64 i = 2; i < BLOCK / 8; i++)
        buf[i] = word(block, v, i);
}

/* The version the block in buf holds (0 = zeros); fails on anything else. */
static u64 version_of(u64 block)
{
    int zero = 1;
    for (u64 i = 0; i < BLOCK / 8; i++)
        if (buf[i]) {
            zero = 0;
            break;
        }
    if (zero)
        return 0;
    if (buf[0] != (TAG | block))
        fail(block, "tag", TAG | block, buf[0]);
    u64 v = buf[1];
    for (u64 i = 2; i < BLOCK / 8; i++)
        if (buf[i] != word(block, v, i))
            fail(block, "data", word(block, v, i), buf[i]);
    return v;
}

static u64 digest(u64 n)
{
    return hash_final(hash_u32s(HASH_INIT, ver, n));
}

int user_main(const char *cmdline)
{
    u64 nblocks = arg_u64_or(cmdline, "blocks", 256);
    u64 ops = arg_u64_or(cmdline, "ops", 2000);
    u64 seed = arg_u64_or(cmdline, "seed", 1);
    u64 every = arg_u64_or(cmdline, "every", 100);
    u64 flush = arg_u64_or(cmdline, "flush", 50);
    if (nblocks == 0 || nblocks > 65536 || every == 0) {
        u_puts("diskcheck FAIL bad parameters\n");
        return 2;
    }
    u64 base = find_device(cmdline);
    if (!base) {
        u_puts("diskcheck FAIL no virtio-mmio block device on the command line\n");
        return 4;
    }
    u64 capacity = setup();
    u_puts("diskcheck device base=");
    u_puthex(base, 8);
    u_puts(" capacity=");
    u_putu(capacity);
    u_putc('\n');
    if (capacity < nblocks * (BLOCK / SECTOR)) {
        u_puts("diskcheck FAIL disk smaller than blocks=\n");
        return 2;
    }
    u64 written = 0;
    for (u64 b = 0; b < nblocks; b++) {
        request(T_IN, b * (BLOCK / SECTOR), buf, BLOCK, b);
        ver[b] = (u32)version_of(b);
        written += ver[b] != 0;
    }
    u_puts("diskcheck scan blocks=");
    u_putu(nblocks);
    u_puts(" written=");
    u_putu(written);
    u_puts(" digest=");
    u_puthex(digest(nblocks), 16);
    u_putc('\n');
    rng_t rng;
    rng_seed(&rng, seed);
    for (op = 1; op <= ops; op++) {
        u64 b = rng_below(&rng, nblocks);
        request(T_IN, b * (BLOCK / SECTOR), buf, BLOCK, b);
        u64 v = version_of(b);
        if (v != ver[b])
            fail(b, "version", ver[b], v);
        fill(b, v + 1);
        request(T_OUT, b * (BLOCK / SECTOR), buf, BLOCK, b);
        ver[b] = (u32)(v + 1);
        if (flush && op % flush == 0)
            request(T_FLUSH, 0, 0, 0, b);
        if (op % every == 0) {
            u_puts("diskcheck op=");
            u_putu(op);
            u_puts(" digest=");
            u_puthex(digest(nblocks), 16);
            u_putc('\n');
        }
    }
    u_puts("diskcheck done ops=");
    u_putu(ops);
    u_puts(" digest=");
    u_puthex(digest(nblocks), 16);
    u_puts(" result=ok\n");
    return 0;
}
