/*
 * The string functions blob code may call.  They are real functions (lib/string.c),
 * not just builtins: gcc emits calls to memcpy/memset for struct copies and
 * initialisations even with -ffreestanding -fno-builtin.
 */
#ifndef PIE_STRING_H
#define PIE_STRING_H

#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif /* PIE_STRING_H */
