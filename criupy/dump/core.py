"""core-PID.img: registers, FPU/XSAVE state, signals, timers, limits, credentials and the task's other state.

What the seized task gives (registers, XSAVE, signal mask, pending signals, rseq), what the parasite
reports from inside (signal actions, umask, pdeathsig, securebits, timers...), and what /proc and
prlimit tell from outside are put together into CRIU's core_entry.
"""

import ctypes
import os
import resource
import signal
import struct
from typing import NamedTuple

from criupy import proc, xsave
from criupy.errors import CriupyError
from criupy.images.pb import core_pb2, core_x86_pb2, creds_pb2, rlimit_pb2, rseq_pb2, sa_pb2, siginfo_pb2, timer_pb2
from criupy.infect import trace
from criupy.libc import libc

TASK_ALIVE = 1
TASK_STOPPED = 3
NR_SIGNALS = 64
RLIM_NLIMITS = 16
U64 = (1 << 64) - 1

PTRACE_PEEKSIGINFO = 0x4209
PTRACE_PEEKSIGINFO_SHARED = 1
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
SIGINFO_SIZE = 128
PEEK_BATCH = 32
SYS_get_robust_list = 274

SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_THREAD_ID = 0, 1, 2, 4
SIGEV_BY_NAME = {"signal": SIGEV_SIGNAL, "none": SIGEV_NONE, "thread": SIGEV_THREAD}

# user_regs_struct (python-ptrace's names) -> user_x86_regs_entry
REGS = (
    ("r15", "r15"), ("r14", "r14"), ("r13", "r13"), ("r12", "r12"), ("bp", "rbp"), ("bx", "rbx"),
    ("r11", "r11"), ("r10", "r10"), ("r9", "r9"), ("r8", "r8"), ("ax", "rax"), ("cx", "rcx"), ("dx", "rdx"),
    ("si", "rsi"), ("di", "rdi"), ("orig_ax", "orig_rax"), ("ip", "rip"), ("cs", "cs"), ("flags", "eflags"),
    ("sp", "rsp"), ("ss", "ss"), ("fs_base", "fs_base"), ("gs_base", "gs_base"), ("ds", "ds"), ("es", "es"),
    ("fs", "fs"), ("gs", "gs"),
)


def gpregs_entry(regs):
    return core_x86_pb2.user_x86_regs_entry(
        **{name: getattr(regs, ptrace_name) & U64 for name, ptrace_name in REGS}, mode=core_x86_pb2.NATIVE)


class PeekSiginfoArgs(ctypes.Structure):
    """struct ptrace_peeksiginfo_args"""

    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


def pending_signals(pid, shared):
    """The queued siginfos of the task (shared: the process-wide queue), without dequeuing them."""
    buffer = ctypes.create_string_buffer(PEEK_BATCH * SIGINFO_SIZE)
    result = []
    while True:
        args = PeekSiginfoArgs(len(result), PTRACE_PEEKSIGINFO_SHARED if shared else 0, PEEK_BATCH)
        count = trace.request(PTRACE_PEEKSIGINFO, pid, ctypes.addressof(args), ctypes.addressof(buffer))
        result += [buffer.raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(count)]
        if count < PEEK_BATCH:
            return siginfo_pb2.signal_queue_entry(signals=[siginfo_pb2.siginfo_entry(siginfo=s) for s in result])


def rseq(pid, regs):
    """rseq_entry of the task (None if it registered none); moves regs.rip to the abort handler if the
    task was stopped inside an rseq critical section, as the kernel would on its way back to it."""
    config = ctypes.create_string_buffer(24)  # struct ptrace_rseq_configuration
    trace.request(PTRACE_GET_RSEQ_CONFIGURATION, pid, 24, ctypes.addressof(config))
    pointer, size, signature = struct.unpack_from("<QII", config.raw)
    if not pointer:
        return None
    entry = rseq_pb2.rseq_entry(rseq_abi_pointer=pointer, rseq_abi_size=size, signature=signature)
    (cs_pointer,) = struct.unpack("<Q", trace.read_memory(pid, pointer + 8, 8))  # struct rseq.rseq_cs
    if cs_pointer:
        entry.rseq_cs_pointer = cs_pointer
        _, _, start_ip, post_commit_offset, abort_ip = struct.unpack(
            "<IIQQQ", trace.read_memory(pid, cs_pointer, 32))
        if start_ip <= regs.rip < start_ip + post_commit_offset:
            regs.rip = abort_ip
    return entry


def sigactions(actions):
    """sa_entry for signals 1..64 but SIGKILL and SIGSTOP (whose actions cannot change), as CRIU lists them."""
    return [sa_pb2.sa_entry(sigaction=a.handler, flags=a.flags, restorer=a.restorer, mask=a.mask,
                            compat_sigaction=False)
            for a in actions if a.signo not in (signal.SIGKILL, signal.SIGSTOP)]


def timers(pid, parasite):
    itimers = parasite.itimers()
    entry = timer_pb2.task_timers_entry(**{
        field: timer_pb2.itimer_entry(isec=t.interval_sec, iusec=t.interval_usec, vsec=t.value_sec,
                                      vusec=t.value_usec)
        for field, t in (("real", itimers.real), ("virt", itimers.virtual), ("prof", itimers.prof))})
    listed = sorted(proc.timers(pid), key=lambda t: t.timer_id)
    times = parasite.posix_timers([t.timer_id for t in listed]) if listed else []
    for info, now in zip(listed, times):
        posix = timer_pb2.posix_timer_entry(
            it_id=info.timer_id, clock_id=info.clock_id, si_signo=info.signo, sival_ptr=info.sival,
            it_sigev_notify=SIGEV_THREAD_ID if info.notify_to == "tid" else SIGEV_BY_NAME[info.notify],
            overrun=max(now.overrun, 0), isec=now.interval_sec, insec=now.interval_nsec, vsec=now.value_sec,
            vnsec=now.value_nsec)
        if info.notify_to == "tid":
            posix.notify_thread_id = info.notify_id
        entry.posix.append(posix)
    return entry


def rlimits(pid):
    return core_pb2.task_rlimits_entry(rlimits=[
        rlimit_pb2.rlimit_entry(cur=cur & U64, max=max_ & U64)
        for cur, max_ in (resource.prlimit(pid, number) for number in range(RLIM_NLIMITS))])


def _cap_words(hex_text):
    value = int(hex_text, 16)
    return [value & 0xFFFFFFFF, value >> 32]


def creds(status, misc):
    """creds_entry from /proc/PID/status (ids, groups, capabilities) and the parasite (securebits, nnp)."""
    uid, euid, suid, fsuid = (int(x) for x in status["Uid"].split())
    gid, egid, sgid, fsgid = (int(x) for x in status["Gid"].split())
    return creds_pb2.creds_entry(
        uid=uid, euid=euid, suid=suid, fsuid=fsuid, gid=gid, egid=egid, sgid=sgid, fsgid=fsgid,
        cap_inh=_cap_words(status["CapInh"]), cap_prm=_cap_words(status["CapPrm"]),
        cap_eff=_cap_words(status["CapEff"]), cap_bnd=_cap_words(status["CapBnd"]),
        cap_amb=_cap_words(status.get("CapAmb", "0")), secbits=misc.securebits,
        groups=[int(g) for g in status["Groups"].split()], no_new_privs=misc.no_new_privs)


def robust_list(pid):
    head, length = ctypes.c_uint64(), ctypes.c_size_t()
    if libc.syscall(ctypes.c_long(SYS_get_robust_list), ctypes.c_int(pid), ctypes.byref(head),
                    ctypes.byref(length)) < 0:
        raise CriupyError(f"get_robust_list of PID {pid}: {os.strerror(ctypes.get_errno())}")
    return head.value, length.value


class SeizedState(NamedTuple):
    """What is read with ptrace while the task sits in its ptrace stop, before the parasite runs."""

    regs: object           # user_regs_struct as the task must resume (system call restarted, rseq aborted)
    rseq: object           # rseq_entry or None
    shared_signals: object   # signal_queue_entry
    thread_signals: object   # signal_queue_entry


def read_seized(pid, victim):
    regs = victim.restartable_regs()
    return SeizedState(regs=regs, rseq=rseq(pid, regs), shared_signals=pending_signals(pid, shared=True),
                       thread_signals=pending_signals(pid, shared=False))


def thread_entries(task, seized, sas, clear_child_tid, creds_entry, comm):
    """thread_core_entry and thread_info_x86 of one thread (task: its seized Task)."""
    tid = task.pid
    futex_rla, futex_rla_len = robust_list(tid)
    thread = core_pb2.thread_core_entry(
        futex_rla=futex_rla, futex_rla_len=futex_rla_len, sched_nice=os.getpriority(os.PRIO_PROCESS, tid),
        sched_policy=os.sched_getscheduler(tid), sched_prio=os.sched_getparam(tid).sched_priority,
        blk_sigset=task.sigmask, sas=sas, signals_p=seized.thread_signals, creds=creds_entry,
        seccomp_mode=core_pb2.disabled, comm=comm)
    if seized.rseq is not None:
        thread.rseq_entry.CopyFrom(seized.rseq)
    info = core_x86_pb2.thread_info_x86(clear_tid_addr=clear_child_tid, gpregs=gpregs_entry(seized.regs),
                                        fpregs=xsave.fpregs_entry(task.xsave))
    return thread, info


def core_entry(pid, victim, seized, parasite, misc, stat, status):
    """The core entry of the leader thread: seized state, then what the parasite reports."""
    task = core_pb2.task_core_entry(
        task_state=TASK_STOPPED if victim.was_stopped else TASK_ALIVE, exit_code=0,
        personality=misc.personality, flags=stat.flags, blk_sigset=victim.sigmask, comm=stat.comm,
        timers=timers(pid, parasite), rlimits=rlimits(pid), signals_s=seized.shared_signals,
        old_seccomp_mode=core_pb2.disabled, loginuid=proc.loginuid(pid), oom_score_adj=proc.oom_score_adj(pid),
        sigactions=sigactions(parasite.sigactions()))
    if victim.was_stopped:
        task.stop_signo = signal.SIGSTOP
    sas = core_pb2.thread_sas_entry(ss_sp=misc.altstack.sp, ss_size=misc.altstack.size, ss_flags=misc.altstack.flags)
    thread, info = thread_entries(victim, seized, sas, misc.clear_child_tid, creds(status, misc), stat.comm)
    thread.pdeath_sig = misc.pdeath_sig
    return core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64, thread_info=info, tc=task, thread_core=thread)
