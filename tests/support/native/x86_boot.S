/* Boot code for tests/support/x86_emulation.py's bare-metal image (an emulated x86 CPU, no operating system).
 * A Multiboot header with the address fields (a flat binary loaded at 1 MiB by syslinux's mboot.c32), then, from
 * 32-bit protected mode: an identity map of the first GiB in 2 MiB pages, PAE + long mode, SSE and XSAVE on,
 * XCR0 = the x87/SSE/AVX/AVX-512 state the CPU offers (CPUID leaf 0xD), a 1 MiB stack, and runner_main().
 * No interrupts are ever enabled and there is no IDT: an exception is a triple fault, which stops Bochs
 * (reset_on_triple_fault=0) before the runner prints RESULT. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00010003          /* page-aligned modules, memory info, the address fields below */
        .section .multiboot, "a"
        .align 4
mb_header:
        .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
        .long mb_header, __load_start, __load_end, __bss_end, _start

        .section .text32, "ax"
        .code32
        .globl _start
_start:
        cli
        mov $stack_top, %esp
        mov $pd, %edi                /* 512 x 2 MiB pages: present, writable, large */
        mov $0x83, %eax
        mov $512, %ecx
1:      mov %eax, (%edi)
        movl $0, 4(%edi)
        add $0x200000, %eax
        add $8, %edi
        loop 1b
        mov $pdpt, %eax
        or $3, %eax
        mov %eax, pml4
        mov $pd, %eax
        or $3, %eax
        mov %eax, pdpt
        mov %cr4, %eax               /* PAE, OSFXSR, OSXMMEXCPT, OSXSAVE */
        or $((1 << 5) | (1 << 9) | (1 << 10) | (1 << 18)), %eax
        mov %eax, %cr4
        mov $pml4, %eax
        mov %eax, %cr3
        mov $0xC0000080, %ecx        /* EFER.LME */
        rdmsr
        or $(1 << 8), %eax
        wrmsr
        mov %cr0, %eax               /* paging, protection, FPU present (EM and TS off, MP on) */
        and $~((1 << 2) | (1 << 3)), %eax
        or $((1 << 31) | (1 << 1) | 1), %eax
        mov %eax, %cr0
        lgdt gdt_ptr
        ljmp $0x08, $long_mode

        .code64
long_mode:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        xor %ax, %ax
        mov %ax, %fs
        mov %ax, %gs
        mov $0xd, %eax
        xor %ecx, %ecx
        cpuid
        and $0xe7, %eax              /* x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM: those offered */
        xor %edx, %edx
        xor %ecx, %ecx
        xsetbv
        mov $stack_top, %rsp
        call runner_main
2:      hlt
        jmp 2b

        .section .rodata
        .align 16
gdt:    .quad 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF      /* null, 64-bit code, data */
gdt_ptr:
        .word gdt_ptr - gdt - 1
        .long gdt

        .section .bss
        .align 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4096
        .skip 1 << 20
stack_top:
        .section .note.GNU-stack, "", @progbits
