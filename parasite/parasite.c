/*
 * The parasite: runs inside the dumped task, serving criupy's commands over a unix socket until
 * told to finish (CRIU's daemon mode).  Every command is a handful of system calls made as the task
 * itself, so the kernel answers about the task: its signal actions, timers, memory, files.
 */
#include <stdint.h>
#include <linux/un.h>
#include <linux/socket.h>
#include <linux/prctl.h>
#include <linux/time.h>
#include <asm/socket.h>

#include "pie/syscall.h"
#include "pie/string.h"
#include "protocol.h"

/* The argument area criupy fills in: shared memory, criupy maps the same pages. */
struct parasite_args __export_parasite_args;

/* Room for criupy's self-cure rt_sigframe and its XSAVE area (64-byte aligned, as the kernel wants). */
uint8_t __export_parasite_sigframe[PARASITE_SIGFRAME_SIZE] __attribute__((aligned(64)));

void parasite_sigreturn(void *frame) __attribute__((noreturn));

/* The kernel's socket structures (UAPI headers do not define them). */
struct kernel_iovec {
	void *base;
	uint64_t len;
};

struct kernel_msghdr {
	void *name;
	int namelen;
	struct kernel_iovec *iov;
	uint64_t iovlen;
	void *control;
	uint64_t controllen;
	unsigned int flags;
};

struct kernel_cmsghdr {
	uint64_t len;
	int level;
	int type;
};

#define SCM_RIGHTS_TYPE	1
#define AF_UNIX_FAMILY	1
#define SOCK_SEQPACKET_TYPE 5
#define CMSG_SPACE_FDS(n) (sizeof(struct kernel_cmsghdr) + (((n) * sizeof(int) + 7) & ~7UL))
#define IOV_BATCH	1024	/* UIO_MAXIOV: the most iovecs one writev takes */
#define MSG_NOSIGNAL_FLAG 0x4000

struct kernel_stack {	/* stack_t */
	uint64_t sp;
	int32_t flags;
	uint32_t pad;
	uint64_t size;
};

/* rt_sigframe on x86-64: the return address slot, then the ucontext (uc_stack at 16 bytes in). */
#define SIGFRAME_UC_STACK_OFFSET (8 + 16)

static int sock = -1;

static int send_msg(struct parasite_msg *msg, int *fds, int nr_fds)
{
	uint8_t control[CMSG_SPACE_FDS(PARASITE_MAX_FDS)] __attribute__((aligned(8)));
	struct kernel_iovec iov = { msg, sizeof(*msg) };
	struct kernel_msghdr hdr = { .iov = &iov, .iovlen = 1 };
	long ret;

	if (nr_fds) {
		struct kernel_cmsghdr *cmsg = (struct kernel_cmsghdr *)control;

		cmsg->len = sizeof(*cmsg) + nr_fds * sizeof(int);
		cmsg->level = SOL_SOCKET;
		cmsg->type = SCM_RIGHTS_TYPE;
		memcpy(cmsg + 1, fds, nr_fds * sizeof(int));
		hdr.control = control;
		hdr.controllen = CMSG_SPACE_FDS(nr_fds);
	}
	ret = sys_call3(__NR_sendmsg, sock, (long)&hdr, MSG_NOSIGNAL_FLAG);
	return ret == sizeof(*msg) ? 0 : -1;
}

/* One command message; *fd gets the descriptor that came with it, or -1. 0 on success, -1 if the
 * connection is gone. */
static int recv_msg(struct parasite_msg *msg, int *fd)
{
	uint8_t control[CMSG_SPACE_FDS(1)] __attribute__((aligned(8)));
	struct kernel_iovec iov = { msg, sizeof(*msg) };
	struct kernel_msghdr hdr = { .iov = &iov, .iovlen = 1, .control = control, .controllen = sizeof(control) };
	struct kernel_cmsghdr *cmsg = (struct kernel_cmsghdr *)control;
	long ret;

	*fd = -1;
	ret = sys_call3(__NR_recvmsg, sock, (long)&hdr, 0);
	if (ret != sizeof(*msg))
		return -1;
	if (hdr.controllen >= sizeof(*cmsg) + sizeof(int) && cmsg->level == SOL_SOCKET && cmsg->type == SCM_RIGHTS_TYPE)
		memcpy(fd, cmsg + 1, sizeof(int));
	return 0;
}

static void maybe_fault(struct parasite_args *args, int cmd)
{
	if (args->fault_cmd != cmd)
		return;
	if (args->fault_kind == PARASITE_FAULT_CRASH)
		*(volatile int *)0 = 1;
	if (args->fault_kind == PARASITE_FAULT_HANG)
		for (;;)
			sys_call0(__NR_pause);	/* every signal is blocked: only criupy's interrupt ends it */
}

static long get_sigactions(struct parasite_args *args)
{
	struct parasite_sigaction *out = (struct parasite_sigaction *)args->data;
	long ret;
	int sig;

	for (sig = 1; sig <= 64; sig++) {
		ret = sys_call4(__NR_rt_sigaction, sig, 0, (long)&out[sig - 1], 8);
		if (ret)
			return ret;
	}
	return 0;
}

static long get_misc(struct parasite_args *args)
{
	struct parasite_misc *out = (struct parasite_misc *)args->data;
	struct kernel_stack altstack;
	int value;
	long ret;

	memset(out, 0, sizeof(*out));
	/* prctl's unused arguments must be 0, or PR_GET_NO_NEW_PRIVS fails */
	/* umask can only be read by setting it: put it straight back */
	out->umask = sys_call1(__NR_umask, 0);
	sys_call1(__NR_umask, out->umask);

	ret = sys_call5(__NR_prctl, PR_GET_PDEATHSIG, (long)&value, 0, 0, 0);
	if (ret)
		return ret;
	out->pdeath_sig = value;
	out->dumpable = sys_call5(__NR_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0);
	out->securebits = sys_call5(__NR_prctl, PR_GET_SECUREBITS, 0, 0, 0, 0);
	out->no_new_privs = sys_call5(__NR_prctl, PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
	out->personality = sys_call1(__NR_personality, 0xffffffff);
	ret = sys_call5(__NR_prctl, PR_GET_TID_ADDRESS, (long)&out->clear_child_tid, 0, 0, 0);
	if (ret)
		return ret;
	ret = sys_call2(__NR_sigaltstack, 0, (long)&altstack);
	if (ret)
		return ret;
	out->altstack_sp = altstack.sp;
	out->altstack_flags = altstack.flags;
	out->altstack_size = altstack.size;
	out->brk = sys_call1(__NR_brk, 0);
	return 0;
}

static long get_itimers(struct parasite_args *args)
{
	struct parasite_itimer *out = (struct parasite_itimer *)args->data;
	long ret;
	int which;

	for (which = ITIMER_REAL; which <= ITIMER_PROF; which++) {
		ret = sys_call2(__NR_getitimer, which, (long)&out[which]);
		if (ret)
			return ret;
	}
	return 0;
}

static long get_posix_timers(struct parasite_args *args, uint64_t nr)
{
	int32_t ids[PARASITE_DATA_SIZE / sizeof(struct parasite_posix_timer)];
	struct parasite_posix_timer *out = (struct parasite_posix_timer *)args->data;
	uint64_t i;
	long ret;

	if (nr > sizeof(ids) / sizeof(ids[0]))
		return -22;	/* EINVAL */
	/* the output overwrites the input: take the IDs first */
	memcpy(ids, args->data, nr * sizeof(int32_t));
	for (i = 0; i < nr; i++) {
		ret = sys_call2(__NR_timer_gettime, ids[i], (long)&out[i]);
		if (ret)
			return ret;
		ret = sys_call1(__NR_timer_getoverrun, ids[i]);
		if (ret < 0)
			return ret;
		out[i].overrun = ret;
	}
	return 0;
}

/* Write the ranges, in order, from our own memory to fd: writev in batches, finishing short writes. */
static long dump_pages(struct parasite_args *args, int fd, uint64_t nr, uint64_t *written)
{
	struct parasite_range *ranges = (struct parasite_range *)args->data;
	uint64_t done = 0;

	*written = 0;
	if (fd < 0)
		return -9;	/* EBADF */
	if (nr > PARASITE_DATA_SIZE / sizeof(*ranges))
		return -22;
	/* struct parasite_range has iovec's layout: writev takes the ranges as they are */
	while (done < nr) {
		uint64_t batch = nr - done < IOV_BATCH ? nr - done : IOV_BATCH;
		long ret = sys_call3(__NR_writev, fd, (long)&ranges[done], batch);

		if (ret == -4)	/* EINTR */
			continue;
		if (ret < 0)
			return ret;
		if (ret == 0)
			return -28;	/* ENOSPC: the file takes no more */
		*written += ret;
		/* skip the ranges written whole, trim the one written in part */
		while (done < nr && (uint64_t)ret >= ranges[done].len) {
			ret -= ranges[done].len;
			done++;
		}
		if (ret) {
			ranges[done].start += ret;
			ranges[done].len -= ret;
		}
	}
	return 0;
}

static long steal_fds(struct parasite_args *args, uint64_t nr, struct parasite_msg *reply)
{
	int fds[PARASITE_MAX_FDS];

	if (nr > PARASITE_MAX_FDS)
		return -22;
	memcpy(fds, args->data, nr * sizeof(int));
	reply->status = 0;
	reply->arg = nr;
	return send_msg(reply, fds, nr) ? -32 /* EPIPE */ : 1;
}

/* Is anyone tracing us? From /proc/self/status's TracerPid. */
static int traced(void)
{
	static const char key[] = "TracerPid:";
	char buf[4096];
	long len, i;
	int fd;

	fd = sys_openat(-100 /* AT_FDCWD */, "/proc/self/status", 0, 0);
	if (fd < 0)
		return 0;	/* cannot tell: assume the tracer is gone */
	len = sys_read(fd, buf, sizeof(buf) - 1);
	sys_close(fd);
	if (len <= 0)
		return 0;
	buf[len] = 0;
	for (i = 0; i + (long)sizeof(key) < len; i++) {
		if (memcmp(buf + i, key, sizeof(key) - 1) == 0) {
			i += sizeof(key) - 1;
			while (buf[i] == ' ' || buf[i] == '\t')
				i++;
			return buf[i] != '0';
		}
	}
	return 0;
}

/*
 * The socket closed without FINI.  If criupy still traces us, it will cure us: trap.  If criupy
 * died (it closes its files before the kernel detaches us: wait a little for that), nobody would
 * cure us and the trap would kill the task: put the task back ourselves with the sigframe criupy
 * prepared.  Only this memory stays behind, mapped but unused.
 */
static void cure_self(struct parasite_args *args)
{
	struct __kernel_timespec wait = { 0, 10 * 1000 * 1000 };
	uint8_t *frame = (uint8_t *)args->sigframe;
	int tries;

	for (tries = 0; tries < 300 && traced(); tries++)
		sys_call2(__NR_nanosleep, (long)&wait, 0);
	if (traced() || !frame)
		return;
	sys_close(sock);
	/* the frame's alternate signal stack is the task's current one: sigreturn sets it again */
	sys_call2(__NR_sigaltstack, 0, (long)(frame + SIGFRAME_UC_STACK_OFFSET));
	parasite_sigreturn(frame);
}

int parasite_main(void)
{
	struct parasite_args *args = &__export_parasite_args;
	struct parasite_msg msg, reply;
	int fd;
	long ret;

	maybe_fault(args, PARASITE_CMD_INIT);
	sock = sys_call3(__NR_socket, AF_UNIX_FAMILY, SOCK_SEQPACKET_TYPE, 0);
	if (sock < 0)
		return sock;
	ret = sys_call3(__NR_connect, sock, (long)args->sock_addr, args->sock_addr_len);
	if (ret < 0) {
		sys_close(sock);
		return ret;
	}
	reply = (struct parasite_msg){ .cmd = PARASITE_CMD_INIT, .status = 0, .arg = sock };
	if (send_msg(&reply, 0, 0))
		goto lost;

	for (;;) {
		if (recv_msg(&msg, &fd))
			goto lost;
		maybe_fault(args, msg.cmd);
		reply = (struct parasite_msg){ .cmd = msg.cmd, .status = 0, .arg = 0 };
		switch (msg.cmd) {
		case PARASITE_CMD_FINI:
			sys_close(sock);
			return 0;
		case PARASITE_CMD_SIGACTIONS:
			ret = get_sigactions(args);
			break;
		case PARASITE_CMD_MISC:
			ret = get_misc(args);
			break;
		case PARASITE_CMD_ITIMERS:
			ret = get_itimers(args);
			break;
		case PARASITE_CMD_POSIX_TIMERS:
			ret = get_posix_timers(args, msg.arg);
			break;
		case PARASITE_CMD_DUMP_PAGES:
			ret = dump_pages(args, fd, msg.arg, &reply.arg);
			break;
		case PARASITE_CMD_STEAL_FDS:
			ret = steal_fds(args, msg.arg, &reply);
			break;
		default:
			ret = -22;
		}
		if (fd >= 0)
			sys_close(fd);
		if (ret == 1)	/* the command sent its own reply */
			continue;
		reply.status = ret;
		if (send_msg(&reply, 0, 0))
			goto lost;
	}
lost:
	cure_self(args);
	return -1;
}
