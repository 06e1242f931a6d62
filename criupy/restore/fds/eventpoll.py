"""epoll instances: created by criupy, their fds registered under the dumped fd numbers.

The kernel keys an epoll registration by (file, fd number), and fdinfo, EPOLL_CTL_MOD and _DEL go by
that number: criupy's own numbers for the files will not do. A forked helper puts every file at its
dumped number in its own (copied) fd table, registers them there and exits: the registrations stay
as long as the files live, and the restored task gets the same files at the same numbers.
"""

import ctypes
import fcntl
import os

from criupy.errors import CriupyError
from criupy.libc import libc

EPOLL_CTL_ADD = 1


class _EpollEvent(ctypes.Structure):
    _pack_ = 1  # x86-64's struct epoll_event is packed
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def open_eventpoll(entry):
    """An empty epoll: register() fills it once every file is open."""
    fd = libc.epoll_create1(os.O_CLOEXEC)
    if fd < 0:
        raise CriupyError(f"cannot create an epoll: {os.strerror(ctypes.get_errno())}")
    fcntl.fcntl(fd, fcntl.F_SETFL, entry.flags & (os.O_NONBLOCK | os.O_ASYNC))
    return fd


def register(fds, epolls):
    """fds: (criupy fd, dumped number, cloexec) of every fd; epolls: [(dumped number, eventpoll_file_entry)]."""
    if not any(entry.tfd for _, entry in epolls):
        return
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os._exit(_register_here(fds, epolls, write_end))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as errors:
        error = errors.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if error or status:
        raise CriupyError(error or f"registering the epolls' fds failed (status {status})")


def _register_here(fds, epolls, error_fd):
    """In the helper: place every file at its number, then epoll_ctl. Returns the exit status."""
    try:
        # first every fd above every dumped number, so that placing one never closes another
        above = max(target for _, target, _ in fds) + 1
        error_fd = fcntl.fcntl(error_fd, fcntl.F_DUPFD, above)
        moved = [(fcntl.fcntl(source, fcntl.F_DUPFD, above), target) for source, target, _ in fds]
        for source, target in moved:
            os.dup2(source, target)
        for epoll_number, entry in epolls:
            for tfd in entry.tfd:
                event = _EpollEvent(tfd.events, tfd.data)
                if libc.epoll_ctl(epoll_number, EPOLL_CTL_ADD, tfd.tfd, ctypes.byref(event)) < 0:
                    err = os.strerror(ctypes.get_errno())
                    os.write(error_fd, f"cannot register fd {tfd.tfd} in the epoll at fd {epoll_number}: "
                                       f"{err}".encode())
                    return 1
        return 0
    except BaseException as e:  # never back into criupy's Python from the helper
        os.write(error_fd, f"registering the epolls' fds: {e}".encode())
        return 1

