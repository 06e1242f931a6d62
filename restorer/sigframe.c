/*
 * The rt_sigframe, laid out as the kernel's x86-64 signal delivery writes it, so that rt_sigreturn
 * reads it back: return address slot, ucontext (flags, link, altstack, sigcontext, mask), siginfo,
 * and the XSAVE area the sigcontext points to.
 */
#include <asm/sigcontext.h>
#include <asm/signal.h>
#include <asm/ucontext.h>

#include <pie/log.h>
#include <pie/string.h>
#include <pie/syscall.h>

#include "sigframe.h"

#define XSAVE_ALIGN 64
#define XSAVE_LEGACY_SIZE 512 /* FXSAVE area; the software bytes sit at its end */
#define XSAVE_HEADER_SIZE 64
#define XFEATURE_AMX_MASK ((1ULL << 17) | (1ULL << 18)) /* enabled per process on demand, never in a frame */

struct frame_stack {
	__u64 ss_sp;
	__s32 ss_flags;
	__u32 pad;
	__u64 ss_size;
};

struct frame_ucontext {
	__u64 uc_flags;
	__u64 uc_link;
	struct frame_stack uc_stack;
	struct sigcontext_64 uc_mcontext;
	__u64 uc_sigmask;
};

struct rt_sigframe {
	__u64 pretcode; /* popped by the handler's ret: rt_sigreturn finds the frame 8 bytes below sp */
	struct frame_ucontext uc;
	__u8 info[128];
};

static void cpuid(unsigned leaf, unsigned subleaf, unsigned *a, unsigned *b, unsigned *c, unsigned *d)
{
	asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(subleaf));
}

/* The user state components the kernel has enabled (XCR0). */
static __u64 enabled_xfeatures(void)
{
	unsigned lo, hi;

	asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (((__u64)hi << 32) | lo) & ~XFEATURE_AMX_MASK;
}

/* Size of the standard-format XSAVE area holding the components in xfeatures. */
static unsigned xstate_size(__u64 xfeatures)
{
	unsigned size = XSAVE_LEGACY_SIZE + XSAVE_HEADER_SIZE;

	for (int i = 2; i < 64; i++) {
		unsigned comp_size, comp_offset, ecx, edx;

		if (!(xfeatures & (1ULL << i)))
			continue;
		cpuid(0xd, i, &comp_size, &comp_offset, &ecx, &edx);
		if (comp_offset + comp_size > size)
			size = comp_offset + comp_size;
	}
	return size;
}

unsigned long build_sigframe(struct rst_thread *t)
{
	struct rt_sigframe *frame = (void *)t->sigframe;
	struct sigcontext_64 *sc = &frame->uc.uc_mcontext;
	unsigned long fpstate = (t->sigframe + sizeof(*frame) + XSAVE_ALIGN - 1) & ~(unsigned long)(XSAVE_ALIGN - 1);
	__u64 xfeatures = enabled_xfeatures();
	unsigned size = xstate_size(xfeatures);
	struct _fpx_sw_bytes *sw = (void *)(fpstate + XSAVE_LEGACY_SIZE - sizeof(*sw));
	struct criupy_regs *r = &t->regs;

	if (fpstate + size + FP_XSTATE_MAGIC2_SIZE > t->sigframe + t->sigframe_size) {
		pr_err("restorer: no room for an XSAVE area of %u bytes in the signal frame", size);
		sys_exit_group(1);
	}
	memset(frame, 0, fpstate + size + FP_XSTATE_MAGIC2_SIZE - t->sigframe);

	frame->uc.uc_flags = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
	frame->uc.uc_stack.ss_sp = t->sas_sp;
	frame->uc.uc_stack.ss_flags = t->sas_flags;
	frame->uc.uc_stack.ss_size = t->sas_size;
	frame->uc.uc_sigmask = t->blocked;

	sc->r8 = r->r8;
	sc->r9 = r->r9;
	sc->r10 = r->r10;
	sc->r11 = r->r11;
	sc->r12 = r->r12;
	sc->r13 = r->r13;
	sc->r14 = r->r14;
	sc->r15 = r->r15;
	sc->di = r->di;
	sc->si = r->si;
	sc->bp = r->bp;
	sc->bx = r->bx;
	sc->dx = r->dx;
	sc->ax = r->ax;
	sc->cx = r->cx;
	sc->sp = r->sp;
	sc->ip = r->ip;
	sc->flags = r->flags;
	sc->cs = r->cs;
	sc->ss = r->ss;
	sc->fpstate = fpstate;

	/* The dumped state, cut or zero-padded to what this CPU saves; then the kernel's checks. */
	memcpy((void *)fpstate, (void *)t->xsave, t->xsave_size < size ? t->xsave_size : size);
	sw->magic1 = FP_XSTATE_MAGIC1;
	sw->extended_size = size + FP_XSTATE_MAGIC2_SIZE;
	sw->xfeatures = xfeatures;
	sw->xstate_size = size;
	memset(sw->padding, 0, sizeof(sw->padding));
	*(__u32 *)(fpstate + size) = FP_XSTATE_MAGIC2;

	return (unsigned long)&frame->uc;
}
