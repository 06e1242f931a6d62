"""criupy.restore: the restorer blob on a task of our own making, and dump + restore of real victims."""

import ctypes
import logging
import os
import signal
import struct
import subprocess
import sys
import time

import keystone
import pytest

from waiting import start_sleep

from criupy import proc
from criupy.errors import CriupyError
from criupy.images import ImagesDir
from criupy.restore import args as rst
from criupy.restore import restore
from criupy.restore.memory import TASK_SIZE, SpecialArea, find_free_area
from criupy.restore.region import SIGFRAME_SIZE, OwnMappings, Region, data_size
from criupy.restore.task import Restoring, call_restorer, clone_with_pid

RESTORER_DIR = os.path.join(os.path.dirname(__file__), "..", "restorer")
PIE_INCLUDE_DIR = os.path.join(os.path.dirname(__file__), "..", "blobgen", "pie", "include")
SPECIAL_PATHS = ("[vvar]", "[vvar_vclock]", "[vdso]")


def test_argument_layout_matches_restorer_h(tmp_path):
    """Every offset the Python side writes is where the C restorer reads it."""
    fields = [name for name, *_ in rst.Args._fields_ if not name.startswith("pad")]
    thread_fields = [name for name, *_ in rst.Thread._fields_ if not name.startswith("pad")]
    program = tmp_path / "layout.c"
    program.write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include "restorer.h"\nint main(void) {\n'
        + "".join(f'printf("{n} %zu\\n", offsetof(struct rst_args, {n}));\n' for n in fields)
        + 'printf("size %zu\\n", sizeof(struct rst_args));\n'
        + "".join(f'printf("thread.{n} %zu\\n", offsetof(struct rst_thread, {n}));\n' for n in thread_fields)
        + "".join(f'printf("{c} %zu\\n", sizeof(struct {s}));\n' for c, s in (
            ("Vma", "rst_vma"), ("PageRun", "rst_page_run"), ("SpecialVma", "rst_special_vma"), ("Fd", "rst_fd"),
            ("PosixTimer", "rst_posix_timer"), ("Signal", "rst_signal"), ("Creds", "rst_creds"),
            ("Thread", "rst_thread")))
        + "return 0; }\n"
    )
    subprocess.run(["gcc", "-I", RESTORER_DIR, "-I", PIE_INCLUDE_DIR, "-o", str(tmp_path / "layout"), str(program)], check=True)
    c_layout = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True).stdout
    py_layout = "".join(f"{n} {getattr(rst.Args, n).offset}\n" for n in fields)
    py_layout += f"size {ctypes.sizeof(rst.Args)}\n"
    py_layout += "".join(f"thread.{n} {getattr(rst.Thread, n).offset}\n" for n in thread_fields)
    py_layout += "".join(f"{c} {ctypes.sizeof(getattr(rst, c))}\n"
                         for c in ("Vma", "PageRun", "SpecialVma", "Fd", "PosixTimer", "Signal", "Creds", "Thread"))
    assert c_layout == py_layout


# --- the restorer on a synthetic task: one page of code, stdout, the vDSO --------------------------------

CODE_BASE = 0x500000000


def _synthetic_code():
    """Writes "hello\\n" to fd 1 with the x87/SSE/AVX state it was given checked, then waits in pause()."""
    return bytes(keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64).asm(
        "movq rax, xmm3; cmp rax, 0x1234; jne bad;"
        "mov eax, 1; mov edi, 1; lea rsi, [rip + msg]; mov edx, 6; syscall;"
        "again: mov eax, 34; syscall; jmp again;"
        "bad: mov eax, 231; mov edi, 3; syscall;"
        'msg: .ascii "hello\\n"', CODE_BASE)[0])


def _restore_synthetic(pid, output_fd, code, pages_path):
    """Run the restorer for a task whose whole address space is one page of code; returns its PID."""
    specials = [SpecialArea(m.start, m.start, m.size) for m in proc.maps() if m.path in SPECIAL_PATHS]
    pages_path.write_bytes(code.ljust(4096, b"\0"))
    pages_read = os.open(pages_path, os.O_RDONLY)
    log_read, log_write = os.pipe2(os.O_CLOEXEC)
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    base = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    own = [os.dup2(fd, base + i) for i, fd in enumerate((pages_read, output_fd, log_write, go_read))]

    region = Region(data_size(1, 1, 1, len(specials), 1, 0, 0, 0, 576), sum(s.size for s in specials),
                    [(CODE_BASE, CODE_BASE + 4096)])
    a = rst.Args.from_address(region.allocate(ctypes.sizeof(rst.Args), 64))
    a.region_start, a.region_size, a.stack_top, a.task_size = region.start, region.size, region.stack_top, TASK_SIZE
    a.pages_fd, a.log_fd, a.sync_fd, a.first_own_fd = base, base + 2, base + 3, base
    a.log_level = 3
    a.vmas = region.array(rst.Vma, [dict(start=CODE_BASE, end=CODE_BASE + 4096, prot=5, flags=0x22, fd=-1, fill=1)])
    a.nr_vmas = 1
    a.iovs = region.array(rst.Iovec, [dict(base=CODE_BASE, len=4096)])
    a.nr_iovs = 1
    a.page_runs, a.nr_page_runs = region.array(rst.PageRun, [dict(offset=0, first_iov=0, nr_iovs=1)]), 1
    parked = region.parking
    placed = []
    for s in specials:
        placed.append(dict(current=s.current, parked=parked, dumped=s.dumped, size=s.size))
        parked += s.size
    a.specials, a.nr_specials = region.array(rst.SpecialVma, placed), len(placed)
    a.fds, a.nr_fds = region.array(rst.Fd, [dict(source=base + 1, target=1)]), 1
    a.umask, a.cwd_fd, a.root_fd = 0o22, -1, -1
    m = a.mm
    m.start_code, m.end_code, m.start_data, m.end_data = CODE_BASE, CODE_BASE + 4096, CODE_BASE, CODE_BASE + 4096
    m.start_brk = m.brk = CODE_BASE + 4096
    m.start_stack = m.arg_start = m.arg_end = m.env_start = m.env_end = CODE_BASE + 2048
    m.auxv, m.auxv_size, m.exe_fd = ctypes.addressof(a.auxv), 16, 0xFFFFFFFF
    t = a.leader
    t.regs.ip, t.regs.cs, t.regs.ss, t.regs.flags, t.regs.sp = CODE_BASE, 0x33, 0x2B, 0x202, CODE_BASE + 2048
    xsave = bytearray(576)
    struct.pack_into("<H", xsave, 0, 0x37F)         # fcw
    struct.pack_into("<I", xsave, 24, 0x1F80)       # mxcsr
    struct.pack_into("<Q", xsave, 160 + 3 * 16, 0x1234)  # xmm3 low quadword
    struct.pack_into("<Q", xsave, 512, 0b11)        # xstate_bv: x87 and SSE state are in the image
    t.xsave, t.xsave_size = region.bytes(bytes(xsave), 64), len(xsave)
    t.sigframe, t.sigframe_size = region.allocate(SIGFRAME_SIZE, 4096), SIGFRAME_SIZE
    t.sas_flags = 2  # SS_DISABLE
    t.blocked = 1 << (signal.SIGUSR2 - 1)

    trap, syscall = region.export("restorer_trap"), region.export("restorer_syscall")
    start, size = region.start, region.size
    try:
        child = clone_with_pid(pid, lambda: call_restorer(region.entry(), ctypes.addressof(a)))
    finally:
        region.unmap()
        for fd in own + [pages_read, log_write, go_read]:
            os.close(fd)
    restoring = Restoring(child, log_read, go_write, trap, syscall, ctypes.addressof(a) + rst.Args.own_rseq.offset)
    try:
        restoring.seize()
        restoring.let_go()
        restoring.run_to_dumped_code()
        restoring.unmap_restorer_and_detach(start, size)
    except BaseException:
        restoring.kill()
        raise
    finally:
        os.close(log_read)
        os.close(go_write)
    return child


def test_restorer_rebuilds_a_synthetic_task(tmp_path, processes):
    pid = proc.unused_pid()
    output = tmp_path / "out"
    fd = os.open(output, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        child = processes.track(_restore_synthetic(pid, fd, _synthetic_code(), tmp_path / "pages.img"))
    finally:
        os.close(fd)
    assert child == pid
    while output.read_bytes() != b"hello\n":  # the task checked xmm3 before it wrote
        assert proc.status(pid)["State"][0] in "RS"
        time.sleep(0.01)
    maps = proc.maps(pid)
    assert [(m.start, m.perms) for m in maps if m.path not in SPECIAL_PATHS + ("[vsyscall]",)] == [
        (CODE_BASE, "r-xp")]
    ours = [(m.path, m.size) for m in proc.maps() if m.path in SPECIAL_PATHS]
    assert [(m.path, m.size) for m in maps if m.path in SPECIAL_PATHS] == ours
    assert os.listdir(f"/proc/{pid}/fd") == ["1"]
    status = proc.status(pid)
    assert int(status["SigBlk"], 16) == 1 << (signal.SIGUSR2 - 1)
    assert status["TracerPid"] == "0"


def test_regions_of_a_tree_avoid_what_criupy_mapped_since_it_read_its_maps():
    # criupy reads its own mappings once for every region of a tree; Python may map memory meanwhile
    own = OwnMappings()
    dumped = [(CODE_BASE, CODE_BASE + 4096)]
    first = Region(4096, 0, dumped, own_mappings=own)
    size = first.size
    where = find_free_area(size, own.ranges + dumped)  # where the next region would go
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    made_meanwhile = libc.mmap(where, 4096, 0, 0x22 | 0x100000, -1, 0)  # MAP_PRIVATE|ANONYMOUS|FIXED_NOREPLACE
    assert made_meanwhile == where
    try:
        second = Region(4096, 0, dumped, own_mappings=own)
        assert second.start != where and not (second.start < where + 4096 and where < second.start + second.size)
        assert second.start + second.size <= first.start or first.start + first.size <= second.start
        second.unmap()
    finally:
        libc.munmap(where, 4096)
        first.unmap()


def test_pid_in_use_is_a_clear_error():
    with pytest.raises(CriupyError, match=rf"PID {os.getpid()} is in use"):
        clone_with_pid(os.getpid(), lambda: os._exit(1))


# --- dump and restore of real victims (need criupy.dump) ------------------------------------------------

# (criupy.dump and criupy.restore name both the functions and the packages: importing the package
# replaces the function on the criupy module, so the tests call the packages' functions.)
from criupy.dump import dump  # noqa: E402


def _wait_for_lines(path, count):
    while len(path.read_text().splitlines()) < count:
        time.sleep(0.01)


PYTHON_COUNTER = "import sys, time\nn = 0\nwhile True:\n    print(n, flush=True)\n    n += 1\n    time.sleep(0.02)\n"


def _dumped_counter(victim, processes, tmp_path, argv=None):
    output = tmp_path / "counter.out"
    with open(output, "a") as out:
        counter = processes.start(argv or [victim("counter")], stdout=out, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    _wait_for_lines(output, 5)
    images = tmp_path / "images"
    dump(counter.pid, str(images))
    counter.wait()
    return counter.pid, output, images, _dumped_mappings(images, counter.pid)


def _joined(mappings):
    """(start, end, protection) list with neighbours of the same protection joined into one.

    Two anonymous mappings side by side with the same protection stay apart in a process only by their
    history (each has its own anon_vma); the restorer makes them anew and the kernel joins them: the
    same memory, one line of /proc/PID/maps instead of two. CRIU's zdtm compares maps this way too."""
    joined = []
    for start, end, prot in mappings:
        if joined and joined[-1][1] == start and joined[-1][2] == prot:
            joined[-1] = (joined[-1][0], end, prot)
        else:
            joined.append((start, end, prot))
    return joined


def _dumped_mappings(images, pid):
    """(start, end, protection) of every mapping in mm-PID.img, neighbours joined (_joined)."""
    (mm,) = ImagesDir(str(images), "r").read(f"mm-{pid}")
    return _joined([(v.start, v.end, v.prot) for v in mm.vmas])


def _mappings(pid):
    prot = {"r": 1, "w": 2, "x": 4}
    return _joined([(m.start, m.end, sum(prot.get(c, 0) for c in m.perms[:3])) for m in proc.maps(pid)
                    if m.path != "[vsyscall]"])  # the kernel's, the same in every process: not dumped


def _tree_bytes(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def _check_counts_on(output):
    numbers = [int(line) for line in output.read_text().splitlines()]
    assert numbers == list(range(len(numbers)))  # no gap, no repeat


@pytest.mark.parametrize("program", ["C", "CPython"])
def test_counter_goes_on_after_restore(program, victim, processes, tmp_path):
    argv = [sys.executable, "-c", PYTHON_COUNTER] if program == "CPython" else None
    pid, output, images, maps_before = _dumped_counter(victim, processes, tmp_path, argv)
    before = _tree_bytes(images)
    restored = processes.track(restore(str(images), detach=True))
    assert restored == pid
    assert _mappings(pid) == maps_before
    count = len(output.read_text().splitlines())
    _wait_for_lines(output, count + 10)
    _check_counts_on(output)
    assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
    assert _tree_bytes(images) == before


@pytest.mark.parametrize("by_userfaultfd", [True, False])
def test_pages_come_back_by_userfaultfd_and_by_preadv(by_userfaultfd, processes, tmp_path, monkeypatch, caplog):
    """Both ways the restorer fills pages: UFFDIO_COPY (private anonymous memory), preadv (the rest,
    and everything where userfaultfd is not to be had): CPython counts on with no gap."""
    from criupy.restore import prepare

    monkeypatch.setattr(prepare, "PAGES_BY_USERFAULTFD", by_userfaultfd)
    pid, output, images, _ = _dumped_counter(None, processes, tmp_path, [sys.executable, "-c", PYTHON_COUNTER])
    with caplog.at_level(logging.DEBUG, logger="criupy"):
        processes.track(restore(str(images), detach=True, verbose=True))
    way = "copied with UFFDIO_COPY" if by_userfaultfd else "read with preadv"
    assert any(way in record.getMessage() for record in caplog.records)
    count = len(output.read_text().splitlines())
    _wait_for_lines(output, count + 10)
    _check_counts_on(output)


def test_sleep_carries_on(processes, tmp_path):
    sleeper = start_sleep(processes)
    maps_before = proc.maps(sleeper.pid)
    dump(sleeper.pid, str(tmp_path / "images"))
    sleeper.wait()
    pid = processes.track(restore(str(tmp_path / "images"), detach=True))
    assert proc.maps(pid) == maps_before
    assert proc.status(pid)["TracerPid"] == "0"
    assert os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "sleep"
    while proc.status(pid)["State"][0] != "S":  # back in its nanosleep
        time.sleep(0.01)


def test_same_images_restore_twice(victim, processes, tmp_path):
    pid, output, images, _ = _dumped_counter(victim, processes, tmp_path)
    for _ in range(2):
        restored = processes.track(restore(str(images), detach=True))
        count = len(output.read_text().splitlines())
        _wait_for_lines(output, count + 3)
        os.kill(restored, signal.SIGKILL)
        os.waitpid(restored, 0)


def test_damaged_images_give_one_clear_error_and_no_process(victim, processes, tmp_path):
    pid, output, images, _ = _dumped_counter(victim, processes, tmp_path)
    pristine = _tree_bytes(images)
    damages = []
    for name, data in pristine.items():
        damages.append((name, data[: len(data) // 2]))           # truncated
        damages.append((name, data[:8] + bytes(len(data) - 8)))   # zeroed after the magic
        damages.append((name, None))                              # missing
    for name, damaged in damages:
        for other, data in pristine.items():
            (images / other).write_bytes(data)
        if damaged is None:
            (images / name).unlink()
        else:
            (images / name).write_bytes(damaged)
        state_before = _tree_bytes(images)
        try:
            processes.track(restore(str(images), detach=True))
        except CriupyError as e:
            assert "\n" not in str(e) and str(e)
            assert not os.path.exists(f"/proc/{pid}"), f"a process was left behind after: {e}"
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # restore does not read the dump's statistics, and page contents carry no checksum (a counter
            # restored with zeroed pages that runs before the kill returns to address 0: the kernel logs
            # "counter[PID]: segfault at 0 ip 0000000000000000")
            harmless = name.startswith("stats-") or (name.startswith("pages-") and damaged is not None
                                                      and len(damaged) == len(pristine[name]))
            assert harmless, f"{name} damaged, yet restored"
        assert _tree_bytes(images) == state_before
