/*
 * Common ring-0 runtime of the hotspare test guests.
 *
 * PVH entry (32-bit, paging off, ebx = struct hvm_start_info *)
 *   -> own GDT, identity page tables (first 1 GiB, 2 MiB pages, user
 *      accessible; 3-4 GiB uncached and user accessible for MMIO, except
 *      the IOAPIC and LAPIC pages, which are supervisor only)
 *   -> long mode -> IDT + TSS -> iretq to ring 3: user_main(cmdline).
 *
 * Ring-0 code runs in KVM's instruction emulator on the development hosts
 * (~1 us per instruction, no SSE/x87), so it is kept short and plain:
 * no SSE, no x87, no popcnt, no string instructions in hot paths.
 *
 * System calls: `int3` from ring 3 (vector 3, DPL 3 gate), rax = number,
 * rdi/rsi/rdx = arguments, result in rax; all other registers preserved.
 * See layout.h for the numbers.
 */
#include "layout.h"

#define CR0_VALUE   0x80010033 /* PG | WP | NE | ET | MP | PE (EM=TS=0) */
#define CR4_BITS    0x00000620 /* OSXMMEXCPT | OSFXSR | PAE            */
#define MSR_EFER    0xc0000080
#define EFER_LME    0x100
#define PVH_MAGIC   0x336ec578

/* ------------------------------------------------------------------ */
/* PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen"             */
/* ------------------------------------------------------------------ */
        .section .note.pvh, "a", @note
        .p2align 2
        .long 4                 /* namesz */
        .long 4                 /* descsz */
        .long 18                /* type: XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start32       /* desc: 32-bit physical entry */
        .p2align 2

/* Enter long mode from 32-bit protected mode with our GDT loaded.
 * Clobbers eax, ecx, edx. */
.macro ENTER_LONG_MODE target
        mov     %cr4, %eax
        or      $CR4_BITS, %eax
        mov     %eax, %cr4
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $EFER_LME, %eax
        wrmsr
        mov     $CR0_VALUE, %eax
        mov     %eax, %cr0
        ljmp    $SEL_KCODE64, $\target
.endm

/* ------------------------------------------------------------------ */
/* 32-bit entry                                                       */
/* ------------------------------------------------------------------ */
        .section .text.boot, "ax"
        .code32
        .globl  pvh_start32
pvh_start32:
        cli
        cld
        mov     %ebx, %esi              /* keep hvm_start_info in esi */
        lgdt    gdtr
        mov     $SEL_KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        ljmp    $SEL_KCODE32, $1f       /* our own CS, not the VMM's */
1:
        ENTER_LONG_MODE bsp_start64

/* AP: arrives here from the real-mode trampoline in protected mode. */
        .globl  ap_start32
ap_start32:
        mov     $SEL_KDATA, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %eax, %fs
        mov     %eax, %gs
        ENTER_LONG_MODE ap_start64

/* ------------------------------------------------------------------ */
/* Real-mode AP trampoline, copied to AP_TRAMPOLINE (SIPI vector 8).   */
/* Position independent: runs with CS = AP_TRAMPOLINE >> 4, IP = 0.    */
/* ------------------------------------------------------------------ */
        .code16
        .globl  ap_tramp_start, ap_tramp_end
ap_tramp_start:
        cli
        cld
        mov     %cs, %ax
        mov     %ax, %ds
        lgdtl   (ap_tramp_gdtr - ap_tramp_start)
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $SEL_KCODE32, $ap_start32
        .p2align 2
ap_tramp_gdtr:
        .word   gdt_end - gdt - 1
        .long   gdt
ap_tramp_end:

/* ------------------------------------------------------------------ */
/* 64-bit BSP start                                                   */
/* ------------------------------------------------------------------ */
        .code64
        .text
bsp_start64:
        mov     $kstack0_top, %rsp
        mov     %esi, %esi              /* zero-extend start_info ptr */

        /* zero .bss (stacks live in .stack and are not touched) */
        mov     $__bss_start, %edi
        mov     $__bss_end, %ecx
        sub     %edi, %ecx
        shr     $3, %ecx
        xor     %eax, %eax
        rep stosq

        call    uart_init

        /* mask both 8259 PICs: only the LAPIC delivers interrupts */
        mov     $0xff, %al
        out     %al, $0x21
        out     %al, $0xa1

        /* hvm_start_info: magic, cmdline, memmap */
        cmpl    $PVH_MAGIC, (%rsi)
        jne     bad_boot
        mov     24(%rsi), %rcx          /* cmdline_paddr */
        test    %rcx, %rcx
        jz      2f
        mov     $pvh_cmdline, %edi
        mov     $1023, %edx
1:      movzbl  (%rcx), %eax
        test    %eax, %eax
        jz      2f
        mov     %al, (%rdi)
        inc     %rcx
        inc     %rdi
        dec     %edx
        jnz     1b
2:
        cmpl    $1, 4(%rsi)             /* version >= 1 has the memmap */
        jb      4f
        mov     40(%rsi), %rcx          /* memmap_paddr */
        mov     48(%rsi), %edx          /* memmap_entries */
        test    %rcx, %rcx
        jz      4f
        xor     %r8d, %r8d              /* highest end of RAM */
3:      test    %edx, %edx
        jz      5f
        cmpl    $1, 16(%rcx)            /* E820_RAM */
        jne     6f
        mov     (%rcx), %rax
        add     8(%rcx), %rax
        cmp     %r8, %rax
        jbe     6f
        mov     %rax, %r8
6:      add     $24, %rcx
        dec     %edx
        jmp     3b
5:      mov     %r8, pvh_ram_top
4:
        /* TSS descriptors for cpu0 and cpu1 */
        mov     $tss0, %edi
        mov     $(gdt + SEL_TSS0), %esi
        call    make_tss_desc
        mov     $tss1, %edi
        mov     $(gdt + SEL_TSS1), %esi
        call    make_tss_desc

        call    idt_init
        lgdt    gdtr
        lidt    idtr
        mov     $SEL_TSS0, %eax
        ltr     %ax

        /* optional guest hook (ring 0), e.g. hello's first line */
        mov     $guest_init0, %eax
        test    %eax, %eax
        jz      1f
        call    *%rax
1:
        /* enter ring 3: user_main(cmdline), returning into user_exit_stub */
        movq    $user_exit_stub, (ustack0_top - 8)
        pushq   $SEL_UDATA
        pushq   $(ustack0_top - 8)
        pushq   $0x202                  /* IF=1 */
        pushq   $SEL_UCODE64
        pushq   $user_main
        mov     $pvh_cmdline, %edi
        xor     %eax, %eax
        xor     %ebx, %ebx
        xor     %ecx, %ecx
        xor     %edx, %edx
        xor     %esi, %esi
        xor     %ebp, %ebp
        iretq

bad_boot:
        mov     $msg_bad_boot, %edi
        call    kputs
        mov     $EXIT_BAD_BOOT, %edi
        jmp     kexit

/* ------------------------------------------------------------------ */
/* 64-bit AP start                                                    */
/* ------------------------------------------------------------------ */
ap_start64:
        mov     $kstack1_top, %rsp
        lgdt    gdtr                    /* reload with the 64-bit base */
        lidt    idtr
        mov     $SEL_TSS1, %eax
        ltr     %ax
        mov     ap_ustack, %rcx
        movq    $ap_exit_stub, -8(%rcx)
        sub     $8, %rcx
        movl    $1, ap_up
        pushq   $SEL_UDATA
        pushq   %rcx
        pushq   $0x202
        pushq   $SEL_UCODE64
        pushq   ap_entry
        mov     ap_arg, %rdi
        iretq

/* ------------------------------------------------------------------ */
/* helpers (ring 0)                                                   */
/* ------------------------------------------------------------------ */

/* 8250 UART: 8N1, divisor 1 (115200), FIFO on, no interrupts */
uart_init:
        mov     $(COM1_BASE + 1), %dx   /* IER = 0 */
        xor     %al, %al
        out     %al, %dx
        mov     $(COM1_BASE + 3), %dx   /* LCR: DLAB = 1 */
        mov     $0x80, %al
        out     %al, %dx
        mov     $(COM1_BASE + 0), %dx   /* DLL = 1 */
        mov     $1, %al
        out     %al, %dx
        mov     $(COM1_BASE + 1), %dx   /* DLM = 0 */
        xor     %al, %al
        out     %al, %dx
        mov     $(COM1_BASE + 3), %dx   /* LCR: 8N1, DLAB = 0 */
        mov     $0x03, %al
        out     %al, %dx
        mov     $(COM1_BASE + 2), %dx   /* FCR: enable + clear FIFOs */
        mov     $0xc7, %al
        out     %al, %dx
        mov     $(COM1_BASE + 4), %dx   /* MCR: DTR | RTS */
        mov     $0x03, %al
        out     %al, %dx
        ret

/* kputc(dil): poll LSR.THRE, write THR. Clobbers rax, rdx. */
        .globl  kputc
kputc:
        mov     $(COM1_BASE + 5), %edx
1:      in      %dx, %al
        test    $0x20, %al
        jz      1b
        mov     %edi, %eax
        mov     $COM1_BASE, %edx
        out     %al, %dx
        ret

/* kputs(rdi = NUL-terminated string). Clobbers rax, rcx, rdx, rdi. */
        .globl  kputs
kputs:
        mov     %rdi, %rcx
1:      movzbl  (%rcx), %edi
        test    %edi, %edi
        jz      2f
        call    kputc
        inc     %rcx
        jmp     1b
2:      ret

/* kputhex(rdi = value, esi = number of hex digits, 1..16).
 * Clobbers rax, rcx, rdx, rdi, r8, r9. */
        .globl  kputhex
kputhex:
        mov     %rdi, %r8
        mov     %esi, %r9d
        mov     $16, %ecx
        sub     %esi, %ecx
        shl     $2, %ecx
        rol     %cl, %r8
1:      rol     $4, %r8
        mov     %r8d, %edi
        and     $15, %edi
        movzbl  hexdigits(%rdi), %edi
        call    kputc
        dec     %r9d
        jnz     1b
        ret

/* kexit(edi = status): debug-exit port, then cli; hlt as a fallback */
        .globl  kexit
kexit:
        mov     %edi, %eax
        out     %al, $EXIT_PORT
1:      cli
        hlt
        jmp     1b

/* make_tss_desc(rdi = tss base, rsi = 16-byte GDT slot) */
make_tss_desc:
        mov     %rdi, %rax
        and     $0xffffff, %eax
        shl     $16, %rax
        or      $103, %rax              /* limit */
        mov     $0x89, %edx             /* present, 64-bit TSS available */
        shl     $40, %rdx
        or      %rdx, %rax
        mov     %rdi, %rdx
        shr     $24, %rdx
        and     $0xff, %edx
        shl     $56, %rdx
        or      %rdx, %rax
        mov     %rax, (%rsi)
        mov     %rdi, %rdx
        shr     $32, %rdx
        mov     %rdx, 8(%rsi)
        ret

/* set_gate(rdi = vector, rsi = handler, edx = type_attr | ist << 8) */
set_gate:
        shl     $4, %rdi
        add     $idt, %rdi
        mov     %esi, %eax
        and     $0xffff, %eax
        or      $(SEL_KCODE64 << 16), %eax
        mov     %rsi, %rcx
        shr     $16, %rcx
        shl     $48, %rcx
        or      %rcx, %rax
        movzbl  %dl, %ecx
        shl     $40, %rcx
        or      %rcx, %rax
        movzbl  %dh, %ecx
        shl     $32, %rcx
        or      %rcx, %rax
        mov     %rax, (%rdi)
        mov     %rsi, %rcx
        shr     $32, %rcx
        mov     %rcx, 8(%rdi)
        ret

/* Vectors 0-31 (exceptions), 3 = system call gate (DPL 3), 8 on IST1,
 * 0x40 = LAPIC timer, 0xff = spurious. Other vectors stay not-present,
 * so a stray interrupt shows up as #NP with err = vector * 8 + 2. */
idt_init:
        xor     %ebx, %ebx
1:      mov     %ebx, %edi
        mov     exc_table(,%rbx,8), %rsi
        mov     $0x8e, %edx
        call    set_gate
        inc     %ebx
        cmp     $32, %ebx
        jb      1b
        mov     $3, %edi
        mov     $bp_entry, %esi
        mov     $0xee, %edx             /* DPL 3 interrupt gate */
        call    set_gate
        mov     $8, %edi
        mov     $exc_8, %esi
        mov     $0x18e, %edx            /* IST1 */
        call    set_gate
        mov     $VEC_TIMER, %edi
        mov     $timer_entry, %esi
        mov     $0x8e, %edx
        call    set_gate
        mov     $VEC_SPURIOUS, %edi
        mov     $spurious_entry, %esi
        mov     $0x8e, %edx
        call    set_gate
        xor     %ebx, %ebx
        ret

/* ------------------------------------------------------------------ */
/* exceptions                                                         */
/* ------------------------------------------------------------------ */
.macro EXC_NOERR n
exc_\n:
        pushq   $0
        pushq   $\n
        jmp     fault_common
.endm
.macro EXC_ERR n
exc_\n:
        pushq   $\n
        jmp     fault_common
.endm

        EXC_NOERR 0
        EXC_NOERR 1
        EXC_NOERR 2
        EXC_NOERR 3
        EXC_NOERR 4
        EXC_NOERR 5
        EXC_NOERR 6
        EXC_NOERR 7
        EXC_ERR   8
        EXC_NOERR 9
        EXC_ERR   10
        EXC_ERR   11
        EXC_ERR   12
        EXC_ERR   13
        EXC_ERR   14
        EXC_NOERR 15
        EXC_NOERR 16
        EXC_ERR   17
        EXC_NOERR 18
        EXC_NOERR 19
        EXC_NOERR 20
        EXC_ERR   21
        EXC_NOERR 22
        EXC_NOERR 23
        EXC_NOERR 24
        EXC_NOERR 25
        EXC_NOERR 26
        EXC_NOERR 27
        EXC_NOERR 28
        EXC_ERR   29
        EXC_ERR   30
        EXC_NOERR 31

/* stack: vector, error, rip, cs, rflags, rsp, ss */
fault_common:
        mov     $msg_fault, %edi
        call    kputs
        mov     0(%rsp), %rdi
        mov     $2, %esi
        call    kputhex
        mov     $msg_err, %edi
        call    kputs
        mov     8(%rsp), %rdi
        mov     $16, %esi
        call    kputhex
        mov     $msg_rip, %edi
        call    kputs
        mov     16(%rsp), %rdi
        mov     $16, %esi
        call    kputhex
        mov     $msg_cs, %edi
        call    kputs
        mov     24(%rsp), %rdi
        mov     $4, %esi
        call    kputhex
        mov     $msg_rsp, %edi
        call    kputs
        mov     40(%rsp), %rdi
        mov     $16, %esi
        call    kputhex
        mov     $msg_cr2, %edi
        call    kputs
        mov     %cr2, %rdi
        mov     $16, %esi
        call    kputhex
        mov     $'\n', %edi
        call    kputc
        mov     $EXIT_FAULT, %edi
        jmp     kexit

/* ------------------------------------------------------------------ */
/* interrupts                                                         */
/* ------------------------------------------------------------------ */
timer_entry:
        incq    timer_ticks
        push    %rax
        mov     $LAPIC_BASE, %eax
        movl    $0, 0xb0(%rax)          /* EOI */
        pop     %rax
        iretq

spurious_entry:
        iretq

/* ------------------------------------------------------------------ */
/* system calls: int3                                                 */
/* ------------------------------------------------------------------ */
bp_entry:
        cmp     $SYS_WRITE, %rax
        je      sys_write
        cmp     $SYS_SLEEP, %rax
        je      sys_sleep
        cmp     $SYS_EXIT, %rax
        je      sys_exit
        cmp     $SYS_TIMER, %rax
        je      sys_timer
        cmp     $SYS_PARK, %rax
        je      sys_park
        cmp     $SYS_START_AP, %rax
        je      sys_start_ap
        mov     $-1, %rax
        iretq

/* write(rdi = buf, rsi = len) -> len */
sys_write:
        push    %rcx
        push    %rdx
        push    %rsi
        mov     %rdi, %rcx
        add     %rdi, %rsi              /* end */
1:      cmp     %rsi, %rcx
        jae     3f
        mov     $(COM1_BASE + 5), %edx
2:      in      %dx, %al
        test    $0x20, %al
        jz      2b
        movzbl  (%rcx), %eax
        mov     $COM1_BASE, %edx
        out     %al, %dx
        inc     %rcx
        jmp     1b
3:      pop     %rsi
        pop     %rdx
        pop     %rcx
        mov     %rsi, %rax
        iretq

sys_exit:
        jmp     kexit

sys_sleep:
        sti
        hlt
        cli
        xor     %eax, %eax
        iretq

sys_park:
        cli
1:      hlt
        jmp     1b

/* timer(rdi = initial count): periodic LAPIC timer, divide by 16 */
sys_timer:
        push    %rcx
        mov     $LAPIC_BASE, %ecx
        movl    $(0x100 | VEC_SPURIOUS), 0xf0(%rcx)  /* SVR: enable first */
        movl    $0x3, 0x3e0(%rcx)                     /* divide by 16 */
        movl    $(0x20000 | VEC_TIMER), 0x320(%rcx)   /* LVT timer: periodic */
        movl    %edi, 0x380(%rcx)                     /* initial count */
        pop     %rcx
        xor     %eax, %eax
        iretq

/* start_ap(rdi = entry, rsi = user stack top, rdx = arg) -> 0 / -1 */
sys_start_ap:
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        mov     %rdi, ap_entry
        mov     %rsi, ap_ustack
        mov     %rdx, ap_arg
        movl    $0, ap_up
        /* copy the trampoline below 1 MiB */
        cld
        mov     $ap_tramp_start, %esi
        mov     $AP_TRAMPOLINE, %edi
        mov     $(ap_tramp_end - ap_tramp_start), %ecx
        rep movsb
        mov     $LAPIC_BASE, %ecx
        movl    $(0x100 | VEC_SPURIOUS), 0xf0(%rcx)  /* SVR: enable */
        movl    $0, 0x310(%rcx)                       /* ICR high */
        movl    $0x000c4500, 0x300(%rcx)              /* INIT, all but self */
        call    icr_wait
        mov     $200, %edx
1:      dec     %edx
        jnz     1b
        movl    $(0x000c4600 | (AP_TRAMPOLINE >> 12)), 0x300(%rcx) /* SIPI */
        call    icr_wait
        mov     $200, %edx
1:      dec     %edx
        jnz     1b
        cmpl    $0, ap_up
        jne     3f
        movl    $(0x000c4600 | (AP_TRAMPOLINE >> 12)), 0x300(%rcx) /* SIPI again */
        call    icr_wait
        mov     $2000000, %edx          /* a few seconds at ~1 us/insn */
2:      cmpl    $0, ap_up
        jne     3f
        dec     %edx
        jnz     2b
        mov     $-1, %rax
        jmp     4f
3:      xor     %eax, %eax
4:      pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        iretq

/* wait for ICR delivery status to clear (rcx = LAPIC base) */
icr_wait:
        testl   $0x1000, 0x300(%rcx)
        jnz     icr_wait
        ret

/* ------------------------------------------------------------------ */
/* ring-3 stubs (executed at CPL 3; all pages are user accessible)     */
/* ------------------------------------------------------------------ */
        .globl  user_exit_stub
user_exit_stub:                         /* user_main returned eax */
        mov     %eax, %edi
        mov     $SYS_EXIT, %eax
        int3
        jmp     user_exit_stub

ap_exit_stub:                           /* an AP entry function returned */
        mov     $SYS_PARK, %eax
        int3
        jmp     ap_exit_stub

        .weak   guest_init0

/* ------------------------------------------------------------------ */
/* data                                                               */
/* ------------------------------------------------------------------ */
        .section .rodata
hexdigits:      .ascii  "0123456789abcdef"
msg_bad_boot:   .asciz  "\nguest: bad hvm_start_info magic (not booted via PVH?)\n"
msg_fault:      .asciz  "\nFAULT vec=0x"
msg_err:        .asciz  " err=0x"
msg_rip:        .asciz  " rip=0x"
msg_cs:         .asciz  " cs=0x"
msg_rsp:        .asciz  " rsp=0x"
msg_cr2:        .asciz  " cr2=0x"

        .p2align 3
exc_table:
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad   exc_\n
        .endr

/* Page tables: static, identity mapped. */
        .section .data.pagetables, "aw"
        .p2align 12
pml4:
        .quad   pdpt + 0x7              /* P | RW | US */
        .fill   511, 8, 0
pdpt:
        .quad   pd0 + 0x7               /* 0 - 1 GiB */
        .quad   0
        .quad   0
        .quad   pd3 + 0x7               /* 3 - 4 GiB: MMIO, see pd3 */
        .fill   508, 8, 0
pd0:
        .set    i, 0
        .rept   512
        .quad   (i << 21) | 0x87        /* P | RW | US | PS */
        .set    i, i + 1
        .endr
pd3:
        /* The MMIO gap, uncached and user accessible, so ring-3 drivers can
         * reach device windows (virtio-mmio at 0xd0000000 under hotspare,
         * 0xfeb00000 under QEMU's microvm); the IOAPIC and LAPIC pages stay
         * supervisor only. */
        .set    i, 0
        .rept   502
        .quad   (0xc0000000 + (i << 21)) | 0x9f /* P | RW | US | PWT | PCD | PS */
        .set    i, i + 1
        .endr
        .quad   0xfec00000 | 0x9b       /* IOAPIC: P | RW | PWT | PCD | PS */
        .quad   0xfee00000 | 0x9b       /* LAPIC */
        .set    i, 504
        .rept   8
        .quad   (0xc0000000 + (i << 21)) | 0x9f
        .set    i, i + 1
        .endr

        .data
        .p2align 4
gdt:
        .quad   0
        .quad   0x00af9b000000ffff      /* 0x08 kernel code64 */
        .quad   0x00cf93000000ffff      /* 0x10 kernel data */
        .quad   0x00cf9b000000ffff      /* 0x18 kernel code32 */
        .quad   0x00cff3000000ffff      /* 0x20 user data, DPL 3 */
        .quad   0x00affb000000ffff      /* 0x28 user code64, DPL 3 */
        .quad   0, 0                    /* 0x30 TSS cpu0 */
        .quad   0, 0                    /* 0x40 TSS cpu1 */
gdt_end:

        .p2align 3
        .word   0, 0, 0
gdtr:
        .word   gdt_end - gdt - 1
        .quad   gdt
        .p2align 3
        .word   0, 0, 0
idtr:
        .word   256 * 16 - 1
        .quad   idt

        .p2align 4
.macro TSS rsp0, ist1
        .long   0
        .quad   \rsp0                   /* rsp0 */
        .quad   0, 0                    /* rsp1, rsp2 */
        .quad   0
        .quad   \ist1                   /* ist1 */
        .quad   0, 0, 0, 0, 0, 0        /* ist2-7 */
        .quad   0
        .word   0
        .word   104                     /* no I/O bitmap */
.endm
tss0:   TSS     kstack0_top, dfstack0_top
        .p2align 4
tss1:   TSS     kstack1_top, dfstack1_top

        .bss
        .p2align 12
idt:    .skip   256 * 16
        .globl  pvh_cmdline, pvh_ram_top, timer_ticks
pvh_cmdline:    .skip 1024              /* copy of the PVH command line */
pvh_ram_top:    .quad 0                 /* highest end of E820 RAM, 0 = unknown */
timer_ticks:    .quad 0                 /* LAPIC timer interrupts so far */
ap_entry:       .quad 0
ap_ustack:      .quad 0
ap_arg:         .quad 0
ap_up:          .long 0

        .section .stack, "aw", @nobits
        .p2align 12
        .skip   16384
kstack0_top:
        .skip   16384
kstack1_top:
        .skip   4096
dfstack0_top:
        .skip   4096
dfstack1_top:
        .globl  ustack0_top, ustack1_top
        .skip   131072
ustack0_top:
        .skip   131072
ustack1_top:

        .section .note.GNU-stack, "", @progbits
