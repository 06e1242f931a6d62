"""One seized task: seize, save its state, run system calls in it, and give it back untouched (cure).

The steps follow CRIU's compel: PTRACE_SEIZE + PTRACE_INTERRUPT stop the task without a signal it could
see; its registers, XSAVE area and signal mask are saved; a `syscall; int3` trampoline written over the
first bytes of an executable mapping runs one system call at a time; cure puts every byte and register
back and detaches. Each step records what it changed before changing it, so cure can undo whatever
happened, from any point, whatever went wrong.
"""

import contextlib
import errno
import os
import signal

from criupy import proc
from criupy.errors import CriupyError
from criupy.infect import hook, trace

SYS_mmap = 9
SYS_munmap = 11
SYS_close = 3
SYS_getpid = 39
SYS_restart_syscall = 219

# Kernel-internal "restart me" results a task stopped inside a system call may show in rax.
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
RESTART_CODES = (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)

STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
# Signals the CPU raises for the instruction that faulted: only our injected code can cause them while
# every other signal is blocked.
FAULT_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP)

# All signals blocked while our code runs in the task, except SIGTRAP: blocking a signal the kernel
# forces (int3) makes it reset the task's handler to the default (CRIU's issue 1429).
INJECTED_SIGMASK = 0xFFFFFFFFFFFFFFFF & ~(1 << (signal.SIGTRAP - 1))

EFLAGS_TF = 0x100  # single-step
EFLAGS_DF = 0x400  # string direction: the ABI wants it clear on entry

PF_KTHREAD = 0x00200000

TRAMPOLINE_ASM = "syscall; int3"
TRAMPOLINE = b"\x0f\x05\xcc"  # TRAMPOLINE_ASM, as keystone assembles it (a test checks); no import at start-up
TRAMPOLINE_AREA = 8  # bytes of the executable mapping we borrow: the trampoline, int3 after it


class TaskGone(CriupyError):
    """The task exited or was killed while seized."""


class ParasiteFault(CriupyError):
    """Injected code crashed or stopped where it should not."""


def _signed(value):
    return value - (1 << 64) if value >= 1 << 63 else value


# --- criupy's own SIGINT / SIGTERM while tasks are seized ---------------------------------------------

_seized_count = 0
_previous_sigterm = None


def _raise_on_sigterm(signum, frame):
    raise CriupyError("criupy got SIGTERM")


def _enter_seized():
    """While any task is seized, SIGTERM raises like SIGINT does, so the finally/with blocks cure."""
    global _seized_count, _previous_sigterm
    _seized_count += 1
    if _seized_count == 1:
        with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
            _previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)


def _leave_seized():
    global _seized_count, _previous_sigterm
    _seized_count -= 1
    if _seized_count == 0 and _previous_sigterm is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, _previous_sigterm)
        _previous_sigterm = None


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT and SIGTERM for the span of a step that must not be cut in half (seize, cure).

    A signal that came meanwhile raises when the block ends, at a point where cure knows the state.
    """
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- the seized task ----------------------------------------------------------------------------------


def _check_seizable(pid):
    if pid == os.getpid():
        raise CriupyError(f"PID {pid} is criupy itself")
    if pid in proc.task_ids(os.getpid()):
        raise CriupyError(f"PID {pid} is a thread of criupy itself")
    status = proc.status(pid)
    stat_fields = proc._read_text(pid, "stat").rsplit(")", 1)[1].split()
    if int(stat_fields[6]) & PF_KTHREAD:
        raise CriupyError(f"PID {pid} is a kernel thread")
    state = status["State"].split()[0]
    if state in ("Z", "X"):
        raise CriupyError(f"PID {pid} is a zombie")
    if status.get("TracerPid", "0") != "0":
        raise CriupyError(f"PID {pid} is already traced by PID {status['TracerPid']}")
    return state


class Task:
    """A task (thread) held with ptrace. See criupy.infect.seize()."""

    def __init__(self, pid, trace_clones=False):
        self.pid = pid
        self.trace_clones = trace_clones  # PTRACE_O_TRACECLONE: threads it creates are seized with it
        self.cloned = []          # TIDs of the threads it created while being stopped (traced by us)
        self.was_stopped = False  # in job-control stop when seized: left stopped after cure
        self.regs = None          # user_regs_struct as seized; what cure puts back
        self.xsave = None         # bytes: the XSAVE area as seized
        self.sigmask = None       # int: the blocked-signal mask as seized
        self.parasite = None
        self._attached = False
        self._holds_seized_count = False
        self._in_stop = False     # in a ptrace stop, so registers may be read and written
        self._injected_mask_set = False
        self._trampoline = None   # (address, original bytes) of the borrowed code area
        self._stop_signal = 0     # a stop signal we held back while our code ran: sent again at cure
        self._signals_to_resend = []

    # seize ------------------------------------------------------------------------------------------

    def _seize(self):
        state = _check_seizable(self.pid)
        self.was_stopped = state == "T"
        try:
            trace.request(trace.PTRACE_SEIZE, self.pid, 0, self._options())
        except trace.PtraceError as e:
            if e.errno == errno.ESRCH:
                raise TaskGone(f"no process with PID {self.pid}") from None
            if e.errno == errno.EPERM:
                raise CriupyError(f"not permitted to trace PID {self.pid} (already traced?)") from None
            raise CriupyError(f"cannot seize PID {self.pid}: {os.strerror(e.errno)}") from None
        self._take_stopped(interrupt=True)

    def _options(self):
        return trace.PTRACE_O_TRACESYSGOOD | (trace.PTRACE_O_TRACECLONE if self.trace_clones else 0)

    def _adopt(self):
        """Take over a thread the kernel attached to us (PTRACE_O_TRACECLONE): it starts in a ptrace stop."""
        self._take_stopped(interrupt=False)

    def _take_stopped(self, interrupt):
        self._attached = True
        _enter_seized()
        self._holds_seized_count = True
        try:
            if interrupt:
                trace.request(trace.PTRACE_INTERRUPT, self.pid)
            self._wait_for_interrupt_stop()
            self.regs = trace.ptrace_getregs(self.pid)
            self.xsave = trace.get_xstate(self.pid)
            self.sigmask = trace.get_sigmask(self.pid)
        except BaseException:
            self.cure()
            raise

    def _wait_for_interrupt_stop(self):
        while True:
            status = self._wait()
            event = trace.event_of(status)
            if event == trace.PTRACE_EVENT_STOP:
                # the PTRACE_INTERRUPT stop, or the group-stop of a task that was (or just got) stopped
                self._in_stop = True
                return
            if event == trace.PTRACE_EVENT_CLONE:
                # it created a thread before the interrupt stopped it: the new one is ours to take
                self.cloned.append(trace.get_event_message(self.pid))
                trace.request(trace.PTRACE_CONT, self.pid, 0, 0)
                continue
            # a signal-delivery-stop that raced with the interrupt: let the task have its signal
            sig = os.WSTOPSIG(status)
            trace.request(trace.PTRACE_CONT, self.pid, 0, sig)

    def _wait(self, block=True):
        """One wait status of the task; raises TaskGone when it exited."""
        try:
            status = trace.wait_stop(self.pid, block)
        except ChildProcessError:
            self._release()
            raise TaskGone(f"PID {self.pid} is gone") from None
        if status is not None and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            self._release()
            raise TaskGone(f"PID {self.pid} exited while seized")
        return status

    # registers ----------------------------------------------------------------------------------------

    def restartable_regs(self):
        """The seized registers as they must be dumped: a system call the task was stopped in is re-run.

        A task interrupted inside a system call shows orig_rax = the call and rax = -ERESTART*; the kernel
        would restart the call on resume, but a restored task resumes by sigreturn, which does not.
        So rewind rip over the 2-byte `syscall` and put the call number back in rax. The restart block of
        -ERESTART_RESTARTBLOCK (nanosleep's remaining time...) does not survive restore either, so that
        call is re-run from the start too. A task already in restart_syscall (it was stopped and continued
        in such a call) no longer shows which call it was: that one returns -EINTR, as CRIU's do all.
        """
        regs = trace.copy_regs(self.regs)
        if _signed(regs.orig_rax) == SYS_restart_syscall and -_signed(regs.rax) in RESTART_CODES:
            regs.rax = -errno.EINTR & 0xFFFFFFFFFFFFFFFF
        elif _signed(regs.orig_rax) >= 0 and -_signed(regs.rax) in RESTART_CODES:
            regs.rax = regs.orig_rax
            regs.rip -= 2
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF
        return regs

    # remote system calls --------------------------------------------------------------------------

    def borrow_code_from(self, mappings):
        """Choose the code the trampoline borrows among mappings, the task's as the caller read them while
        it is stopped (else the first system call reads /proc/PID/maps for it)."""
        self._trampoline_address(mappings)

    def _trampoline_address(self, mappings=None):
        """Where to write the trampoline: the start of the first plain executable mapping (as CRIU)."""
        if self._trampoline is not None:
            return self._trampoline[0]
        for m in proc.maps(self.pid) if mappings is None else mappings:
            if "x" in m.perms and not m.path.startswith("[") and m.size >= TRAMPOLINE_AREA:
                address = m.start
                break
        else:
            raise CriupyError(f"PID {self.pid} has no executable mapping to run system calls from")
        if address <= self.regs.rip < address + TRAMPOLINE_AREA:
            raise CriupyError(f"PID {self.pid} is executing the code criupy would borrow at {address:#x}")
        original = trace.read_memory(self.pid, address, TRAMPOLINE_AREA)
        self._trampoline = (address, original)
        return address

    def share_code_area(self, other):
        """Run system calls from the code area other, a thread of the same process, borrows: threads share
        their memory, so its /proc/PID/maps need not be read again for each thread."""
        address = other._trampoline_address()
        if address <= self.regs.rip < address + TRAMPOLINE_AREA:
            raise CriupyError(f"thread {self.pid} is executing the code criupy would borrow at {address:#x}")
        self._trampoline = other._trampoline

    @property
    def borrowed_code(self):
        """The code the trampoline borrows, as instructions, for a log or a bug report (None if none).

        Disassembled only when asked: capstone is not loaded while the task is frozen."""
        if self._trampoline is None:
            return None
        import capstone

        address, original = self._trampoline
        return [f"{i.mnemonic} {i.op_str}".strip()
                for i in capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(original, address)]

    def _restore_trampoline(self):
        if self._trampoline is None:
            return
        address, original = self._trampoline
        trace.write_memory(self.pid, address, original)
        if trace.read_memory(self.pid, address, len(original)) != original:
            raise CriupyError(f"could not put back the code of PID {self.pid} at {address:#x}")

    def _block_signals(self):
        if not self._injected_mask_set:
            self._injected_mask_set = True
            trace.set_sigmask(self.pid, INJECTED_SIGMASK)

    def _run_regs(self, ip):
        """Registers to start injected code at ip: the seized ones, with the kernel's restart logic off."""
        regs = trace.copy_regs(self.regs)
        regs.rip = ip
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF
        regs.eflags &= ~(EFLAGS_TF | EFLAGS_DF)
        return regs

    def syscall(self, nr, *args):
        """Run system call nr with up to 6 integer args in the task; returns rax (negative errno on error)."""
        if self.parasite is not None and self.parasite.running:
            raise CriupyError("cannot run a system call while the parasite runs")
        if len(args) > 6:
            raise ValueError("too many syscall arguments")
        self._require_stop()
        ip = self._trampoline_address()
        self._block_signals()
        regs = self._run_regs(ip)
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
        trace.write_memory(self.pid, ip, TRAMPOLINE.ljust(TRAMPOLINE_AREA, b"\xcc"))
        try:
            trace.ptrace_setregs(self.pid, regs)
            self._resume()
            self._wait_for_trap(ip, ip + len(TRAMPOLINE))
            result = trace.ptrace_getregs(self.pid).rax
        finally:
            if self._in_stop:
                self._restore_trampoline()
        return _signed(result)

    def _require_stop(self):
        if not self._attached:
            raise CriupyError(f"PID {self.pid} is not seized")
        if not self._in_stop:
            raise CriupyError(f"PID {self.pid} is running, not stopped")

    def _resume(self):
        trace.request(trace.PTRACE_CONT, self.pid, 0, 0)
        self._in_stop = False

    def _wait_for_trap(self, start, end, block=True):
        """Wait until the task traps at an int3 in [start, end]; None if block=False and still running.

        Stops on the way are handled: a stop signal is held back (and sent again at cure), a fault is
        a ParasiteFault (not delivered: the task must never see it), anything else is not ours.
        """
        while True:
            status = self._wait(block)
            if status is None:
                return None
            self._in_stop = True
            sig = os.WSTOPSIG(status)
            if trace.event_of(status) == trace.PTRACE_EVENT_STOP:
                # group-stop (another thread's SIGSTOP) or a PTRACE_INTERRUPT: remember and go on
                if sig in STOP_SIGNALS:
                    self._stop_signal = sig
                self._resume()
                continue
            info = trace.ptrace_getsiginfo(self.pid)
            if sig == signal.SIGTRAP and info.si_code == trace.SI_KERNEL:
                rip = trace.ptrace_getregs(self.pid).rip
                if start <= rip <= end:
                    return status
                raise ParasiteFault(f"PID {self.pid} trapped at an unexpected address {rip:#x}")
            if sig in STOP_SIGNALS:
                self._stop_signal = sig
                self._resume()
                continue
            if sig in FAULT_SIGNALS and info.si_code > 0:
                rip = trace.ptrace_getregs(self.pid).rip
                raise ParasiteFault(
                    f"injected code faulted in PID {self.pid}: signal {signal.Signals(sig).name} at {rip:#x}"
                )
            # a signal sent to the task that our mask could not hold (SIGTRAP): give it back at cure
            self._signals_to_resend.append(sig)
            self._resume()

    def _interrupt(self):
        """Stop the task, wherever it is (our code, a blocking call), for cure."""
        if self._in_stop:
            return
        trace.request(trace.PTRACE_INTERRUPT, self.pid)
        while not self._in_stop:
            status = self._wait()
            self._in_stop = True
            sig = os.WSTOPSIG(status)
            if trace.event_of(status) == trace.PTRACE_EVENT_STOP:
                return
            # a signal-delivery-stop came first: keep what it means, drop the signal, wait for the trap
            if sig in STOP_SIGNALS:
                self._stop_signal = sig
            elif sig not in FAULT_SIGNALS:
                self._signals_to_resend.append(sig)
            self._resume()

    # a function of the task's own ---------------------------------------------------------------

    def call_function(self, function, timeout=hook.TIMEOUT):
        """Call a criupy.infect.hook.TargetFunction in the task (signals blocked); its int result.

        cure() puts back the registers, FPU state and signal mask the call used; what the function
        itself did (files it opened, memory it wrote) stays, as the user asked.
        """
        if self.parasite is not None and self.parasite.running:
            raise CriupyError("cannot call a function while the parasite runs")
        self._require_stop()
        self._block_signals()
        held = []
        self._in_stop = False
        try:
            result = hook.call(self.pid, self.regs, function, held, timeout)
        except hook.HookFailed as e:
            self._in_stop = e.stopped
            raise
        finally:
            for sig in held:
                if sig in STOP_SIGNALS:
                    self._stop_signal = sig
                else:
                    self._signals_to_resend.append(sig)
        self._in_stop = True
        return result

    # parasite -------------------------------------------------------------------------------------

    def infect(self, timeout=None):
        """Load the parasite and connect to it; returns the Parasite (see criupy.infect.parasite).

        timeout: seconds the parasite may stay silent (connecting, or on one command) before it
        counts as hung.
        """
        from criupy.infect.parasite import DEFAULT_TIMEOUT, Parasite

        if self.parasite is not None:
            raise CriupyError(f"PID {self.pid} is already infected")
        self.parasite = Parasite(self, DEFAULT_TIMEOUT if timeout is None else timeout)
        self.parasite.start()
        return self.parasite

    # cure -----------------------------------------------------------------------------------------

    def cure(self):
        """Put the task back exactly as it was seized and detach. Safe to call at any point, twice too."""
        if not self._attached:
            return
        with deferred_signals():
            problems = []

            def attempt(step, *args):
                if not self._attached:  # the task is gone: nothing left to put back
                    return
                try:
                    step(*args)
                except TaskGone:
                    raise
                except Exception as e:  # keep curing: every later step still matters
                    if isinstance(e, trace.PtraceError) and e.errno == errno.ESRCH:
                        self._wait(block=False)  # raises TaskGone if it died (SIGKILL from outside)
                    problems.append(e)

            try:
                if self.parasite is not None:
                    # the polite way; if the parasite cannot finish, interrupting it does the same
                    with contextlib.suppress(CriupyError, OSError):
                        self.parasite.stop()
                attempt(self._interrupt)
                if self.parasite is not None:
                    attempt(self.parasite.unload)
                attempt(self._restore_trampoline)
                attempt(trace.ptrace_setregs, self.pid, self.regs)
                attempt(trace.set_xstate, self.pid, self.xsave)
                attempt(trace.set_sigmask, self.pid, self.sigmask)
                for sig in self._signals_to_resend:
                    attempt(os.kill, self.pid, sig)
                if self._stop_signal:
                    # held back while our code ran: the task stops after detach, as it would have
                    attempt(os.kill, self.pid, self._stop_signal)
                attempt(trace.request, trace.PTRACE_DETACH, self.pid, 0, 0)
            except TaskGone:
                pass
            finally:
                self._release()
            if problems:
                raise CriupyError(f"curing PID {self.pid}: {problems[0]}")

    def kill(self):
        """SIGKILL the task (the end of a dump without --leave-running); works seized or cured."""
        with deferred_signals():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self._attached:
                # a traced task reports its death to us: collect that report (and detach for good)
                with contextlib.suppress(TaskGone):
                    while True:
                        self._wait()
            self._release()

    def _release(self):
        """Forget the task: it is detached or gone."""
        if self.parasite is not None:
            self.parasite.close()
        self._attached = False
        self._in_stop = False
        if self._holds_seized_count:
            self._holds_seized_count = False
            _leave_seized()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cure()


def seize(pid, trace_clones=False, adopt=False):
    """Seize task PID: stopped, its registers, XSAVE area and signal mask saved. Always cure() it.

    trace_clones: threads it creates on the way to its stop are attached to us too (Task.cloned);
    adopt: PID is such a thread, already attached by the kernel.
    """
    task = Task(pid, trace_clones)
    with deferred_signals():
        if adopt:
            task._adopt()
        else:
            task._seize()
        try:
            # a SIGINT/SIGTERM that came during the seize raises here, while we can still cure
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        except BaseException:
            task.cure()
            raise
    return task
