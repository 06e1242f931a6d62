/* The physical baselines: write MIB MiB from (written) memory to FILE, then read FILE back into fresh
 * memory.  Prints "write <seconds> read <seconds>".  FILE is removed.
 *
 *     baseline MIB FILE
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64UL << 20)

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *fresh(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

int main(int argc, char **argv)
{
	size_t size, done;
	uint64_t *words, x = 0x9e3779b97f4a7c15ULL;
	double start, write_time, read_time;
	int fd;

	if (argc != 3)
		return 2;
	size = strtoull(argv[1], NULL, 0) << 20;
	words = fresh(size);
	for (size_t i = 0; i < size / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		words[i] = x;
	}
	fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		perror(argv[2]);
		return 1;
	}
	start = now();
	for (done = 0; done < size;) {
		ssize_t n = write(fd, (char *)words + done, size - done < CHUNK ? size - done : CHUNK);

		if (n <= 0) {
			perror("write");
			return 1;
		}
		done += n;
	}
	close(fd);
	write_time = now() - start;
	munmap(words, size);

	fd = open(argv[2], O_RDONLY);
	start = now();
	words = fresh(size);
	for (done = 0; done < size;) {
		ssize_t n = read(fd, (char *)words + done, size - done < CHUNK ? size - done : CHUNK);

		if (n <= 0) {
			perror("read");
			return 1;
		}
		done += n;
	}
	read_time = now() - start;
	close(fd);
	unlink(argv[2]);
	printf("write %.6f read %.6f\n", write_time, read_time);
	return 0;
}
