/*
 * An LD_PRELOAD library with hooks for `--call-hook hooklib.so:SYMBOL` (built by the test with
 * gcc -shared -fPIC). It keeps a log file open, named by $HOOKLIB_LOG, opened O_APPEND as loggers do.
 *
 * pre_restore() re-opens that log file on the same fd (what a program does after its log was moved)
 * and writes "pre_restore pid PID stack ADDRESS" (ADDRESS: a local variable, so on the stack the hook
 * ran on). failing_hook() returns 3 and does nothing else; crashing_hook() writes to address 0.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char log_path[4096];
static int log_fd = -1;

__attribute__((constructor)) static void open_log(void)
{
	const char *path = getenv("HOOKLIB_LOG");

	if (!path)
		return;
	strncpy(log_path, path, sizeof(log_path) - 1);
	log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

int pre_restore(void)
{
	char line[128];
	int fd, len;

	if (log_fd < 0)
		return 1;
	fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || dup3(fd, log_fd, O_CLOEXEC) < 0)
		return 2;
	close(fd);
	len = snprintf(line, sizeof(line), "pre_restore pid %d stack %p\n", (int)getpid(), (void *)line);
	return write(log_fd, line, len) == len ? 0 : 4;
}

int failing_hook(void)
{
	return 3;
}

int crashing_hook(void)
{
	*(volatile int *)0 = 1;
	return 0;
}
