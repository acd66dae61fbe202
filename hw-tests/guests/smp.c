/* smp: two vCPUs working in ring 3, synchronised by a shared-memory barrier.
 *
 * Needs --vcpus 2 (or more; only vCPU 0 and one AP take part). The BSP starts
 * the AP with INIT + SIPI + SIPI (all-but-self shorthand) through the xAPIC
 * ICR; a real-mode trampoline at 0x8000 brings it to long mode and ring 3.
 *
 * Params: rounds=R (default 20), pages=N (per-CPU region, default 256 =
 *         1 MiB, at most 4096), writes=W (per CPU per round, default 20000),
 *         seed=S (default 1).
 * Regions: cpu c uses 4 KiB pages at (32 + 16 * c) MiB.
 *
 * Each round: both CPUs update W random words of their own region and bump
 * a shared atomic counter W times, hash their region; barrier; each CPU
 * re-hashes the *other* CPU's region and compares it with the hash that CPU
 * published, and checks the shared counter; barrier; the BSP prints.
 *
 * Output (BSP only, deterministic):
 *   smp start rounds=<R> pages=<N> writes=<W> seed=<S>
 *   smp round=<r> cpu0=<16 hex> cpu1=<16 hex> check=ok
 *   smp done rounds=<R> result=ok
 * Exit 0. Failures: "smp FAIL ..." and exit 1 (AP not starting, cross-CPU
 * hash mismatch, counter mismatch, barrier timeout).
 */
#include "ulib.h"

#define REGION_BASE (32ULL << 20)
#define REGION_STRIDE (16ULL << 20)
#define WORDS_PER_PAGE 512

/* Shared state; each hot variable on its own cache line. */
struct line {
    volatile u64 v;
    u64 pad[7];
} __attribute__((aligned(64)));

static struct line bar_count, bar_sense, counter, go, failed, fail_code;
static u64 local_sense[2];
static volatile u64 published[2][2]; /* [round & 1][cpu] */
static u64 cfg_rounds, cfg_pages, cfg_writes, cfg_seed;

#define BARRIER_SPIN_LIMIT (1ULL << 34)

static void fail_now(const char *what, u64 a, u64 b)
{
    u_puts("smp FAIL ");
    u_puts(what);
    u_puts(" a=");
    u_puthex(a, 16);
    u_puts(" b=");
    u_puthex(b, 16);
    u_putc('\n');
    u_exit(1);
}

static void barrier(int cpu)
{
    u64 s = local_sense[cpu] ^= 1;
    if (__atomic_add_fetch(&bar_count.v, 1, __ATOMIC_ACQ_REL) == 2) {
        __atomic_store_n(&bar_count.v, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar_sense.v, s, __ATOMIC_RELEASE);
    } else {
        u64 n = 0;
        while (__atomic_load_n(&bar_sense.v, __ATOMIC_ACQUIRE) != s) {
            cpu_relax();
            if (++n == BARRIER_SPIN_LIMIT) {
                if (cpu == 0)
                    fail_now("barrier timeout", 0, 0);
                sys_park();
            }
        }
    }
}

static u64 *region(int cpu) { return (u64 *)(REGION_BASE + REGION_STRIDE * (u64)cpu); }

static u64 region_hash(int cpu)
{
    return hash_final(hash_words(HASH_INIT, region(cpu), cfg_pages * WORDS_PER_PAGE));
}

static void set_failure(u64 code)
{
    __atomic_store_n(&fail_code.v, code, __ATOMIC_RELAXED);
    __atomic_store_n(&failed.v, 1, __ATOMIC_RELEASE);
}

static void worker(int cpu)
{
    u64 *mine = region(cpu);
    u64 nwords = cfg_pages * WORDS_PER_PAGE;
    u64 st = cfg_seed * 0x9e3779b97f4a7c15ULL + (u64)cpu;
    for (u64 i = 0; i < nwords; i++)
        mine[i] = splitmix64(&st);
    rng_t rng;
    rng_seed(&rng, cfg_seed + 0x1000 * (u64)(cpu + 1));
    barrier(cpu);

    int other = 1 - cpu;
    for (u64 r = 0; r < cfg_rounds; r++) {
        for (u64 i = 0; i < cfg_writes; i++) {
            u64 w = rng_below(&rng, nwords);
            mine[w] = mix64(mine[w] ^ rng_next(&rng));
            __atomic_fetch_add(&counter.v, 1, __ATOMIC_RELAXED);
        }
        published[r & 1][cpu] = region_hash(cpu);
        barrier(cpu);

        u64 theirs = region_hash(other);
        if (theirs != published[r & 1][other])
            set_failure(0x100 + (u64)cpu);
        u64 c = __atomic_load_n(&counter.v, __ATOMIC_RELAXED);
        if (c != 2 * cfg_writes * (r + 1))
            set_failure(0x200 + (u64)cpu);
        barrier(cpu);

        if (cpu == 0) {
            u_puts("smp round=");
            u_putu(r);
            u_puts(" cpu0=");
            u_puthex(published[r & 1][0], 16);
            u_puts(" cpu1=");
            u_puthex(published[r & 1][1], 16);
            if (__atomic_load_n(&failed.v, __ATOMIC_ACQUIRE)) {
                u_puts(" check=FAIL\n");
                fail_now("cross-check", fail_code.v, r);
            }
            u_puts(" check=ok\n");
        }
    }
}

static void ap_main(u64 arg)
{
    (void)arg;
    while (!__atomic_load_n(&go.v, __ATOMIC_ACQUIRE))
        cpu_relax();
    worker(1);
    /* returning parks this CPU (cli; hlt) */
}

int user_main(const char *cmdline)
{
    cfg_rounds = arg_u64_or(cmdline, "rounds", 20);
    cfg_pages = arg_u64_or(cmdline, "pages", 256);
    cfg_writes = arg_u64_or(cmdline, "writes", 20000);
    cfg_seed = arg_u64_or(cmdline, "seed", 1);
    if (cfg_pages == 0 || cfg_pages > 4096) {
        u_puts("smp error: pages must be in 1..4096\n");
        return 2;
    }
    u64 top = REGION_BASE + 2 * REGION_STRIDE;
    if (pvh_ram_top && pvh_ram_top < top) {
        u_puts("smp error: needs at least 64 MiB of RAM\n");
        return 2;
    }

    u_puts("smp start rounds=");
    u_putu(cfg_rounds);
    u_puts(" pages=");
    u_putu(cfg_pages);
    u_puts(" writes=");
    u_putu(cfg_writes);
    u_puts(" seed=");
    u_putu(cfg_seed);
    u_putc('\n');

    if (sys_start_ap(ap_main, ustack1_top, 1) != 0) {
        u_puts("smp FAIL ap did not start (run with --vcpus 2)\n");
        return 1;
    }
    __atomic_store_n(&go.v, 1, __ATOMIC_RELEASE);
    worker(0);

    u_puts("smp done rounds=");
    u_putu(cfg_rounds);
    u_puts(" result=ok\n");
    return 0;
}
