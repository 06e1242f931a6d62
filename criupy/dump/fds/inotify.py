"""inotify: each watch is in /proc/PID/fdinfo with its wd, mask and the file handle of the watched inode
(CRIU's fsnotify.c).

The entry keeps the handle, and the path the handle opens now: restore opens the inode by its handle
(whatever it is called by then), by its path if the handle no longer opens (another boot of a tmpfs), and
adds the watch with the dumped wd (INOTIFY_IOC_SETNEXTWD). Events queued and not read at the dump are
not kept (nor by CRIU): the task sees those of changes after its restore.
"""

import ctypes
import errno
import os

from criupy import proc
from criupy.errors import CriupyError
from criupy.images.pb import fh_pb2, fsnotify_pb2
from criupy.libc import libc

MAX_HANDLE_SZ = 128
MINORBITS = 20  # the kernel's own dev_t, as fdinfo prints s_dev: major << 20 | minor


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def inotify_entry(file_id, flags, pid, fd, fown):
    watches = []
    for watch, path in watched_files(pid, fd):
        words = watch.handle.ljust(MAX_HANDLE_SZ, b"\0")
        handle = fh_pb2.fh_entry(bytes=len(watch.handle), type=watch.handle_type, path=path,
                                 handle=[int.from_bytes(words[i:i + 8], "little") for i in range(0, MAX_HANDLE_SZ, 8)])
        watches.append(fsnotify_pb2.inotify_wd_entry(id=file_id, i_ino=watch.ino, mask=watch.mask,
                                                     ignored_mask=watch.ignored_mask, s_dev=watch.s_dev, wd=watch.wd,
                                                     f_handle=handle))
    return fsnotify_pb2.inotify_file_entry(id=file_id, flags=flags, fown=fown, wd=watches)


def watched_files(pid, fd):
    """(proc.InotifyWatch, path of the watched file) of each watch; raises CriupyError naming a watch whose file
    criupy cannot open again (deleted, say): checked before the stop, too."""
    result = []
    mounts = proc.mountinfo()
    for watch in proc.inotify_watches(pid, fd):
        what = f"fd {fd}: inotify watch {watch.wd}"
        try:
            target = open_by_handle(watch.s_dev, watch.handle_type, watch.handle, mounts)
        except OSError as e:
            raise CriupyError(f"{what}: cannot open the watched file by its handle: {e.strerror}") from None
        try:
            path = os.readlink(f"/proc/self/fd/{target}")
        finally:
            os.close(target)
        if path.endswith(" (deleted)"):
            raise CriupyError(f"{what}: the watched file {path[:-len(' (deleted)')]} was deleted: not supported yet")
        result.append((watch, path))
    return result


def open_by_handle(s_dev, handle_type, handle, mounts):
    """An O_PATH fd of the inode a file handle names on the filesystem s_dev (the kernel's encoding), opened
    through one of criupy's mounts of it (mounts: proc.mountinfo()). Raises OSError (ENODEV if none is of it)."""
    major, minor = s_dev >> MINORBITS, s_dev & ((1 << MINORBITS) - 1)
    mounts = [m for m in mounts if (m.major, m.minor) == (major, minor)]
    if not mounts:
        raise OSError(errno.ENODEV, "no mount of its filesystem here")
    mount = min(mounts, key=lambda m: m.root != "/")  # the whole filesystem if it is mounted: a path for any inode
    mount_fd = os.open(mount.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # not O_PATH: EBADF
    try:
        file_handle = _FileHandle(len(handle), handle_type)
        ctypes.memmove(file_handle.f_handle, handle, len(handle))
        fd = libc.open_by_handle_at(mount_fd, ctypes.byref(file_handle), os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd
    finally:
        os.close(mount_fd)
