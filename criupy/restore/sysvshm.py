"""SysV shared memory segments, made again with their key, id, size, mode, owner and contents.

Each segment of ipcns-shm-N.img is created once, before any task: its id is written to
/proc/sys/kernel/shm_next_id just before shmget(key, size, IPC_CREAT|IPC_EXCL|mode), which the kernel
uses for the next segment. criupy attaches it to copy the dumped contents in, and detaches it; each
task's restorer attaches it at the dumped address (shmat), so it is a real attach again. A segment that
was marked for removal when dumped (SHM_DEST) is removed once every task is back, and a failed
restore removes all the segments it made.
"""

import ctypes
import os

from criupy.errors import CriupyError
from criupy.libc import libc

IPC_CREAT, IPC_EXCL = 0o1000, 0o2000
IPC_RMID, IPC_SET, IPC_STAT = 0, 1, 2
SHM_DEST = 0o1000


class ShmidDs(ctypes.Structure):
    """glibc's struct shmid_ds on x86_64."""
    _fields_ = [("key", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("cuid", ctypes.c_uint32), ("cgid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("pad1", ctypes.c_uint16), ("seq", ctypes.c_uint16), ("pad2", ctypes.c_uint16),
                ("reserved", ctypes.c_uint64 * 2), ("segsz", ctypes.c_size_t), ("times", ctypes.c_int64 * 3),
                ("cpid", ctypes.c_int32), ("lpid", ctypes.c_int32), ("nattch", ctypes.c_uint64),
                ("reserved2", ctypes.c_uint64 * 2)]


def _error(what):
    return CriupyError(f"{what}: {os.strerror(ctypes.get_errno())}")


class SysvSegments:
    """The segments this restore made."""

    def __init__(self):
        self.made = []  # ipc_shm_entry

    def create(self, images):
        for name in sorted(n for n in images.names() if n.startswith("ipcns-shm-")):
            for entry, contents in images.read_with_payloads(name):
                self._create(entry, contents)

    def _create(self, entry, contents):
        desc = entry.desc
        key = ctypes.c_int32(desc.key).value
        if libc.shmctl(desc.id, IPC_STAT, ctypes.byref(ShmidDs())) == 0 or ctypes.get_errno() == 13:
            raise CriupyError(f"SysV shared memory segment {desc.id} exists already")
        if key and libc.shmget(key, 0, 0) >= 0:
            raise CriupyError(f"a SysV shared memory segment with key {desc.key:#x} exists already")
        try:
            with open("/proc/sys/kernel/shm_next_id", "w") as f:
                f.write(str(desc.id))
        except OSError as e:
            raise CriupyError(f"cannot set shm_next_id for SysV segment {desc.id}: {e.strerror}") from None
        shmid = libc.shmget(key, entry.size, IPC_CREAT | IPC_EXCL | desc.mode & 0o777)
        if shmid < 0:
            raise _error(f"cannot make SysV shared memory segment {desc.id} of {entry.size} bytes")
        self.made.append(entry)
        if shmid != desc.id:
            raise CriupyError(f"SysV shared memory segment {desc.id} came back as {shmid}")
        if (desc.uid, desc.gid) != (os.geteuid(), os.getegid()):
            ds = ShmidDs()
            if libc.shmctl(shmid, IPC_STAT, ctypes.byref(ds)) < 0:
                raise _error(f"cannot read SysV shared memory segment {shmid}")
            ds.uid, ds.gid = desc.uid, desc.gid
            if libc.shmctl(shmid, IPC_SET, ctypes.byref(ds)) < 0:
                raise _error(f"cannot give SysV shared memory segment {shmid} its owner")
        address = libc.shmat(shmid, None, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise _error(f"cannot attach SysV shared memory segment {shmid}")
        try:
            ctypes.memmove(address, contents, min(len(contents), entry.size))
        finally:
            libc.shmdt(address)

    def remove_marked(self):
        """Remove the segments that were marked for removal when dumped: they go when the last task detaches."""
        for entry in self.made:
            if entry.desc.mode & SHM_DEST:
                libc.shmctl(entry.desc.id, IPC_RMID, None)

    def remove_all(self):
        for entry in self.made:
            libc.shmctl(entry.desc.id, IPC_RMID, None)
        self.made = []
