/* hello: the smallest PVH guest.
 *
 * Output (cmdline "X"):
 *   hello from pvh guest      (ring 0, hello_k.S)
 *   hello from ring 3         (ring 3, int3 write syscall)
 *   cmdline: X
 * Exit status 0 (port 0xf4).
 */
#include "ulib.h"

int user_main(const char *cmdline)
{
    u_puts("hello from ring 3\n");
    u_puts("cmdline: ");
    u_puts(cmdline);
    u_putc('\n');
    return 0;
}
