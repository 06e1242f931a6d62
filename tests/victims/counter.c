/* Prints 0, 1, 2, ... one line every 20 ms (or every argv[1] ms) on stdout, forever.
 * The output of a process that was dumped and restored must go on with no gap and no repeat. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long interval_ms = argc > 1 ? atol(argv[1]) : 20;
	struct timespec interval = { interval_ms / 1000, (interval_ms % 1000) * 1000000L };
	char line[32];

	for (unsigned long n = 0;; n++) {
		int len = snprintf(line, sizeof(line), "%lu\n", n);
		if (write(STDOUT_FILENO, line, len) != len)
			return 1;
		nanosleep(&interval, NULL);
	}
}
