"""core-TID.img of every thread but the leader (CRIU's dump_task_threads).

Most of a thread's state is read with ptrace (registers, XSAVE, signal mask, pending signals, rseq)
or from /proc/PID/task/TID (name, credentials) and the scheduler calls, which take a TID. Two things
only the thread itself can tell: its clear_child_tid address and its alternate signal stack. Each
thread asks for them with two system calls run in it, answered into a scratch page mapped for the
purpose and unmapped again before the parasite comes in.
"""

import mmap
import os
import struct
from typing import NamedTuple

from criupy import proc
from criupy.dump import core
from criupy.errors import CriupyError
from criupy.images.pb import core_pb2
from criupy.infect import trace

SYS_mmap = 9
SYS_munmap = 11
SYS_sigaltstack = 131
SYS_prctl = 157
PR_GET_TID_ADDRESS = 40
SCRATCH_SIZE = 4096
STACK_T = struct.Struct("<QiIQ")  # stack_t: ss_sp, ss_flags, padding, ss_size


class ThreadSelf(NamedTuple):
    """What a thread tells about itself from inside."""

    clear_child_tid: int
    altstack_sp: int
    altstack_flags: int
    altstack_size: int


def _checked(result, tid, what):
    if result < 0:
        raise CriupyError(f"{what} in thread {tid} failed: {os.strerror(-result)}")
    return result


def ask_threads(leader, tasks):
    """{tid: ThreadSelf} for each seized Task in tasks, the parasite not loaded yet."""
    if not tasks:
        return {}  # a scratch page costs two system calls, each a round trip into the stopped task
    scratch = _checked(leader.syscall(SYS_mmap, 0, SCRATCH_SIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0),
                       leader.pid, "mapping a scratch page")
    answers = {}
    try:
        for task in tasks:
            task.share_code_area(leader)
            _checked(task.syscall(SYS_prctl, PR_GET_TID_ADDRESS, scratch), task.pid, "PR_GET_TID_ADDRESS")
            _checked(task.syscall(SYS_sigaltstack, 0, scratch + 8), task.pid, "sigaltstack")
            data = trace.read_memory(task.pid, scratch, 8 + STACK_T.size)
            (clear_child_tid,) = struct.unpack_from("<Q", data)
            sp, flags, _, size = STACK_T.unpack_from(data, 8)
            answers[task.pid] = ThreadSelf(clear_child_tid, sp, flags, size)
    finally:
        _checked(leader.syscall(SYS_munmap, scratch, SCRATCH_SIZE), leader.pid, "unmapping the scratch page")
    return answers


def read_seized(tasks):
    """{tid: core.SeizedState} of each thread, read while it sits in its ptrace stop."""
    return {task.pid: core.read_seized(task.pid, task) for task in tasks}


def thread_core_entry(pid, task, seized, self_told, misc):
    """core_entry of a thread that is not the leader: no task-wide part (tc), as CRIU writes it."""
    tid = task.pid
    sas = core_pb2.thread_sas_entry(ss_sp=self_told.altstack_sp, ss_size=self_told.altstack_size,
                                    ss_flags=self_told.altstack_flags)
    comm = proc.thread_comm(pid, tid)
    thread, info = core.thread_entries(task, seized, sas, self_told.clear_child_tid,
                                       core.creds(proc.status(tid), misc), comm)
    return core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64, thread_info=info, thread_core=thread)
