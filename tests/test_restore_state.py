"""What a process holds survives dump + restore: its computation, FPU registers, signal state, files and
the system call it was blocked in. Each test compares the restored process with what it was at the dump."""

import errno
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from waiting import crit_show, wait_for

from criupy import proc
from criupy.dump import dump
from criupy.errors import CriupyError
from criupy.images import ImagesDir
from criupy.restore import restore

QUIET = dict(stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)



def _lines(path):
    return path.read_text().splitlines()


def _start(processes, argv, output, **popen_kwargs):
    """Start argv writing to the file output; returns it once it printed "ready"."""
    with open(output, "w") as out:
        started = processes.start(argv, stdout=out, **{**QUIET, **popen_kwargs})
    wait_for(lambda: any(line.startswith("ready") for line in _lines(output)), f"{argv[0]} to be ready")
    return started


def _syscall(pid):
    """/proc/PID/syscall: the number and arguments of the call it is blocked in (None if running)."""
    with open(f"/proc/{pid}/syscall") as f:
        fields = f.read().split()
    return None if fields[0] in ("running", "-1") else (int(fields[0]), fields[1:7])


def _dump_and_restore(processes, started, images, detach=True):
    dump(started.pid, str(images))
    started.wait()
    if not detach:
        return restore(str(images))
    pid = processes.track(restore(str(images), detach=True))
    assert pid == started.pid
    return pid


# --- 1. a computation ends with the same result ---------------------------------------------------------

PRIMES_LIMIT = "5000000"


def test_prime_search_dumped_midway_prints_the_undisturbed_result(victim, processes, tmp_path):
    primes = victim("primes")
    undisturbed = subprocess.run([primes, PRIMES_LIMIT], capture_output=True, text=True, check=True)
    expected = undisturbed.stdout.splitlines()[-1]

    output = tmp_path / "primes.out"
    with open(output, "w") as out:
        started = processes.start([primes, PRIMES_LIMIT], stdout=out, **QUIET)
    wait_for(lambda: len(_lines(output)) >= 2, "the search to make progress")
    dump(started.pid, str(tmp_path / "images"))
    started.wait()
    at_dump = _lines(output)
    assert not any(line.startswith("primes below") for line in at_dump), "the search ended before the dump"

    status = restore(str(tmp_path / "images"))  # waits for the restored process to end
    assert status == 0
    lines = _lines(output)
    assert lines[-1] == expected
    # the progress lines went on from where the dump left them
    assert lines[:-1] == undisturbed.stdout.splitlines()[:-1]


# --- 2. x87, SSE and AVX registers ---------------------------------------------------------------------

def _cpu_has(flag):
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and flag in line.split() for line in f)


def test_cpuid_code_is_what_keystone_assembles_and_reads_the_vendor():
    import keystone

    from criupy import xsave

    assembler = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    assert bytes(assembler.asm(xsave.CPUID_ASM)[0]) == xsave.CPUID_CODE
    _, ebx, ecx, edx = xsave.cpuid(0)
    vendor = struct.pack("<III", ebx, edx, ecx).decode()
    with open("/proc/cpuinfo") as f:
        assert f"vendor_id\t: {vendor}\n" in f.read()


@pytest.mark.skipif(not _cpu_has("avx"), reason="the CPU has no AVX")
def test_x87_sse_and_avx_registers_survive(victim, processes, tmp_path):
    fpu = victim("fpu")
    output = tmp_path / "fpu.out"
    started = _start(processes, [fpu], output)
    time.sleep(0.1)  # into its register-only loop
    pid = _dump_and_restore(processes, started, tmp_path / "images")
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: len(_lines(output)) > 1, "the victim's verdict")
    assert _lines(output)[1:] == ["OK"]
    assert os.waitpid(pid, 0)[1] == 0


# --- 3. signals: alternate stack, blocked, pending, ignored, caught ------------------------------------

SYS_rt_sigsuspend = 130
SIGNAL_FIELDS = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")


def _wait_in_sigsuspend(pid):
    wait_for(lambda: (_syscall(pid) or (None,))[0] == SYS_rt_sigsuspend, f"PID {pid} in sigsuspend")


def _signal_state(pid):
    """The signal fields of /proc/PID/status once PID waits in sigsuspend (which changes SigBlk meanwhile)."""
    _wait_in_sigsuspend(pid)
    status = proc.status(pid)
    return {field: status[field] for field in SIGNAL_FIELDS}


def test_signal_handler_on_altstack_and_pending_blocked_signals_survive(victim, processes, tmp_path):
    output = tmp_path / "signals.out"
    started = _start(processes, [victim("signals")], output)
    dumped = _signal_state(started.pid)
    assert int(dumped["SigPnd"], 16) and int(dumped["ShdPnd"], 16)  # the victim set up what we check
    pid = _dump_and_restore(processes, started, tmp_path / "images")
    assert _signal_state(pid) == dumped
    for count in (1, 2):
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: len(_lines(output)) >= 1 + 3 * count, "the SIGUSR1 handler")
    assert _lines(output)[1:] == ["usr1 on altstack", "pending: usr2 rt2", "blocked: usr1 usr2 rt2"] * 2
    assert _signal_state(pid) == dumped


# --- 4. files at their offsets, with their flags, and a pipe holding data -----------------------------

def _fd_table(pid):
    """{fd: (target, flags, pos)}, a pipe's target as "pipe" (its inode is new after restore)."""
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{name}")
        with open(f"/proc/{pid}/fdinfo/{name}") as f:
            info = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        table[int(name)] = ("pipe" if target.startswith("pipe:") else target, info["flags"], info["pos"])
    return table


def test_files_offsets_flags_and_pipe_data_survive(victim, processes, tmp_path):
    data = os.urandom(5000)
    (tmp_path / "rw").write_bytes(data)
    (tmp_path / "ro").write_bytes(data)
    (tmp_path / "log").write_text("first\n")
    output = tmp_path / "files.out"
    started = _start(processes, [victim("files"), str(tmp_path)], output)
    _wait_in_sigsuspend(started.pid)  # its write of "ready" has moved fd 1's offset too
    dumped = _fd_table(started.pid)
    assert sorted(dumped) == [0, 1, 2, 10, 11, 12, 20, 21]
    pid = _dump_and_restore(processes, started, tmp_path / "images")
    _wait_in_sigsuspend(pid)
    assert _fd_table(pid) == dumped
    pipe_inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (20, 21)}
    assert len(pipe_inodes) == 1, "the pipe's two ends are two pipes"

    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: len(_lines(output)) >= 4, "the victim to read its pipe")
    assert _lines(output)[1:] == ["pipe: pipe data 1", "pipe data 2", "offsets: rw 1000 ro 4000"]
    assert (tmp_path / "log").read_text() == "first\nappended\n"  # O_APPEND: at the end, not at 0
    assert (tmp_path / "rw").read_bytes() == data


# --- 5. a process blocked in a system call goes on with it --------------------------------------------

SYSCALL_NUMBERS = {"nanosleep": 35, "clock_nanosleep": 230, "read": 0, "pause": 34, "poll": 7}


@pytest.mark.parametrize("call, wake, expected", [
    ("nanosleep", None, "nanosleep returned 0 errno 0"),
    ("clock_nanosleep", None, "clock_nanosleep returned 0 errno 0"),
    ("read", signal.SIGUSR1, "read returned 5 errno 0 woken"),
    ("pause", signal.SIGUSR1, "pause returned -1 errno EINTR"),
    ("poll", None, "poll returned 0 errno 0"),
])
def test_blocking_system_call_restarts_after_restore(victim, processes, tmp_path, call, wake, expected):
    output = tmp_path / "restart.out"
    started = _start(processes, [victim("restart"), call], output)
    wait_for(lambda: (_syscall(started.pid) or (None,))[0] == SYSCALL_NUMBERS[call], f"the victim in {call}")
    blocked_in = _syscall(started.pid)
    pid = _dump_and_restore(processes, started, tmp_path / "images")
    assert len(_lines(output)) == 1, "the call returned before the dump"
    (core,) = ImagesDir(str(tmp_path / "images"), "r").read(f"core-{pid}")
    regs = core.thread_info.gpregs
    # dumped to run the call again: its number in ax, ip on its `syscall` instruction
    assert regs.ax == SYSCALL_NUMBERS[call]
    wait_for(lambda: _syscall(pid) is not None, "the restored process to block again")
    assert _syscall(pid) == blocked_in  # the same call with the same arguments
    if wake:
        os.kill(pid, wake)
    wait_for(lambda: len(_lines(output)) > 1, f"{call} to return")
    assert _lines(output)[1:] == [expected]
    assert os.waitpid(pid, 0)[1] == 0


# --- 7. a binary or mapped file changed since the dump is refused ----------------------------------------

def _rewrite_in_place(path, data, mtime_ns=None):
    """Write data over path (same inode); with mtime_ns, set that modification time back."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.mark.parametrize("change", ["exe rebuilt, same size and mtime", "exe edited in place",
                                    "mapped file edited in place", "mapped file grown"])
def test_a_changed_executable_or_mapped_file_is_refused_naming_it(victim, processes, tmp_path, change):
    exe, data = tmp_path / "mapfile", tmp_path / "data"
    shutil.copy2(victim("mapfile"), exe)
    data.write_text("hello\n")
    output = tmp_path / "out"
    started = _start(processes, [str(exe), str(data)], output)
    images = tmp_path / "images"
    dump(started.pid, str(images))
    started.wait()
    pristine = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (exe, data)}
    images_before = {name: (images / name).read_bytes() for name in os.listdir(images)}
    # crit decodes files.img with criupy's own field in it, and shows CRIU's build-id
    assert any(e["reg"].get("build_id") for e in crit_show(images / "files.img")["entries"] if "reg" in e)

    changed = exe if change.startswith("exe") else data
    time.sleep(0.01)  # a modification time the dumped one cannot equal
    if change == "exe rebuilt, same size and mtime":
        rebuilt = Path(victim("mapfile", "-DBUILD_MARK=2")).read_bytes()
        assert len(rebuilt) == len(pristine[exe][0]) and rebuilt != pristine[exe][0]
        _rewrite_in_place(exe, rebuilt, mtime_ns=pristine[exe][1])
    elif change == "exe edited in place":
        original = pristine[exe][0]
        _rewrite_in_place(exe, original[:-1] + bytes([original[-1] ^ 1]))
    elif change == "mapped file edited in place":
        _rewrite_in_place(data, b"HELLO\n")
    else:
        _rewrite_in_place(data, b"hello, world\n")

    with pytest.raises(CriupyError) as refused:
        restore(str(images), detach=True)
    message = str(refused.value)
    assert str(changed) in message and "\n" not in message
    assert not os.path.exists(f"/proc/{started.pid}")
    assert {name: (images / name).read_bytes() for name in os.listdir(images)} == images_before

    # the file as it was, its modification time included: the same images restore
    _rewrite_in_place(changed, pristine[changed][0], mtime_ns=pristine[changed][1])
    pid = processes.track(restore(str(images), detach=True))
    assert proc.status(pid)["TracerPid"] == "0"


SYS_restart_syscall = 219


def test_nanosleep_resumed_through_restart_syscall_ends_with_eintr(victim, processes, tmp_path):
    """Stopped and continued once, a nanosleep goes on in restart_syscall, whose restart block (the time
    left) is kernel state no restore rebuilds: the restored call returns EINTR (as CRIU's restore does),
    with rax = -EINTR dumped, and the program goes on."""
    output = tmp_path / "restart.out"
    started = _start(processes, [victim("restart"), "nanosleep"], output)
    wait_for(lambda: (_syscall(started.pid) or (None,))[0] == SYSCALL_NUMBERS["nanosleep"], "the victim in nanosleep")
    os.kill(started.pid, signal.SIGSTOP)
    wait_for(lambda: proc.status(started.pid)["State"][0] == "T", "the stop")
    os.kill(started.pid, signal.SIGCONT)
    wait_for(lambda: (_syscall(started.pid) or (None,))[0] == SYS_restart_syscall, "the victim in restart_syscall")
    pid = _dump_and_restore(processes, started, tmp_path / "images")
    (core,) = ImagesDir(str(tmp_path / "images"), "r").read(f"core-{pid}")
    assert core.thread_info.gpregs.ax == -errno.EINTR & 0xFFFFFFFFFFFFFFFF
    wait_for(lambda: len(_lines(output)) > 1, "nanosleep to return")
    assert _lines(output)[1:] == ["nanosleep returned -1 errno EINTR"]
    assert os.waitpid(pid, 0)[1] == 0


# --- POSIX and interval timers keep their IDs, signals and schedules -------------------------------------

def test_posix_timers_and_itimers_go_on_with_their_ids_and_values(victim, processes, tmp_path):
    output = tmp_path / "timers.out"
    started = _start(processes, [victim("timers", "-lrt")], output)
    wait_for(lambda: len(_lines(output)) >= 2, "the timers to tick")
    dumped = proc.timers(started.pid)
    assert sorted(t.timer_id for t in dumped) == [1, 2]

    pid = _dump_and_restore(processes, started, tmp_path / "images")
    at_restore = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= at_restore + 3, "the restored timers to tick")

    assert proc.timers(pid) == dumped
    lines = _lines(output)
    assert "bad signal" not in lines
    ticks = [int(line.split()[1]) for line in lines[1:]]
    assert ticks == list(range(1, len(ticks) + 1)), "a periodic timer's line missing or repeated"
    real = [int(line.split()[3]) for line in lines[1:]]
    assert real[-1] > real[at_restore - 2], "ITIMER_REAL stopped at restore"
    one_shot_left = [int(line.split()[5]) for line in lines[1:]]
    assert 990 < one_shot_left[-1] < 1000, "the one-shot timer lost its schedule"


def test_a_periodic_timer_that_expired_while_frozen_is_armed_again(victim, processes, tmp_path):
    """A periodic timer that fired while the task was frozen reads as 0 left until its signal is taken;
    if the signal came after the pending signals were read, the images hold neither. Restored as
    disarmed, ITIMER_REAL would never fire again (the kernel re-arms it when its signal is taken)."""
    from criupy.images.imagesdir import encode_image

    output = tmp_path / "timers.out"
    started = _start(processes, [victim("timers", "-lrt")], output)
    images = tmp_path / "images"
    dump(started.pid, str(images))
    started.wait()
    core_path = images / f"core-{started.pid}.img"
    (core,) = ImagesDir(str(images), "r").read(f"core-{started.pid}")
    core.tc.timers.real.vsec = core.tc.timers.real.vusec = 0
    core_path.write_bytes(encode_image(core_path.name, [core]))

    processes.track(restore(str(images), detach=True))
    at_restore = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= at_restore + 2, "the restored timers to tick")
    real = [int(line.split()[3]) for line in _lines(output)[1:]]
    assert real[-1] > real[-2], "ITIMER_REAL was restored disarmed"
