/*
 * The parasite's entry, placed first in the blob.  criupy starts the task here with every signal
 * blocked; we switch to the parasite's own stack (the task's stack is left exactly as it was), run
 * the command loop, and trap with int3 when it returns so criupy regains control.
 */
	.section .head.text, "ax"
	.globl	__export_parasite_head
	.hidden	__export_parasite_head
__export_parasite_head:
	leaq	parasite_stack_top(%rip), %rsp	/* 16-byte aligned: the call below keeps the ABI's alignment */
	call	parasite_main
	int3

/*
 * parasite_sigreturn(frame): rt_sigreturn with rsp just past the frame's return-address slot, as the
 * kernel expects after a signal handler's ret.  It resumes the task at the frame's registers.
 */
	.text
	.globl	parasite_sigreturn
	.hidden	parasite_sigreturn
parasite_sigreturn:
	leaq	8(%rdi), %rsp
	movl	$15, %eax	/* __NR_rt_sigreturn */
	syscall
	int3			/* only if the kernel refused the frame */

	.bss
	.balign	16
parasite_stack:
	.skip	64 * 1024
parasite_stack_top:
