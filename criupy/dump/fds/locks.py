"""File locks held through a task's fds (CRIU's file-locks.c), found in their fdinfo ("lock:" lines; /proc/locks
takes 10 to 20 ms to read the first time in a process here), dumped into file-lock.img: flock and OFD locks,
which belong to an open file description (restore takes them again on it), and POSIX locks, which belong to
the process (the restored task takes them itself once its fds are in place). A lease stops the dump,
naming the fd."""

from criupy import proc
from criupy.errors import CriupyError
from criupy.images.pb import file_lock_pb2

FLAGS = {"POSIX": 1, "FLOCK": 2, "OFDLCK": 4}  # the locks criupy dumps: file_lock_entry.flag (CRIU's FL_*)
F_RDLCK, F_WRLCK = 0, 1


def lock_entries(pid, fd, what):
    """file_lock_entry of each lock placed through fd of pid (what: the file, for messages)."""
    entries = []
    for lock in proc.fd_locks(pid, fd):
        if lock.kind not in FLAGS:
            raise CriupyError(f"fd {fd}: {what} holds a {lock.kind} lock: not supported yet")
        entries.append(file_lock_pb2.file_lock_entry(
            flag=FLAGS[lock.kind], type=F_WRLCK if lock.write else F_RDLCK, pid=pid, fd=fd, start=lock.start,
            len=0 if lock.end == -1 else lock.end - lock.start + 1))
    return entries
