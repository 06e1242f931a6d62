/*
 * Raw x86-64 system calls for blob code (no libc).
 *
 * The kernel takes the number in rax and arguments in rdi, rsi, rdx, r10, r8, r9;
 * it returns in rax and clobbers rcx (return address) and r11 (saved rflags).
 * Every call returns the kernel's raw result: a negative errno on failure.
 */
#ifndef PIE_SYSCALL_H
#define PIE_SYSCALL_H

#include <asm/unistd.h>

static inline long sys_call0(long nr)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call1(long nr, long a1)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call2(long nr, long a1, long a2)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call3(long nr, long a1, long a2, long a3)
{
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3) : "rcx", "r11", "memory");
	return ret;
}

/* There is no constraint letter for r10, r8 or r9: bind them as register variables. */
static inline long sys_call4(long nr, long a1, long a2, long a3, long a4)
{
	register long r10 asm("r10") = a4;
	long ret;

	asm volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call5(long nr, long a1, long a2, long a3, long a4, long a5)
{
	register long r10 asm("r10") = a4;
	register long r8 asm("r8") = a5;
	long ret;

	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8)
		     : "rcx", "r11", "memory");
	return ret;
}

static inline long sys_call6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
	register long r10 asm("r10") = a4;
	register long r8 asm("r8") = a5;
	register long r9 asm("r9") = a6;
	long ret;

	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
		     : "rcx", "r11", "memory");
	return ret;
}

/* Named wrappers for the calls most blobs need; use sys_callN(__NR_x, ...) for the rest. */

static inline long sys_read(int fd, void *buf, unsigned long count)
{
	return sys_call3(__NR_read, fd, (long)buf, (long)count);
}

static inline long sys_write(int fd, const void *buf, unsigned long count)
{
	return sys_call3(__NR_write, fd, (long)buf, (long)count);
}

static inline long sys_close(int fd)
{
	return sys_call1(__NR_close, fd);
}

static inline long sys_openat(int dirfd, const char *path, int flags, int mode)
{
	return sys_call4(__NR_openat, dirfd, (long)path, flags, mode);
}

/* Returns the address, or a negative errno (addresses above -4096UL are errors). */
static inline long sys_mmap(void *addr, unsigned long len, int prot, int flags, int fd, long offset)
{
	return sys_call6(__NR_mmap, (long)addr, (long)len, prot, flags, fd, offset);
}

static inline long sys_munmap(void *addr, unsigned long len)
{
	return sys_call2(__NR_munmap, (long)addr, (long)len);
}

static inline long sys_mprotect(void *addr, unsigned long len, int prot)
{
	return sys_call3(__NR_mprotect, (long)addr, (long)len, prot);
}

static inline long sys_getpid(void)
{
	return sys_call0(__NR_getpid);
}

static inline long sys_gettid(void)
{
	return sys_call0(__NR_gettid);
}

static inline void __attribute__((noreturn)) sys_exit_group(int status)
{
	sys_call1(__NR_exit_group, status);
	__builtin_unreachable();
}

#endif /* PIE_SYSCALL_H */
