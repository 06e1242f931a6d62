/*
 * The restorer's argument area: what criupy/restore/args.py writes beside the blob before the
 * restored task jumps into it. Every pointer is an absolute address inside the restorer's own
 * mapping, which survives the tear-down of everything else.
 *
 * criupy/restore/args.py mirrors these structures with ctypes, field for field: change both
 * together. Every field is fixed-width and padded by hand so that both sides agree on offsets.
 */
#ifndef CRIUPY_RESTORER_H
#define CRIUPY_RESTORER_H

#include <linux/types.h>
#include <linux/prctl.h>

#include <pie/plugin.h> /* struct criupy_regs, the PIE plugins' hook argument */

#define RST_NR_SIGNALS 64 /* sigactions[sig - 1] */
#define RST_NR_RLIMITS 16
#define RST_AUXV_WORDS 128
#define RST_SIGINFO_SIZE 128

/* One dumped mapping, mapped back at its address. */
struct rst_vma {
	__u64 start, end;
	__u64 pgoff;  /* file offset in bytes */
	__u32 prot;   /* final PROT_* */
	__u32 flags;  /* MAP_* for mmap (MAP_FIXED_NOREPLACE is added) */
	__s32 fd;     /* file to map (a restorer fd), -1 for anonymous memory; a segment's id if sysv */
	__u32 fill;   /* 1: dumped pages go in, so it is mapped writable until they are read */
	__u64 madv;   /* bit N set: madvise(start, len, N) */
	__u32 sysv;   /* 1: fd is the id of a SysV segment, attached here with shmat */
	__u32 pad;
	__u64 premapped; /* private anonymous memory made and filled before the fork, at this address, away
			    from the dumped layout (shared copy-on-write with the parent): moved here; 0: none */
};

/* Pages of pages-N.img that go in one after the other: iovs[first_iov..] read from offset on. */
struct rst_page_run {
	__u64 offset;
	__u32 first_iov, nr_iovs;
};

/* [vvar], [vvar_vclock], [vdso]: the kernel's own areas are moved, never mapped anew. */
struct rst_special_vma {
	__u64 current; /* where the kernel put it in this process */
	__u64 parked;  /* inside the restorer mapping while everything else is torn down */
	__u64 dumped;  /* where the dumped process had it */
	__u64 size;
};

/* One file descriptor of the dumped process. */
struct rst_fd {
	__s32 source; /* restorer fd holding the open file */
	__s32 target; /* number it had in the dumped process */
	__u32 cloexec;
	__u32 pad;
};

/* struct sigaction as the rt_sigaction system call takes it. */
struct rst_sigaction {
	__u64 handler;
	__u64 flags;
	__u64 restorer;
	__u64 mask;
};

/* struct itimerval */
struct rst_itimer {
	__u64 interval_sec, interval_usec;
	__u64 value_sec, value_usec;
};

struct rst_posix_timer {
	__s32 id;
	__s32 clock_id;
	__s32 signo;
	__s32 notify;     /* SIGEV_* */
	__s32 notify_tid; /* for SIGEV_THREAD_ID */
	__u32 pad;
	__u64 sival;
	__u64 interval_sec, interval_nsec;
	__u64 value_sec, value_nsec;
};

/* A pending signal, queued again with its siginfo. */
struct rst_signal {
	__u32 thread; /* 1: pending for the thread, 0: for the whole process */
	__u32 pad;
	__u8 siginfo[RST_SIGINFO_SIZE];
};

struct rst_rlimit {
	__u64 cur, max;
};

struct rst_creds {
	__u32 present; /* 0: keep criupy's credentials (the image had none) */
	__u32 uid, euid, suid, fsuid;
	__u32 gid, egid, sgid, fsgid;
	__u32 secbits;
	__u32 no_new_privs;
	__u32 last_cap;  /* highest capability number this kernel knows */
	__u32 cap_inh[2], cap_prm[2], cap_eff[2], cap_bnd[2], cap_amb[2];
	__u32 nr_groups;
	__u64 groups;    /* __u32[nr_groups] */
};

/* An rseq registration. */
struct rst_rseq {
	__u64 pointer;
	__u32 size, signature;
};

/*
 * One thread: what only the thread itself can set, and its own return into the dumped code with
 * rt_sigreturn (its registers, FPU state and mask from its own rt_sigframe).
 */
struct rst_thread {
	__s32 tid;          /* clone3 set_tid (threads other than the leader) */
	__u32 sched_policy; /* sched_setscheduler policy, SCHED_RESET_ON_FORK included */
	__u32 sched_prio;
	__s32 sched_nice;
	__u64 stack, stack_size; /* its own small stack in the restorer mapping (not the leader's) */

	struct criupy_regs regs;
	__u64 blocked;    /* signal mask after the return */
	__u64 sas_sp, sas_size;
	__u32 sas_flags, pad0;
	__u64 clear_child_tid;
	__u64 robust_list, robust_list_len; /* 0: none registered */
	__u64 xsave;      /* XSAVE standard-format image of the FPU state */
	__u32 xsave_size, pad1;
	__u64 sigframe;   /* room for the rt_sigframe and its fpstate */
	__u32 sigframe_size, pad2;
	struct rst_rseq rseq;
	char comm[16];
	__u64 signals;    /* struct rst_signal[nr_signals]: pending for this thread only */
	__u32 nr_signals, pad3;
	__u64 creds;      /* its own struct rst_creds (credentials are per thread); 0: the leader's, args->creds */
};

struct rst_args {
	/* The restorer's own mapping: blob, this area, its stack, the vDSO parking. Kept; all else goes. */
	__u64 region_start, region_size;
	__u64 stack_top;
	__u64 task_size; /* end of the user address space, the upper bound of the tear-down */

	__s32 log_fd;       /* pie logger output, read by criupy */
	__s32 sync_fd;      /* one byte arrives here once criupy traces us */
	__s32 pages_fd;     /* pages-N.img */
	__s32 first_own_fd; /* fds >= this are the restorer's, all closed before the return */
	__u32 log_level;
	__u32 pages_by_userfaultfd; /* 0: every page read with preadv, as without userfaultfd */

	__u64 vmas;      /* struct rst_vma[nr_vmas], in address order */
	__u32 nr_vmas, pad1;
	__u64 iovs;      /* struct iovec[nr_iovs], in runs: each run's vectors take its pages in order */
	__u32 nr_iovs, pad2;
	__u64 page_runs; /* struct rst_page_run[nr_page_runs] */
	__u32 nr_page_runs, pad_runs;
	__u64 specials;  /* struct rst_special_vma[nr_specials] */
	__u32 nr_specials, pad3;
	__u64 fds;       /* struct rst_fd[nr_fds] */
	__u32 nr_fds, pad4;

	__u32 umask;
	__u32 personality;
	__s32 cwd_fd;    /* -1: keep */
	__s32 root_fd;   /* -1: keep */
	__u32 pad_session; /* sessions (and own groups) are made before the restorer runs */
	__s32 pgid;        /* 0: keep; else setpgid(0, pgid): joining a group another task leads */

	struct prctl_mm_map mm; /* .auxv points at auxv below, .exe_fd is a restorer fd */
	__u64 auxv[RST_AUXV_WORDS];

	struct rst_sigaction sigactions[RST_NR_SIGNALS];
	struct rst_itimer itimers[3]; /* ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF */
	__u64 posix_timers;           /* struct rst_posix_timer[nr_posix_timers] */
	__u32 nr_posix_timers, pad5;
	__u64 signals;                /* struct rst_signal[nr_signals]: pending for the whole process */
	__u32 nr_signals, nr_rlimits;
	struct rst_rlimit rlimits[RST_NR_RLIMITS];
	struct rst_creds creds;

	/* rseq: criupy's registration (written by criupy once it traces us) goes before the tear-down. */
	struct rst_rseq own_rseq;

	/* PIE plugin (criupy restore --pie-plugin), loaded inside our region: hook addresses, 0 for none. */
	__u64 hook_post_restore_vmas;
	__u64 hook_pre_sigreturn;
	__s32 images_dir_fd; /* the images directory (a restorer fd), for the hooks */
	__u32 pad9;

	/* The leader, and the other threads it creates with their TIDs. */
	struct rst_thread leader;
	__u64 threads;           /* struct rst_thread[nr_threads] */
	__u32 nr_threads;
	__u32 threads_ready;     /* futex: threads done with their state, counted up by each */
	__u32 threads_go;        /* futex: set by the leader once criupy traces every thread */
	__u32 pad6;
};

#endif
