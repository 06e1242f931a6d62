/* A victim with state for the parasite to report, then counter's loop: a line every 20 ms.
 *   infect_target            umask 027, SIGUSR1 handled (SA_RESTART, mask {SIGUSR2}), SIGUSR2 ignored,
 *                            an alternate signal stack, ITIMER_REAL every 1000 s, a POSIX timer,
 *                            its brk moved 100 bytes past its start
 *   infect_target echo       instead of counting: copy stdin to stdout line by line (sits in read())
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static void on_signal(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	static char altstack[64 * 1024];
	struct timespec interval = { 0, 20 * 1000000L };
	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
	struct itimerval itv = { { 1000, 0 }, { 1000, 0 } };
	struct itimerspec its = { { 2000, 0 }, { 2000, 0 } };
	struct sigevent sev = { .sigev_notify = SIGEV_NONE };
	timer_t timer;
	char line[4096];

	if (argc > 1 && strcmp(argv[1], "echo") == 0) {
		ssize_t n;

		while ((n = read(STDIN_FILENO, line, sizeof(line))) > 0)
			if (write(STDOUT_FILENO, line, n) != n)
				return 1;
		return 0;
	}

	umask(027);
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	signal(SIGUSR2, SIG_IGN);
	sigaltstack(&ss, NULL);
	setitimer(ITIMER_REAL, &itv, NULL);
	if (timer_create(CLOCK_MONOTONIC, &sev, &timer) || timer_settime(timer, 0, &its, NULL))
		return 1;
	if (sbrk(100) == (void *)-1)
		return 1;

	for (unsigned long n = 0;; n++) {
		int len = snprintf(line, sizeof(line), "%lu\n", n);
		if (write(STDOUT_FILENO, line, len) != len)
			return 1;
		nanosleep(&interval, NULL);
	}
}
