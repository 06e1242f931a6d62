/* POSIX timers across a dump: timer IDs 1 and 2 (0 was deleted, so the IDs have a hole), timer 1 firing
 * SIGUSR1 every 10 ms with sival 1234, timer 2 a one-shot 1000 s away, and an ITIMER_REAL every 20 ms.
 * Prints "ready", then every 50 ticks of timer 1 a line "tick N real M"; "bad ..." if a signal arrives
 * from the wrong timer or with the wrong value. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks, real_ticks, bad;

static void on_timer(int sig, siginfo_t *info, void *ctx)
{
	(void)sig; (void)ctx;
	if (info->si_code != SI_TIMER || info->si_value.sival_int != 1234)
		bad = 1;
	ticks += 1 + info->si_overrun;
}

static void on_alarm(int sig)
{
	(void)sig;
	real_ticks++;
}

static timer_t make_timer(int signo, int value)
{
	struct sigevent ev;
	timer_t id;

	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = signo;
	ev.sigev_value.sival_int = value;
	if (timer_create(CLOCK_MONOTONIC, &ev, &id))
		_exit(2);
	return id;
}

int main(void)
{
	struct sigaction sa;
	struct itimerspec every_10ms = { { 0, 10000000 }, { 0, 10000000 } };
	struct itimerspec in_1000s = { { 0, 0 }, { 1000, 0 } };
	struct itimerval every_20ms = { { 0, 20000 }, { 0, 20000 } };

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_timer;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGALRM, on_alarm);

	timer_t unused = make_timer(SIGUSR2, 0);
	timer_t periodic = make_timer(SIGUSR1, 1234);
	timer_t one_shot = make_timer(SIGUSR2, 99);
	timer_delete(unused);
	if (timer_settime(periodic, 0, &every_10ms, NULL) || timer_settime(one_shot, 0, &in_1000s, NULL) ||
	    setitimer(ITIMER_REAL, &every_20ms, NULL))
		return 2;
	printf("ready\n");
	fflush(stdout);

	int printed = 0;
	for (;;) {
		pause();
		if (bad) {
			printf("bad signal\n");
			fflush(stdout);
			return 1;
		}
		if (ticks / 50 > printed) {
			struct itimerspec left;

			printed = ticks / 50;
			timer_gettime(one_shot, &left);
			printf("tick %d real %d one-shot %ld\n", printed, (int)real_ticks, (long)left.it_value.tv_sec);
			fflush(stdout);
		}
	}
}
