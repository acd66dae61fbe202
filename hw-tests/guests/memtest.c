/* memtest: dirties memory at a controllable rate and pattern, verifies itself.
 *
 * Params (all optional):
 *   pages=N     working set in 4 KiB pages (default 4096 = 16 MiB)
 *   base_mib=B  physical start of the working set in MiB (default 16)
 *   rounds=R    (default 50)
 *   writes=W    page writes per round (default 2000)
 *   pattern=P   sparse | pages | hot | sweep | mixed | text (default mixed)
 *                 sparse: 4 random words of a random page
 *                 pages:  a whole random page (all 509 data words)
 *                 hot:    sparse writes, 90% of them into a hot set of the
 *                         first max(1, N/20) pages
 *                 sweep:  sparse writes to pages 0, 1, 2, ... (wrapping)
 *                 mixed:  round r uses sparse, pages, hot, sweep for r % 4
 *                 text:   a whole random page of English-like text
 *   fill=F      initial page contents: random | text (default random)
 *   seed=S      PRNG seed (default 1)
 *   rate=P      page writes per second, paced by the TSC (needs tsc_khz=);
 *               a guest held back (paused, descheduled) catches up, so the
 *               long-run rate is P. 0 (default): as fast as it goes.
 *   tsc_khz=K   TSC frequency in kHz, for rate= (the host's: the guest
 *               sees the host TSC)
 *   idle=I      how a rate-paced guest waits: hlt (default: a 1 ms periodic
 *               LAPIC timer wakes it; it writes in bursts of up to 1 ms of
 *               its rate, like the QEMU peer's guest, and leaves the CPU to
 *               the host in between) or spin (busy-waits on the TSC)
 *   spin=K      extra busy-loop iterations per write (slows the dirty rate)
 *   tsc=1       append " tsc=<hex> chain=<hex>" to every round line: the
 *               TSC when the line is printed, and a hash chained over every
 *               TSC printed so far. Output that is not a function of the
 *               inputs, for output-commit tests: a re-executed line
 *               differs, and so does every line after it
 *   sleep=T     busy loop of T * 2^20 iterations after each round
 *
 * Memory: page p of the working set lives at B MiB + p * 4096; its words:
 *   [0] = 0x4d454d54_00000000 | p   (tag + page index)
 *   [1] = version (number of writes applied to the page)
 *   [2] = XOR of words [3..511]     (updated incrementally on sparse writes)
 *   [3..511] data
 * The version table (u32 per page) follows the working set:
 * B MiB + N * 4096, N * 4 bytes.
 *
 * Output:
 *   memtest start pages=<N> base_mib=<B> rounds=<R> writes=<W> pattern=<P> seed=<S>
 *     [rate=<P> idle=<hlt|spin>] [fill=text]
 *   memtest round=<r> pattern=<p> writes=<total> digest=<16 hex> check=ok
 *     (r = 0 .. R-1; p is the pattern applied in that round; digest is a
 *      hash of the version table; after the writes, a window of
 *      max(1, N/8) pages (rotating) is checked against the version table
 *      and the checksums)
 *   memtest done rounds=<R> digest=<16 hex> result=ok
 *     (after a full check of every page; digest covers the version table
 *      and the contents of every page)
 * On a mismatch: "... check=FAIL page=<n> what=<tag|version|checksum>
 * expected=<hex> got=<hex>" (or "result=FAIL ...") and exit status 1.
 * Exit status 2 on bad parameters.
 */
#include "ulib.h"

#define PAGE_WORDS 512
#define FIRST_DATA 3
#define TAG 0x4d454d5400000000ULL

enum { P_SPARSE, P_PAGES, P_HOT, P_SWEEP, P_MIXED, P_TEXT, P_COUNT };
static const char *const pattern_names[] = {"sparse", "pages", "hot", "sweep", "mixed", "text"};

static u64 *ws;      /* working set */
static u32 *vt;      /* version table */
static u64 npages;
static u64 hot_pages;
static u64 sweep_cursor;
static u64 spin_per_write;
static rng_t rng;
static int fill_text;
/* rate= pacing: write i is due at pace_start + i * tsc_hz / rate ticks. */
static u64 rate, tsc_hz, pace_start, pace_done, pace_slack;
static int idle_hlt = 1;
static int show_tsc;
static u64 tsc_chain = 0x9e3779b97f4a7c15ULL;

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* Fills words [FIRST_DATA, PAGE_WORDS) of pg with space-separated words
 * drawn from a small vocabulary (zstd shrinks it to about a third) and
 * returns their XOR. */
static u64 fill_text_page(u64 *pg, u64 *st)
{
    static const char *const vocab[] = {
        "the", "shadow", "takes", "over", "when", "primary", "stops", "and", "guest",
        "never", "notices", "a", "checkpoint", "of", "dirty", "pages", "is", "sent",
        "to", "every", "spare", "host", "with", "its", "vcpu", "state", "output",
        "held", "until", "commit", "acked", "epoch"};
    char *c = (char *)(pg + FIRST_DATA);
    u64 n = (PAGE_WORDS - FIRST_DATA) * 8, i = 0;
    while (i < n) {
        const char *w = vocab[splitmix64(st) % (sizeof(vocab) / sizeof(vocab[0]))];
        while (*w && i < n)
            c[i++] = *w++;
        if (i < n)
            c[i++] = ' ';
    }
    u64 x = 0;
    for (int w = FIRST_DATA; w < PAGE_WORDS; w++)
        x ^= pg[w];
    return x;
}

static inline u64 *page_ptr(u64 p) { return ws + p * PAGE_WORDS; }

static void init_pages(u64 seed)
{
    for (u64 p = 0; p < npages; p++) {
        u64 *pg = page_ptr(p);
        u64 x = 0;
        u64 st = seed ^ (p * 0x100000001b3ULL);
        if (fill_text) {
            x = fill_text_page(pg, &st);
        } else {
            for (int w = FIRST_DATA; w < PAGE_WORDS; w++) {
                u64 v = splitmix64(&st);
                pg[w] = v;
                x ^= v;
            }
        }
        pg[0] = TAG | p;
        pg[1] = 0;
        pg[2] = x;
        vt[p] = 0;
    }
}

static void write_sparse(u64 p)
{
    u64 *pg = page_ptr(p);
    u64 x = pg[2];
    for (int k = 0; k < 4; k++) {
        u64 w = FIRST_DATA + rng_below(&rng, PAGE_WORDS - FIRST_DATA);
        u64 nv = rng_next(&rng);
        x ^= pg[w] ^ nv;
        pg[w] = nv;
    }
    u64 ver = pg[1] + 1;
    pg[1] = ver;
    pg[2] = x;
    vt[p] = (u32)ver;
}

static void write_page(u64 p)
{
    u64 *pg = page_ptr(p);
    u64 st = rng_next(&rng);
    u64 x = 0;
    for (int w = FIRST_DATA; w < PAGE_WORDS; w++) {
        st += 0x9e3779b97f4a7c15ULL;
        u64 v = st ^ (st >> 29);
        pg[w] = v;
        x ^= v;
    }
    u64 ver = pg[1] + 1;
    pg[1] = ver;
    pg[2] = x;
    vt[p] = (u32)ver;
}

static void write_text(u64 p)
{
    u64 *pg = page_ptr(p);
    u64 st = rng_next(&rng);
    u64 x = fill_text_page(pg, &st);
    u64 ver = pg[1] + 1;
    pg[1] = ver;
    pg[2] = x;
    vt[p] = (u32)ver;
}

static void pace(void)
{
    pace_done++;
    /* Due time of the next write: whole seconds, then the remainder, so
     * the products stay far below 2^64. */
    u64 due = pace_start + (pace_done / rate) * tsc_hz + (pace_done % rate) * tsc_hz / rate;
    /* Write as soon as the write is due within the slack (bursts). */
    while ((long long)(rdtsc() + pace_slack - due) < 0) {
        if (idle_hlt)
            sys_sleep(); /* until the next timer tick */
        else
            __asm__ volatile("pause");
    }
}

static void apply_write(int pat)
{
    if (rate)
        pace();
    switch (pat) {
    case P_TEXT:
        write_text(rng_below(&rng, npages));
        break;
    case P_SPARSE:
        write_sparse(rng_below(&rng, npages));
        break;
    case P_PAGES:
        write_page(rng_below(&rng, npages));
        break;
    case P_HOT: {
        u64 p = rng_below(&rng, 10) != 0 ? rng_below(&rng, hot_pages) : rng_below(&rng, npages);
        write_sparse(p);
        break;
    }
    default: /* P_SWEEP */
        write_sparse(sweep_cursor);
        sweep_cursor = sweep_cursor + 1 == npages ? 0 : sweep_cursor + 1;
        break;
    }
    if (spin_per_write)
        spin(spin_per_write);
}

/* Returns 0 if page p is consistent, else describes the problem. */
struct bad {
    u64 page;
    const char *what;
    u64 expected, got;
};

static int check_page(u64 p, struct bad *b)
{
    const u64 *pg = page_ptr(p);
    b->page = p;
    if (pg[0] != (TAG | p)) {
        b->what = "tag";
        b->expected = TAG | p;
        b->got = pg[0];
        return 1;
    }
    if (pg[1] != (u64)vt[p]) {
        b->what = "version";
        b->expected = vt[p];
        b->got = pg[1];
        return 1;
    }
    u64 x = 0;
    for (int w = FIRST_DATA; w < PAGE_WORDS; w++)
        x ^= pg[w];
    if (x != pg[2]) {
        b->what = "checksum";
        b->expected = pg[2];
        b->got = x;
        return 1;
    }
    return 0;
}

static void print_bad(const struct bad *b)
{
    u_puts(" page=");
    u_putu(b->page);
    u_puts(" what=");
    u_puts(b->what);
    u_puts(" expected=");
    u_puthex(b->expected, 16);
    u_puts(" got=");
    u_puthex(b->got, 16);
    u_putc('\n');
}

static u64 vt_digest(void) { return hash_final(hash_u32s(HASH_INIT, vt, npages)); }

static void usage_error(const char *msg)
{
    u_puts("memtest error: ");
    u_puts(msg);
    u_putc('\n');
    u_exit(2);
}

int user_main(const char *cmdline)
{
    npages = arg_u64_or(cmdline, "pages", 4096);
    u64 base_mib = arg_u64_or(cmdline, "base_mib", 16);
    u64 rounds = arg_u64_or(cmdline, "rounds", 50);
    u64 writes = arg_u64_or(cmdline, "writes", 2000);
    u64 seed = arg_u64_or(cmdline, "seed", 1);
    u64 sleep = arg_u64_or(cmdline, "sleep", 0);
    spin_per_write = arg_u64_or(cmdline, "spin", 0);
    show_tsc = arg_u64_or(cmdline, "tsc", 0) != 0;
    rate = arg_u64_or(cmdline, "rate", 0);
    tsc_hz = arg_u64_or(cmdline, "tsc_khz", 0) * 1000;
    if (rate && !tsc_hz)
        usage_error("rate= needs tsc_khz= (the TSC frequency in kHz)");
    if (rate > 100000000 || tsc_hz > 100000000000ULL)
        usage_error("rate= must be <= 1e8 and tsc_khz= <= 1e8");
    char pname[16];
    int pattern = P_MIXED;
    if (arg_str(cmdline, "pattern", pname, sizeof(pname))) {
        pattern = -1;
        for (int i = 0; i < P_COUNT; i++)
            if (u_streq(pname, pattern_names[i]))
                pattern = i;
        if (pattern < 0)
            usage_error("pattern must be sparse, pages, hot, sweep, mixed or text");
    }
    if (arg_str(cmdline, "idle", pname, sizeof(pname))) {
        if (u_streq(pname, "spin"))
            idle_hlt = 0;
        else if (!u_streq(pname, "hlt"))
            usage_error("idle must be hlt or spin");
    }
    if (arg_str(cmdline, "fill", pname, sizeof(pname))) {
        if (u_streq(pname, "text"))
            fill_text = 1;
        else if (!u_streq(pname, "random"))
            usage_error("fill must be random or text");
    }
    if (npages == 0 || npages > (1ULL << 20))
        usage_error("pages must be in 1..1048576");
    if (base_mib < 4)
        usage_error("base_mib must be >= 4 (the guest image lives below)");

    u64 base = base_mib << 20;
    u64 end = base + npages * 4096 + npages * 4;
    u64 limit = pvh_ram_top ? pvh_ram_top : (64ULL << 20);
    if (limit > (1ULL << 30))
        limit = 1ULL << 30; /* identity map covers the first 1 GiB */
    if (end > limit)
        usage_error("working set does not fit in guest RAM (below 1 GiB)");

    ws = (u64 *)base;
    vt = (u32 *)(base + npages * 4096);
    hot_pages = npages / 20 ? npages / 20 : 1;
    rng_seed(&rng, seed);

    u_puts("memtest start pages=");
    u_putu(npages);
    u_puts(" base_mib=");
    u_putu(base_mib);
    u_puts(" rounds=");
    u_putu(rounds);
    u_puts(" writes=");
    u_putu(writes);
    u_puts(" pattern=");
    u_puts(pattern_names[pattern]);
    u_puts(" seed=");
    u_putu(seed);
    if (rate) {
        u_puts(" rate=");
        u_putu(rate);
        u_puts(idle_hlt ? " idle=hlt" : " idle=spin");
    }
    if (fill_text)
        u_puts(" fill=text");
    u_putc('\n');

    init_pages(seed);
    if (rate && idle_hlt) {
        pace_slack = tsc_hz / 1000;
        sys_timer(62500); /* 1 ms at KVM's 1 GHz APIC bus, divide by 16 */
    }
    pace_start = rdtsc();

    u64 window = npages / 8 ? npages / 8 : 1;
    u64 total = 0;
    struct bad b;
    for (u64 r = 0; r < rounds; r++) {
        int pat = pattern == P_MIXED ? (int)(r % 4) : pattern;
        for (u64 i = 0; i < writes; i++)
            apply_write(pat);
        total += writes;

        int bad = 0;
        u64 start = (r * window) % npages;
        for (u64 i = 0; i < window && !bad; i++) {
            u64 p = start + i;
            if (p >= npages)
                p -= npages;
            bad = check_page(p, &b);
        }
        u_puts("memtest round=");
        u_putu(r);
        u_puts(" pattern=");
        u_puts(pattern_names[pat]);
        u_puts(" writes=");
        u_putu(total);
        u_puts(" digest=");
        u_puthex(vt_digest(), 16);
        if (show_tsc) {
            /* Output that is not a function of the inputs: re-executing
             * this round prints another value. */
            u64 t = rdtsc();
            u_puts(" tsc=");
            u_puthex(t, 16);
            tsc_chain = (tsc_chain ^ t) * 0xff51afd7ed558ccdULL;
            tsc_chain ^= tsc_chain >> 33;
            u_puts(" chain=");
            u_puthex(tsc_chain, 16);
        }
        if (bad) {
            u_puts(" check=FAIL");
            print_bad(&b);
            u_exit(1);
        }
        u_puts(" check=ok\n");
        if (sleep)
            spin(sleep << 20);
    }
    if (rate && idle_hlt)
        sys_timer(0);

    for (u64 p = 0; p < npages; p++) {
        if (check_page(p, &b)) {
            u_puts("memtest done rounds=");
            u_putu(rounds);
            u_puts(" result=FAIL");
            print_bad(&b);
            u_exit(1);
        }
    }
    u64 h = hash_u32s(HASH_INIT, vt, npages);
    h = hash_words(h, ws, npages * PAGE_WORDS);
    u_puts("memtest done rounds=");
    u_putu(rounds);
    u_puts(" digest=");
    u_puthex(hash_final(h), 16);
    u_puts(" result=ok\n");
    return 0;
}
