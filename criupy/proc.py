"""Readers for /proc files, one function per file, in the manner of psutil's Linux module.

Every function reads its file once and returns plain typed values; nothing is cached.
A process that is gone raises CriupyError naming the PID.
"""

import os
import re
from typing import NamedTuple

from criupy.errors import CriupyError


def _read_text(pid, name):
    path = f"/proc/{pid}/{name}"
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or (ESRCH) between open and read
        raise CriupyError(f"no process with PID {pid}") from None
    except PermissionError:
        raise CriupyError(f"not permitted to read {path}") from None


class Mapping(NamedTuple):
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str  # "rwxp" / "r-xs" ...
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str  # "" for anonymous; "[heap]", "[stack]", "[vdso]"...; file path, maybe ending in " (deleted)"

    @property
    def size(self):
        return self.end - self.start

    @property
    def shared(self):
        return self.perms[3] == "s"


def maps(pid="self"):
    """The mappings of a process, in address order, from /proc/PID/maps."""
    return [_parse_maps_line(line) for line in _read_text(pid, "maps").splitlines()]


def status(pid="self"):
    """/proc/PID/status as a dict of field name to the raw text after the colon, stripped."""
    result = {}
    for line in _read_text(pid, "status").splitlines():
        key, _, value = line.partition(":")
        result[key] = value.strip()
    return result


def task_ids(pid):
    """The thread IDs of a process, from /proc/PID/task, in ascending order."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise CriupyError(f"no process with PID {pid}") from None


def thread_comm(pid, tid):
    """/proc/PID/task/TID/comm: the thread's own name, without the newline."""
    return _read_text(pid, f"task/{tid}/comm").rstrip("\n")


class Stat(NamedTuple):
    """The fields of /proc/PID/stat the dump uses (man 5 proc numbers them from 1)."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int       # 7: the controlling terminal's device number, 0 if none
    tpgid: int        # 8: the foreground process group of that terminal, -1 if none
    flags: int        # PF_* of the task
    start_code: int   # 26
    end_code: int     # 27
    start_stack: int  # 28
    start_data: int   # 45
    end_data: int     # 46
    start_brk: int    # 47
    arg_start: int    # 48
    arg_end: int      # 49
    env_start: int    # 50
    env_end: int      # 51
    exit_code: int    # 52


def stat(pid="self"):
    """/proc/PID/stat. comm may hold spaces and parentheses, so it ends at the last ')'."""
    text = _read_text(pid, "stat")
    head, _, rest = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    f = [0, 0, 0] + rest.split()  # f[n] is field n: field 3 (state) is the first after comm
    return Stat(
        pid=int(pid_text), comm=comm, state=f[3], ppid=int(f[4]), pgrp=int(f[5]), session=int(f[6]),
        tty_nr=int(f[7]), tpgid=int(f[8]), flags=int(f[9]), start_code=int(f[26]), end_code=int(f[27]), start_stack=int(f[28]),
        start_data=int(f[45]), end_data=int(f[46]), start_brk=int(f[47]), arg_start=int(f[48]),
        arg_end=int(f[49]), env_start=int(f[50]), env_end=int(f[51]), exit_code=int(f[52]),
    )


class SmapsEntry(NamedTuple):
    """One mapping of /proc/PID/smaps: the maps line and its VmFlags ("rd", "wr", "gd", ...)."""

    mapping: Mapping
    vm_flags: tuple


def _parse_maps_line(line):
    # path may contain spaces, so split off the first five fields only
    fields = line.split(None, 5)
    start, _, end = fields[0].partition("-")
    major, _, minor = fields[3].partition(":")
    return Mapping(int(start, 16), int(end, 16), fields[1], int(fields[2], 16), int(major, 16), int(minor, 16),
                   int(fields[4]), fields[5] if len(fields) > 5 else "")


_HEX_DIGITS = frozenset("0123456789abcdef")  # a maps line starts with one; smaps' "Key:" lines do not


def smaps(pid="self"):
    """The mappings of a process with their VmFlags, in address order, from /proc/PID/smaps."""
    result = []
    mapping = None
    for line in _read_text(pid, "smaps").splitlines():
        if line.startswith("VmFlags:"):
            result.append(SmapsEntry(mapping, tuple(line.split()[1:])))
            mapping = None
        elif line[:1] in _HEX_DIGITS:  # a mapping's header line, as in maps
            if mapping is not None:
                result.append(SmapsEntry(mapping, ()))
            mapping = _parse_maps_line(line)
    if mapping is not None:
        result.append(SmapsEntry(mapping, ()))
    return result


def auxv(pid="self"):
    """/proc/PID/auxv as 64-bit words (type, value, type, value, ..., AT_NULL, 0)."""
    path = f"/proc/{pid}/auxv"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CriupyError(f"no process with PID {pid}") from None
    return tuple(int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - len(data) % 8, 8))


def fds(pid):
    """The open file descriptor numbers of a process, ascending, from /proc/PID/fd."""
    try:
        return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        raise CriupyError(f"no process with PID {pid}") from None


def fd_link(pid, fd):
    """What /proc/PID/fd/FD points at: a path, "pipe:[123]", "socket:[456]", "anon_inode:[eventfd]"..."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except FileNotFoundError:
        raise CriupyError(f"fd {fd} of PID {pid} closed while criupy looked at it") from None


class FdInfo(NamedTuple):
    """/proc/PID/fdinfo/FD: position, open flags (O_CLOEXEC included), mount id, inode, other lines."""

    pos: int
    flags: int
    mnt_id: int
    ino: int
    extra: dict  # every other "key: value" line, value as text


def fdinfo_text(pid, fd):
    """/proc/PID/fdinfo/FD as it is (kinds such as epoll have lines fdinfo() does not parse)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            return f.read()
    except FileNotFoundError:
        raise CriupyError(f"fd {fd} of PID {pid} closed while criupy looked at it") from None


def fdinfo(pid, fd):
    values = {}
    for line in fdinfo_text(pid, fd).splitlines():
        key, _, value = line.partition(":")
        values[key] = value.strip()
    return FdInfo(
        pos=int(values.pop("pos", "0")), flags=int(values.pop("flags", "0"), 8),
        mnt_id=int(values.pop("mnt_id", "-1")), ino=int(values.pop("ino", "0")), extra=values,
    )


class InotifyWatch(NamedTuple):
    """One watch of an inotify fd, from its fdinfo (the kernel's s_dev encoding: major << 20 | minor)."""

    wd: int
    ino: int
    s_dev: int
    mask: int
    ignored_mask: int
    handle_type: int
    handle: bytes  # the file handle of the watched inode (open_by_handle_at)


def inotify_watches(pid, fd):
    """The watches of an inotify fd, in the order of their wd, from /proc/PID/fdinfo/FD."""
    watches = []
    for line in fdinfo_text(pid, fd).splitlines():
        if line.startswith("inotify "):
            values = dict(field.split(":", 1) for field in line.split()[1:])
            handle = bytes.fromhex(values["f_handle"])[:int(values["fhandle-bytes"], 16)]
            watches.append(InotifyWatch(
                wd=int(values["wd"], 16), ino=int(values["ino"], 16), s_dev=int(values["sdev"], 16),
                mask=int(values["mask"], 16), ignored_mask=int(values["ignored_mask"], 16),
                handle_type=int(values["fhandle-type"], 16), handle=handle))
    return sorted(watches)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class Mount(NamedTuple):
    """One line of /proc/PID/mountinfo."""

    mnt_id: int
    major: int
    minor: int
    root: str         # the directory of its filesystem mounted there
    mount_point: str


def mountinfo(pid="self"):
    mounts = []
    for line in _read_text(pid, "mountinfo").splitlines():
        fields = line.split()
        major, minor = fields[2].split(":")
        mounts.append(Mount(int(fields[0]), int(major), int(minor), _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _unescape(field):
    """A path as mountinfo writes it: space, tab, newline and backslash as octal escapes (\\040...)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


class FileLock(NamedTuple):
    """A lock held on a file (a "lock:" line of an fd's fdinfo, as /proc/locks has them): kind FLOCK, OFDLCK,
    POSIX, LEASE..."""

    kind: str
    write: bool
    pid: int     # who placed it (-1 for an OFD lock)
    start: int
    end: int     # the last byte locked; -1 for the end of the file, however long it grows


def fd_locks(pid, fd):
    """The locks placed through an fd (its fdinfo's "lock:" lines): an flock or OFD lock of its open file
    description, a POSIX lock of the process on its file."""
    locks = []
    for line in fdinfo_text(pid, fd).splitlines():
        if line.startswith("lock:"):
            # lock:  N: KIND ADVISORY|MANDATORY READ|WRITE PID MAJOR:MINOR:INODE START END ("->": a waiter)
            fields = line.split()[2:]
            if fields and fields[0] != "->":
                locks.append(FileLock(kind=fields[0], write=fields[2] == "WRITE", pid=int(fields[3]),
                                      start=int(fields[5]), end=-1 if fields[6] == "EOF" else int(fields[6])))
    return locks


class PosixTimerInfo(NamedTuple):
    """One timer of /proc/PID/timers (what timer_create was given; its times come from the task)."""

    timer_id: int
    signo: int
    sival: int
    notify: str        # "signal", "thread", "none"
    notify_to: str     # "pid", or "tid" for SIGEV_THREAD_ID
    notify_id: int
    clock_id: int


def timers(pid):
    """The POSIX timers of a process, from /proc/PID/timers (4 lines per timer)."""
    lines = _read_text(pid, "timers").splitlines()
    result = []
    for i in range(0, len(lines) - 3, 4):
        values = [line.partition(":")[2].strip() for line in lines[i:i + 4]]
        signo, _, sival = values[1].partition("/")
        notify, _, target = values[2].partition("/")
        notify_to, _, notify_id = target.partition(".")
        result.append(PosixTimerInfo(
            timer_id=int(values[0]), signo=int(signo), sival=0 if sival == "(null)" else int(sival, 16),
            notify=notify, notify_to=notify_to, notify_id=int(notify_id), clock_id=int(values[3]),
        ))
    return result


def children(pid):
    """The PIDs of a process's children, from /proc/PID/task/TID/children of each of its threads
    (a child's parent is the thread that forked it). Threads that end meanwhile are skipped."""
    result = []
    for tid in task_ids(pid):
        try:
            result += [int(c) for c in _read_text(pid, f"task/{tid}/children").split()]
        except (CriupyError, FileNotFoundError):
            continue
    return result


def oom_score_adj(pid):
    return int(_read_text(pid, "oom_score_adj"))


def loginuid(pid):
    """The audit login uid (4294967295 when unset)."""
    return int(_read_text(pid, "loginuid"))


def unused_pid():
    """A PID some way ahead of the last one handed out that no process holds now (for clone3's set_tid)."""
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    # The kernel hands PIDs out upwards and wraps round to 300 (those below are reserved): so do we.
    for step in range(1000, 1000 + pid_max):
        candidate = 300 + (last + step - 300) % (pid_max - 300)
        if not os.path.exists(f"/proc/{candidate}"):
            return candidate
    raise CriupyError("no unused PID left")
