/* Signal state to survive a dump: a SIGUSR1 handler on an alternate signal stack (SA_ONSTACK), SIGUSR2
 * blocked and pending for the thread (raise), SIGRTMIN+2 blocked and pending for the process (kill),
 * SIGUSR1 blocked but while it waits in sigsuspend,
 * SIGPIPE ignored. Prints "ready", then for every SIGUSR1 one line: "usr1 on altstack" (or "usr1 off
 * altstack" if the handler's local variable is not on the alternate stack), followed by
 * "pending: usr2 rt2" naming the blocked signals still pending, and "blocked: usr1 usr2 rt2" (the mask
 * sigsuspend gave back). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *altstack;
static size_t altstack_size = 64 * 1024;
static volatile sig_atomic_t usr1_count, on_altstack;

static void on_usr1(int sig)
{
	char local;
	(void)sig;
	on_altstack = &local >= altstack && &local < altstack + altstack_size;
	usr1_count++;
}

int main(void)
{
	struct sigaction sa;
	stack_t ss = { .ss_size = altstack_size };
	sigset_t blocked, waiting, pending, now_blocked;
	int seen = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	altstack = malloc(altstack_size);
	ss.ss_sp = altstack;
	if (sigaltstack(&ss, NULL))
		return 1;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR2);
	sigaddset(&blocked, SIGRTMIN + 2);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	sigaddset(&blocked, SIGUSR1);
	sigprocmask(SIG_BLOCK, &blocked, &waiting);  /* SIGUSR1 taken only inside sigsuspend: none is missed */
	raise(SIGUSR2);
	kill(getpid(), SIGRTMIN + 2);

	printf("ready\n");
	for (;;) {
		sigsuspend(&waiting);
		while (seen < usr1_count) {
			seen++;
			sigpending(&pending);
			sigprocmask(SIG_BLOCK, NULL, &now_blocked);
			printf("usr1 %s altstack\npending:%s%s\nblocked:%s%s%s\n", on_altstack ? "on" : "off",
			       sigismember(&pending, SIGUSR2) ? " usr2" : "",
			       sigismember(&pending, SIGRTMIN + 2) ? " rt2" : "",
			       sigismember(&now_blocked, SIGUSR1) ? " usr1" : "",
			       sigismember(&now_blocked, SIGUSR2) ? " usr2" : "",
			       sigismember(&now_blocked, SIGRTMIN + 2) ? " rt2" : "");
		}
	}
}
