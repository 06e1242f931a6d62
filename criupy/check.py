"""`criupy check`: does this kernel have what criupy needs?

Each probe exercises the feature for real on a throw-away object (a child that exits at once, a page of
our own memory) rather than trusting a version number. A probe returns a short detail string on
success and raises OSError (or CriupyError) when the feature is missing.
"""

import ctypes
import mmap
import os
import signal
import struct
import subprocess
import sys
from typing import NamedTuple

from criupy import proc
from criupy.errors import CriupyError
from criupy.libc import libc


SYS_clone3 = 435
SYS_ioctl = 16
SYS_inotify_add_watch = 254
SYS_inotify_init1 = 294
SYS_process_vm_readv = 310
SYS_userfaultfd = 323
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg), 96 bytes
PM_SOFT_DIRTY = 1 << 55


def _syscall(nr, *args):
    # syscall() is variadic: pass every integer as a full 64-bit long
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = libc.syscall(ctypes.c_long(nr), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def probe_ptrace_seize():
    from criupy.infect.trace import PTRACE_DETACH, PTRACE_INTERRUPT, PTRACE_SEIZE, raw_ptrace as ptrace

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ptrace(PTRACE_SEIZE, child.pid, 0, 0)
        ptrace(PTRACE_INTERRUPT, child.pid, 0, 0)
        _, status = os.waitpid(child.pid, 0)
        if not os.WIFSTOPPED(status):
            raise OSError(0, "the seized child did not stop")
        ptrace(PTRACE_DETACH, child.pid, 0, 0)
    finally:
        child.kill()
        child.wait()
    return "seize, interrupt and detach work"


def probe_clone3_set_tid():
    # struct clone_args up to set_tid_size (CLONE_ARGS_SIZE_VER1 = 80 bytes)
    wanted = proc.unused_pid()
    tid_array = ctypes.c_int(wanted)
    args = struct.pack(
        "<10Q", 0, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, ctypes.addressof(tid_array), 1
    )
    buf = ctypes.create_string_buffer(args, len(args))
    pid = _syscall(SYS_clone3, buf, ctypes.c_size_t(len(args)))
    if pid == 0:
        os._exit(0)  # the child: leave at once, touching nothing
    os.waitpid(pid, 0)
    if pid != wanted:
        raise OSError(0, f"asked for PID {wanted}, got {pid}")
    return f"created a child with the chosen PID {wanted}"


def probe_process_vm_readv():
    source = ctypes.create_string_buffer(b"criupy", 6)
    target = ctypes.create_string_buffer(6)
    local = struct.pack("<QQ", ctypes.addressof(target), 6)
    remote = struct.pack("<QQ", ctypes.addressof(source), 6)
    n = _syscall(SYS_process_vm_readv, os.getpid(), local, 1, remote, 1, 0)
    if n != 6 or target.raw != b"criupy":
        raise OSError(0, "read back the wrong bytes")
    return "reads another address space"


def probe_memfd():
    fd = os.memfd_create("criupy-check", os.MFD_CLOEXEC)
    os.close(fd)
    return "memfd_create works"


def probe_userfaultfd():
    O_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC
    fd = _syscall(SYS_userfaultfd, O_NONBLOCK_CLOEXEC)
    os.close(fd)
    return "userfaultfd works"


def probe_pagemap_scan():
    import fcntl

    page = mmap.mmap(-1, mmap.PAGESIZE)
    page[0] = 1
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    # struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len, max_pages,
    # category_inverted, category_mask, category_anyof_mask, return_mask
    regions = ctypes.create_string_buffer(24 * 4)
    PAGE_IS_PRESENT = 1 << 3
    arg = struct.pack(
        "<12Q", 96, 0, address, address + mmap.PAGESIZE, 0, ctypes.addressof(regions), 4,
        0, 0, 0, PAGE_IS_PRESENT, PAGE_IS_PRESENT,
    )
    with open("/proc/self/pagemap", "rb") as f:
        count = fcntl.ioctl(f.fileno(), PAGEMAP_SCAN, bytearray(arg))
    del address
    page.close()
    if count != 1:
        raise OSError(0, f"expected one present region, got {count}")
    return "PAGEMAP_SCAN finds present pages"


def probe_soft_dirty():
    page = mmap.mmap(-1, mmap.PAGESIZE)
    page[0] = 1
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("4")
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(address // mmap.PAGESIZE * 8)
            clean = struct.unpack("<Q", f.read(8))[0]
            page[0] = 2
            f.seek(address // mmap.PAGESIZE * 8)
            dirty = struct.unpack("<Q", f.read(8))[0]
    finally:
        del address
        page.close()
    if clean & PM_SOFT_DIRTY or not dirty & PM_SOFT_DIRTY:
        raise OSError(0, "pages are not marked soft-dirty (CONFIG_MEM_SOFT_DIRTY unset)")
    return "pages are tracked soft-dirty"


def probe_inotify_next_wd():
    from criupy.restore.fds.inotify import INOTIFY_IOC_SETNEXTWD

    fd = _syscall(SYS_inotify_init1, os.O_CLOEXEC)
    try:
        try:
            _syscall(SYS_ioctl, fd, INOTIFY_IOC_SETNEXTWD, 7)
        except OSError as e:
            raise OSError(e.errno, f"INOTIFY_IOC_SETNEXTWD: {e.strerror} (CONFIG_CHECKPOINT_RESTORE unset?)") from None
        wd = _syscall(SYS_inotify_add_watch, fd, b"/", 1)  # IN_ACCESS
        if wd != 7:
            raise OSError(0, f"asked for wd 7, got {wd}")
    finally:
        os.close(fd)
    return "inotify watches get the wd asked for (INOTIFY_IOC_SETNEXTWD)"


# The vDSO layouts criupy knows how to move back into place on restore, in address order.
KNOWN_VDSO_LAYOUTS = (
    ("[vvar]", "[vvar_vclock]", "[vdso]"),  # 6.13 and newer
    ("[vvar]", "[vdso]"),
    ("[vdso]", "[vvar]"),
)


def probe_vdso_layout():
    special = [m for m in proc.maps() if m.path in ("[vvar]", "[vvar_vclock]", "[vdso]")]
    layout = tuple(m.path for m in special)
    described = ", ".join(f"{m.path} {m.size // mmap.PAGESIZE} pages" for m in special)
    if layout not in KNOWN_VDSO_LAYOUTS:
        raise OSError(0, f"unknown vDSO layout: {described}")
    return described


class Probe(NamedTuple):
    name: str
    function: object
    required: bool


PROBES = (
    Probe("ptrace seize", probe_ptrace_seize, True),
    Probe("clone3 with set_tid", probe_clone3_set_tid, True),
    Probe("process_vm_readv", probe_process_vm_readv, True),
    Probe("memfd", probe_memfd, True),
    Probe("vDSO layout", probe_vdso_layout, True),
    Probe("userfaultfd", probe_userfaultfd, False),
    Probe("PAGEMAP_SCAN", probe_pagemap_scan, False),
    Probe("soft-dirty", probe_soft_dirty, False),
    Probe("inotify wd", probe_inotify_next_wd, False),
)


def check(out=sys.stdout):
    """Run every probe, print one line each; return True when everything required is there."""
    all_required_present = True
    for probe in PROBES:
        try:
            detail = probe.function()
            verdict = "yes"
        except (OSError, CriupyError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            verdict = "MISSING" if probe.required else "no"
            all_required_present &= not probe.required
        kind = "required" if probe.required else "optional"
        print(f"{probe.name:<20} {verdict:<8} ({kind}) {detail}", file=out)
    return all_required_present
