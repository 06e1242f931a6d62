"""inotify: a new instance with every dumped watch, each on the inode it watched and with its dumped wd
(see criupy/dump/fds/inotify.py)."""

import ctypes
import os

from criupy import proc
from criupy.dump.fds.inotify import open_by_handle
from criupy.errors import CriupyError
from criupy.libc import libc
from criupy.restore.fds.anon import O_CLOEXEC, checked_fd, with_status_flags

INOTIFY_IOC_SETNEXTWD = 0x40044900  # _IOW('I', 0, __s32): needs CONFIG_CHECKPOINT_RESTORE
IN_ALL_EVENTS = 0xFFF
IN_EXCL_UNLINK = 0x04000000
IN_ONESHOT = 0x80000000
WATCH_MASK = IN_ALL_EVENTS | IN_EXCL_UNLINK | IN_ONESHOT  # what fdinfo shows that inotify_add_watch takes back


def open_inotify(entry):
    fd = checked_fd(libc.inotify_init1(O_CLOEXEC), "an inotify instance")
    try:
        mounts = proc.mountinfo()
        for watch in sorted(entry.wd, key=lambda w: w.wd):
            _add_watch(fd, watch, mounts)
        return with_status_flags(fd, entry.flags)
    except BaseException:
        os.close(fd)
        raise


def _add_watch(fd, watch, mounts):
    path = watch.f_handle.path
    target = _open_watched(watch, mounts)
    try:
        if libc.ioctl(fd, INOTIFY_IOC_SETNEXTWD, ctypes.c_ulong(watch.wd)) < 0:
            raise CriupyError(f"cannot give the inotify watch of {path} its wd {watch.wd} (INOTIFY_IOC_SETNEXTWD, "
                              f"needs CONFIG_CHECKPOINT_RESTORE): {os.strerror(ctypes.get_errno())}")
        wd = libc.inotify_add_watch(fd, f"/proc/self/fd/{target}".encode(), ctypes.c_uint32(watch.mask & WATCH_MASK))
        if wd < 0:
            raise CriupyError(f"cannot watch {path} with inotify: {os.strerror(ctypes.get_errno())}")
        if wd != watch.wd:
            raise CriupyError(f"the inotify watch of {path} got wd {wd}, not its dumped {watch.wd} "
                              "(images with two watches of one wd?)")
    finally:
        os.close(target)


def _open_watched(watch, mounts):
    """An O_PATH fd of the watched inode: by its handle, else by its path if that still names the same inode."""
    handle = b"".join(word.to_bytes(8, "little") for word in watch.f_handle.handle)[:watch.f_handle.bytes]
    try:
        return open_by_handle(watch.s_dev, watch.f_handle.type, handle, mounts)
    except OSError:
        pass  # gone, or a tmpfs of another boot: by its path
    path = watch.f_handle.path
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise CriupyError(f"cannot open {path}, which an inotify watch watched: {e.strerror}") from None
    if os.fstat(target).st_ino != watch.i_ino:
        os.close(target)
        raise CriupyError(f"file {path}, which an inotify watch watched, is another file since the dump")
    return target
