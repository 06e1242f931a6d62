/* Exercises the shared pie library: the logger's formats and levels, and memmove/memcmp. */
#include <pie/log.h>
#include <pie/string.h>
#include <pie/syscall.h>

/* Writes the lines test_blobgen.py expects to fd (one of them filtered out by its level). */
long __export_log_lines(long fd)
{
	const char *volatile missing = 0; /* volatile: gcc refuses a literal NULL for %s */

	pie_log_init(-1, PIE_LOG_DEBUG);
	pr_err("not written: no fd yet");

	pie_log_init(fd, PIE_LOG_INFO);
	pr_info("ints %d %u %x %c", -42, 42u, 0xbeefu, 'z');
	pr_info("longs %ld %lu %lx", -1234567890123L, 18446744073709551615UL, 0xdeadbeefcafeUL);
	pr_info("strings %s %s 100%%", "pie", missing);
	pr_info("pointer %p", (void *)0x1000);
	pr_warn("pid %ld\n", sys_getpid());
	pr_debug("not written: above the level");
	return 0;
}

/* 0 when an overlapping memmove in both directions and memcmp give the right results. */
long __export_string_checks(void)
{
	char buf[16] = "abcdefgh";
	char back[16] = "abcdefgh";

	memmove(buf + 2, buf, 6);  /* forward overlap */
	memmove(back, back + 2, 6); /* backward overlap */
	if (memcmp(buf, "ababcdef", 8) != 0)
		return 1;
	if (memcmp(back, "cdefghgh", 8) != 0)
		return 2;
	if (memcmp("a", "b", 1) >= 0 || strlen(buf) != 8)
		return 3;
	return 0;
}
