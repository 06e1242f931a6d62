"""eventfd, signalfd and timerfd, made by criupy from their entries (see criupy/dump/fds/anon.py)."""

import ctypes
import fcntl
import os
import time

from criupy.dump.fds.anon import EFD_SEMAPHORE, NSEC, TFD_TIMER_ABSTIME, set_ticks
from criupy.errors import CriupyError
from criupy.libc import libc

O_CLOEXEC = 0o2000000
STATUS_FLAGS = os.O_NONBLOCK | os.O_ASYNC


def checked_fd(fd, what):
    """fd, or raise naming what could not be created (fd < 0: errno says why)."""
    if fd < 0:
        raise CriupyError(f"cannot create {what}: {os.strerror(ctypes.get_errno())}")
    return fd


def with_status_flags(fd, flags):
    """fd with the dumped status flags (O_NONBLOCK, O_ASYNC) of flags."""
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & STATUS_FLAGS)
    return fd


def open_eventfd(entry):
    semaphore = os.EFD_SEMAPHORE if entry.flags & EFD_SEMAPHORE else 0
    return with_status_flags(os.eventfd(entry.counter, os.EFD_CLOEXEC | semaphore), entry.flags)


def open_signalfd(entry):
    mask = (ctypes.c_uint64 * 16)(entry.sigmask)  # a sigset_t (128 bytes) for glibc
    return with_status_flags(checked_fd(libc.signalfd(-1, mask, O_CLOEXEC), "a signalfd"), entry.flags)


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval_sec", ctypes.c_long), ("interval_nsec", ctypes.c_long),
                ("value_sec", ctypes.c_long), ("value_nsec", ctypes.c_long)]


def open_timerfd(entry):
    """The timer armed on its dumped schedule. Expiries that fell while it was not running are ticks to read,
    counted here, so that none is lost when the dumped ticks are set."""
    fd = checked_fd(libc.timerfd_create(entry.clockid, O_CLOEXEC), f"a timerfd on clock {entry.clockid}")
    try:
        interval = entry.isec * NSEC + entry.insec
        expiry = entry.vsec * NSEC + entry.vnsec
        ticks = entry.ticks
        flags = entry.settime_flags
        if expiry and not flags & TFD_TIMER_ABSTIME:
            expiry += time.clock_gettime_ns(entry.clockid)  # a relative time (CRIU's images): from now
            flags |= TFD_TIMER_ABSTIME
        now = time.clock_gettime_ns(entry.clockid)
        if expiry and expiry <= now:
            missed = (now - expiry) // interval + 1 if interval else 1
            ticks += missed
            expiry = expiry + missed * interval if interval else 0
        spec = _Itimerspec(interval // NSEC, interval % NSEC, expiry // NSEC, expiry % NSEC)
        if libc.timerfd_settime(fd, flags, ctypes.byref(spec), None) < 0:
            raise CriupyError(f"cannot arm a timerfd: {os.strerror(ctypes.get_errno())}")
        if ticks:
            set_ticks(fd, ticks)
        return with_status_flags(fd, entry.flags)
    except BaseException:
        os.close(fd)
        raise
