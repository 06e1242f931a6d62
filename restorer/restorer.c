/*
 * The restorer: runs inside the task being restored, after criupy's Python (copied into the task by
 * clone3) has called restorer_entry. It throws away everything of criupy's, builds the dumped
 * address space, puts back the per-process and per-thread state that must be set from inside, and
 * returns into the dumped code with rt_sigreturn.
 *
 * Any failure logs one line (read by criupy) and exits; criupy then reports that line.
 */
#include <asm/mman.h>
#include <asm/fcntl.h>
#include <asm/prctl.h>
#include <asm/signal.h>
#include <linux/signal.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/errno.h>
#include <linux/futex.h>
#include <linux/sched.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/securebits.h>
#include <linux/time.h>
#include <linux/uio.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>

#include <pie/log.h>
#include <pie/string.h>
#include <pie/syscall.h>

#include "restorer.h"
#include "sigframe.h"

#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS 77
#endif
#define SIGEV_THREAD_ID 4
#define PREADV_MAX_IOVS 1024 /* UIO_MAXIOV */

void restorer_trap(void);
void __attribute__((noreturn)) restorer_sigreturn(unsigned long frame);
long restorer_clone_thread(struct clone_args *args, unsigned long size, struct rst_thread *thread);

/* The argument area, for the threads the leader creates (they start with their rst_thread only). */
static struct rst_args *args_of_threads;

static void __attribute__((noreturn)) fail(void)
{
	sys_exit_group(1);
}

/* A system call that must work: on failure log what was tried and give up. */
#define must(call, what, ...)                                                      \
	do {                                                                       \
		long __ret = (call);                                               \
		if (__ret < 0 && __ret > -4096) {                                  \
			pr_err("restorer: " what " failed: errno %ld", ##__VA_ARGS__, -__ret); \
			fail();                                                    \
		}                                                                  \
	} while (0)

static void block_all_signals(void)
{
	__u64 all = ~0ULL;

	must(sys_call4(__NR_rt_sigprocmask, SIG_SETMASK, (long)&all, 0, sizeof(all)), "blocking signals");
}

/* Wait until criupy has seized us: the trap at the end must find a tracer. */
static void wait_for_tracer(struct rst_args *a)
{
	char go;

	if (sys_read(a->sync_fd, &go, 1) != 1) {
		pr_err("restorer: criupy went away before the restore started");
		fail();
	}
}

/* Move the kernel's vDSO areas into our own mapping, out of the way of the tear-down. */
static void park_special_vmas(struct rst_args *a)
{
	struct rst_special_vma *s = (void *)a->specials;

	for (unsigned i = 0; i < a->nr_specials; i++)
		must(sys_call5(__NR_mremap, s[i].current, s[i].size, s[i].size, MREMAP_MAYMOVE | MREMAP_FIXED,
			       s[i].parked),
		     "parking the vDSO area at %lx", (unsigned long)s[i].current);
}

static void unpark_special_vmas(struct rst_args *a)
{
	struct rst_special_vma *s = (void *)a->specials;

	for (unsigned i = 0; i < a->nr_specials; i++) {
		if (!s[i].dumped) {
			must(sys_munmap((void *)s[i].parked, s[i].size), "dropping an undumped vDSO area");
			continue;
		}
		must(sys_call5(__NR_mremap, s[i].parked, s[i].size, s[i].size, MREMAP_MAYMOVE | MREMAP_FIXED,
			       s[i].dumped),
		     "moving the vDSO area to %lx", (unsigned long)s[i].dumped);
	}
}

#define RSEQ_FLAG_UNREGISTER 1

/* The kernel writes to a registered rseq area on every return to user space: criupy's must go first. */
static void unregister_criupy_rseq(struct rst_args *a)
{
	if (a->own_rseq.pointer)
		must(sys_call4(__NR_rseq, a->own_rseq.pointer, a->own_rseq.size, RSEQ_FLAG_UNREGISTER,
			       a->own_rseq.signature),
		     "unregistering criupy's rseq area");
}


/*
 * Memory a task shares copy-on-write with its parent was made and filled before the fork, away from
 * the dumped layout (criupy/restore/cow.py): moved into place before the tear-down, over whatever of
 * criupy's is there, and the tear-down keeps it.
 */
static void move_premapped_vmas(struct rst_args *a)
{
	struct rst_vma *v = (void *)a->vmas;

	for (unsigned i = 0; i < a->nr_vmas; i++) {
		unsigned long len = v[i].end - v[i].start;

		if (v[i].premapped)
			must(sys_call5(__NR_mremap, v[i].premapped, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, v[i].start),
			     "moving the premapped memory at %lx to %lx", (unsigned long)v[i].premapped,
			     (unsigned long)v[i].start);
	}
}

/*
 * Everything but our own mapping and the memory moved into place goes: criupy's Python, its heap, its
 * stack. Both are kept ranges in address order (the mappings are sorted); the gaps between go.
 */
static void unmap_everything_else(struct rst_args *a)
{
	struct rst_vma *v = (void *)a->vmas;
	unsigned long from = 0, keep_start, keep_end;
	unsigned i = 0;
	int region_kept = 0;

	for (;;) {
		while (i < a->nr_vmas && !v[i].premapped)
			i++;
		if (!region_kept && (i == a->nr_vmas || a->region_start < v[i].start)) {
			keep_start = a->region_start;
			keep_end = a->region_start + a->region_size;
			region_kept = 1;
		} else if (i < a->nr_vmas) {
			keep_start = v[i].start;
			keep_end = v[i].end;
			i++;
		} else {
			break;
		}
		if (keep_start > from)
			must(sys_munmap((void *)from, keep_start - from), "unmapping %lx-%lx", from, keep_start);
		from = keep_end;
	}
	must(sys_munmap((void *)from, a->task_size - from), "unmapping above %lx", from);
}

#define SHM_RDONLY 010000
#define SHM_EXEC 0100000

/* A real SysV attach (counted in shm_nattch), of the whole segment as dumped; PROT_NONE is an mprotect after. */
static long attach_sysv(struct rst_vma *v)
{
	long flags = (v->prot & PROT_WRITE ? 0 : SHM_RDONLY) | (v->prot & PROT_EXEC ? SHM_EXEC : 0);
	long addr = sys_call3(__NR_shmat, v->fd, v->start, flags);

	if (addr == (long)v->start && !(v->prot & PROT_READ))
		must(sys_mprotect((void *)v->start, v->end - v->start, v->prot), "mprotect of %lx",
		     (unsigned long)v->start);
	return addr;
}

static void map_vmas(struct rst_args *a)
{
	struct rst_vma *v = (void *)a->vmas;

	for (unsigned i = 0; i < a->nr_vmas; i++) {
		unsigned long len = v[i].end - v[i].start;
		int prot = v[i].prot | (v[i].fill ? PROT_WRITE : 0);
		long addr;

		if (v[i].premapped)
			continue; /* in place already */
		if (v[i].sysv)
			addr = attach_sysv(&v[i]);
		else
			addr = sys_mmap((void *)v[i].start, len, prot, v[i].flags | MAP_FIXED_NOREPLACE, v[i].fd,
					v[i].pgoff);

		if (addr != (long)v[i].start) {
			pr_err("restorer: mapping %lx-%lx failed: errno %ld", (unsigned long)v[i].start,
			       (unsigned long)v[i].end, addr < 0 ? -addr : 0L);
			fail();
		}
	}
}

/*
 * Read count vectors of pages-N.img, from offset on, straight into the pages' final places, many
 * vectors per call.  The pages are made first with one MADV_POPULATE_WRITE per vector: far cheaper
 * than a page fault for each page inside preadv.  A kernel without it (before 5.14) says EINVAL and
 * the faults make them.
 */
static void read_pages(int pages_fd, struct iovec *iov, unsigned long count, unsigned long offset)
{
	unsigned long left = count;

	for (unsigned long i = 0; i < count; i++)
		sys_call3(__NR_madvise, (long)iov[i].iov_base, iov[i].iov_len, MADV_POPULATE_WRITE);
	while (left) {
		unsigned long batch = left < PREADV_MAX_IOVS ? left : PREADV_MAX_IOVS;
		long got = sys_call5(__NR_preadv, pages_fd, (long)iov, batch, offset, 0);

		if (got <= 0) {
			pr_err("restorer: reading the pages image at offset %lu failed: %s %ld", offset,
			       got ? "errno" : "end of file, short by at least", got ? -got : (long)iov->iov_len);
			fail();
		}
		offset += got;
		/* Skip the vectors read in full; a short read leaves one partly filled. */
		while (left && (unsigned long)got >= iov->iov_len) {
			got -= iov->iov_len;
			iov++;
			left--;
		}
		if (left && got) {
			iov->iov_base = (char *)iov->iov_base + got;
			iov->iov_len -= got;
		}
	}
}

/* Private anonymous memory, the only kind whose pages UFFDIO_COPY makes here. */
static int copied_by_userfaultfd(const struct rst_vma *v)
{
	return v->fill && v->fd < 0 && !v->sysv && !(v->flags & MAP_SHARED);
}

/*
 * A userfaultfd with every private anonymous mapping that receives pages registered, or a negative
 * errno: then nothing is registered and the pages are read with preadv.  UFFD_FEATURE_SIGBUS: a
 * touch of a registered page before it is copied is a crash criupy reports, never a wait for a
 * fault handler that does not exist.
 */
static long open_userfaultfd(struct rst_args *a)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_SIGBUS };
	struct rst_vma *v = (void *)a->vmas;
	long uffd, ret;

	if (!a->pages_by_userfaultfd)
		return -EPERM;
	uffd = sys_call1(__NR_userfaultfd, O_CLOEXEC);
	if (uffd < 0)
		return uffd;
	ret = sys_call3(__NR_ioctl, uffd, UFFDIO_API, (long)&api);
	for (unsigned i = 0; !ret && i < a->nr_vmas; i++) {
		struct uffdio_register reg = {
			.range = { .start = v[i].start, .len = v[i].end - v[i].start },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (copied_by_userfaultfd(&v[i]))
			ret = sys_call3(__NR_ioctl, uffd, UFFDIO_REGISTER, (long)&reg);
	}
	if (ret) {
		sys_close(uffd); /* drops every registration made */
		return ret;
	}
	return uffd;
}

/* The part of pages-N.img that is mapped, as UFFDIO_COPY's source. */
struct pages_window {
	int fd;
	unsigned long offset; /* in the file */
	char *start;          /* NULL: nothing mapped yet */
};

#define PAGES_WINDOW_SIZE (64UL << 20)

/* Where the image's byte at offset is mapped; at most *len bytes from there (cut to the window). */
static char *window_at(struct pages_window *w, unsigned long offset, unsigned long *len)
{
	long start;

	if (!w->start || offset < w->offset || offset >= w->offset + PAGES_WINDOW_SIZE) {
		if (w->start)
			sys_munmap(w->start, PAGES_WINDOW_SIZE);
		start = sys_mmap(0, PAGES_WINDOW_SIZE, PROT_READ, MAP_PRIVATE, w->fd, offset);
		if (start < 0 && start > -4096) {
			pr_err("restorer: mapping the pages image at offset %lu failed: errno %ld", offset, -start);
			fail();
		}
		w->start = (char *)start;
		w->offset = offset;
	}
	if (*len > w->offset + PAGES_WINDOW_SIZE - offset)
		*len = w->offset + PAGES_WINDOW_SIZE - offset;
	return w->start + (offset - w->offset);
}

/* UFFDIO_COPY len bytes of the image from offset to address: each page made and filled at once. */
static void copy_pages(long uffd, struct pages_window *w, unsigned long address, unsigned long len,
		       unsigned long offset)
{
	while (len) {
		unsigned long chunk = len;
		struct uffdio_copy copy = { .dst = address, .len = chunk };
		long ret;

		copy.src = (long)window_at(w, offset, &chunk);
		copy.len = chunk;
		ret = sys_call3(__NR_ioctl, uffd, UFFDIO_COPY, (long)&copy);
		if (copy.copy <= 0) { /* a partial copy (EAGAIN) goes on from where it stopped */
			pr_err("restorer: copying pages to %lx failed: errno %ld", address,
			       ret < 0 ? -ret : -(long)copy.copy);
			fail();
		}
		address += copy.copy;
		offset += copy.copy;
		len -= copy.copy;
	}
}

/*
 * Fill every dumped page.  Private anonymous memory (nearly all of it) by UFFDIO_COPY from a
 * mapping of pages-N.img: the kernel makes each page and copies into it, where MADV_POPULATE_WRITE
 * and preadv write each page twice (zeroed, then read into); about 0.7 times the time for 1 GiB
 * from tmpfs here.  Pages of private file mappings, and all pages when userfaultfd is not to be had
 * (an older kernel, a seccomp filter), are read with preadv.  Premapped memory has its pages already:
 * the runs leave them out.
 */
static void fill_pages(struct rst_args *a)
{
	struct rst_page_run *runs = (void *)a->page_runs;
	struct rst_vma *v = (void *)a->vmas;
	struct pages_window window = { .fd = a->pages_fd };
	long uffd = open_userfaultfd(a);
	unsigned vma = 0;

	if (uffd < 0)
		pr_debug("restorer: pages read with preadv (no userfaultfd: errno %ld)", -uffd);
	else
		pr_debug("restorer: private anonymous pages copied with UFFDIO_COPY");
	for (unsigned r = 0; r < a->nr_page_runs; r++) {
		struct iovec *iov = (struct iovec *)a->iovs + runs[r].first_iov;
		unsigned long offset = runs[r].offset;

		if (uffd < 0) {
			read_pages(a->pages_fd, iov, runs[r].nr_iovs, offset);
			continue;
		}
		/* Runs, vectors and mappings are all in address order; a vector may span several mappings. */
		for (unsigned long i = 0; i < runs[r].nr_iovs; i++) {
			unsigned long address = (unsigned long)iov[i].iov_base;
			unsigned long end = address + iov[i].iov_len;

			while (address < end) {
				unsigned long piece;

				while (vma < a->nr_vmas && v[vma].end <= address)
					vma++;
				if (vma == a->nr_vmas || v[vma].start > address) {
					pr_err("restorer: pages at %lx are outside every mapping", address);
					fail();
				}
				piece = (end < v[vma].end ? end : v[vma].end) - address;
				if (copied_by_userfaultfd(&v[vma])) {
					copy_pages(uffd, &window, address, piece, offset);
				} else {
					struct iovec one = { (void *)address, piece };

					read_pages(a->pages_fd, &one, 1, offset);
				}
				address += piece;
				offset += piece;
			}
		}
	}
	if (window.start)
		sys_munmap(window.start, PAGES_WINDOW_SIZE);
	if (uffd >= 0)
		sys_close(uffd); /* drops the registrations */
}

static void finish_vmas(struct rst_args *a)
{
	struct rst_vma *v = (void *)a->vmas;

	for (unsigned i = 0; i < a->nr_vmas; i++) {
		unsigned long len = v[i].end - v[i].start;

		if ((v[i].fill && !(v[i].prot & PROT_WRITE)) || v[i].premapped)
			must(sys_mprotect((void *)v[i].start, len, v[i].prot), "mprotect of %lx",
			     (unsigned long)v[i].start);
		for (int advice = 0; advice < 64; advice++)
			if (v[i].madv & (1ULL << advice))
				must(sys_call3(__NR_madvise, v[i].start, len, advice), "madvise %d of %lx", advice,
				     (unsigned long)v[i].start);
	}
}

/*
 * criupy put everything we need at fds >= first_own_fd; what is below is criupy's own, among them
 * its end of the go pipe: closed before the wait, so that criupy dying makes the wait end.
 */
static void close_criupy_fds(struct rst_args *a)
{
	if (a->first_own_fd > 0)
		must(sys_call3(__NR_close_range, 0, a->first_own_fd - 1, 0), "closing criupy's fds");
}

/* Put every dumped fd at its number (all free: see close_criupy_fds). */
static void restore_fds(struct rst_args *a)
{
	struct rst_fd *f = (void *)a->fds;

	for (unsigned i = 0; i < a->nr_fds; i++)
		must(sys_call3(__NR_dup3, f[i].source, f[i].target, f[i].cloexec ? O_CLOEXEC : 0),
		     "placing fd %d", f[i].target);
}

static void restore_fs_and_session(struct rst_args *a)
{
	sys_call1(__NR_umask, a->umask);
	if (a->root_fd >= 0) {
		must(sys_call1(__NR_fchdir, a->root_fd), "changing to the root directory");
		must(sys_call1(__NR_chroot, (long)"."), "chroot");
	}
	if (a->cwd_fd >= 0)
		must(sys_call1(__NR_fchdir, a->cwd_fd), "changing to the working directory");
	if (a->pgid && sys_call1(__NR_getpgid, 0) != a->pgid)
		must(sys_call2(__NR_setpgid, 0, a->pgid), "joining process group %d", a->pgid);
	must(sys_call1(__NR_personality, a->personality), "personality");
}

static void restore_mm(struct rst_args *a)
{
	must(sys_call5(__NR_prctl, PR_SET_MM, PR_SET_MM_MAP, (long)&a->mm, sizeof(a->mm), 0),
	     "setting the mm fields (PR_SET_MM_MAP)");
}

static void restore_sigaction(struct rst_args *a, int sig)
{
	must(sys_call4(__NR_rt_sigaction, sig, (long)&a->sigactions[sig - 1], 0, sizeof(__u64)),
	     "restoring the action of signal %d", sig);
}

/* All actions but SIGTRAP's: the trap that hands us to criupy must meet the default one. */
static void restore_sigactions(struct rst_args *a)
{
	for (int sig = 1; sig <= RST_NR_SIGNALS; sig++)
		if (sig != SIGKILL && sig != SIGSTOP && sig != SIGTRAP)
			restore_sigaction(a, sig);
}

static void restore_timers(struct rst_args *a)
{
	struct rst_posix_timer *t = (void *)a->posix_timers;

	for (int which = 0; which < 3; which++)
		must(sys_call3(__NR_setitimer, which, (long)&a->itimers[which], 0), "setitimer %d", which);

	if (!a->nr_posix_timers)
		return;
	/* Lets timer_create take the ID we ask for (Linux 6.17 and later); the kernel wants the unused
	 * arguments zero. */
	must(sys_call5(__NR_prctl, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0), "PR_TIMER_CREATE_RESTORE_IDS");
	for (unsigned i = 0; i < a->nr_posix_timers; i++) {
		struct {
			__u64 value;
			__s32 signo, notify;
			__s32 tid, pad[11];
		} event = { .value = t[i].sival, .signo = t[i].signo, .notify = t[i].notify, .tid = t[i].notify_tid };
		struct { __u64 interval_sec, interval_nsec, value_sec, value_nsec; } spec = {
			t[i].interval_sec, t[i].interval_nsec, t[i].value_sec, t[i].value_nsec };
		__s32 id = t[i].id;

		must(sys_call3(__NR_timer_create, t[i].clock_id, (long)&event, (long)&id), "creating POSIX timer %d",
		     t[i].id);
		if (id != t[i].id) {
			pr_err("restorer: POSIX timer %d came back as %d", t[i].id, id);
			fail();
		}
		must(sys_call4(__NR_timer_settime, id, 0, (long)&spec, 0), "arming POSIX timer %d", id);
	}
	must(sys_call5(__NR_prctl, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0), "PR_TIMER_CREATE_RESTORE_IDS off");
}

static void restore_rlimits(struct rst_args *a)
{
	for (unsigned i = 0; i < a->nr_rlimits; i++)
		must(sys_call4(__NR_prlimit64, 0, i, (long)&a->rlimits[i], 0), "setting rlimit %u", i);
}

/* Credentials go last: they may drop the privileges everything before needs. */
static void restore_creds(struct rst_creds *c)
{
	struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	if (!c->present)
		return;
	/* Keep the capabilities across the uid change; the dumped securebits follow. */
	must(sys_call2(__NR_prctl, PR_SET_SECUREBITS, 1 << SECURE_NO_SETUID_FIXUP), "PR_SET_SECUREBITS");
	must(sys_call2(__NR_setgroups, c->nr_groups, c->groups), "setgroups");
	must(sys_call3(__NR_setresgid, c->gid, c->egid, c->sgid), "setresgid");
	sys_call1(__NR_setfsgid, c->fsgid);
	must(sys_call3(__NR_setresuid, c->uid, c->euid, c->suid), "setresuid");
	sys_call1(__NR_setfsuid, c->fsuid);

	for (unsigned cap = 0; cap <= c->last_cap; cap++)
		if (!(c->cap_bnd[cap / 32] & (1U << (cap % 32))))
			must(sys_call2(__NR_prctl, PR_CAPBSET_DROP, cap), "dropping capability %u", cap);
	must(sys_call2(__NR_prctl, PR_SET_SECUREBITS, c->secbits), "PR_SET_SECUREBITS");
	for (int i = 0; i < 2; i++) {
		data[i].effective = c->cap_eff[i];
		data[i].permitted = c->cap_prm[i];
		data[i].inheritable = c->cap_inh[i];
	}
	must(sys_call2(__NR_capset, (long)&header, (long)data), "capset");
	must(sys_call5(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient caps");
	for (unsigned cap = 0; cap <= c->last_cap; cap++)
		if (c->cap_amb[cap / 32] & (1U << (cap % 32)))
			must(sys_call5(__NR_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0),
			     "raising ambient capability %u", cap);
	if (c->no_new_privs)
		must(sys_call5(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS");
}

/* What each thread sets for itself: TLS, clear_child_tid, robust list, rseq, name, scheduling. */
static void restore_thread(struct rst_thread *t)
{
	long tid = sys_gettid();

	must(sys_call2(__NR_arch_prctl, ARCH_SET_FS, t->regs.fs_base), "ARCH_SET_FS in thread %ld", tid);
	must(sys_call2(__NR_arch_prctl, ARCH_SET_GS, t->regs.gs_base), "ARCH_SET_GS in thread %ld", tid);
	sys_call1(__NR_set_tid_address, t->clear_child_tid);
	if (t->robust_list)
		must(sys_call2(__NR_set_robust_list, t->robust_list, t->robust_list_len),
		     "set_robust_list in thread %ld", tid);
	if (t->rseq.pointer)
		must(sys_call4(__NR_rseq, t->rseq.pointer, t->rseq.size, 0, t->rseq.signature),
		     "registering the rseq area at %lx in thread %ld", (unsigned long)t->rseq.pointer, tid);
	must(sys_call2(__NR_prctl, PR_SET_NAME, (long)t->comm), "naming thread %ld", tid);
	if (t->sched_policy != SCHED_NORMAL) {
		struct { __s32 priority; } param = { t->sched_prio };

		must(sys_call3(__NR_sched_setscheduler, 0, t->sched_policy, (long)&param),
		     "sched_setscheduler(%u, %u) in thread %ld", t->sched_policy, t->sched_prio, tid);
	}
	must(sys_call3(__NR_setpriority, 0 /* PRIO_PROCESS */, 0, t->sched_nice), "nice %d in thread %ld",
	     t->sched_nice, tid);
}

static void queue_pending_signals(struct rst_signal *s, unsigned nr_signals)
{
	long pid = sys_getpid();
	long tid = sys_gettid();

	for (unsigned i = 0; i < nr_signals; i++) {
		int sig = *(__s32 *)s[i].siginfo; /* si_signo comes first */

		if (s[i].thread)
			sys_call4(__NR_rt_tgsigqueueinfo, pid, tid, sig, (long)s[i].siginfo);
		else
			sys_call3(__NR_rt_sigqueueinfo, pid, sig, (long)s[i].siginfo);
	}
}

typedef int (*criupy_hook)(const struct criupy_hook_args *args);

/* A PIE plugin's hook (0: the plugin has none) for the calling thread; a non-zero return ends the restore. */
static void call_hook(struct rst_args *a, __u64 hook, const char *name, const struct criupy_regs *regs)
{
	struct criupy_hook_args args = {
		.size = sizeof(args),
		.pid = sys_getpid(),
		.tid = sys_gettid(),
		.images_dir_fd = a->images_dir_fd,
		.log_fd = a->log_fd,
		.log_level = a->log_level,
		.regs = regs,
	};
	int ret;

	if (!hook)
		return;
	ret = ((criupy_hook)hook)(&args);
	if (ret) {
		pr_err("restorer: PIE plugin hook %s failed: it returned %d", name, ret);
		fail();
	}
}

static void futex_wait(__u32 *word, __u32 value)
{
	sys_call6(__NR_futex, (long)word, FUTEX_WAIT_PRIVATE, value, 0, 0, 0);
}

static void futex_wake(__u32 *word)
{
	sys_call6(__NR_futex, (long)word, FUTEX_WAKE_PRIVATE, 0x7fffffff, 0, 0, 0);
}

/*
 * A thread the leader created, on its own stack in the restorer mapping, signals blocked (the
 * leader's mask). It sets its own state, says it is ready, and waits: the leader lets every thread
 * go only once criupy traces it, so criupy follows it out of the restorer to its rt_sigreturn exit.
 */
void __attribute__((noreturn)) restorer_thread_main(struct rst_thread *t)
{
	struct rst_args *a = args_of_threads;
	unsigned long frame = build_sigframe(t);

	restore_thread(t);
	restore_creds(t->creds ? (struct rst_creds *)t->creds : &a->creds);
	call_hook(a, a->hook_pre_sigreturn, "criupy_hook_pre_sigreturn", &t->regs);
	__atomic_add_fetch(&a->threads_ready, 1, __ATOMIC_SEQ_CST);
	futex_wake(&a->threads_ready);
	while (!__atomic_load_n(&a->threads_go, __ATOMIC_SEQ_CST))
		futex_wait(&a->threads_go, 0);
	queue_pending_signals((void *)t->signals, t->nr_signals);
	restorer_sigreturn(frame);
}

#define THREAD_CLONE_FLAGS                                                                         \
	(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS)

/* Every other thread, with its dumped TID (set_tid: the PID namespace's CAP_CHECKPOINT_RESTORE). */
static void create_threads(struct rst_args *a)
{
	struct rst_thread *t = (void *)a->threads;

	args_of_threads = a;
	for (unsigned i = 0; i < a->nr_threads; i++) {
		struct clone_args clone = {
			.flags = THREAD_CLONE_FLAGS,
			.stack = t[i].stack,
			.stack_size = t[i].stack_size,
			.tls = t[i].regs.fs_base,
			.set_tid = (long)&t[i].tid,
			.set_tid_size = 1,
		};
		long tid = restorer_clone_thread(&clone, sizeof(clone), &t[i]);

		if (tid == -EEXIST) {
			pr_err("restorer: creating thread %d failed: TID in use", t[i].tid);
			fail();
		}
		if (tid != t[i].tid) {
			pr_err("restorer: creating thread %d failed: errno %ld", t[i].tid, tid < 0 ? -tid : 0L);
			fail();
		}
	}
}

static void wait_for_threads(struct rst_args *a)
{
	__u32 ready;

	while ((ready = __atomic_load_n(&a->threads_ready, __ATOMIC_SEQ_CST)) != a->nr_threads)
		futex_wait(&a->threads_ready, ready);
}

static void release_threads(struct rst_args *a)
{
	__atomic_store_n(&a->threads_go, 1, __ATOMIC_SEQ_CST);
	futex_wake(&a->threads_go);
}

void __attribute__((noreturn)) restorer_main(struct rst_args *a)
{
	unsigned long frame;
	stack_t no_altstack = { .ss_flags = SS_DISABLE };

	block_all_signals();
	pie_log_init(a->log_fd, a->log_level);
	close_criupy_fds(a);
	wait_for_tracer(a);
	/* Python's alternate stack (faulthandler's) must not be taken for the dumped one at sigreturn. */
	must(sys_call2(__NR_sigaltstack, (long)&no_altstack, 0), "disabling the alternate stack");
	frame = build_sigframe(&a->leader);

	unregister_criupy_rseq(a);
	park_special_vmas(a);
	move_premapped_vmas(a);
	unmap_everything_else(a);
	map_vmas(a);
	fill_pages(a);
	finish_vmas(a);
	unpark_special_vmas(a);
	pr_debug("restorer: memory is in place");
	call_hook(a, a->hook_post_restore_vmas, "criupy_hook_post_restore_vmas", &a->leader.regs);

	restore_fds(a);
	restore_fs_and_session(a);
	restore_mm(a);
	restore_thread(&a->leader);
	create_threads(a); /* before the timers, which may signal a thread */
	restore_timers(a);
	restore_sigactions(a);
	restore_rlimits(a);
	wait_for_threads(a);
	restore_creds(&a->creds); /* after the threads are created: set_tid may need the capabilities dropped here */
	call_hook(a, a->hook_pre_sigreturn, "criupy_hook_pre_sigreturn", &a->leader.regs);
	pr_debug("restorer: returning to the dumped code");

	/* The last of criupy's fds (log, pages, files) go; nothing can be logged after this. */
	sys_call3(__NR_close_range, a->first_own_fd, ~0U, 0);
	restorer_trap();

	/* Traced from here on: the trap left SIGTRAP unblocked, so block it again first. */
	block_all_signals();
	restore_sigaction(a, SIGTRAP);
	release_threads(a);
	queue_pending_signals((void *)a->signals, a->nr_signals);
	queue_pending_signals((void *)a->leader.signals, a->leader.nr_signals);
	restorer_sigreturn(frame);
}
