/* Files to survive a dump, each at a chosen fd number: DIR/rw opened O_RDWR at offset 1000 (fd 10),
 * DIR/log O_WRONLY|O_APPEND (fd 11), DIR/ro O_RDONLY|O_CLOEXEC at offset 4000 (fd 12), and a pipe to
 * itself (read end fd 20, write end fd 21 with O_NONBLOCK) holding "pipe data 1\npipe data 2\n".
 * Prints "ready", then on each SIGUSR1: appends "appended\n" to fd 11, reads the pipe and prints
 * "pipe: <what it read>", and prints "offsets: rw R ro O" from lseek. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_count;

static void on_usr1(int sig)
{
	(void)sig;
	usr1_count++;
}

static void at(int fd, int want)
{
	if (fd != want) {
		dup2(fd, want);
		close(fd);
	}
}

int main(int argc, char **argv)
{
	char path[4096], buf[256];
	const char *dir = argc > 1 ? argv[1] : ".";
	int pipefd[2], seen = 0;
	sigset_t usr1, waiting;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &waiting);  /* taken only inside sigsuspend: no signal is missed */
	snprintf(path, sizeof(path), "%s/rw", dir);
	at(open(path, O_RDWR), 10);
	lseek(10, 1000, SEEK_SET);
	snprintf(path, sizeof(path), "%s/log", dir);
	at(open(path, O_WRONLY | O_APPEND), 11);
	snprintf(path, sizeof(path), "%s/ro", dir);
	at(open(path, O_RDONLY), 12);
	fcntl(12, F_SETFD, FD_CLOEXEC);
	lseek(12, 4000, SEEK_SET);
	if (pipe(pipefd))
		return 1;
	at(pipefd[0], 20);
	at(pipefd[1], 21);
	fcntl(21, F_SETFL, O_NONBLOCK);
	write(21, "pipe data 1\npipe data 2\n", 24);

	printf("ready\n");
	for (;;) {
		sigsuspend(&waiting);
		while (seen < usr1_count) {
			ssize_t n;
			seen++;
			write(11, "appended\n", 9);
			n = read(20, buf, sizeof(buf) - 1);
			buf[n > 0 ? n : 0] = 0;
			printf("pipe: %s", buf);
			printf("offsets: rw %ld ro %ld\n", (long)lseek(10, 0, SEEK_CUR), (long)lseek(12, 0, SEEK_CUR));
		}
	}
}
