"""FIFOs (named pipes), reopened by path. Opening one end alone waits for the other (or fails, for a
non-blocking writer): criupy first opens each FIFO read-write, a keeper that is both ends at once
and through which the dumped data is written back, then each dumped end without blocking (as
CRIU's fifo.c). The keeper is closed with criupy's other fds once the task has its copies."""

import fcntl
import os
import stat

from criupy.errors import CriupyError


def _checked(fd, path):
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise CriupyError(f"file {path} is no longer a FIFO")
    return fd


def open_keeper(path):
    try:
        return _checked(os.open(path, os.O_RDWR | os.O_CLOEXEC), path)
    except FileNotFoundError:
        raise CriupyError(f"FIFO {path} is gone since the dump") from None
    except OSError as e:
        raise CriupyError(f"cannot open FIFO {path}: {e.strerror}") from None


def open_end(path, open_flags, status_flags, keeper):
    """The FIFO at path opened with open_flags, then given status_flags; it must be the keeper's FIFO."""
    try:
        fd = _checked(os.open(path, open_flags | os.O_NONBLOCK | os.O_CLOEXEC), path)
    except OSError as e:
        raise CriupyError(f"cannot open FIFO {path}: {e.strerror}") from None
    if os.fstat(fd).st_ino != os.fstat(keeper).st_ino:
        os.close(fd)
        raise CriupyError(f"FIFO {path} was replaced while criupy opened it")
    fcntl.fcntl(fd, fcntl.F_SETFL, status_flags)
    return fd
