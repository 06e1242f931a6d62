/* Blocks in one system call, named by argv[1], so that it can be dumped inside it:
 *   nanosleep        nanosleep(2) for 3 s (raw system call: glibc uses clock_nanosleep)
 *   clock_nanosleep  clock_nanosleep(CLOCK_MONOTONIC, relative 3 s)
 *   read             read(2) from an empty pipe of its own; SIGUSR1's handler (SA_RESTART) writes "woken" to it
 *   pause            pause(2), until SIGUSR1's handler ran
 *   poll             poll(2) on that empty pipe, 3 s timeout
 * Prints "ready" before the call, and after it "<name> returned R errno E[ data]" and exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int pipefd[2];

static void on_usr1(int sig)
{
	(void)sig;
	write(pipefd[1], "woken", 5);
}

int main(int argc, char **argv)
{
	const char *call = argc > 1 ? argv[1] : "nanosleep";
	struct timespec interval = { 3, 0 };
	char data[64] = "";
	long result;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (pipe(pipefd))
		return 1;
	signal(SIGUSR1, on_usr1);  /* glibc's signal() sets SA_RESTART */
	printf("ready\n");
	errno = 0;
	if (!strcmp(call, "nanosleep")) {
		result = syscall(SYS_nanosleep, &interval, NULL);
	} else if (!strcmp(call, "clock_nanosleep")) {
		result = clock_nanosleep(CLOCK_MONOTONIC, 0, &interval, NULL);
		if (result > 0) {
			errno = result;
			result = -1;
		}
	} else if (!strcmp(call, "read")) {
		result = read(pipefd[0], data, sizeof(data) - 1);
		if (result > 0)
			data[result] = 0;
	} else if (!strcmp(call, "pause")) {
		result = pause();
	} else if (!strcmp(call, "poll")) {
		struct pollfd pfd = { .fd = pipefd[0], .events = POLLIN };
		result = poll(&pfd, 1, 3000);
	} else {
		return 2;
	}
	printf("%s returned %ld errno %s%s%s\n", call, result, errno ? strerrorname_np(errno) : "0",
	       data[0] ? " " : "", data);
	return 0;
}
