/* sse: live xmm0-xmm15 and MXCSR across long ring-3 loops.
 *
 * Params: rounds=R (default 20), iters=I (xmm steps per round, default
 *         20000), spin=S (integer xorshift steps between two xmm steps,
 *         default 1000), seed=X (default 1).
 * Output:
 *   sse start rounds=<R> iters=<I> spin=<S> seed=<X>
 *   sse round=<r> xmm=<16 hex> ok          (r = 0 .. R-1)
 *   sse done rounds=<R> result=ok
 * Exit 0; on a mismatch: "sse FAIL round=<r> ..." and exit 1.
 *
 * Each round one asm block loads xmm0-15 from memory, then runs I times:
 * S integer xorshift steps (general registers only), then
 * xmm0-7 += C (paddq), xmm8-11 -= C (psubq), xmm12-15 ^= C (pxor).
 * Afterwards every register is compared with its closed-form expected
 * value. MXCSR is set to round-up (0x5f80) at the start; every round checks
 * it is unchanged and that 1.0/3.0 rounds up (0x3fd5555555555556).
 */
#include "ulib.h"

#define MXCSR_VALUE 0x5f80u                 /* RC = round up, all masked */
#define THIRD_ROUND_UP 0x3fd5555555555556ULL /* 1.0/3.0 rounded up */

static u64 init[16][2] __attribute__((aligned(16)));
static u64 cst[16][2] __attribute__((aligned(16)));
static u64 state[16][2] __attribute__((aligned(16)));

static void run_round(u64 iters, u64 spinn, u64 *gpr)
{
    u64 g = *gpr;
    u64 n = iters;
    __asm__ volatile(
        "movdqa   0(%[st]), %%xmm0\n\t"
        "movdqa  16(%[st]), %%xmm1\n\t"
        "movdqa  32(%[st]), %%xmm2\n\t"
        "movdqa  48(%[st]), %%xmm3\n\t"
        "movdqa  64(%[st]), %%xmm4\n\t"
        "movdqa  80(%[st]), %%xmm5\n\t"
        "movdqa  96(%[st]), %%xmm6\n\t"
        "movdqa 112(%[st]), %%xmm7\n\t"
        "movdqa 128(%[st]), %%xmm8\n\t"
        "movdqa 144(%[st]), %%xmm9\n\t"
        "movdqa 160(%[st]), %%xmm10\n\t"
        "movdqa 176(%[st]), %%xmm11\n\t"
        "movdqa 192(%[st]), %%xmm12\n\t"
        "movdqa 208(%[st]), %%xmm13\n\t"
        "movdqa 224(%[st]), %%xmm14\n\t"
        "movdqa 240(%[st]), %%xmm15\n\t"
        "1:\n\t"
        "mov %[spin], %%rcx\n\t"
        "2:\n\t"
        "mov %[g], %%rax\n\t"
        "shl $13, %%rax\n\t"
        "xor %%rax, %[g]\n\t"
        "mov %[g], %%rax\n\t"
        "shr $7, %%rax\n\t"
        "xor %%rax, %[g]\n\t"
        "mov %[g], %%rax\n\t"
        "shl $17, %%rax\n\t"
        "xor %%rax, %[g]\n\t"
        "dec %%rcx\n\t"
        "jnz 2b\n\t"
        "paddq    0(%[c]), %%xmm0\n\t"
        "paddq   16(%[c]), %%xmm1\n\t"
        "paddq   32(%[c]), %%xmm2\n\t"
        "paddq   48(%[c]), %%xmm3\n\t"
        "paddq   64(%[c]), %%xmm4\n\t"
        "paddq   80(%[c]), %%xmm5\n\t"
        "paddq   96(%[c]), %%xmm6\n\t"
        "paddq  112(%[c]), %%xmm7\n\t"
        "psubq  128(%[c]), %%xmm8\n\t"
        "psubq  144(%[c]), %%xmm9\n\t"
        "psubq  160(%[c]), %%xmm10\n\t"
        "psubq  176(%[c]), %%xmm11\n\t"
        "pxor   192(%[c]), %%xmm12\n\t"
        "pxor   208(%[c]), %%xmm13\n\t"
        "pxor   224(%[c]), %%xmm14\n\t"
        "pxor   240(%[c]), %%xmm15\n\t"
        "dec %[n]\n\t"
        "jnz 1b\n\t"
        "movdqa %%xmm0,    0(%[st])\n\t"
        "movdqa %%xmm1,   16(%[st])\n\t"
        "movdqa %%xmm2,   32(%[st])\n\t"
        "movdqa %%xmm3,   48(%[st])\n\t"
        "movdqa %%xmm4,   64(%[st])\n\t"
        "movdqa %%xmm5,   80(%[st])\n\t"
        "movdqa %%xmm6,   96(%[st])\n\t"
        "movdqa %%xmm7,  112(%[st])\n\t"
        "movdqa %%xmm8,  128(%[st])\n\t"
        "movdqa %%xmm9,  144(%[st])\n\t"
        "movdqa %%xmm10, 160(%[st])\n\t"
        "movdqa %%xmm11, 176(%[st])\n\t"
        "movdqa %%xmm12, 192(%[st])\n\t"
        "movdqa %%xmm13, 208(%[st])\n\t"
        "movdqa %%xmm14, 224(%[st])\n\t"
        "movdqa %%xmm15, 240(%[st])\n\t"
        : [g] "+r"(g), [n] "+r"(n)
        : [st] "r"(state), [c] "r"(cst), [spin] "r"(spinn)
        : "rax", "rcx", "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
          "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
          "xmm15");
    *gpr = g;
}

static u32 get_mxcsr(void)
{
    u32 v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static void set_mxcsr(u32 v)
{
    __asm__ volatile("ldmxcsr %0" ::"m"(v));
}

/* 1.0 / 3.0 computed at run time under the current MXCSR rounding mode */
static u64 third_bits(void)
{
    static const u64 one = 0x3ff0000000000000ULL, three = 0x4008000000000000ULL;
    u64 r;
    __asm__ volatile("movsd %1, %%xmm0\n\t"
                     "divsd %2, %%xmm0\n\t"
                     "movq %%xmm0, %0\n\t"
                     : "=r"(r)
                     : "m"(one), "m"(three)
                     : "xmm0");
    return r;
}

static void fail(u64 round, const char *what, u64 idx, u64 expect, u64 got)
{
    u_puts("sse FAIL round=");
    u_putu(round);
    u_puts(" what=");
    u_puts(what);
    u_puts(" index=");
    u_putu(idx);
    u_puts(" expected=");
    u_puthex(expect, 16);
    u_puts(" got=");
    u_puthex(got, 16);
    u_putc('\n');
    u_exit(1);
}

int user_main(const char *cmdline)
{
    u64 rounds = arg_u64_or(cmdline, "rounds", 20);
    u64 iters = arg_u64_or(cmdline, "iters", 20000);
    u64 spinn = arg_u64_or(cmdline, "spin", 1000);
    u64 seed = arg_u64_or(cmdline, "seed", 1);
    if (iters == 0)
        iters = 1;
    if (spinn == 0)
        spinn = 1;

    u_puts("sse start rounds=");
    u_putu(rounds);
    u_puts(" iters=");
    u_putu(iters);
    u_puts(" spin=");
    u_putu(spinn);
    u_puts(" seed=");
    u_putu(seed);
    u_putc('\n');

    u64 sm = seed;
    for (int i = 0; i < 16; i++)
        for (int h = 0; h < 2; h++) {
            init[i][h] = splitmix64(&sm);
            cst[i][h] = splitmix64(&sm) | 1;
            state[i][h] = init[i][h];
        }
    u64 gpr = mix64(seed) | 1;

    set_mxcsr(MXCSR_VALUE);

    for (u64 r = 0; r < rounds; r++) {
        run_round(iters, spinn, &gpr);
        u64 total = (r + 1) * iters;
        u64 h = HASH_INIT;
        for (int i = 0; i < 16; i++)
            for (int hh = 0; hh < 2; hh++) {
                u64 exp;
                if (i < 8)
                    exp = init[i][hh] + total * cst[i][hh];
                else if (i < 12)
                    exp = init[i][hh] - total * cst[i][hh];
                else
                    exp = init[i][hh] ^ ((total & 1) ? cst[i][hh] : 0);
                if (state[i][hh] != exp)
                    fail(r, "xmm", (u64)(i * 2 + hh), exp, state[i][hh]);
                h = hash_u64(h, state[i][hh]);
            }
        h = hash_u64(h, gpr);
        u32 m = get_mxcsr() & 0xffc0; /* ignore the sticky exception flags */
        if (m != (MXCSR_VALUE & 0xffc0))
            fail(r, "mxcsr", 0, MXCSR_VALUE, m);
        u64 third = third_bits();
        if (third != THIRD_ROUND_UP)
            fail(r, "rounding", 0, THIRD_ROUND_UP, third);

        u_puts("sse round=");
        u_putu(r);
        u_puts(" xmm=");
        u_puthex(hash_final(h), 16);
        u_puts(" ok\n");
    }
    u_puts("sse done rounds=");
    u_putu(rounds);
    u_puts(" result=ok\n");
    return 0;
}
