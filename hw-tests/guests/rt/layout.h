/* Constants shared by the ring-0 runtime (entry.S) and the ring-3 library.
 * Keep this file valid for both the assembler and C. */
#ifndef HOTSPARE_GUEST_LAYOUT_H
#define HOTSPARE_GUEST_LAYOUT_H

/* GDT selectors */
#define SEL_KCODE64 0x08
#define SEL_KDATA   0x10
#define SEL_KCODE32 0x18
#define SEL_UDATA   0x23 /* 0x20 | RPL 3 */
#define SEL_UCODE64 0x2b /* 0x28 | RPL 3 */
#define SEL_TSS0    0x30
#define SEL_TSS1    0x40

/* Devices */
#define COM1_BASE   0x3f8
#define EXIT_PORT   0xf4
#define LAPIC_BASE  0xfee00000

/* Interrupt vectors */
#define VEC_TIMER    0x40
#define VEC_SPURIOUS 0xff

/* Real-mode AP trampoline: copied here, SIPI vector = 0x08 */
#define AP_TRAMPOLINE 0x8000

/* System call numbers: `int3` with rax = number, rdi/rsi/rdx = arguments,
 * result in rax, every other register (and rflags) preserved. */
#define SYS_WRITE     1 /* write(buf, len) -> len                          */
#define SYS_EXIT      2 /* exit(code): out code -> port 0xf4, never returns */
#define SYS_SLEEP     3 /* sti; hlt: wait for the next interrupt -> 0      */
#define SYS_PARK      4 /* cli; hlt forever (used by finished APs)         */
#define SYS_TIMER     5 /* timer(initial_count): LAPIC periodic timer, divide 16,
                           vector 0x40; 0 stops it -> 0                     */
#define SYS_START_AP  6 /* start_ap(entry, user_stack_top, arg): INIT+SIPI+SIPI
                           to all-but-self; the AP enters ring 3 at entry(arg)
                           -> 0 when the AP is up, -1 on timeout            */

/* Exit statuses used by the runtime itself */
#define EXIT_FAULT     3 /* CPU exception / unexpected vector */
#define EXIT_BAD_BOOT  5 /* hvm_start_info magic wrong        */

#endif
