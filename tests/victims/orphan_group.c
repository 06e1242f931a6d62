/* A process group whose leader is gone: the root (a session leader) makes X lead a group, puts its
 * child Y in it, then lets X exit and reaps it. Y stays in group X, which has no leader. Root and Y
 * print "root N" and "y N" every 5 ms; the root prints "ready X Y" once X is gone. */
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void count(const char *name)
{
	struct timespec t = { 0, 5000000L };
	char line[64];

	for (long n = 0;; n++) {
		int len = snprintf(line, sizeof(line), "%s %ld\n", name, n);
		if (write(STDOUT_FILENO, line, len) != len)
			_exit(1);
		nanosleep(&t, NULL);
	}
}

int main(void)
{
	int go[2];
	pid_t x, y;
	char byte;
	char line[64];
	int len;

	if (pipe(go))
		return 1;
	x = fork();
	if (x == 0) {
		setpgid(0, 0);
		if (read(go[0], &byte, 1) != 1)
			_exit(2);
		_exit(0);
	}
	setpgid(x, x);
	y = fork();
	if (y == 0) {
		setpgid(0, x);
		count("y");
	}
	setpgid(y, x);
	if (write(go[1], "g", 1) != 1 || waitpid(x, NULL, 0) != x)
		return 3;
	len = snprintf(line, sizeof(line), "ready %d %d\n", x, y);
	if (write(STDOUT_FILENO, line, len) != len)
		return 4;
	count("root");
}
