/* Benchmark victim: holds MIB MiB of written anonymous memory, with THREADS extra threads and
 * CHILDREN child processes that all sleep.  Prints "ready <checksum>" once the memory is written;
 * on SIGUSR1 prints "checksum <checksum>" computed again from the memory (after a restore, the
 * restored pages).  stdout should be a regular file.
 *
 *     memhold MIB [THREADS [CHILDREN]]
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

static uint64_t checksum(const uint64_t *words, size_t count)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < count; i++)
		sum = (sum ^ words[i]) * 0x100000001b3ULL;
	return sum;
}

static void *sleeper(void *unused)
{
	(void)unused;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	size_t size = (argc > 1 ? strtoull(argv[1], NULL, 0) : 16) << 20;
	int threads = argc > 2 ? atoi(argv[2]) : 0;
	int children = argc > 3 ? atoi(argv[3]) : 0;
	size_t count = size / sizeof(uint64_t);
	uint64_t *words, x = 0x9e3779b97f4a7c15ULL;
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigset_t usr1, old;

	words = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (words == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < count; i++) {	/* xorshift: no page is zero or like another */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		words[i] = x;
	}
	for (int i = 0; i < children; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return 1;
		if (pid == 0)
			sleeper(NULL);
	}
	for (int i = 0; i < threads; i++) {
		pthread_t t;

		if (pthread_create(&t, NULL, sleeper, NULL))
			return 1;
	}
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);
	printf("ready %016llx\n", (unsigned long long)checksum(words, count));
	fflush(stdout);
	for (;;) {
		while (!asked)
			sigsuspend(&old);
		asked = 0;
		printf("checksum %016llx\n", (unsigned long long)checksum(words, count));
		fflush(stdout);
	}
}
