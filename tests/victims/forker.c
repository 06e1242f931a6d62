/* Forks a short-lived child every millisecond (it lives 0-2 ms, then exits with status 3), reaps
 * every child that ended, and prints "N REAPED" after each fork: N counts forks, REAPED the children
 * reaped so far. A child that ended otherwise than with status 3 prints a line with "BAD".
 * It ends by itself after two minutes: left behind by a killed test run, it would fork for ever. */
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pause_us(long us)
{
	struct timespec t = { 0, us * 1000L };
	nanosleep(&t, NULL);
}

int main(void)
{
	long reaped = 0;
	char line[64];
	time_t end = time(NULL) + 120;

	for (long n = 0; time(NULL) <= end; n++) {
		pid_t child = fork();
		int status, len;

		if (child == 0) {
			pause_us((n % 3) * 1000);
			_exit(3);
		}
		if (child < 0)
			return 1;
		while ((child = waitpid(-1, &status, WNOHANG)) > 0) {
			reaped++;
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) {
				len = snprintf(line, sizeof(line), "BAD child %d status %d\n", child, status);
				if (write(STDOUT_FILENO, line, len) != len)
					return 1;
			}
		}
		len = snprintf(line, sizeof(line), "%ld %ld\n", n, reaped);
		if (write(STDOUT_FILENO, line, len) != len)
			return 1;
		pause_us(1000);
	}
	return 0;
}
