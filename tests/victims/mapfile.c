/* Maps the file argv[1] (read-only, private) and closes it: the mapping is all that holds the file.
 * Prints "ready BUILD_MARK" and the file's contents, then waits for signals. Builds with other
 * -DBUILD_MARK=N values differ in one constant: same size, another build-id. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef BUILD_MARK
#define BUILD_MARK 1
#endif

int main(int argc, char **argv)
{
	struct stat st;
	int fd = open(argv[1], O_RDONLY);
	char *data;

	if (fd < 0 || fstat(fd, &st) || st.st_size == 0)
		return 1;
	data = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (data == MAP_FAILED)
		return 1;
	close(fd);
	printf("ready %d\n%.*s", BUILD_MARK, (int)st.st_size, data);
	fflush(stdout);
	for (;;)
		pause();
}
