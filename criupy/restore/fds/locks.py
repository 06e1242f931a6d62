"""File locks (see criupy/dump/fds/locks.py), taken again on the open file descriptions criupy opened."""

import fcntl
import os
import struct

from criupy.dump.fds.locks import F_WRLCK, FLAGS
from criupy.errors import CriupyError

F_OFD_SETLK = 37
FLOCK = struct.Struct("hhqqi4x")  # struct flock: type, whence, start, len, pid


def take_locks(task, opened):
    """Lock each file description of task (DumpedTask; opened: its OpenedFiles) with the flock and OFD locks
    it had at the dump, without waiting: nobody else held them then. (POSIX locks: posix_locks.)"""
    for lock in task.file_locks:
        if lock.flag == FLAGS["POSIX"]:
            continue
        source = next(source for source, target, _ in opened.fds if target == lock.fd)
        write = lock.type == F_WRLCK
        try:
            if lock.flag == FLAGS["FLOCK"]:
                fcntl.flock(source, (fcntl.LOCK_EX if write else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            else:
                # file_lock_entry.type is fcntl's: F_RDLCK or F_WRLCK
                fcntl.fcntl(source, F_OFD_SETLK, FLOCK.pack(lock.type, os.SEEK_SET, lock.start, lock.len, 0))
        except OSError as e:
            kind = "flock" if lock.flag == FLAGS["FLOCK"] else "OFD"
            raise CriupyError(f"cannot take the {kind} lock of fd {lock.fd} of PID {task.pid} again: "
                              f"{e.strerror}") from None


def posix_locks(task):
    """The POSIX locks of task, which it takes itself once the restorer has put its fds in place (closing
    criupy's copies of them would drop a lock taken earlier): restore.task.Restoring, at its end."""
    return [lock for lock in task.file_locks if lock.flag == FLAGS["POSIX"]]
