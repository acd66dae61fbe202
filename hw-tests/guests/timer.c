/* timer: LAPIC periodic timer + HLT.
 *
 * Params: ticks=N (total, default 2000), every=K (default 100),
 *         count=C (LAPIC initial count with divide-by-16, default 62500:
 *                  1 ms at KVM's 1 GHz APIC bus; the host clamps periodic
 *                  timers to >= 200 us).
 * Output:
 *   timer start ticks=<N> every=<K> count=<C>
 *   timer tick=<K>
 *   timer tick=<2K>
 *   ...                 (tick numbers only, never times: deterministic)
 *   timer done ticks=<N> result=ok
 * Exit status 0.
 *
 * Ring 0 (entry.S) enables the LAPIC (SVR) before programming the LVT,
 * counts interrupts on vector 0x40 in timer_ticks and sends EOI. Ring 3
 * waits with the sleep system call (sti; hlt in ring 0).
 */
#include "ulib.h"

int user_main(const char *cmdline)
{
    u64 ticks = arg_u64_or(cmdline, "ticks", 2000);
    u64 every = arg_u64_or(cmdline, "every", 100);
    u64 count = arg_u64_or(cmdline, "count", 62500);
    if (every == 0)
        every = 1;
    if (count == 0 || count > 0xffffffffULL) {
        u_puts("timer: count must be in 1..2^32-1\n");
        return 2;
    }

    u_puts("timer start ticks=");
    u_putu(ticks);
    u_puts(" every=");
    u_putu(every);
    u_puts(" count=");
    u_putu(count);
    u_putc('\n');

    sys_timer((u32)count);
    for (u64 k = every; k <= ticks; k += every) {
        while (timer_ticks < k)
            sys_sleep();
        u_puts("timer tick=");
        u_putu(k);
        u_putc('\n');
    }
    while (timer_ticks < ticks)
        sys_sleep();
    sys_timer(0);

    u_puts("timer done ticks=");
    u_putu(ticks);
    u_puts(" result=ok\n");
    return 0;
}
