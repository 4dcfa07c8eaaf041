# A shared library with more than 3 million unwind rows (libbig_unwind_lib.so, for
# big_unwind.c), as large C++ and Rust services have: 100 000 functions with no name, each
# pushing and popping 16 registers (32 rules each), between two spinning functions at its two
# ends, so their rows fall in different chunks of the unwinder's tables. No function keeps a
# frame pointer: only the table gives a caller.

# void NAME(long rounds): counts down with two registers saved on the stack.
	.macro	spin name
	.globl	\name
	.type	\name, @function
\name:
	.cfi_startproc
	push	%rbx
	.cfi_adjust_cfa_offset 8
	push	%r12
	.cfi_adjust_cfa_offset 8
	mov	%rdi, %rbx
1:	dec	%rbx
	jnz	1b
	pop	%r12
	.cfi_adjust_cfa_offset -8
	pop	%rbx
	.cfi_adjust_cfa_offset -8
	ret
	.cfi_endproc
	.size	\name, .-\name
	.endm

	.text
	spin	big_spin_first

	.rept	100000
	.cfi_startproc
	.rept	16
	push	%rbx
	.cfi_adjust_cfa_offset 8
	.endr
	.rept	16
	pop	%rbx
	.cfi_adjust_cfa_offset -8
	.endr
	ret
	.cfi_endproc
	.endr

	spin	big_spin_last

	.section	.note.GNU-stack,"",@progbits
