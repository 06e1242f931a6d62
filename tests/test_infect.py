"""The injector: seize, remote system calls, the parasite's commands, and cure that always leaves the
target running exactly as before (output with no gap and no repeat, not traced, same signal mask)."""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

import pytest

import waiting

from criupy import proc
from criupy.errors import CriupyError
from criupy.infect import ParasiteFault, seize

SYS_getpid = 39
SYS_mmap = 9
SYS_munmap = 11
SYS_read = 0
SYS_clock_nanosleep = 230
ERESTARTSYS = 512
ERESTART_RESTARTBLOCK = 516
SA_RESTART = 0x10000000
SS_DISABLE = 2


def signed(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def lines_of(path):
    with open(path) as f:
        text = f.read()
    return text.split("\n")[:-1]  # a last line without its newline is still being written


def wait_for(condition, what):
    waiting.wait_for(condition, what, timeout=20)


def wait_for_lines(path, count):
    wait_for(lambda: len(lines_of(path)) >= count, f"{count} lines in {path}")


def start_counting(processes, binary, tmp_path, *args):
    out = tmp_path / "out"
    with open(out, "w") as f:
        p = processes.start([binary, *args], stdout=f)
    wait_for_lines(out, 3)
    return p, out


def assert_goes_on_intact(p, out):
    """The target runs on: 20 more lines come, and the numbers have no gap and no repeat."""
    wait_for_lines(out, len(lines_of(out)) + 20)
    p.kill()
    p.wait()
    numbers = [int(x) for x in lines_of(out)]
    assert numbers == list(range(len(numbers)))


def assert_released(pid):
    status = proc.status(pid)
    assert status["TracerPid"] == "0"
    assert status["State"][0] not in "Tt"


def test_seize_and_cure_leave_the_counter_untouched(processes, victim, tmp_path):
    p, out = start_counting(processes, victim("counter"), tmp_path)
    blocked_before = proc.status(p.pid)["SigBlk"]
    victim_task = seize(p.pid)
    try:
        assert proc.status(p.pid)["TracerPid"] == str(os.getpid())
        assert victim_task.syscall(SYS_getpid) == p.pid
        address = victim_task.syscall(SYS_mmap, 0, 8192, 3, 0x22, -1, 0)  # PROT_READ|WRITE, PRIVATE|ANON
        assert address > 0
        assert any(m.start == address for m in proc.maps(p.pid))
        assert victim_task.syscall(SYS_munmap, address, 8192) == 0
        assert victim_task.syscall(SYS_munmap, 1, 4096) == -22  # EINVAL comes back as -errno
        assert len(victim_task.xsave) >= 512
        assert victim_task.sigmask == int(blocked_before, 16)
        assert victim_task.borrowed_code  # the code under the trampoline, readable as instructions
        assert all(isinstance(line, str) and line for line in victim_task.borrowed_code)
    finally:
        victim_task.cure()
    assert_released(p.pid)
    assert proc.status(p.pid)["SigBlk"] == blocked_before
    assert_goes_on_intact(p, out)


@pytest.mark.parametrize("way", ["proc-mem", "ptrace-words"])
def test_tracee_memory_is_written_and_read_back_even_in_read_only_code(processes, victim, tmp_path, monkeypatch, way):
    from criupy.infect import trace

    if way == "ptrace-words":  # as where /proc/PID/mem cannot be used
        monkeypatch.setattr(trace, "PROC_MEM", str(tmp_path / "no-such-file-{pid}"))
    else:
        def no_words(*args):
            raise AssertionError("/proc/PID/mem was not used")

        monkeypatch.setattr(trace, "_peek", no_words)
        monkeypatch.setattr(trace, "_poke", no_words)
    binary = victim("counter")
    p, out = start_counting(processes, binary, tmp_path)
    code = next(m for m in proc.maps(p.pid) if m.path == binary and m.perms == "r-xp")
    address = code.start + 13  # across a word boundary, neither end aligned
    task = seize(p.pid)
    try:
        original = trace.read_memory(p.pid, address, 7)
        assert original == process_vm_readv(p.pid, address, 7)
        trace.write_memory(p.pid, address, b"\xcc" * 7)
        assert trace.read_memory(p.pid, address, 9) == b"\xcc" * 7 + process_vm_readv(p.pid, address + 7, 2)
        assert process_vm_readv(p.pid, address - 1, 9)[1:8] == b"\xcc" * 7
        trace.write_memory(p.pid, address, original)
        assert process_vm_readv(p.pid, address, 7) == original
    finally:
        task.cure()
    assert_goes_on_intact(p, out)


def test_system_calls_borrow_code_from_the_mappings_given(processes, victim, tmp_path, monkeypatch):
    binary = victim("counter")
    p, out = start_counting(processes, binary, tmp_path)
    mappings = proc.maps(p.pid)
    code = next(m for m in mappings if m.path == binary and "x" in m.perms)
    task = seize(p.pid)
    try:
        with pytest.raises(CriupyError, match="no executable mapping"):
            task.borrow_code_from([m for m in mappings if "x" not in m.perms])

        def no_maps(pid="self"):
            raise AssertionError("/proc/PID/maps was read again")

        monkeypatch.setattr(proc, "maps", no_maps)
        task.borrow_code_from(mappings)
        original = process_vm_readv(p.pid, code.start, 8)
        assert task.syscall(SYS_getpid) == p.pid
        assert task.borrowed_code is not None and process_vm_readv(p.pid, code.start, 8) == original
    finally:
        monkeypatch.undo()
        task.cure()
    assert_goes_on_intact(p, out)


def test_trampoline_is_what_keystone_assembles():
    import keystone

    from criupy.infect import task

    assembler = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    assert bytes(assembler.asm(task.TRAMPOLINE_ASM)[0]) == task.TRAMPOLINE


def test_task_in_nanosleep_dumps_registers_that_rerun_the_call(processes, victim, tmp_path):
    p, out = start_counting(processes, victim("counter"), tmp_path, "300")
    wait_for(lambda: waiting.blocked_in(p.pid) == SYS_clock_nanosleep, "nanosleep")
    task = seize(p.pid)
    try:
        assert task.regs.orig_rax == SYS_clock_nanosleep
        assert signed(task.regs.rax) == -ERESTART_RESTARTBLOCK
        regs = task.restartable_regs()
        assert (regs.rax, regs.rip, signed(regs.orig_rax)) == (SYS_clock_nanosleep, task.regs.rip - 2, -1)
        assert task.syscall(SYS_getpid) == p.pid
    finally:
        task.cure()
    assert_released(p.pid)
    wait_for_lines(out, len(lines_of(out)) + 3)
    assert_goes_on_intact(p, out)


def test_task_in_read_continues_reading(processes, victim, tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as f:
        p = processes.start([victim("infect_target"), "echo"], stdin=subprocess.PIPE, stdout=f)
    wait_for(lambda: waiting.blocked_in(p.pid) == SYS_read, "read()")
    task = seize(p.pid)
    try:
        assert (task.regs.orig_rax, signed(task.regs.rax)) == (SYS_read, -ERESTARTSYS)
        regs = task.restartable_regs()
        assert (regs.rax, regs.rip) == (SYS_read, task.regs.rip - 2)
        task.infect(timeout=10).misc()
    finally:
        task.cure()
    assert_released(p.pid)
    p.stdin.write(b"hello\n")
    p.stdin.flush()
    wait_for(lambda: out.read_text() == "hello\n", "the echo")


def test_stopped_target_stays_stopped_and_continues_on_sigcont(processes, victim, tmp_path):
    p, out = start_counting(processes, victim("counter"), tmp_path)
    os.kill(p.pid, signal.SIGSTOP)
    wait_for(lambda: proc.status(p.pid)["State"][0] == "T", "the stop")
    task = seize(p.pid)
    try:
        assert task.was_stopped
        assert task.syscall(SYS_getpid) == p.pid
        assert task.infect(timeout=10).misc().umask == 0o022
    finally:
        task.cure()
    # detached, the task goes back into its group-stop (it runs none of its own code on the way)
    wait_for(lambda: proc.status(p.pid)["State"][0] == "T", "the stop after cure")
    assert proc.status(p.pid)["TracerPid"] == "0"
    count = len(lines_of(out))
    time.sleep(0.2)  # a stopped task writes nothing: give it the time to prove it
    assert len(lines_of(out)) == count
    os.kill(p.pid, signal.SIGCONT)
    assert_goes_on_intact(p, out)


def process_vm_readv(pid, address, size):
    libc = ctypes.CDLL(None, use_errno=True)

    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    buf = ctypes.create_string_buffer(size)
    local, remote = iovec(ctypes.addressof(buf), size), iovec(address, size)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    assert n == size, os.strerror(ctypes.get_errno())
    return buf.raw


def test_parasite_reports_the_task_and_cure_leaves_it_intact(processes, victim, tmp_path):
    binary = victim("infect_target")
    p, out = start_counting(processes, binary, tmp_path)
    status = proc.status(p.pid)
    timer_ids = [int(line.split()[1]) for line in open(f"/proc/{p.pid}/timers") if line.startswith("ID:")]
    task = seize(p.pid)
    try:
        parasite = task.infect(timeout=10)
        start, end = parasite.area
        assert [(m.end, m.perms, m.path) for m in proc.maps(p.pid) if m.start == start] == [
            (end, "rwxs", "/dev/zero (deleted)")]

        actions = parasite.sigactions()
        assert [a.signo for a in actions] == list(range(1, 65))
        caught = sum(1 << (a.signo - 1) for a in actions if a.handler > 1)
        ignored = sum(1 << (a.signo - 1) for a in actions if a.handler == 1)
        assert (caught, ignored) == (int(status["SigCgt"], 16), int(status["SigIgn"], 16))
        usr1 = actions[signal.SIGUSR1 - 1]
        assert usr1.flags & SA_RESTART and usr1.mask == 1 << (signal.SIGUSR2 - 1)

        misc = parasite.misc()
        assert misc.umask == 0o027 == int(status["Umask"], 8)
        assert misc.altstack.size == 64 * 1024 and not misc.altstack.flags & SS_DISABLE
        assert misc.dumpable == 1 and misc.no_new_privs == int(status["NoNewPrivs"])
        assert misc.clear_child_tid != 0  # glibc sets it for the main thread
        assert misc.brk == proc.stat(p.pid).start_brk + 100

        timers = parasite.itimers()
        assert timers.real.interval_sec == 1000 and 0 < timers.real.value_sec <= 1000
        assert timers.virtual.interval_sec == timers.prof.interval_sec == 0
        (posix_timer,) = parasite.posix_timers(timer_ids)
        assert posix_timer.interval_sec == 2000 and 0 < posix_timer.value_sec <= 2000

        ranges = [(m.start, m.size) for m in proc.maps(p.pid) if m.path in ("[stack]", binary) and "w" in m.perms]
        assert len(ranges) == 2
        pages = tmp_path / "pages"
        fd = os.open(pages, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert parasite.dump_pages(fd, ranges) == sum(size for _, size in ranges)
        finally:
            os.close(fd)
        assert pages.read_bytes() == b"".join(process_vm_readv(p.pid, a, size) for a, size in ranges)

        (stolen,) = parasite.steal_fds([1])
        try:
            assert os.fstat(stolen).st_ino == os.stat(out).st_ino
        finally:
            os.close(stolen)
    finally:
        task.cure()
    assert_released(p.pid)
    assert not any(m.start == start for m in proc.maps(p.pid))
    assert_goes_on_intact(p, out)


def run_every_command(parasite, tmp_path):
    parasite.sigactions()
    parasite.misc()
    parasite.itimers()
    parasite.posix_timers([0])
    fd = os.open(tmp_path / "pages", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        parasite.dump_pages(fd, [(m.start, m.size) for m in proc.maps(parasite.task.pid) if m.path == "[stack]"])
    finally:
        os.close(fd)
    for stolen in parasite.steal_fds([1]):
        os.close(stolen)


COMMANDS = ["init", "sigactions", "misc", "itimers", "posix_timers", "dump_pages", "steal_fds", "fini"]


@pytest.mark.parametrize("kind", ["crash", "hang"])
@pytest.mark.parametrize("command", COMMANDS)
def test_parasite_fault_leaves_the_target_running(processes, victim, tmp_path, monkeypatch, command, kind):
    p, out = start_counting(processes, victim("infect_target"), tmp_path)
    maps = proc.maps(p.pid)
    monkeypatch.setenv("CRIUPY_TEST_PARASITE_FAULT", f"{command}:{kind}")
    task = seize(p.pid)
    # fini's fault happens inside cure, which falls back to interrupting the parasite: no error
    expected = contextlib.nullcontext() if command == "fini" else pytest.raises(CriupyError)
    try:
        with expected as error:
            run_every_command(task.infect(timeout=1), tmp_path)
    finally:
        task.cure()
    if command != "fini" and kind == "crash":
        assert error.type is ParasiteFault
    assert_released(p.pid)
    assert proc.maps(p.pid) == maps  # the parasite's mapping is gone
    assert_goes_on_intact(p, out)


INJECTOR = """
import sys
from criupy.infect import seize
task = seize(int(sys.argv[1]))
try:
    parasite = task.infect(timeout=float(sys.argv[2]))
    print("ready", flush=True)
    while True:
        parasite.misc()
finally:
    task.cure()
"""


# (A parasite that hangs when criupy gets SIGKILL is beyond help: nobody is left to interrupt it.)
@pytest.mark.parametrize(
    "sig, hang",
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True),
     (signal.SIGKILL, False)],
)
def test_injector_killed_mid_infection(processes, victim, tmp_path, sig, hang):
    """criupy stopped by a signal while the parasite is in the target: the target keeps running.

    SIGINT and SIGTERM: criupy cures. SIGKILL: nobody can cure, so the parasite puts the task back
    itself (through the rt_sigframe criupy left it); its memory stays mapped, unused.
    """
    p, out = start_counting(processes, victim("infect_target"), tmp_path)
    maps = proc.maps(p.pid)
    env = dict(os.environ)
    if hang:
        env["CRIUPY_TEST_PARASITE_FAULT"] = "misc:hang"
    injector = processes.start(
        [sys.executable, "-c", INJECTOR, str(p.pid), "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert injector.stdout.readline() == b"ready\n"
    injector.send_signal(sig)
    injector.wait()
    assert injector.returncode != 0
    wait_for(lambda: proc.status(p.pid)["TracerPid"] == "0", "the detach")
    assert_released(p.pid)
    left_behind = [(m.perms, m.path) for m in proc.maps(p.pid) if m not in maps]
    assert left_behind == ([("rwxs", "/dev/zero (deleted)")] if sig == signal.SIGKILL else [])
    assert_goes_on_intact(p, out)


def test_unseizable_pids_are_refused_with_one_line(processes, victim, tmp_path):
    with pytest.raises(CriupyError, match="is criupy itself"):
        seize(os.getpid())
    with pytest.raises(CriupyError, match="kernel thread"):
        seize(2)  # kthreadd
    gone = processes.start(["true"])
    gone.wait()
    with pytest.raises(CriupyError, match="no process"):
        seize(gone.pid)
    p, out = start_counting(processes, victim("counter"), tmp_path)
    first = seize(p.pid)
    try:
        with pytest.raises(CriupyError, match="already traced"):
            seize(p.pid)
    finally:
        first.cure()
    assert_released(p.pid)
    assert_goes_on_intact(p, out)


def test_target_killed_while_seized(processes, victim, tmp_path):
    p, _ = start_counting(processes, victim("counter"), tmp_path)
    task = seize(p.pid)
    task.infect(timeout=10)
    os.kill(p.pid, signal.SIGKILL)
    task.cure()  # nothing left to put back: no error
    assert not os.path.exists(f"/proc/{p.pid}")


def test_kill_ends_a_seized_target(processes, victim, tmp_path):
    p, _ = start_counting(processes, victim("counter"), tmp_path)
    task = seize(p.pid)
    task.infect(timeout=10).misc()
    task.kill()
    assert not os.path.exists(f"/proc/{p.pid}")
    task.cure()  # after kill, cure has nothing to do
