"""eventfd, signalfd and timerfd: their state is in /proc/PID/fdinfo (CRIU's eventfd.c, signalfd.c, timerfd.c).

eventfd: the counter, and EFD_SEMAPHORE, which has no field of its own: it is kept as bit 0 of the
entry's flags, a bit (O_WRONLY) that an eventfd's file flags never have (it is always O_RDWR).

timerfd: fdinfo gives the time left to the next expiry and the ticks not read yet. An interval timer
that expired is not re-armed by the kernel until it is read, and fdinfo then shows no time left and
one tick however many passed: such a timer is read once through a stolen copy of the fd (the kernel
counts the missed expiries and re-arms it on its schedule), and the ticks are put back with
TFD_IOC_SET_TICKS, so the task sees what it would have. The entry records the next expiry as an
absolute time on the timer's clock (settime_flags gains TFD_TIMER_ABSTIME), so a restore keeps the
schedule whatever time passed in between.
"""

import ctypes
import os
import re
import time

from criupy import proc
from criupy.errors import CriupyError
from criupy.images.pb import eventfd_pb2, signalfd_pb2, timerfd_pb2
from criupy.libc import libc

EFD_SEMAPHORE = 1
TFD_TIMER_ABSTIME = 1
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, u64)
NSEC = 1_000_000_000
_TIMESPEC = re.compile(r"\((-?\d+), (-?\d+)\)")


def eventfd_entry(file_id, flags, info, fown):
    counter = int(info.extra["eventfd-count"], 16)
    if info.extra.get("eventfd-semaphore", "0") == "1":
        flags |= EFD_SEMAPHORE
    return eventfd_pb2.eventfd_file_entry(id=file_id, flags=flags, fown=fown, counter=counter)


def signalfd_entry(file_id, flags, info, fown):
    return signalfd_pb2.signalfd_entry(id=file_id, flags=flags, fown=fown, sigmask=int(info.extra["sigmask"], 16))


def _nanoseconds(text):
    match = _TIMESPEC.fullmatch(text)
    if not match:
        raise CriupyError(f"cannot read a timerfd's time {text!r} in fdinfo")
    return int(match.group(1)) * NSEC + int(match.group(2))


def set_ticks(fd, ticks):
    value = ctypes.c_uint64(ticks)
    if libc.ioctl(fd, TFD_IOC_SET_TICKS, ctypes.byref(value)) < 0:
        err = ctypes.get_errno()
        raise CriupyError(f"cannot set a timerfd's ticks (TFD_IOC_SET_TICKS, needs CONFIG_CHECKPOINT_RESTORE): "
                          f"{os.strerror(err)}")


def timerfd_entry(file_id, flags, pid, fd, fown, steal_fds):
    """The timerfd_entry of fd; steal_fds(fds) gives criupy copies of the task's fds."""
    info = proc.fdinfo(pid, fd)  # read now: the time left goes on running
    interval = _nanoseconds(info.extra["it_interval"])
    ticks = int(info.extra["ticks"])
    if ticks and interval:
        (copy,) = steal_fds([fd])
        try:
            ticks = int.from_bytes(os.read(copy, 8), "little")  # re-arms it, counting the missed expiries
            set_ticks(copy, ticks)
        finally:
            os.close(copy)
        info = proc.fdinfo(pid, fd)
    clock = int(info.extra["clockid"])
    left = _nanoseconds(info.extra["it_value"])
    now = time.clock_gettime_ns(clock)
    settime_flags = int(info.extra["settime flags"], 8)
    expiry = 0
    if left:  # armed
        expiry = now + left
        settime_flags |= TFD_TIMER_ABSTIME
    return timerfd_pb2.timerfd_entry(
        id=file_id, flags=flags, fown=fown, clockid=clock, ticks=ticks, settime_flags=settime_flags,
        vsec=expiry // NSEC, vnsec=expiry % NSEC, isec=interval // NSEC, insec=interval % NSEC)
