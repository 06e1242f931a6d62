"""The restorer's argument area: ctypes mirrors of restorer/restorer.h, field for field.

Change a structure here and in restorer/restorer.h together. test_restore.py checks the sizes that
head.S depends on.
"""

import ctypes

u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64

NR_SIGNALS = 64
NR_RLIMITS = 16
AUXV_WORDS = 128
SIGINFO_SIZE = 128


class Struct(ctypes.Structure):
    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, *_ in self._fields_ if "pad" not in name)
        return f"{type(self).__name__}({fields})"


class Vma(Struct):
    _fields_ = [
        ("start", u64), ("end", u64), ("pgoff", u64),
        ("prot", u32), ("flags", u32), ("fd", s32), ("fill", u32), ("madv", u64), ("sysv", u32), ("pad", u32),
        ("premapped", u64),
    ]


class PageRun(Struct):
    _fields_ = [("offset", u64), ("first_iov", u32), ("nr_iovs", u32)]


class SpecialVma(Struct):
    _fields_ = [("current", u64), ("parked", u64), ("dumped", u64), ("size", u64)]


class Fd(Struct):
    _fields_ = [("source", s32), ("target", s32), ("cloexec", u32), ("pad", u32)]


class Sigaction(Struct):
    _fields_ = [("handler", u64), ("flags", u64), ("restorer", u64), ("mask", u64)]


class Itimer(Struct):
    _fields_ = [("interval_sec", u64), ("interval_usec", u64), ("value_sec", u64), ("value_usec", u64)]


class PosixTimer(Struct):
    _fields_ = [
        ("id", s32), ("clock_id", s32), ("signo", s32), ("notify", s32), ("notify_tid", s32), ("pad", u32),
        ("sival", u64), ("interval_sec", u64), ("interval_nsec", u64), ("value_sec", u64), ("value_nsec", u64),
    ]


class Signal(Struct):
    _fields_ = [("thread", u32), ("pad", u32), ("siginfo", ctypes.c_uint8 * SIGINFO_SIZE)]


class Rlimit(Struct):
    _fields_ = [("cur", u64), ("max", u64)]


class Creds(Struct):
    _fields_ = [
        ("present", u32),
        ("uid", u32), ("euid", u32), ("suid", u32), ("fsuid", u32),
        ("gid", u32), ("egid", u32), ("sgid", u32), ("fsgid", u32),
        ("secbits", u32), ("no_new_privs", u32), ("last_cap", u32),
        ("cap_inh", u32 * 2), ("cap_prm", u32 * 2), ("cap_eff", u32 * 2), ("cap_bnd", u32 * 2), ("cap_amb", u32 * 2),
        ("nr_groups", u32), ("groups", u64),
    ]


REGS_FIELDS = (
    "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8",
    "ax", "cx", "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss",
    "fs_base", "gs_base", "ds", "es", "fs", "gs",
)


class Regs(Struct):
    _fields_ = [(name, u64) for name in REGS_FIELDS]


class PrctlMmMap(Struct):
    _fields_ = [
        ("start_code", u64), ("end_code", u64), ("start_data", u64), ("end_data", u64),
        ("start_brk", u64), ("brk", u64), ("start_stack", u64),
        ("arg_start", u64), ("arg_end", u64), ("env_start", u64), ("env_end", u64),
        ("auxv", u64), ("auxv_size", u32), ("exe_fd", u32),
    ]


class Rseq(Struct):
    _fields_ = [("pointer", u64), ("size", u32), ("signature", u32)]


class Thread(Struct):
    _fields_ = [
        ("tid", s32), ("sched_policy", u32), ("sched_prio", u32), ("sched_nice", s32),
        ("stack", u64), ("stack_size", u64),
        ("regs", Regs),
        ("blocked", u64),
        ("sas_sp", u64), ("sas_size", u64), ("sas_flags", u32), ("pad0", u32),
        ("clear_child_tid", u64),
        ("robust_list", u64), ("robust_list_len", u64),
        ("xsave", u64), ("xsave_size", u32), ("pad1", u32),
        ("sigframe", u64), ("sigframe_size", u32), ("pad2", u32),
        ("rseq", Rseq),
        ("comm", ctypes.c_char * 16),
        ("signals", u64), ("nr_signals", u32), ("pad3", u32),
        ("creds", u64),
    ]


class Args(Struct):
    _fields_ = [
        ("region_start", u64), ("region_size", u64), ("stack_top", u64), ("task_size", u64),
        ("log_fd", s32), ("sync_fd", s32), ("pages_fd", s32), ("first_own_fd", s32),
        ("log_level", u32), ("pages_by_userfaultfd", u32),
        ("vmas", u64), ("nr_vmas", u32), ("pad1", u32),
        ("iovs", u64), ("nr_iovs", u32), ("pad2", u32),
        ("page_runs", u64), ("nr_page_runs", u32), ("pad_runs", u32),
        ("specials", u64), ("nr_specials", u32), ("pad3", u32),
        ("fds", u64), ("nr_fds", u32), ("pad4", u32),
        ("umask", u32), ("personality", u32), ("cwd_fd", s32), ("root_fd", s32),
        ("pad_session", u32), ("pgid", s32),
        ("mm", PrctlMmMap), ("auxv", u64 * AUXV_WORDS),
        ("sigactions", Sigaction * NR_SIGNALS),
        ("itimers", Itimer * 3),
        ("posix_timers", u64), ("nr_posix_timers", u32), ("pad5", u32),
        ("signals", u64), ("nr_signals", u32), ("nr_rlimits", u32),
        ("rlimits", Rlimit * NR_RLIMITS),
        ("creds", Creds),
        ("own_rseq", Rseq),
        ("hook_post_restore_vmas", u64), ("hook_pre_sigreturn", u64),
        ("images_dir_fd", s32), ("pad9", u32),
        ("leader", Thread),
        ("threads", u64), ("nr_threads", u32), ("threads_ready", u32), ("threads_go", u32), ("pad6", u32),
    ]


class Iovec(Struct):
    _fields_ = [("base", u64), ("len", u64)]


assert Args.stack_top.offset == 16, "head.S reads stack_top at offset 16"
