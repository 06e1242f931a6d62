/* N threads (argv[1], default 8) take turns through one mutex and one condition variable; each counts
 * in thread-local storage and prints "THREAD COUNT" on its turn, so every thread's numbers must go on
 * with no gap and no repeat, in turn order, after a dump and restore. Each thread names itself "count-I"
 * and blocks its own signal (SIGRTMIN + I, for the first 24), so names and masks differ per thread;
 * thread 1 runs at nice 5, thread 2 under SCHED_BATCH, thread 3 has its own alternate signal stack,
 * thread 4 has its own effective user and group IDs (set with the raw system calls: glibc would set
 * them in every thread). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_changed = PTHREAD_COND_INITIALIZER;
static int turn, nr_threads;
static __thread unsigned long count;

static void *counter(void *arg)
{
	int me = (int)(long)arg;
	char name[16], line[64];
	struct timespec pause = { 0, 2 * 1000 * 1000 };

	snprintf(name, sizeof(name), "count-%d", me);
	pthread_setname_np(pthread_self(), name);
	if (me < 24) {
		sigset_t own;

		sigemptyset(&own);
		sigaddset(&own, SIGRTMIN + me);
		pthread_sigmask(SIG_BLOCK, &own, NULL);
	}
	if (me == 1)
		setpriority(PRIO_PROCESS, gettid(), 5);
	if (me == 2) {
		struct sched_param param = { 0 };

		sched_setscheduler(0, SCHED_BATCH, &param);
	}
	if (me == 3) {
		static char altstack[65536];
		stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };

		sigaltstack(&ss, NULL);
	}
	if (me == 4 && getuid() == 0) {
		syscall(SYS_setresgid, -1, 65534, -1);
		syscall(SYS_setresuid, -1, 65534, -1);
	}
	for (;;) {
		pthread_mutex_lock(&lock);
		while (turn != me)
			pthread_cond_wait(&turn_changed, &lock);
		int len = snprintf(line, sizeof(line), "%d %lu\n", me, count++);
		if (write(STDOUT_FILENO, line, len) != len)
			exit(1);
		turn = (turn + 1) % nr_threads;
		pthread_cond_broadcast(&turn_changed);
		pthread_mutex_unlock(&lock);
		if (me == 0)
			nanosleep(&pause, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t threads[1024];

	nr_threads = argc > 1 ? atoi(argv[1]) : 8;
	for (int i = 0; i < nr_threads; i++)
		if (pthread_create(&threads[i], NULL, counter, (void *)(long)i))
			return 1;
	pthread_join(threads[0], NULL);
	return 0;
}
