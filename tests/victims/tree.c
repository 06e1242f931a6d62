/* A process tree for dump/restore: a session leader P with children C1, C2 (its own process group),
 * C3 (a session leader of its own, parent of grandchild G) and Z (a zombie that exited with status 7).
 * All write lines to stdout, one file description shared by all (one offset).
 *
 *   P -> C1  pipe: P writes 0, 1, 2, ... (8-byte numbers); C1 reads them slower than P writes
 *            (the pipe holds data), checks each is the last + 1 and prints "c1 N"
 *   C2 -> P  pipe: C2 writes 0, 1, 2, ...; P prints "p N"
 *   G -> C3  pipe: G writes 0, 1, 2, ...; C3 prints "c3 N"
 *   P <-> G  a MAP_SHARED|MAP_ANONYMOUS page: a turn counter that P moves from even to odd and G from
 *            odd to even, each printing "turn N": neither goes on unless both see the other's writes.
 *
 * Once every process has printed, P prints "ready". On SIGUSR1 P reaps Z and prints "reaped PID
 * STATUS" (the raw waitpid status). Any inconsistency prints a line with "BAD".
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, long a, long b)
{
	char line[96];
	int len = snprintf(line, sizeof(line), fmt, a, b);

	if (write(STDOUT_FILENO, line, len) != len)
		_exit(1);
}

static void pause_ms(long ms)
{
	struct timespec t = { 0, ms * 1000000L };
	nanosleep(&t, NULL);
}

/* Read the next number from a pipe, checking it follows the last one; -1 if none is there. */
static long next_number(int fd, long *expected)
{
	long n;
	ssize_t got = read(fd, &n, sizeof(n));

	if (got < 0 && errno == EAGAIN)
		return -1;
	if (got != sizeof(n)) {
		say("BAD read %ld errno %ld\n", got, errno);
		_exit(2);
	}
	if (n != *expected)
		say("BAD got %ld expected %ld\n", n, *expected);
	*expected = n + 1;
	return n;
}

static void writer(int fd, long interval_ms)
{
	for (long n = 0;; n++) {
		if (write(fd, &n, sizeof(n)) != sizeof(n))
			_exit(3);
		pause_ms(interval_ms);
	}
}

static volatile sig_atomic_t reap_now;

static void on_usr1(int sig)
{
	reap_now = 1;
}

int main(void)
{
	volatile long *turn = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int p2c1[2], c22p[2], g2c3[2];
	pid_t zombie;

	if (turn == MAP_FAILED || pipe(p2c1) || pipe(c22p) || pipe(g2c3))
		return 10;
	signal(SIGUSR1, on_usr1);

	zombie = fork();
	if (zombie == 0)
		_exit(7);

	if (fork() == 0) { /* C1 */
		long expected = 0, n;

		close(p2c1[1]);
		for (;;) {
			n = next_number(p2c1[0], &expected);
			say("c1 %ld\n", n, 0);
			pause_ms(3);
		}
	}
	if (fork() == 0) { /* C2 */
		setpgid(0, 0);
		writer(c22p[1], 4);
	}
	if (fork() == 0) { /* C3 */
		long expected = 0;

		setsid();
		if (fork() == 0) { /* G */
			int flags = fcntl(g2c3[1], F_GETFL);

			fcntl(g2c3[1], F_SETFL, flags | O_NONBLOCK);
			for (long n = 0;;) {
				if (*turn % 2 == 1) {
					long now = ++*turn;
					say("turn %ld\n", now, 0);
				}
				if (write(g2c3[1], &n, sizeof(n)) == sizeof(n))
					n++;
				pause_ms(2);
			}
		}
		for (;;) {
			long n = next_number(g2c3[0], &expected);
			if (n >= 0)
				say("c3 %ld\n", n, 0);
		}
	}

	/* P */
	fcntl(p2c1[1], F_SETFL, O_NONBLOCK);
	fcntl(c22p[0], F_SETFL, O_NONBLOCK);
	long to_c1 = 0, expected = 0;
	int ready = 0;
	for (;;) {
		struct pollfd pfd = { c22p[0], POLLIN, 0 };
		long n;

		if (write(p2c1[1], &to_c1, sizeof(to_c1)) == sizeof(to_c1))
			to_c1++;
		if (*turn % 2 == 0) {
			long now = ++*turn;
			say("turn %ld\n", now, 0);
		}
		poll(&pfd, 1, 2);
		while ((n = next_number(c22p[0], &expected)) >= 0)
			say("p %ld\n", n, 0);
		if (!ready && expected > 20 && *turn > 20) {
			ready = 1;
			say("ready %ld %ld\n", zombie, 0);
		}
		if (reap_now) {
			int status;
			pid_t got;

			reap_now = 0;
			got = waitpid(zombie, &status, 0);
			say("reaped %ld %ld\n", got, status);
		}
	}
}
