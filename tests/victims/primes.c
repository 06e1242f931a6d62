/* CPU-bound: counts the primes below argv[1] (default 40000000) by trial division and prints a line of
 * progress every 2^20 numbers ("at N") and at the end "primes below N: COUNT, sum SUM".
 * Dumped and restored mid-way, it must print the same final line as an undisturbed run. */
#include <stdio.h>
#include <stdlib.h>

static int is_prime(unsigned long n)
{
	if (n < 2)
		return 0;
	for (unsigned long d = 2; d * d <= n; d++)
		if (n % d == 0)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	unsigned long limit = argc > 1 ? strtoul(argv[1], NULL, 0) : 40000000UL;
	unsigned long count = 0, sum = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (unsigned long n = 0; n < limit; n++) {
		if ((n & ((1UL << 20) - 1)) == 0)
			printf("at %lu\n", n);
		if (is_prime(n)) {
			count++;
			sum = sum * 31 + n;  /* order-dependent: a skipped or repeated number changes it */
		}
	}
	printf("primes below %lu: %lu, sum %lu\n", limit, count, sum);
	return 0;
}
