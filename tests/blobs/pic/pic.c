/*
 * A test blob that is only right when loaded with its relocations applied:
 * compute(i) reads strings (rodata) through a table of absolute pointers (data,
 * R_X86_64_RELATIVE relocations) and counts its calls in bss.
 */
#include <pie/string.h>

static const char first[] = "alpha";
static const char second[] = "bravo";
static const char third[] = "charlie";

static const char *const table[] = { first, second, third };
static long calls;

/* strlen(table[i % 3]) * 100 + the number of calls so far, this one included. */
long __export_compute(long i)
{
	calls++;
	return (long)strlen(table[i % 3]) * 100 + calls;
}

long __export_calls(void)
{
	return calls;
}
