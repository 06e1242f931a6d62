/* fds TRIGGER KIND: opens fds of one kind with state in them (queued messages, counters, timers...),
 * prints "ready", waits (sleeping) until the file TRIGGER exists, then prints what its fds hold and how
 * they behave, and exits. A run that was dumped and restored while it waited must print the same as a
 * run that never was. KIND: unix, anon (eventfd, signalfd, timerfd, epoll), fifo, inotify, inet. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
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

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* eventfds 20 (counter 5, non-blocking) and 21 (semaphore, 3); signalfd 22 for SIGUSR1 and SIGUSR2 with
 * SIGUSR2 pending; timerfd 23 ticking every 30 s from T0 (one tick not read yet), one-shot timerfd 24
 * at T1; epoll 26 watching 20, 21, 22 and the empty pipe 27 (28 its write end). Prints T0 and T1. */
static void anon_setup(void)
{
	sigset_t mask;
	int p[2];
	long long t0 = now_ns() + 50000000LL, t1 = now_ns() + 1000 * 1000000000LL;
	struct itimerspec tick = { { 30, 0 }, { t0 / 1000000000LL, t0 % 1000000000LL } };
	struct itimerspec once = { { 0, 0 }, { t1 / 1000000000LL, t1 % 1000000000LL } };
	struct timespec wait = { 0, 100000000 };
	struct { int fd; uint32_t events; uint64_t data; } watch[] = {
		{ 20, EPOLLIN, 0x1111 }, { 22, EPOLLIN | EPOLLET, 0x2222 }, { 21, EPOLLOUT, 0x3333 }, { 27, EPOLLIN, 0x4444 },
	};

	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	raise(SIGUSR2);
	at(eventfd(5, EFD_NONBLOCK), 20);
	at(eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC), 21);
	at(signalfd(-1, &mask, SFD_NONBLOCK), 22);
	at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 23);
	at(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC), 24);
	if (pipe(p))
		die("pipe");
	at(p[0], 27), at(p[1], 28);
	at(epoll_create1(EPOLL_CLOEXEC), 26);
	for (unsigned i = 0; i < sizeof(watch) / sizeof(watch[0]); i++) {
		struct epoll_event ev = { .events = watch[i].events, .data.u64 = watch[i].data };
		if (epoll_ctl(26, EPOLL_CTL_ADD, watch[i].fd, &ev))
			die("epoll_ctl");
	}
	if (timerfd_settime(23, TFD_TIMER_ABSTIME, &tick, NULL) || timerfd_settime(24, TFD_TIMER_ABSTIME, &once, NULL))
		die("timerfd_settime");
	nanosleep(&wait, NULL); /* timer 23 expires once, and is not read */
	printf("t0 %lld\nt1 %lld\n", t0, t1);
}

static void anon_report(void)
{
	struct epoll_event ready[8];
	struct signalfd_siginfo info;
	struct itimerspec left;
	uint64_t value;
	int n = epoll_wait(26, ready, 8, 0);

	/* by data: the kernel's order of ready fds is that of their registration, which is not kept */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && ready[j - 1].data.u64 > ready[j].data.u64; j--) {
			struct epoll_event swap = ready[j];
			ready[j] = ready[j - 1];
			ready[j - 1] = swap;
		}
	for (int i = 0; i < n; i++)
		printf("epoll: %#llx events %#x\n", (unsigned long long)ready[i].data.u64, ready[i].events);
	if (read(20, &value, 8) == 8)
		printf("eventfd 20: %llu\n", (unsigned long long)value);
	for (int i = 0; i < 3 && read(21, &value, 8) == 8; i++) /* a semaphore: 1 at a time */
		printf("eventfd 21: %llu\n", (unsigned long long)value);
	n = read(20, &value, 8);
	printf("eventfd 20 then: %s\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "readable");
	while (read(22, &info, sizeof(info)) == sizeof(info))
		printf("signalfd: signal %u\n", info.ssi_signo);
	raise(SIGUSR1);
	if (read(22, &info, sizeof(info)) == sizeof(info))
		printf("signalfd then: signal %u\n", info.ssi_signo);
	printf("timer 23: %s\n", read(23, &value, 8) == 8 && value >= 1 ? "ticked" : "did not tick");
	timerfd_gettime(24, &left);
	printf("timer 24: %s\n", left.it_value.tv_sec > 900 && !left.it_interval.tv_sec ? "armed" : "wrong");
	n = epoll_ctl(26, EPOLL_CTL_DEL, 27, NULL);
	printf("epoll del 27: %s\n", n ? strerror(errno) : "ok");
	n = epoll_wait(26, ready, 8, 0);
	printf("epoll then: %d ready\n", n);
}

/* FIFO TRIGGER.a: read end 30 (non-blocking), write end 31, data in it; FIFO TRIGGER.b open read-write at
 * 32 (close-on-exec), data in it. */
static void fifo_setup(const char *trigger)
{
	char a[4096], b[4096];

	snprintf(a, sizeof(a), "%s.a", trigger);
	snprintf(b, sizeof(b), "%s.b", trigger);
	if (mkfifo(a, 0600) || mkfifo(b, 0600))
		die("mkfifo");
	at(open(a, O_RDONLY | O_NONBLOCK), 30);
	at(open(a, O_WRONLY), 31);
	at(open(b, O_RDWR | O_CLOEXEC), 32);
	if (write(31, "fifo one\n", 9) != 9 || write(31, "fifo two\n", 9) != 9 || write(32, "both ends", 9) != 9)
		die("write");
}

static void fifo_report(void)
{
	char buf[256];
	ssize_t n = read(30, buf, sizeof(buf));

	printf("fifo 30: '%.*s'\n", (int)(n > 0 ? n : 0), buf);
	n = read(30, buf, sizeof(buf));
	printf("fifo 30 then: %s\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "readable");
	n = read(32, buf, sizeof(buf));
	printf("fifo 32: '%.*s'\n", (int)(n > 0 ? n : 0), buf);
	if (write(31, "after", 5) != 5)
		die("write");
	n = read(30, buf, sizeof(buf));
	printf("fifo 30 after: '%.*s'\n", (int)(n > 0 ? n : 0), buf);
}

/* inotify at 40 (non-blocking): TRIGGER.watched (IN_MODIFY) is wd 1; a watch of TRIGGER.dir/gone, removed,
 * leaves wd 2 unused; TRIGGER.dir (IN_CREATE, IN_ONESHOT) is wd 3. */
static void inotify_setup(const char *trigger)
{
	char watched[4096], dir[4096], gone[4096], events[4096];
	int fd = inotify_init1(IN_NONBLOCK);

	snprintf(watched, sizeof(watched), "%s.watched", trigger);
	snprintf(dir, sizeof(dir), "%s.dir", trigger);
	snprintf(gone, sizeof(gone), "%s.dir/gone", trigger);
	if (fd < 0 || mkdir(dir, 0700))
		die("inotify setup");
	close(open(watched, O_CREAT | O_WRONLY, 0600));
	close(open(gone, O_CREAT | O_WRONLY, 0600));
	if (inotify_add_watch(fd, watched, IN_MODIFY) != 1 || inotify_add_watch(fd, gone, IN_ALL_EVENTS) != 2 ||
	    inotify_rm_watch(fd, 2) || inotify_add_watch(fd, dir, IN_CREATE | IN_ONESHOT) != 3)
		die("inotify_add_watch");
	while (read(fd, events, sizeof(events)) > 0)
		;  /* wd 2's IN_IGNORED */
	at(fd, 40);
}

static void inotify_report(const char *trigger)
{
	char path[4096], events[4096];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s.watched", trigger);
	fd = open(path, O_WRONLY | O_APPEND);
	if (fd < 0 || write(fd, "x", 1) != 1)
		die("write");
	close(fd);
	snprintf(path, sizeof(path), "%s.dir/new", trigger);
	close(open(path, O_CREAT | O_WRONLY, 0600));
	n = read(40, events, sizeof(events));
	for (char *p = events; n > 0 && p < events + n;) {
		struct inotify_event *event = (struct inotify_event *)p;

		printf("inotify: wd %d mask %#x name '%s'\n", event->wd, event->mask, event->len ? event->name : "");
		p += sizeof(*event) + event->len;
	}
	n = read(40, events, sizeof(events));
	printf("inotify then: %s\n", n < 0 && errno == EAGAIN ? "EAGAIN" : "readable");
}

static int option(int fd, int level, int name)
{
	int value = -1;
	socklen_t len = sizeof(value);

	if (getsockopt(fd, level, name, &value, &len))
		die("getsockopt");
	return value;
}

/* "port FD PORT" of the fds bound by inet_setup: the same before the dump and after the restore. */
static void inet_ports(void)
{
	for (int fd = 50; fd <= 52; fd++) {
		struct sockaddr_in6 address;
		socklen_t len = sizeof(address);

		if (getsockname(fd, (struct sockaddr *)&address, &len))
			die("getsockname");
		printf("port %d %d\n", fd, ntohs(address.sin6_port));  /* sin_port is at the same offset */
	}
}

/* TCP listening on 127.0.0.1 at 50 (non-blocking, SO_REUSEADDR, TCP_NODELAY, backlog 7) and on ::1 at 51
 * (IPV6_V6ONLY); UDP bound to 127.0.0.1 at 52 (SO_RCVBUF 65536) and connected to it at 53; a TCP socket
 * not used yet at 54. All on ports the kernel chose. */
static void inet_setup(void)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct sockaddr_in bound;
	socklen_t len = sizeof(bound);
	int one = 1, size = 65536;

	at(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), 50);
	if (setsockopt(50, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(50, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    bind(50, (struct sockaddr *)&v4, sizeof(v4)) || listen(50, 7))
		die("tcp4");
	at(socket(AF_INET6, SOCK_STREAM, 0), 51);
	if (setsockopt(51, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) ||
	    bind(51, (struct sockaddr *)&v6, sizeof(v6)) || listen(51, 3))
		die("tcp6");
	at(socket(AF_INET, SOCK_DGRAM, 0), 52);
	if (setsockopt(52, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)) || bind(52, (struct sockaddr *)&v4, sizeof(v4)) ||
	    getsockname(52, (struct sockaddr *)&bound, &len))
		die("udp");
	at(socket(AF_INET, SOCK_DGRAM, 0), 53);
	if (connect(53, (struct sockaddr *)&bound, sizeof(bound)))
		die("udp connect");
	at(socket(AF_INET, SOCK_STREAM, 0), 54);
	inet_ports();
}

/* Connect to listener fd, accept, and send a line through: what a client of the restored process does. */
static void inet_talk(int listener, const char *name)
{
	struct sockaddr_storage address;
	socklen_t len = sizeof(address);
	struct pollfd ready = { .fd = listener, .events = POLLIN };
	char buf[64];
	int client, server;
	ssize_t n;

	if (getsockname(listener, (struct sockaddr *)&address, &len))
		die("getsockname");
	client = socket(address.ss_family, SOCK_STREAM, 0);
	if (client < 0 || connect(client, (struct sockaddr *)&address, len) || poll(&ready, 1, 5000) != 1)
		die("connect");
	server = accept(listener, NULL, NULL);
	if (server < 0 || write(client, name, strlen(name)) != (ssize_t)strlen(name))
		die("accept");
	n = read(server, buf, sizeof(buf));
	printf("%s: '%.*s', accepted with TCP_NODELAY %d\n", name, (int)(n > 0 ? n : 0), buf,
	       option(server, IPPROTO_TCP, TCP_NODELAY));
	close(client);
	close(server);
}

static void inet_report(void)
{
	struct sockaddr_in from, sender;
	socklen_t len = sizeof(from), sender_len = sizeof(sender);
	char buf[64];
	ssize_t n;

	inet_ports();
	printf("50: SO_REUSEADDR %d, TCP_NODELAY %d, O_NONBLOCK %d\n", option(50, SOL_SOCKET, SO_REUSEADDR),
	       option(50, IPPROTO_TCP, TCP_NODELAY), !!(fcntl(50, F_GETFL) & O_NONBLOCK));
	printf("51: IPV6_V6ONLY %d; 52: SO_RCVBUF %d\n", option(51, IPPROTO_IPV6, IPV6_V6ONLY),
	       option(52, SOL_SOCKET, SO_RCVBUF));
	inet_talk(50, "tcp4");
	inet_talk(51, "tcp6");
	if (send(53, "datagram", 8, 0) != 8)
		die("send");
	n = recvfrom(52, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len);
	if (getsockname(53, (struct sockaddr *)&sender, &sender_len))
		die("getsockname");
	printf("udp 52: '%.*s' from 53: %s\n", (int)(n > 0 ? n : 0), buf,
	       from.sin_port == sender.sin_port ? "yes" : "no");
	if (listen(54, 1))
		die("listen 54");
	inet_talk(54, "tcp4 unused until now");
}

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 5000000 };

	if (argc != 3)
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(argv[2], "unix"))
		unix_setup();
	else if (!strcmp(argv[2], "anon"))
		anon_setup();
	else if (!strcmp(argv[2], "fifo"))
		fifo_setup(argv[1]);
	else if (!strcmp(argv[2], "inotify"))
		inotify_setup(argv[1]);
	else if (!strcmp(argv[2], "inet"))
		inet_setup();
	else
		return 2;
	printf("ready\n");
	while (access(argv[1], F_OK))
		nanosleep(&nap, NULL);
	if (!strcmp(argv[2], "unix"))
		unix_report();
	else if (!strcmp(argv[2], "anon"))
		anon_report();
	else if (!strcmp(argv[2], "fifo"))
		fifo_report();
	else if (!strcmp(argv[2], "inotify"))
		inotify_report(argv[1]);
	else
		inet_report();
	return 0;
}
