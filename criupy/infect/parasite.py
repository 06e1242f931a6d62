"""The parasite, seen from criupy: load it into a seized task, send it commands, take it out again.

Loading (as compel does when it has no memfd): shared anonymous memory mapped in the task (rwx), one
system call into the stopped task, and here (rw) through /proc/PID/map_files; the blob copied in with
its relocations applied; the task starts at the blob's head with every signal
blocked, and connects to a unix socket criupy listens on. Each command is one message each way on
that socket; its input and output are in the shared argument area (see parasite/protocol.h, whose
numbers and layouts this module mirrors). File descriptors travel with SCM_RIGHTS.

While the parasite runs, criupy watches the task as well as the socket: a crash in the parasite is a
signal-delivery-stop we see (and never deliver), a hang is a timeout, after which cure interrupts it.
"""

import array
import mmap
import os
import select
import socket
import struct
import time
from typing import NamedTuple

from criupy.blobs import parasite as parasite_module
from criupy.blobs.loader import Blob
from criupy.errors import CriupyError
from criupy.infect import task as task_module
from criupy.infect import trace
from criupy.xsave import SW_RESERVED_OFFSET

PROT_RWX = 7

# parasite/protocol.h
CMD_INIT, CMD_FINI, CMD_SIGACTIONS, CMD_MISC, CMD_ITIMERS, CMD_POSIX_TIMERS, CMD_DUMP_PAGES, CMD_STEAL_FDS = range(8)
COMMAND_NAMES = {
    "init": CMD_INIT, "fini": CMD_FINI, "sigactions": CMD_SIGACTIONS, "misc": CMD_MISC,
    "itimers": CMD_ITIMERS, "posix_timers": CMD_POSIX_TIMERS, "dump_pages": CMD_DUMP_PAGES,
    "steal_fds": CMD_STEAL_FDS,
}
FAULT_KINDS = {"crash": 1, "hang": 2}
MSG = struct.Struct("<IiQ")                 # struct parasite_msg
ARGS_HEADER = struct.Struct("<112sIiiIQ")   # struct parasite_args up to sigframe
ARGS_DATA_OFFSET = 256
DATA_SIZE = 256 * 1024
MAX_FDS = 200
SIGFRAME_SIZE = 64 * 1024
SIGACTION = struct.Struct("<QQQQ")
MISC = struct.Struct("<IiiiiIQiIQQQ")
ITIMER = struct.Struct("<qqqq")
POSIX_TIMER = struct.Struct("<qqqqq")
RANGE = struct.Struct("<QQ")
RANGES_PER_CHUNK = DATA_SIZE // RANGE.size

# The self-cure rt_sigframe (x86-64): return slot, ucontext (flags, link, stack, sigcontext, sigmask).
UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 1, 2, 4
SIGFRAME_UC_FLAGS = 8
SIGFRAME_SIGCONTEXT = 8 + 8 + 8 + 24
SIGCONTEXT = struct.Struct("<18Q4H4QQ64x")
SIGFRAME_SIGMASK = SIGFRAME_SIGCONTEXT + SIGCONTEXT.size
SIGFRAME_FPSTATE = 1024  # 64-byte aligned, as the XSAVE area must be
FP_XSTATE_MAGIC1 = 0x46505853
FP_XSTATE_MAGIC2 = 0x46505845

POLL_INTERVAL = 0.02  # how often the task is checked while waiting on the socket
DEFAULT_TIMEOUT = 60.0  # seconds of silence from the parasite before it counts as hung


class SigAction(NamedTuple):
    signo: int
    handler: int   # SIG_DFL = 0, SIG_IGN = 1, else the handler's address
    flags: int     # SA_*
    restorer: int
    mask: int      # blocked while the handler runs, bit (n-1) for signal n


class AltStack(NamedTuple):
    sp: int
    flags: int     # SS_DISABLE = 2, SS_ONSTACK = 1, SS_AUTODISARM...
    size: int


class TaskMisc(NamedTuple):
    umask: int
    pdeath_sig: int
    dumpable: int
    securebits: int
    no_new_privs: int
    personality: int
    altstack: AltStack
    clear_child_tid: int
    brk: int  # the heap's current end (mm's brk), as brk(0) returns it


class ITimer(NamedTuple):
    interval_sec: int
    interval_usec: int
    value_sec: int
    value_usec: int


class ITimers(NamedTuple):
    real: ITimer
    virtual: ITimer
    prof: ITimer


class PosixTimer(NamedTuple):
    timer_id: int
    interval_sec: int
    interval_nsec: int
    value_sec: int
    value_nsec: int
    overrun: int


def _fault_hook():
    """CRIUPY_TEST_PARASITE_FAULT=<command>:crash|hang, for tests: (command number, kind) or (-1, 0)."""
    value = os.environ.get("CRIUPY_TEST_PARASITE_FAULT")
    if not value:
        return -1, 0
    command, _, kind = value.partition(":")
    if command not in COMMAND_NAMES or kind not in FAULT_KINDS:
        raise CriupyError(f"CRIUPY_TEST_PARASITE_FAULT={value!r}: want <command>:crash|hang")
    return COMMAND_NAMES[command], FAULT_KINDS[kind]


class Parasite:
    """The parasite loaded in a seized task. Made by Task.infect(); taken out by Task.cure()."""

    def __init__(self, task, timeout=DEFAULT_TIMEOUT):
        self.task = task
        self.timeout = timeout
        self.blob = Blob(parasite_module)
        self.size = self.blob.size
        self.base = None          # the parasite's address in the task, once mapped
        self.running = False      # the task executes the parasite (not stopped by us)
        self._remote_sock = None  # the parasite's socket fd in the task, until it closes it
        self._mem = None
        self._listener = None
        self._conn = None
        self._in_flight = False   # a command was sent and its reply not read: the protocol is out of step

    @property
    def area(self):
        """(start, end) of the parasite's mapping in the task: not part of what is dumped."""
        return (self.base, self.base + self.size) if self.base is not None else None

    # loading ----------------------------------------------------------------------------------

    def start(self):
        task = self.task
        fault_cmd, fault_kind = _fault_hook()
        address = f"\0criupy-parasite-{os.getpid()}-{task.pid}-{os.urandom(8).hex()}".encode()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._listener.bind(address)
        self._listener.listen(1)

        base = task.syscall(task_module.SYS_mmap, 0, self.size, PROT_RWX, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
        if -4096 < base < 0:
            raise CriupyError(f"mmap of the parasite in PID {task.pid} failed: {os.strerror(-base)}")
        self.base = base
        # the mapping's shmem file: criupy's view of the same memory
        local = os.open(f"/proc/{task.pid}/map_files/{base:x}-{base + self.size:x}", os.O_RDWR | os.O_CLOEXEC)
        try:
            self._mem = mmap.mmap(local, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(local)

        image = self.blob.image(base)
        self._mem[: len(image)] = image
        sigframe = self._write_sigframe()
        args = self._args_offset()
        sockaddr = struct.pack("<H", socket.AF_UNIX) + address  # struct sockaddr_un, abstract: no NUL at the end
        ARGS_HEADER.pack_into(self._mem, args, sockaddr, len(sockaddr), fault_cmd, fault_kind, 0, sigframe)

        regs = task._run_regs(self.blob.address("parasite_head", base))
        trace.ptrace_setregs(task.pid, regs)
        task._resume()
        self.running = True
        self._accept()

    def _args_offset(self):
        return self.blob.exports["parasite_args"]

    def _write_sigframe(self):
        """The frame the parasite sigreturns through if criupy dies; its address, or 0 if none fits."""
        task = self.task
        xsave = bytearray(task.xsave)
        xstate_size = len(xsave)
        if SIGFRAME_FPSTATE + xstate_size + 4 > SIGFRAME_SIZE:
            return 0
        # ptrace puts XCR0 first in the software-reserved bytes; a signal frame wants the kernel's
        # _fpx_sw_bytes there (magic1, extended size, features, size), and magic2 after the area.
        (xcr0,) = struct.unpack_from("<Q", xsave, SW_RESERVED_OFFSET)
        xsave[SW_RESERVED_OFFSET:SW_RESERVED_OFFSET + 48] = struct.pack(
            "<IIQI28x", FP_XSTATE_MAGIC1, xstate_size + 4, xcr0, xstate_size
        )
        offset = self.blob.exports["parasite_sigframe"]
        address = self.base + offset
        regs = task.restartable_regs()
        frame = bytearray(SIGFRAME_SIZE)
        struct.pack_into("<Q", frame, SIGFRAME_UC_FLAGS, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS)
        SIGCONTEXT.pack_into(
            frame, SIGFRAME_SIGCONTEXT,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            regs.rdi, regs.rsi, regs.rbp, regs.rbx, regs.rdx, regs.rax, regs.rcx, regs.rsp, regs.rip, regs.eflags,
            regs.cs, 0, 0, regs.ss,
            0, 0, 0, 0,
            address + SIGFRAME_FPSTATE,
        )
        struct.pack_into("<Q", frame, SIGFRAME_SIGMASK, task.sigmask)
        frame[SIGFRAME_FPSTATE : SIGFRAME_FPSTATE + xstate_size] = xsave
        struct.pack_into("<I", frame, SIGFRAME_FPSTATE + xstate_size, FP_XSTATE_MAGIC2)
        self._mem[offset : offset + SIGFRAME_SIZE] = frame
        return address

    def _accept(self):
        deadline = time.monotonic() + self.timeout
        while not select.select([self._listener], [], [], POLL_INTERVAL)[0]:
            self._check_task()
            if time.monotonic() > deadline:
                raise CriupyError(f"the parasite in PID {self.task.pid} did not connect")
        self._conn, _ = self._listener.accept()
        self._listener.close()
        self._listener = None
        peer_pid = struct.unpack("<iII", self._conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        if peer_pid != self.task.pid:
            raise CriupyError(f"PID {peer_pid}, not the parasite in PID {self.task.pid}, connected to criupy")
        _, arg, _ = self._receive(CMD_INIT)
        self._remote_sock = arg

    # talking ----------------------------------------------------------------------------------

    def _check_task(self):
        """Raise if the task left the parasite: crashed (ParasiteFault), exited, or trapped early."""
        if self.task._wait_for_trap(self.base, self.base + self.size, block=False) is not None:
            self.running = False
            raise CriupyError(f"the parasite in PID {self.task.pid} quit unexpectedly")

    def _receive(self, cmd, nr_fds=0):
        """The reply to cmd: (status, arg, [fds])."""
        deadline = time.monotonic() + self.timeout
        while not select.select([self._conn], [], [], POLL_INTERVAL)[0]:
            self._check_task()
            if time.monotonic() > deadline:
                raise CriupyError(f"the parasite in PID {self.task.pid} does not answer (hung?)")
        fds = array.array("i")
        data, ancillary, _, _ = self._conn.recvmsg(MSG.size, socket.CMSG_SPACE(max(nr_fds, 1) * fds.itemsize))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if len(data) != MSG.size:
            for fd in fds:
                os.close(fd)
            self._check_task()
            raise CriupyError(f"the parasite in PID {self.task.pid} closed its socket")
        reply_cmd, status, arg = MSG.unpack(data)
        if reply_cmd != cmd:
            raise CriupyError(f"the parasite answered command {reply_cmd}, not {cmd}")
        return status, arg, list(fds)

    def _call(self, cmd, arg=0, fd=None, nr_fds=0):
        """Run one command; returns (arg, fds) of the reply. A failed command raises CriupyError."""
        self._send(cmd, arg, fd)
        return self._reply(cmd, nr_fds)

    def _send(self, cmd, arg=0, fd=None):
        """Send one command; the parasite runs it while criupy goes on, until _reply(cmd)."""
        if not self.running or self._conn is None:
            raise CriupyError(f"the parasite in PID {self.task.pid} is not running")
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
        self._in_flight = True
        self._conn.sendmsg([MSG.pack(cmd, 0, arg)], ancillary)

    def _reply(self, cmd, nr_fds=0):
        """The reply to the command sent: (arg, fds). A failed command raises CriupyError."""
        status, reply_arg, fds = self._receive(cmd, nr_fds)
        self._in_flight = False
        if status < 0:
            for received in fds:
                os.close(received)
            name = next(n for n, c in COMMAND_NAMES.items() if c == cmd)
            raise CriupyError(f"parasite command {name} in PID {self.task.pid} failed: {os.strerror(-status)}")
        return reply_arg, fds

    def _data(self, size):
        start = self._args_offset() + ARGS_DATA_OFFSET
        return self._mem[start : start + size]

    def _set_data(self, payload):
        start = self._args_offset() + ARGS_DATA_OFFSET
        self._mem[start : start + len(payload)] = payload

    # commands ---------------------------------------------------------------------------------

    def sigactions(self):
        """The 64 signal actions of the task (signals 1..64), as rt_sigaction reports them."""
        self._call(CMD_SIGACTIONS)
        data = self._data(64 * SIGACTION.size)
        return [SigAction(i + 1, *SIGACTION.unpack_from(data, i * SIGACTION.size)) for i in range(64)]

    def misc(self):
        """umask, parent-death signal, dumpable, securebits, no_new_privs, personality, sigaltstack,
        clear_child_tid, brk."""
        self._call(CMD_MISC)
        (umask, pdeath, dumpable, securebits, nnp, personality,
         ss_sp, ss_flags, _, ss_size, clear_child_tid, brk) = MISC.unpack(self._data(MISC.size))
        return TaskMisc(umask, pdeath, dumpable, securebits, nnp, personality,
                        AltStack(ss_sp, ss_flags, ss_size), clear_child_tid, brk)

    def itimers(self):
        """The three interval timers (getitimer ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF)."""
        self._call(CMD_ITIMERS)
        data = self._data(3 * ITIMER.size)
        real, virtual, prof = (ITimer(*ITIMER.unpack_from(data, i * ITIMER.size)) for i in range(3))
        return ITimers(real, virtual, prof)

    def posix_timers(self, timer_ids):
        """timer_gettime and timer_getoverrun of each POSIX timer ID (from /proc/PID/timers)."""
        result = []
        per_chunk = DATA_SIZE // POSIX_TIMER.size
        for start in range(0, len(timer_ids), per_chunk):
            chunk = list(timer_ids[start : start + per_chunk])
            self._set_data(struct.pack(f"<{len(chunk)}i", *chunk))
            self._call(CMD_POSIX_TIMERS, len(chunk))
            data = self._data(len(chunk) * POSIX_TIMER.size)
            result += [PosixTimer(tid, *POSIX_TIMER.unpack_from(data, i * POSIX_TIMER.size))
                       for i, tid in enumerate(chunk)]
        return result

    def dump_pages(self, fd, ranges):
        """The parasite writes each (address, length) of its memory, in order, to criupy's file fd.

        Returns the number of bytes written (the sum of the lengths).
        """
        return self.start_dump_pages(fd, ranges)()

    def start_dump_pages(self, fd, ranges):
        """dump_pages, begun: the parasite writes while criupy goes on (with the other processes of a
        tree). Returns finish(), which waits until all is written and returns the number of bytes, as
        dump_pages does; nothing else may be asked of this parasite before it. fd stays open until then."""
        ranges = list(ranges)
        chunks = [ranges[start : start + RANGES_PER_CHUNK] for start in range(0, len(ranges), RANGES_PER_CHUNK)]

        def send(chunk):
            payload = bytearray(len(chunk) * RANGE.size)
            for i, (address, length) in enumerate(chunk):
                RANGE.pack_into(payload, i * RANGE.size, address, length)
            self._set_data(payload)
            self._send(CMD_DUMP_PAGES, len(chunk), fd=fd)

        def finish():
            written = 0
            for n, chunk in enumerate(chunks):
                if n:
                    send(chunk)
                arg, _ = self._reply(CMD_DUMP_PAGES)
                written += arg
            return written

        if chunks:
            send(chunks[0])
        return finish

    def steal_fds(self, fds):
        """Copies (in criupy) of the task's file descriptors fds, in the same order. The caller closes them."""
        stolen = []
        try:
            for start in range(0, len(fds), MAX_FDS):
                chunk = list(fds[start : start + MAX_FDS])
                self._set_data(struct.pack(f"<{len(chunk)}i", *chunk))
                _, received = self._call(CMD_STEAL_FDS, len(chunk), nr_fds=len(chunk))
                stolen += received
                if len(received) != len(chunk):
                    raise CriupyError(f"the parasite sent {len(received)} of {len(chunk)} descriptors")
        except BaseException:
            for fd in stolen:
                os.close(fd)
            raise
        return stolen

    # unloading (called by Task.cure) ----------------------------------------------------------

    def stop(self):
        """Ask the parasite to finish and wait for its trap. Raises if it cannot; cure then interrupts."""
        if not self.running:
            return
        if self._in_flight or self._conn is None:
            raise CriupyError("the parasite is mid-command")
        self._conn.sendmsg([MSG.pack(CMD_FINI, 0, 0)])
        deadline = time.monotonic() + min(self.timeout, 5.0)
        while self.task._wait_for_trap(self.base, self.base + self.size, block=False) is None:
            if time.monotonic() > deadline:
                raise CriupyError("the parasite did not finish")
            time.sleep(0.005)
        self.running = False
        self._remote_sock = None  # the parasite closed it

    def unload(self):
        """Close what the parasite left open in the task and unmap it. The task is stopped."""
        self.running = False
        task = self.task
        if self._remote_sock is not None:
            task.syscall(task_module.SYS_close, self._remote_sock)
            self._remote_sock = None
        if self.base is not None:
            result = task.syscall(task_module.SYS_munmap, self.base, self.size)
            if result < 0:
                raise CriupyError(f"munmap of the parasite in PID {task.pid} failed: {os.strerror(-result)}")
            self.base = None

    def close(self):
        """Drop criupy's side: the socket, the listening socket, the shared mapping."""
        for obj in (self._conn, self._listener, self._mem):
            if obj is not None:
                obj.close()
        self._conn = self._listener = self._mem = None
