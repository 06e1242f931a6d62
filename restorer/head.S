/*
 * The restorer's ways in and out.
 *
 * restorer_entry(struct rst_args *args) is called from the restored task's Python (criupy's copy) with
 * the argument area; it moves to the restorer's own stack, because the one it came on is about to be
 * unmapped, and never returns.
 */
#define RST_ARGS_STACK_TOP 16 /* offsetof(struct rst_args, stack_top) */

	.section .head.text, "ax"
	.globl __export_restorer_entry
__export_restorer_entry:
	movq	RST_ARGS_STACK_TOP(%rdi), %rsp
	andq	$-16, %rsp
	xorl	%ebp, %ebp
	call	restorer_main
	ud2

	.text
/*
 * restorer_trap(): criupy, the tracer, stops the task here (SIGTRAP) and from then on follows its
 * system calls up to the exit of the final rt_sigreturn.
 */
	.globl __export_restorer_trap
	.globl restorer_trap
restorer_trap:
__export_restorer_trap:
	int3
	ret

/*
 * restorer_sigreturn(frame): rt_sigreturn on the rt_sigframe whose uc field is at frame, i.e. the
 * stack pointer a signal handler's `ret` into the sa_restorer trampoline would leave.
 * The `syscall` below is also where criupy runs its last remote munmap of this blob.
 */
	.globl restorer_sigreturn
restorer_sigreturn:
	movq	%rdi, %rsp
	movl	$15, %eax /* __NR_rt_sigreturn */
	.globl __export_restorer_syscall
__export_restorer_syscall:
	syscall
	ud2

/*
 * restorer_clone_thread(clone_args, size, thread): clone3 for a thread of ours. The new thread comes
 * back here on its own stack with rax 0 and thread still in rdx (a system call keeps it), and goes to
 * restorer_thread_main(thread); the caller gets the TID (or -errno).
 */
	.globl restorer_clone_thread
restorer_clone_thread:
	movl	$435, %eax /* __NR_clone3 */
	syscall
	testq	%rax, %rax
	jnz	1f
	movq	%rdx, %rdi
	xorl	%ebp, %ebp
	andq	$-16, %rsp
	call	restorer_thread_main
	ud2
1:	ret
