/* A tree whose processes share private memory copy-on-write, as fork() leaves it.  The parent P
 * writes an 8 MiB private anonymous region (every page different), then
 *   forks A, which touches nothing;
 *   writes pages 8, 24, 40, ... anew (A keeps their old contents, the only process that has them);
 *   forks B, which writes pages 0, 16, 32, ... anew and drops pages 1000-1099 (MADV_DONTNEED: they
 *   read as zeroes in B, not in the others), then forks G, which touches nothing (B's view).
 * Each process prints "ready PID ADDRESS" once its part is done, then sleeps; on SIGUSR1 it prints
 * "sum PID CHECKSUM" of its view of the region (reading it all).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 2048

static volatile sig_atomic_t asked;
static unsigned char *region;

static void on_usr1(int sig)
{
	(void)sig;
	asked = 1;
}

static void rewrite_pages(int first, uint64_t seed)
{
	for (int page = first; page < PAGES; page += 16)
		for (int i = 0; i < PAGE; i += 8)
			*(uint64_t *)(region + (size_t)page * PAGE + i) = seed ^ ((uint64_t)page << 20) ^ i;
}

static void __attribute__((noreturn)) serve(void)
{
	sigset_t usr1, old;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);
	printf("ready %d %lx\n", (int)getpid(), (unsigned long)region);
	fflush(stdout);
	for (;;) {
		while (!asked)
			sigsuspend(&old);
		asked = 0;
		uint64_t sum = 0;
		for (size_t i = 0; i < (size_t)PAGES * PAGE; i += 8)
			sum = (sum ^ *(uint64_t *)(region + i)) * 0x100000001b3ULL;
		printf("sum %d %016llx\n", (int)getpid(), (unsigned long long)sum);
		fflush(stdout);
	}
}

int main(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	uint64_t x = 0x9e3779b97f4a7c15ULL;

	sigaction(SIGUSR1, &sa, NULL);
	region = mmap(NULL, (size_t)PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < (size_t)PAGES * PAGE; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		*(uint64_t *)(region + i) = x;
	}
	if (fork() == 0)
		serve(); /* A */
	rewrite_pages(8, 0xa);
	if (fork() == 0) { /* B */
		rewrite_pages(0, 0xb);
		madvise(region + 1000 * PAGE, 100 * PAGE, MADV_DONTNEED);
		if (fork() == 0)
			serve(); /* G */
		serve();
	}
	serve();
}
