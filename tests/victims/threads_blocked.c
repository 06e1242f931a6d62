/* Threads blocked where programs block: a raw futex wait, pthread_cond_wait, pthread_join and sigwait.
 * Each prints "NAME waiting" once it is about to block. SIGUSR1 (blocked everywhere, taken by sigwait)
 * starts a chain: the sigwait thread wakes the futex waiter, which signals the condition, whose waiter
 * exits, which ends the pthread_join; each prints "NAME woke", and the process exits with status 0. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned futex_word;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_set;

static void say(const char *name, const char *what)
{
	char line[64];
	int len = snprintf(line, sizeof(line), "%s %s\n", name, what);

	if (write(STDOUT_FILENO, line, len) != len)
		_exit(2);
}

static void *futex_waiter(void *arg)
{
	pthread_setname_np(pthread_self(), "futex");
	say("futex", "waiting");
	while (!__atomic_load_n(&futex_word, __ATOMIC_SEQ_CST))
		syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
	say("futex", "woke");
	pthread_mutex_lock(&lock);
	cond_set = 1;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
	return NULL;
}

static void *cond_waiter(void *arg)
{
	pthread_setname_np(pthread_self(), "cond");
	pthread_mutex_lock(&lock);
	say("cond", "waiting");
	while (!cond_set)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	say("cond", "woke");
	return NULL;
}

static void *signal_waiter(void *arg)
{
	sigset_t usr1;
	int sig;

	pthread_setname_np(pthread_self(), "sigwait");
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	say("sigwait", "waiting");
	if (sigwait(&usr1, &sig) || sig != SIGUSR1)
		_exit(3);
	say("sigwait", "woke");
	__atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	return NULL;
}

int main(void)
{
	pthread_t futex_thread, cond_thread, signal_thread;
	sigset_t usr1;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	if (pthread_create(&cond_thread, NULL, cond_waiter, NULL) ||
	    pthread_create(&futex_thread, NULL, futex_waiter, NULL) ||
	    pthread_create(&signal_thread, NULL, signal_waiter, NULL))
		return 1;
	say("join", "waiting");
	pthread_join(cond_thread, NULL);
	say("join", "woke");
	pthread_join(futex_thread, NULL);
	pthread_join(signal_thread, NULL);
	return 0;
}
