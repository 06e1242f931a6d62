"""Creating the task with its dumped PID, and following it through the restorer to the dumped code.

clone3 with set_tid runs in criupy's own (single-threaded) Python: the child comes back from the raw
system call into Python like a fork without at-fork handlers, and does one thing: call the restorer.
criupy seizes it at once; the restorer waits for criupy's go, rebuilds the task, creates its other
threads (which set their own state and wait), and traps just before its rt_sigreturn. criupy then seizes
every other thread, follows each, system call by system call, to the exit of its rt_sigreturn, where it
holds its dumped registers, unmaps the restorer with one last system call in the leader, and detaches
them all.
"""

import contextlib
import ctypes
import errno
import os
import signal
import struct
import time

from criupy import proc
from criupy.errors import CriupyError
from criupy.infect import hook, trace
from criupy.infect.task import INJECTED_SIGMASK
from criupy.libc import libc
from criupy.restore.fds.locks import FLOCK

SYS_munmap = 11
SYS_fcntl = 72
SYS_rt_sigreturn = 15
SYS_clone3 = 435
F_SETLK = 6
ZOMBIE_WAIT_SECONDS = 5  # a dumped task's zombie whose parent has not reaped it yet
PTRACE_SYSCALL = 24
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_O_EXITKILL = 0x100000
SYSCALL_STOP = signal.SIGTRAP | 0x80  # with PTRACE_O_TRACESYSGOOD
ENOSYS_AT_ENTRY = -errno.ENOSYS & 0xFFFFFFFFFFFFFFFF  # rax at a syscall-entry stop


class RestoreFailed(CriupyError):
    pass


def _is_zombie(pid):
    try:
        return proc.status(pid)["State"].startswith("Z")
    except CriupyError:
        return False  # gone by now: try again


def call_restorer(entry, args_address):
    """Jump into the restorer at entry with its argument area (in the new task; never returns)."""
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(entry)(args_address)


def clone_with_pid(pid, run_in_child):
    """Create a child with PID pid that runs run_in_child() (which must not return); returns the PID.

    Every signal is blocked around clone3, so no Python handler ever runs in the child, which keeps
    them all blocked.
    """
    tid = ctypes.c_int(pid)
    # struct clone_args up to set_tid_size: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
    # stack_size, tls, set_tid, set_tid_size
    clone_args = ctypes.create_string_buffer(
        struct.pack("<10Q", 0, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, ctypes.addressof(tid), 1)
    )
    deadline = time.monotonic() + ZOMBIE_WAIT_SECONDS
    while True:
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        child = libc.syscall(ctypes.c_long(SYS_clone3), clone_args, ctypes.c_size_t(80))
        if child == 0:
            try:
                run_in_child()
            finally:
                os._exit(127)
        err = ctypes.get_errno()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        if child > 0:
            return child
        if err == errno.EEXIST and _is_zombie(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
            continue
        if err == errno.EEXIST:
            raise CriupyError(f"PID {pid} is in use")
        raise CriupyError(f"cannot create a process with PID {pid}: {os.strerror(err)}")


class Restoring:
    """The child while criupy traces it through the restorer. kill() ends it on any failure."""

    def __init__(self, pid, log_fd, go_fd, trap_address, syscall_address, own_rseq_address, thread_ids=()):
        self.pid = pid
        self.thread_ids = list(thread_ids)  # the other threads the restorer creates
        self.traced_threads = []
        self.own_rseq_address = own_rseq_address
        self.log_fd = log_fd
        self.go_fd = go_fd
        self.trap_address = trap_address
        self.syscall_address = syscall_address
        self.alive = True
        self.held_signals = []  # unblockable ones that came while it was held: sent again once detached

    def restorer_log(self):
        """What the restorer wrote to its log pipe (everything, once it has closed it)."""
        chunks = []
        os.set_blocking(self.log_fd, False)
        while True:
            try:
                chunk = os.read(self.log_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _failure(self, what):
        """The restorer's own error line if it logged one (it names the cause), else what."""
        errors = [line for line in self.restorer_log().splitlines() if "failed" in line]
        return RestoreFailed(f"restoring PID {self.pid}: {errors[-1] if errors else what}")

    def _wait(self, tid=None):
        status = trace.wait_stop(tid or self.pid)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            if tid is None:
                self.alive = False
            else:
                self.traced_threads.remove(tid)  # reaped
            how = (f"exit status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status)
                   else f"signal {signal.Signals(os.WTERMSIG(status)).name}")
            raise self._failure(f"the task ended ({how}) before it was restored")
        return status

    def seize(self):
        """Seize the task where its restorer waits for the go."""
        trace.request(trace.PTRACE_SEIZE, self.pid, 0, trace.PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
        self._tell_own_rseq()

    def let_go(self):
        """After seize(): the restorer rebuilds the task. criupy seizes every task of a tree first, while
        none takes CPU time, then lets all of them go, so that they rebuild their tasks side by side."""
        try:
            os.write(self.go_fd, b"g")
        except BrokenPipeError:
            raise CriupyError(f"PID {self.pid} ended before its restorer could start") from None

    def run_to_dumped_code(self):
        """After let_go(): stop the task at the exit of its final rt_sigreturn, every thread at its own."""
        self._wait_for_trap()
        self._seize_threads()
        self._follow_to_sigreturn_exit()
        for tid in self.thread_ids:
            self._follow_to_sigreturn_exit(tid)

    def _seize_threads(self):
        """Every other thread waits for the leader's go in the restorer: stop each there."""
        for tid in self.thread_ids:
            try:
                trace.request(trace.PTRACE_SEIZE, tid, 0, trace.PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
            except trace.PtraceError as e:
                raise self._failure(f"cannot trace thread {tid}: {os.strerror(e.errno)}") from None
            self.traced_threads.append(tid)
            trace.request(trace.PTRACE_INTERRUPT, tid)
            while trace.event_of(self._wait(tid)) != trace.PTRACE_EVENT_STOP:
                pass  # every signal is blocked in the thread: only the interrupt stop can come

    def _tell_own_rseq(self):
        """The rseq area glibc registered for criupy's thread, copied into the child: the restorer drops it.

        Only a tracer can read the registration (its length, its signature), and the child can be read
        only once stopped: interrupt it where it waits for the go.
        """
        trace.request(trace.PTRACE_INTERRUPT, self.pid)
        while trace.event_of(self._wait()) != trace.PTRACE_EVENT_STOP:
            pass  # every signal is blocked in the child: only the interrupt stop can come
        config = ctypes.create_string_buffer(24)
        size = trace.request(PTRACE_GET_RSEQ_CONFIGURATION, self.pid, 24, ctypes.addressof(config))
        if size >= 16:
            pointer, length, signature = struct.unpack_from("<QII", config.raw)
            trace.write_memory(self.pid, self.own_rseq_address, struct.pack("<QII", pointer, length, signature))
        trace.request(trace.PTRACE_CONT, self.pid, 0, 0)

    def _wait_for_trap(self):
        while True:
            status = self._wait()
            sig = os.WSTOPSIG(status)
            if trace.event_of(status) == trace.PTRACE_EVENT_STOP:
                trace.request(trace.PTRACE_CONT, self.pid, 0, 0)  # someone stopped us: go on
                continue
            rip = trace.ptrace_getregs(self.pid).rip
            if sig == signal.SIGTRAP and rip == self.trap_address + 1:
                return
            if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP):
                raise self._failure(f"the restorer crashed: {signal.Signals(sig).name} at {rip:#x} (trap {self.trap_address:#x})")
            trace.request(trace.PTRACE_CONT, self.pid, 0, sig)

    def _follow_to_sigreturn_exit(self, tid=None):
        """From a stop in the restorer, system call by system call, to the exit of rt_sigreturn."""
        entered_sigreturn = False
        task = tid or self.pid
        while True:
            trace.request(PTRACE_SYSCALL, task, 0, 0)
            status = self._wait(tid)
            if os.WSTOPSIG(status) != SYSCALL_STOP:
                regs = trace.ptrace_getregs(task)
                sig = signal.Signals(os.WSTOPSIG(status)).name
                what = "returning to the dumped code" if entered_sigreturn else "the restorer's last steps"
                raise self._failure(f"{what} failed in thread {task}: {sig} at {regs.rip:#x}")
            regs = trace.ptrace_getregs(task)
            if entered_sigreturn:
                return
            entered_sigreturn = regs.orig_rax == SYS_rt_sigreturn and regs.rax == ENOSYS_AT_ENTRY

    def call_hook(self, function):
        """Call a criupy.infect.hook.TargetFunction in the task held at its rt_sigreturn exit, with every
        signal blocked; its registers, FPU state and mask are put back after. Non-zero fails the restore."""
        dumped = trace.ptrace_getregs(self.pid)
        xsave = trace.get_xstate(self.pid)
        mask = trace.get_sigmask(self.pid)
        trace.set_sigmask(self.pid, INJECTED_SIGMASK)
        result = hook.call(self.pid, dumped, function, self.held_signals)
        trace.ptrace_setregs(self.pid, dumped)
        trace.set_xstate(self.pid, xsave)
        trace.set_sigmask(self.pid, mask)
        if result:
            raise RestoreFailed(f"hook {function.spec} returned {result} in PID {self.pid}")

    def unmap_restorer_and_detach(self, start, size, stop_signal=0, posix_locks=(), scratch=0):
        """System calls at the restorer's `syscall` instruction, each stopped at its exit; then go: an
        fcntl(F_SETLK) for each POSIX lock (file_lock_entry; its struct flock written at scratch, in the
        restorer's mapping), taken by the task itself with its fds in place; then the restorer's munmap.

        Every signal is blocked meanwhile: one that comes (a timer's, a child's SIGCHLD) stays pending,
        with its siginfo, until the detach lets the task take it under its dumped mask.
        stop_signal: sent before the detach, so that the task stops before it runs an instruction."""
        dumped = trace.ptrace_getregs(self.pid)
        mask = trace.get_sigmask(self.pid)
        trace.set_sigmask(self.pid, INJECTED_SIGMASK)
        for lock in posix_locks:  # file_lock_entry.type is fcntl's: F_RDLCK or F_WRLCK
            trace.write_memory(self.pid, scratch, FLOCK.pack(lock.type, os.SEEK_SET, lock.start, lock.len, 0))
            result = self._syscall_at_restorer(dumped, SYS_fcntl, lock.fd, F_SETLK, scratch)
            if result:
                raise RestoreFailed(f"restoring PID {self.pid}: cannot take the POSIX lock of fd {lock.fd} again: "
                                    f"{os.strerror(-result)}")
        result = self._syscall_at_restorer(dumped, SYS_munmap, start, size)
        if result:
            raise self._failure(f"unmapping the restorer failed: errno {-result}")
        trace.ptrace_setregs(self.pid, dumped)
        trace.set_sigmask(self.pid, mask)
        if stop_signal:
            os.kill(self.pid, stop_signal)
        for tid in self.thread_ids:
            trace.request(trace.PTRACE_DETACH, tid, 0, 0)
        self.traced_threads = []
        trace.request(trace.PTRACE_DETACH, self.pid, 0, 0)
        for sig in self.held_signals:
            os.kill(self.pid, sig)

    def _syscall_at_restorer(self, dumped, nr, *args):
        """The result (negative errno on failure) of system call nr made by the task at the restorer's `syscall`
        instruction, from registers dumped with rax, rdi, rsi, rdx set."""
        regs = trace.copy_regs(dumped)
        regs.rip = self.syscall_address
        regs.rax = nr
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF
        for name, value in zip(("rdi", "rsi", "rdx"), args):
            setattr(regs, name, value)
        trace.ptrace_setregs(self.pid, regs)
        syscall_stops = 0
        while syscall_stops < 2:  # to the entry stop, then to the exit stop
            trace.request(PTRACE_SYSCALL, self.pid, 0, 0)
            sig = os.WSTOPSIG(self._wait())
            if sig == SYSCALL_STOP:
                syscall_stops += 1
            elif sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP):
                raise self._failure(f"system call {nr} at the restorer failed: {signal.Signals(sig).name}")
            else:
                self.held_signals.append(sig)  # unblockable (SIGSTOP): sent again after the detach
        return ctypes.c_long(trace.ptrace_getregs(self.pid).rax).value

    def kill(self):
        """End the child and reap it: a failed restore leaves no process behind."""
        if not self.alive:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for tid in self.traced_threads:  # a traced thread's end is ours to collect, before the leader's
            with contextlib.suppress(ChildProcessError):
                while True:
                    _, status = os.waitpid(tid, trace.WALL)
                    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                        break
        self.traced_threads = []
        while True:
            try:
                _, status = os.waitpid(self.pid, trace.WALL)
            except ChildProcessError:
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                break
        self.alive = False
