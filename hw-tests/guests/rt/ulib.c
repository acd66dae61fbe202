/* Ring-3 helper library (runs natively at CPL 3; SSE is allowed here). */
#include "ulib.h"

/* ---- output ------------------------------------------------------------- */
/* One buffer: only one CPU prints (smp: the BSP). */
static char outbuf[512];
static size_t outlen;

void u_flush(void)
{
    if (outlen) {
        sys_write(outbuf, outlen);
        outlen = 0;
    }
}

void u_putc(char c)
{
    outbuf[outlen++] = c;
    if (c == '\n' || outlen == sizeof(outbuf))
        u_flush();
}

void u_puts(const char *s)
{
    while (*s)
        u_putc(*s++);
}

void u_putu(u64 v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        u_putc(tmp[--n]);
}

void u_puthex(u64 v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    if (digits < 1)
        digits = 1;
    if (digits > 16)
        digits = 16;
    for (int i = digits - 1; i >= 0; i--)
        u_putc(hex[(v >> (4 * i)) & 15]);
}

void u_exit(int code)
{
    u_flush();
    for (;;)
        sys3(SYS_EXIT, code, 0, 0);
}

/* ---- strings / memory --------------------------------------------------- */
size_t u_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int u_streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* Built with -fno-tree-loop-distribute-patterns so these loops are not turned
 * back into calls to themselves. */
void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    if (p < q) {
        while (n--)
            *p++ = *q++;
    } else {
        while (n--)
            p[n] = q[n];
    }
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (size_t i = 0; i < n; i++)
        if (p[i] != q[i])
            return p[i] < q[i] ? -1 : 1;
    return 0;
}

/* ---- command line -------------------------------------------------------- */
/* Finds "key=" at the start of a space-separated token; returns a pointer to
 * the value or NULL. A later occurrence overrides an earlier one. */
static const char *find_value(const char *cmdline, const char *key)
{
    const char *found = NULL;
    size_t klen = u_strlen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        size_t i = 0;
        while (i < klen && p[i] == key[i])
            i++;
        if (i == klen && p[klen] == '=')
            found = p + klen + 1;
        while (*p && *p != ' ' && *p != '\t')
            p++;
    }
    return found;
}

int arg_u64(const char *cmdline, const char *key, u64 *out)
{
    const char *v = find_value(cmdline, key);
    if (!v)
        return 0;
    u64 x = 0;
    int base = 10, digits = 0;
    if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
        base = 16;
        v += 2;
    }
    for (; *v && *v != ' ' && *v != '\t'; v++) {
        int d;
        if (*v >= '0' && *v <= '9')
            d = *v - '0';
        else if (base == 16 && *v >= 'a' && *v <= 'f')
            d = *v - 'a' + 10;
        else if (base == 16 && *v >= 'A' && *v <= 'F')
            d = *v - 'A' + 10;
        else
            goto bad;
        x = x * (u64)base + (u64)d;
        digits++;
    }
    if (!digits)
        goto bad;
    *out = x;
    return 1;
bad:
    u_puts("bad value for parameter ");
    u_puts(key);
    u_putc('\n');
    u_exit(2);
}

u64 arg_u64_or(const char *cmdline, const char *key, u64 dflt)
{
    u64 v;
    return arg_u64(cmdline, key, &v) ? v : dflt;
}

int arg_str(const char *cmdline, const char *key, char *buf, size_t cap)
{
    const char *v = find_value(cmdline, key);
    if (!v || cap == 0)
        return 0;
    size_t n = 0;
    while (v[n] && v[n] != ' ' && v[n] != '\t' && n + 1 < cap) {
        buf[n] = v[n];
        n++;
    }
    buf[n] = 0;
    return 1;
}

/* ---- hashing -------------------------------------------------------------- */
u64 hash_words(u64 h, const u64 *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = hash_u64(h, p[i]);
    return h;
}

u64 hash_u32s(u64 h, const u32 *p, size_t n)
{
    size_t i = 0;
    for (; i + 1 < n; i += 2)
        h = hash_u64(h, (u64)p[i] | ((u64)p[i + 1] << 32));
    if (i < n)
        h = hash_u64(h, p[i]);
    return h;
}

u64 fnv1a(const void *p, size_t n)
{
    const u8 *b = p;
    u64 h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ---- virtio-mmio discovery ------------------------------------------------ */
/* Parses "<size>[K|M]@<base>:<irq>" at s; returns the base or 0. */
static u64 parse_virtio_mmio(const char *s)
{
    u64 v = 0;
    while (*s >= '0' && *s <= '9')
        s++;
    if (*s == 'K' || *s == 'k' || *s == 'M' || *s == 'm')
        s++;
    if (*s++ != '@')
        return 0;
    if (s[0] != '0' || (s[1] != 'x' && s[1] != 'X'))
        return 0;
    s += 2;
    for (;; s++) {
        u64 d;
        if (*s >= '0' && *s <= '9')
            d = (u64)(*s - '0');
        else if (*s >= 'a' && *s <= 'f')
            d = (u64)(*s - 'a' + 10);
        else if (*s >= 'A' && *s <= 'F')
            d = (u64)(*s - 'A' + 10);
        else
            break;
        v = v * 16 + d;
    }
    return *s == ':' ? v : 0;
}

u64 virtio_mmio_find(const char *cmdline, u32 device_id)
{
    static const char key[] = "virtio_mmio.device=";
    for (const char *p = cmdline; *p; p++) {
        if (p != cmdline && p[-1] != ' ')
            continue;
        size_t i = 0;
        while (key[i] && p[i] == key[i])
            i++;
        if (key[i])
            continue;
        u64 base = parse_virtio_mmio(p + i);
        /* The window must be in the 3-4 GiB range the page tables map. */
        if (base < 0xc0000000ULL || base >= 0x100000000ULL)
            continue;
        volatile u32 *r = (volatile u32 *)base;
        /* "virt", version 2 (virtio 1.x), the wanted device type */
        if (r[0] == 0x74726976u && r[1] == 2 && r[2] == device_id)
            return base;
    }
    return 0;
}
