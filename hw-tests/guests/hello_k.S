/* hello: ring-0 hook, runs before the switch to ring 3. */
        .text
        .globl  guest_init0
guest_init0:
        mov     $msg_hello0, %edi
        jmp     kputs

        .section .rodata
msg_hello0:
        .asciz  "hello from pvh guest\n"

        .section .note.GNU-stack, "", @progbits
