#include <stdarg.h>

#include <pie/log.h>
#include <pie/syscall.h>

static int log_fd = -1;
static int log_level;

void pie_log_init(int fd, int level)
{
	log_fd = fd;
	log_level = level;
}

/* A line being built; characters past the end are dropped (the last byte is kept for '\n'). */
struct line {
	char buf[PIE_LOG_LINE_MAX];
	unsigned long len;
};

static void put_char(struct line *l, char c)
{
	if (l->len < sizeof(l->buf) - 1)
		l->buf[l->len++] = c;
}

static void put_str(struct line *l, const char *s)
{
	if (!s)
		s = "(null)";
	while (*s)
		put_char(l, *s++);
}

static void put_unsigned(struct line *l, unsigned long v, unsigned int base)
{
	char digits[24];
	int n = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n)
		put_char(l, digits[--n]);
}

static void put_signed(struct line *l, long v)
{
	if (v < 0) {
		put_char(l, '-');
		put_unsigned(l, -(unsigned long)v, 10);
	} else {
		put_unsigned(l, v, 10);
	}
}

void pie_logf(int level, const char *fmt, ...)
{
	struct line l;
	va_list args;
	const char *p;

	if (log_fd < 0 || level > log_level)
		return;

	l.len = 0;
	va_start(args, fmt);
	for (p = fmt; *p; p++) {
		int is_long = 0;

		if (*p != '%') {
			put_char(&l, *p);
			continue;
		}
		p++;
		if (*p == 'l') {
			is_long = 1;
			p++;
		}
		switch (*p) {
		case 'd':
			put_signed(&l, is_long ? va_arg(args, long) : va_arg(args, int));
			break;
		case 'u':
			put_unsigned(&l, is_long ? va_arg(args, unsigned long) : va_arg(args, unsigned int), 10);
			break;
		case 'x':
			put_unsigned(&l, is_long ? va_arg(args, unsigned long) : va_arg(args, unsigned int), 16);
			break;
		case 'p':
			put_str(&l, "0x");
			put_unsigned(&l, (unsigned long)va_arg(args, void *), 16);
			break;
		case 's':
			put_str(&l, va_arg(args, const char *));
			break;
		case 'c':
			put_char(&l, (char)va_arg(args, int));
			break;
		case '%':
			put_char(&l, '%');
			break;
		case '\0':
			/* A lone '%' at the end: print it and stop. */
			put_char(&l, '%');
			p--;
			break;
		default:
			/* Unknown conversion: show it as written. */
			put_char(&l, '%');
			if (is_long)
				put_char(&l, 'l');
			put_char(&l, *p);
			break;
		}
	}
	va_end(args);

	if (l.len == 0 || l.buf[l.len - 1] != '\n')
		l.buf[l.len++] = '\n';
	sys_write(log_fd, l.buf, l.len);
}
