/*
 * A tiny logger for blob code.
 *
 * pie_log_init(fd, level) sets where messages go and how many: a message is written
 * when its level is <= the configured one.  Until pie_log_init is called with fd >= 0,
 * pie_logf does nothing.  Each call writes one whole line with a single write(2)
 * (a newline is added when the format has none); lines longer than PIE_LOG_LINE_MAX
 * are cut.  Formats: %d %u %x %ld %lu %lx %s %p %c %%.
 */
#ifndef PIE_LOG_H
#define PIE_LOG_H

#define PIE_LOG_ERROR	1
#define PIE_LOG_WARN	2
#define PIE_LOG_INFO	3
#define PIE_LOG_DEBUG	4

#define PIE_LOG_LINE_MAX 512

void pie_log_init(int fd, int level);
void pie_logf(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pr_err(fmt, ...)	pie_logf(PIE_LOG_ERROR, fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...)	pie_logf(PIE_LOG_WARN, fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...)	pie_logf(PIE_LOG_INFO, fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...)	pie_logf(PIE_LOG_DEBUG, fmt, ##__VA_ARGS__)

#endif /* PIE_LOG_H */
