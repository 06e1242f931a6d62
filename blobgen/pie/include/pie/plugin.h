/*
 * PIE plugins: C code that the restorer calls at fixed moments of a restore.
 *
 * Build with `criupy-blobgen --plugin FILE.c -o PLUGIN`, use with `criupy restore --pie-plugin PLUGIN`.
 * A plugin defines one or both hooks below (the names are fixed) and may call only the pie library
 * (pie/syscall.h, pie/string.h, pie/log.h): it is freestanding code loaded beside the restorer.
 *
 * A hook returns 0 to go on. Any other value stops the restore: the restorer logs the hook's name and
 * value and exits, criupy kills the half-made process and fails with that line.
 *
 * The plugin has its own copy of the logger: call pie_log_init(args->log_fd, args->log_level) before
 * pie_logf; its lines go to criupy's log with the restorer's. Signals are all blocked while hooks run,
 * and they run on the restorer's stacks (64 KiB each, the leader's or a thread's own: keep frames small).
 */
#ifndef PIE_PLUGIN_H
#define PIE_PLUGIN_H

#include <linux/types.h>

/* A thread's registers, user_regs_struct order (as PTRACE_GETREGS and CRIU's user_x86_regs_entry). */
struct criupy_regs {
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	__u64 ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
	__u64 fs_base, gs_base, ds, es, fs, gs;
};

struct criupy_hook_args {
	__u32 size;          /* sizeof(struct criupy_hook_args) as the restorer knows it */
	__s32 pid;           /* the restored process (its dumped PID) */
	__s32 tid;           /* the thread this call is for (the PID for post_restore_vmas) */
	__s32 images_dir_fd; /* the images directory, O_RDONLY: read it, never write or close it */
	__s32 log_fd;        /* for pie_log_init */
	__u32 log_level;
	/* The thread's registers, as rt_sigreturn will put them back. Read-only: the return frame is built. */
	const struct criupy_regs *regs;
};

/* After every dumped mapping is in place and filled, before fds, credentials and threads. Once per process. */
int criupy_hook_post_restore_vmas(const struct criupy_hook_args *args);
/* After a thread's state is restored, just before its rt_sigreturn. Once per restored thread. */
int criupy_hook_pre_sigreturn(const struct criupy_hook_args *args);

#endif /* PIE_PLUGIN_H */
