/* Holds both ends of a pty (posix_openpt, grantpt, unlockpt, ptsname), as script or expect do: the
 * slave with echo off and ^H as erase, "m1\n" written on the slave (queued for the master) and "s1\n"
 * on the master (queued for the slave). Prints the slave's name and settings, then "ready". On SIGUSR1
 * it queues "m2\n" and "s2\n" the same way, reads everything queued on each end, and prints the name,
 * the settings, the bytes read (in hex) and "done". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t go;

static void on_usr1(int sig)
{
	go = 1;
}

static void print_state(int slave)
{
	struct termios t;

	if (tcgetattr(slave, &t))
		exit(1);
	printf("name %s\n", ttyname(slave));
	printf("termios %x %x %x %x", t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag);
	for (int i = 0; i < NCCS; i++)
		printf(" %x", t.c_cc[i]);
	printf("\n");
}

static void print_queued(const char *end, int fd)
{
	char buf[4096];
	ssize_t got;

	printf("%s ", end);
	fcntl(fd, F_SETFL, O_NONBLOCK | fcntl(fd, F_GETFL));
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < got; i++)
			printf("%02x", (unsigned char)buf[i]);
	printf("\n");
}

static void queue_both(int master, int slave, const char *to_master, const char *to_slave)
{
	if (write(slave, to_master, strlen(to_master)) < 0 || write(master, to_slave, strlen(to_slave)) < 0)
		exit(1);
}

int main(void)
{
	struct termios t;
	int master = posix_openpt(O_RDWR | O_NOCTTY);

	if (master < 0 || grantpt(master) || unlockpt(master))
		return 1;
	int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
	if (slave < 0 || tcgetattr(slave, &t))
		return 1;
	t.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL);
	t.c_cc[VERASE] = 8;
	if (tcsetattr(slave, TCSANOW, &t))
		return 1;
	signal(SIGUSR1, on_usr1);
	setvbuf(stdout, NULL, _IOLBF, 0);
	queue_both(master, slave, "m1\n", "s1\n");
	print_state(slave);
	printf("ready\n");
	while (!go)
		usleep(10000);
	queue_both(master, slave, "m2\n", "s2\n");
	print_state(slave);
	print_queued("master", master);
	print_queued("slave", slave);
	printf("done\n");
	for (;;)
		pause();
}
