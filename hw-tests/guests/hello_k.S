/* hello: ring-0 hook, runs before the switch to ring 3. */
        .text
        .globl  guest_init0
guest_init0:
        mov     $msg_hello0, %edi
        call    kputs
        /* One line by string I/O: a single exit carries every byte. */
        mov     $0x3f8, %edx
        mov     $msg_rep, %esi
        mov     $(msg_rep_end - msg_rep), %ecx
        cld
        rep outsb
        ret

        .section .rodata
msg_hello0:
        .asciz  "hello from pvh guest\n"
msg_rep:
        .ascii  "rep outsb: every byte arrived\n"
msg_rep_end:

        .section .note.GNU-stack, "", @progbits
