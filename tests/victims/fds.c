/* fds TRIGGER KIND: opens fds of one kind with state in them (queued messages, counters, timers...),
 * prints "ready", waits (sleeping) until the file TRIGGER exists, then prints what its fds hold and how
 * they behave, and exits. A run that was dumped and restored while it waited must print the same as a
 * run that never was. KIND: unix. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BIG 100000

static void die(const char *what)
{
	printf("error: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void put(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_DONTWAIT);
		if (n < 0)
			die("send");
		p += n;
		len -= n;
	}
}

static void text(int fd, const char *s)
{
	put(fd, s, strlen(s));
}

/* Everything a stream socket holds: its length, a hash, its first bytes, and whether EOF follows. */
static void drain_stream(int fd)
{
	static char all[4 * BIG];
	size_t len = 0;
	unsigned hash = 2166136261u;
	ssize_t n;

	while ((n = recv(fd, all + len, sizeof(all) - len, MSG_DONTWAIT)) > 0)
		len += n;
	for (size_t i = 0; i < len; i++)
		hash = (hash ^ (unsigned char)all[i]) * 16777619u;
	printf("fd %d: %zu bytes, hash %08x, starts '%.*s'%s\n", fd, len, hash, (int)(len < 24 ? len : 24), all,
	       n == 0 ? ", then EOF" : "");
}

/* Each datagram a socket holds, in order. */
static void drain_dgram(int fd)
{
	char msg[4096];
	ssize_t n;

	printf("fd %d:", fd);
	while ((n = recv(fd, msg, sizeof(msg), MSG_DONTWAIT)) > 0)
		printf(" '%.*s'", (int)n, msg);
	printf("\n");
}

static void at(int fd, int want)
{
	if (fd != want && (dup2(fd, want) < 0 || close(fd) < 0))
		die("dup2");
}

static void unix_setup(void)
{
	int s[2], d[2], e[2];
	static char big[BIG];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, s) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, e))
		die("socketpair");
	at(s[0], 10), at(s[1], 11), at(d[0], 12), at(d[1], 13), at(e[0], 14), at(e[1], 15);
	fcntl(13, F_SETFD, FD_CLOEXEC);
	for (int i = 0; i < BIG; i++)
		big[i] = 'a' + i % 23;
	text(10, "stream one, ");
	put(10, big, BIG);
	text(10, "stream two");
	text(11, "the other way");
	text(12, "d1"), text(12, "dgram-22"), text(12, "dgram-333");
	text(13, "back-1"), text(13, "back-22");
	text(14, "last words");
	if (shutdown(14, SHUT_WR))
		die("shutdown");
}

static void unix_report(void)
{
	char buf[64];
	ssize_t n;

	drain_stream(10), drain_stream(11), drain_dgram(12), drain_dgram(13), drain_stream(15);
	/* still pairs: what goes in one end comes out of the other */
	text(11, "ping"), text(12, "pong");
	n = recv(10, buf, sizeof(buf), 0);
	printf("fd 10 then: '%.*s'\n", (int)(n > 0 ? n : 0), buf);
	n = recv(13, buf, sizeof(buf), 0);
	printf("fd 13 then: '%.*s'\n", (int)(n > 0 ? n : 0), buf);
	n = send(14, "x", 1, MSG_NOSIGNAL);
	printf("fd 14 after shutdown: %s\n", n < 0 && errno == EPIPE ? "EPIPE" : "writable");
}

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 5000000 };

	if (argc != 3)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(argv[2], "unix"))
		unix_setup();
	else
		return 2;
	printf("ready\n");
	while (access(argv[1], F_OK))
		nanosleep(&nap, NULL);
	if (!strcmp(argv[2], "unix"))
		unix_report();
	return 0;
}
