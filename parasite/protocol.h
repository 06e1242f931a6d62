/*
 * What criupy and the parasite share: the argument area's layout, the commands, the messages.
 * criupy/infect/parasite.py mirrors every number and layout here; change both together.
 *
 * criupy writes the argument area (through its own mapping of the parasite's memory) before the start
 * and before each command; a command's input and output are in args->data.  The socket carries only
 * a small message per command and reply, plus file descriptors (SCM_RIGHTS).
 */
#ifndef PARASITE_PROTOCOL_H
#define PARASITE_PROTOCOL_H

#include <stdint.h>

enum parasite_cmd {
	PARASITE_CMD_INIT = 0,		/* the parasite's hello after connecting: arg = its socket fd */
	PARASITE_CMD_FINI = 1,		/* close the socket and trap: criupy takes over */
	PARASITE_CMD_SIGACTIONS = 2,	/* out: 64 struct parasite_sigaction, signals 1..64 */
	PARASITE_CMD_MISC = 3,		/* out: struct parasite_misc */
	PARASITE_CMD_ITIMERS = 4,	/* out: 3 struct parasite_itimer: REAL, VIRTUAL, PROF */
	PARASITE_CMD_POSIX_TIMERS = 5,	/* in: arg timer IDs (int32) in data; out: arg struct parasite_posix_timer */
	PARASITE_CMD_DUMP_PAGES = 6,	/* in: an fd (SCM_RIGHTS), arg struct parasite_range; reply arg = bytes written */
	PARASITE_CMD_STEAL_FDS = 7,	/* in: arg fds (int32) in data; the reply carries them (SCM_RIGHTS) */
	PARASITE_NR_CMDS,
};

/* One message each way per command. status: 0 or a negative errno. */
struct parasite_msg {
	uint32_t cmd;
	int32_t status;
	uint64_t arg;
};

/* Test hook (CRIUPY_TEST_PARASITE_FAULT): at command fault_cmd, crash or hang. */
#define PARASITE_FAULT_NONE	0
#define PARASITE_FAULT_CRASH	1
#define PARASITE_FAULT_HANG	2

#define PARASITE_DATA_SIZE	(256 * 1024)
#define PARASITE_MAX_FDS	200	/* per STEAL_FDS command; the kernel takes at most 253 per message */
#define PARASITE_SIGFRAME_SIZE	(64 * 1024)

struct parasite_args {
	/* set once by criupy before the start */
	uint8_t sock_addr[112];		/* struct sockaddr_un, abstract address */
	uint32_t sock_addr_len;
	int32_t fault_cmd;
	int32_t fault_kind;
	uint32_t pad;
	/*
	 * An rt_sigframe that puts the task back as it was seized (restartable registers, XSAVE area,
	 * signal mask), at this address inside the parasite: used only when criupy died (the socket
	 * closed and nobody traces the task any more), so the task goes on instead of hitting our int3.
	 */
	uint64_t sigframe;
	uint8_t header_pad[256 - 112 - 4 * 4 - 8];
	/* per command */
	uint8_t data[PARASITE_DATA_SIZE] __attribute__((aligned(64)));
};

struct parasite_sigaction {	/* the kernel's struct sigaction for rt_sigaction */
	uint64_t handler;
	uint64_t flags;
	uint64_t restorer;
	uint64_t mask;
};

struct parasite_misc {
	uint32_t umask;
	int32_t pdeath_sig;
	int32_t dumpable;
	int32_t securebits;
	int32_t no_new_privs;
	uint32_t personality;
	uint64_t altstack_sp;
	int32_t altstack_flags;
	uint32_t pad;
	uint64_t altstack_size;
	uint64_t clear_child_tid;
	uint64_t brk;			/* brk(0): the heap's current end */
};

struct parasite_itimer {	/* struct itimerval */
	int64_t interval_sec, interval_usec, value_sec, value_usec;
};

struct parasite_posix_timer {	/* struct itimerspec and timer_getoverrun */
	int64_t interval_sec, interval_nsec, value_sec, value_nsec;
	int64_t overrun;
};

struct parasite_range {
	uint64_t start;
	uint64_t len;
};

#endif /* PARASITE_PROTOCOL_H */
