"""Readers for /proc files, one function per file, in the manner of psutil's Linux module.

Every function reads its file once and returns plain typed values; nothing is cached.
A process that is gone raises CriupyError naming the PID.
"""

import os
from dataclasses import dataclass

from criupy.errors import CriupyError


def _read_text(pid, name):
    path = f"/proc/{pid}/{name}"
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        raise CriupyError(f"no process with PID {pid}") from None
    except PermissionError:
        raise CriupyError(f"not permitted to read {path}") from None


@dataclass(frozen=True)
class Mapping:
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
    result = []
    for line in _read_text(pid, "maps").splitlines():
        # path may contain spaces, so split off the first five fields only
        fields = line.split(None, 5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        major, minor = (int(x, 16) for x in fields[3].split(":"))
        result.append(
            Mapping(
                start=start,
                end=end,
                perms=fields[1],
                offset=int(fields[2], 16),
                dev_major=major,
                dev_minor=minor,
                inode=int(fields[4]),
                path=fields[5] if len(fields) > 5 else "",
            )
        )
    return result


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
