/* Keeps creating short-lived threads (each adds one to a counter and exits) without pause, and
 * prints the count of threads that ran, one line per 100, so that its output goes on after restore.
 * It ends by itself after two minutes: left behind by a killed test run, it would spin for ever. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static unsigned long ran;

static void *short_lived(void *arg)
{
	__atomic_add_fetch(&ran, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

int main(void)
{
	pthread_attr_t detached;
	char line[32];
	time_t end = time(NULL) + 120;

	pthread_attr_init(&detached);
	pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
	for (unsigned long created = 1;; created++) {
		pthread_t thread;

		while (pthread_create(&thread, &detached, short_lived, NULL))
			usleep(100); /* too many at once: let some end */
		if (created % 100 == 0) {
			if (time(NULL) > end)
				return 0;
			int len = snprintf(line, sizeof(line), "%lu\n", created / 100);
			if (write(STDOUT_FILENO, line, len) != len)
				return 1;
		}
	}
}
