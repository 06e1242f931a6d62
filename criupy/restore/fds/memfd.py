"""memfds, made once for the whole tree: memfd_create with the dumped name, then size, contents
(pagemap-shmem-SHMID.img), mode and owner, and only then the seals (F_SEAL_WRITE or F_SEAL_GROW would
refuse the contents). Every fd and mapping of a memfd is a file description opened on that one memfd
through /proc/self/fd (as CRIU does), so all of them share its pages.
"""

import fcntl
import mmap
import os

from criupy.errors import CriupyError
from criupy.libc import MAP_FAILED, libc
from criupy.restore import shmem

F_ADD_SEALS = 1033
F_SEAL_SEAL = 0x1
PAGE_SIZE = 4096


def make_memfds(memfd_inodes, images, hold):
    """inode_id -> fd (given to hold()) of each memfd of memfd.img, made with its dumped contents."""
    return {inode_id: hold(_make(entry, images)) for inode_id, entry in memfd_inodes.items()}


def _make(entry, images):
    # created without MFD_ALLOW_SEALING, a memfd reports the one seal F_SEAL_SEAL: make it so again
    flags = os.MFD_CLOEXEC | (0 if entry.seals == F_SEAL_SEAL else os.MFD_ALLOW_SEALING)
    try:
        fd = os.memfd_create(entry.name, flags)
    except OSError as e:
        raise CriupyError(f"cannot make memfd {entry.name}: {e.strerror}") from None
    try:
        os.ftruncate(fd, entry.size)
        _fill(fd, entry, images)
        if entry.HasField("mode"):
            os.fchmod(fd, entry.mode & 0o7777)
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            os.fchown(fd, entry.uid, entry.gid)
        if entry.seals != F_SEAL_SEAL and entry.seals:
            fcntl.fcntl(fd, F_ADD_SEALS, entry.seals)
    except OSError as e:
        os.close(fd)
        raise CriupyError(f"cannot restore memfd {entry.name}: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fill(fd, entry, images):
    name = f"pagemap-shmem-{entry.shmid}"
    size = entry.size + -entry.size % PAGE_SIZE
    if not size or not images.exists(name):  # no image: the memfd held no data
        return
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address in (None, MAP_FAILED):
        raise CriupyError(f"cannot map memfd {entry.name} to fill it")
    try:
        shmem.fill(images, name, address, size)
    finally:
        libc.munmap(address, size)


def open_file(entry, memfds, flags):
    """A new file description with flags on the memfd of a memfd_file_entry, at its position."""
    memfd = memfds.get(entry.inode_id)
    if memfd is None:
        raise CriupyError(f"image files.img is corrupt: memfd file {entry.id} names inode {entry.inode_id}, "
                          f"not in memfd.img")
    try:
        fd = os.open(f"/proc/self/fd/{memfd}", flags | os.O_CLOEXEC)
    except OSError as e:
        raise CriupyError(f"cannot open memfd {entry.id} again: {e.strerror}") from None
    os.lseek(fd, entry.pos, os.SEEK_SET)
    return fd
