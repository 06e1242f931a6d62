/* A job on its terminal, as an editor or a REPL: the terminal in raw mode with echo off, then "n\n"
 * for n = 0, 1, 2... every 20 ms, and "got:<bytes>\n" for whatever is typed on the terminal. */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

int main(void)
{
	struct termios settings;
	char line[300], typed[256];

	if (tcgetattr(STDIN_FILENO, &settings))
		return 1;
	cfmakeraw(&settings);
	if (tcsetattr(STDIN_FILENO, TCSANOW, &settings))
		return 1;
	for (unsigned long n = 0;; n++) {
		int len = snprintf(line, sizeof(line), "%lu\n", n);
		if (write(STDOUT_FILENO, line, len) != len)
			return 1;
		struct pollfd in = { .fd = STDIN_FILENO, .events = POLLIN };
		if (poll(&in, 1, 20) == 1) {
			ssize_t got = read(STDIN_FILENO, typed, sizeof(typed) - 1);
			if (got <= 0)
				return 1;
			typed[got] = 0;
			len = snprintf(line, sizeof(line), "got:%s\n", typed);
			if (write(STDOUT_FILENO, line, len) != len)
				return 1;
		}
	}
}
