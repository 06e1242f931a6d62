/* memfds: "criupy-buf" (sealed against growing and shrinking, 3 pages and 100 bytes) written through its
 * fd and a shared mapping, and "criupy-mapped" whose fd is closed once it is mapped.
 * Every 10 ms: the counter in the mapping goes up, is written through the fd and read back through the
 * mapping (and the other way round); each step prints "n COUNT ONLY" (ONLY: the counter in criupy-mapped),
 * or a line with BAD when the fd and the mapping disagree.
 * With argument "tree": a child forked after the mappings and the parent take turns through the mapping
 * (each waits for the other's increment), printing "turn N"; sharing broken means no turn comes again. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SIZE (3 * 4096 + 100)

static void pause_a_bit(void)
{
	struct timespec t = { 0, 10 * 1000000L };
	nanosleep(&t, NULL);
}

int main(int argc, char **argv)
{
	int fd = memfd_create("criupy-buf", MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, SIZE) || write(fd, "hello memfd\n", 12) != 12
	    || fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK))
		return 1;
	volatile long *shared = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int other = memfd_create("criupy-mapped", 0);
	if (shared == MAP_FAILED || other < 0 || ftruncate(other, 4096))
		return 1;
	volatile long *only = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, other, 0);
	if (only == MAP_FAILED)
		return 1;
	close(other);
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (argc > 1 && !strcmp(argv[1], "tree")) {
		volatile long *turn = &shared[1024];
		int is_child = fork() == 0;
		printf("ready %d\n", getpid());
		for (;;) {
			long now = __atomic_load_n(turn, __ATOMIC_SEQ_CST);
			if (now % 2 == is_child) {
				__atomic_store_n(turn, now + 1, __ATOMIC_SEQ_CST);
				printf("turn %ld\n", now + 1);
			}
			pause_a_bit();
		}
	}

	printf("ready %d\n", getpid());
	for (;;) {
		long count = ++shared[1024], back;
		only[0]++;
		if (pread(fd, &back, sizeof(back), 1024 * sizeof(long)) != sizeof(back) || back != count)
			printf("BAD fd reads %ld, the mapping holds %ld\n", back, count);
		long through_fd = count * 3;
		if (pwrite(fd, &through_fd, sizeof(through_fd), 1100 * sizeof(long)) != sizeof(through_fd)
		    || shared[1100] != through_fd)
			printf("BAD the mapping holds %ld, written through the fd %ld\n", shared[1100], through_fd);
		printf("n %ld %ld\n", count, only[0]);
		pause_a_bit();
	}
}
