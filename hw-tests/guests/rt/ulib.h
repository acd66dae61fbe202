/* Tiny libc-free ring-3 library for the hotspare test guests. */
#ifndef HOTSPARE_GUEST_ULIB_H
#define HOTSPARE_GUEST_ULIB_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

typedef uint64_t u64;
typedef uint32_t u32;
typedef uint16_t u16;
typedef uint8_t u8;

/* Provided by the ring-0 runtime (entry.S). */
extern char pvh_cmdline[];          /* NUL-terminated copy of the PVH cmdline */
extern volatile u64 pvh_ram_top;    /* highest end of E820 RAM, 0 = unknown   */
extern volatile u64 timer_ticks;    /* LAPIC timer interrupts so far          */
extern char ustack1_top[];          /* user stack for the AP                  */

/* Entry point of every guest's ring-3 payload (the return value is the exit
 * status). */
int user_main(const char *cmdline);

/* ---- system calls (int3) ------------------------------------------------ */
static inline long sys3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int3"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "memory", "cc");
    return ret;
}

static inline long sys_write(const void *buf, u64 len) { return sys3(SYS_WRITE, (long)buf, (long)len, 0); }
static inline void sys_sleep(void) { sys3(SYS_SLEEP, 0, 0, 0); }
static inline void sys_park(void) { for (;;) sys3(SYS_PARK, 0, 0, 0); }
static inline void sys_timer(u32 initial_count) { sys3(SYS_TIMER, initial_count, 0, 0); }
static inline long sys_start_ap(void (*entry)(u64), void *stack_top, u64 arg)
{
    return sys3(SYS_START_AP, (long)entry, (long)stack_top, (long)arg);
}
__attribute__((noreturn)) void u_exit(int code); /* flushes output first */

/* ---- output (buffered; flushed at '\n' with one write syscall) ---------- */
void u_putc(char c);
void u_puts(const char *s);
void u_putu(u64 v);                 /* decimal */
void u_puthex(u64 v, int digits);   /* lower-case, zero padded, no prefix */
void u_flush(void);

/* ---- strings / memory --------------------------------------------------- */
size_t u_strlen(const char *s);
int u_streq(const char *a, const char *b);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* ---- command line: space-separated key=value ---------------------------- */
/* Returns 1 and the value (decimal or 0x-hex) if key is present; exits with
 * status 2 on a malformed number. */
int arg_u64(const char *cmdline, const char *key, u64 *out);
u64 arg_u64_or(const char *cmdline, const char *key, u64 dflt);
/* Copies the value of key (up to cap-1 bytes) into buf; returns 1 if found. */
int arg_str(const char *cmdline, const char *key, char *buf, size_t cap);

/* ---- PRNG and hashing ---------------------------------------------------- */
static inline u64 rotl64(u64 x, int r) { return (x << r) | (x >> (64 - r)); }

/* splitmix64 finalizer: a good 64-bit mixer */
static inline u64 mix64(u64 x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline u64 splitmix64(u64 *state)
{
    *state += 0x9e3779b97f4a7c15ULL;
    return mix64(*state);
}

/* xorshift64*: state must be non-zero */
typedef struct { u64 s; } rng_t;
static inline void rng_seed(rng_t *r, u64 seed)
{
    u64 st = seed;
    r->s = splitmix64(&st);
    if (r->s == 0)
        r->s = 0x9e3779b97f4a7c15ULL;
}
static inline u64 rng_next(rng_t *r)
{
    u64 x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545f4914f6cdd1dULL;
}
/* uniform in [0, n) (n > 0), multiply-shift */
static inline u64 rng_below(rng_t *r, u64 n)
{
    return (u64)(((unsigned __int128)rng_next(r) * n) >> 64);
}

/* 64-bit streaming hash over words (order sensitive). */
#define HASH_INIT 0xcbf29ce484222325ULL
static inline u64 hash_u64(u64 h, u64 v)
{
    h ^= v * 0x9e3779b97f4a7c15ULL;
    h = rotl64(h, 29) * 0xbf58476d1ce4e5b9ULL;
    return h;
}
static inline u64 hash_final(u64 h) { return mix64(h); }
u64 hash_words(u64 h, const u64 *p, size_t n);
u64 hash_u32s(u64 h, const u32 *p, size_t n);
/* FNV-1a over bytes */
u64 fnv1a(const void *p, size_t n);

/* ---- virtio-mmio ---------------------------------------------------------- */
/* The base of the first virtio-mmio version-2 device of type device_id that
 * the command line announces (`virtio_mmio.device=<size>@<base>:<irq>`, as
 * Linux reads it) in the 3-4 GiB window; 0 if none. */
u64 virtio_mmio_find(const char *cmdline, u32 device_id);

/* ---- misc ---------------------------------------------------------------- */
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
/* Busy loop that the compiler cannot remove. */
static inline void spin(u64 n)
{
    for (u64 i = 0; i < n; i++)
        __asm__ volatile("" : "+r"(i));
}

#endif
