/* A SysV shared memory segment of key argv[1] (3 pages and 100 bytes), attached by a parent and the child
 * it forks, which take turns incrementing a counter in it (each waits for the other's increment), printing
 * "turn N"; sharing broken means no turn comes again. Prints "shm ID" once made, "ready PID" per process.
 * With a second argument "rmid": the segment is marked for removal once both have it attached. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define SIZE (3 * 4096 + 100)

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int id = shmget((key_t)strtol(argv[1], NULL, 0), SIZE, IPC_CREAT | IPC_EXCL | 0640);
	if (id < 0)
		return 1;
	volatile long *shared = shmat(id, NULL, 0);
	if (shared == (void *)-1)
		return 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	strcpy((char *)&shared[1], "hello sysv");
	printf("shm %d\n", id);
	volatile long *turn = &shared[1024 + 100];  /* on the second page */
	int is_child = fork() == 0;
	if (!is_child && argc > 2 && !strcmp(argv[2], "rmid") && shmctl(id, IPC_RMID, NULL))
		return 1;
	printf("ready %d\n", getpid());
	for (;;) {
		long now = __atomic_load_n(turn, __ATOMIC_SEQ_CST);
		if (now % 2 == is_child) {
			if (strcmp((char *)&shared[1], "hello sysv"))
				printf("BAD contents\n");
			__atomic_store_n(turn, now + 1, __ATOMIC_SEQ_CST);
			printf("turn %ld\n", now + 1);
		}
		struct timespec t = { 0, 10 * 1000000L };
		nanosleep(&t, NULL);
	}
}
