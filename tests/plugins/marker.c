/* A PIE plugin that logs one marker line per hook call, with what the hook was given. */
#include <asm/fcntl.h>

#include <pie/log.h>
#include <pie/plugin.h>
#include <pie/syscall.h>

int criupy_hook_post_restore_vmas(const struct criupy_hook_args *args)
{
	pie_log_init(args->log_fd, args->log_level);
	pr_info("plugin-marker post_restore_vmas pid %d tid %d", args->pid, args->tid);
	return 0;
}

int criupy_hook_pre_sigreturn(const struct criupy_hook_args *args)
{
	unsigned int magic = 0;
	long fd = sys_openat(args->images_dir_fd, "inventory.img", O_RDONLY, 0);

	if (fd >= 0) {
		sys_read(fd, &magic, sizeof(magic));
		sys_close(fd);
	}
	pie_log_init(args->log_fd, args->log_level);
	pr_info("plugin-marker pre_sigreturn pid %d tid %d ip %lx sp %lx inventory magic %x size %u", args->pid,
		args->tid, (unsigned long)args->regs->ip, (unsigned long)args->regs->sp, magic, args->size);
	return 0;
}
