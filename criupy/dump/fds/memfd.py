"""memfd files (memfd_create): memfd.img holds one memfd_inode_entry per memfd of the tree (name, size,
seals, owner, mode); files.img a MEMFD entry per open file description, and one per memfd mapped
without an fd. The contents are saved once per memfd, as anonymous shared memory is
(pagemap-shmem-INODE.img: criupy.dump.shmem), which is how CRIU keys them too.
"""

import fcntl
import os

from criupy.errors import CriupyError
from criupy.images.pb import memfd_pb2

F_GET_SEALS = 1034
F_SEAL_FUTURE_WRITE = 0x10
MEMFD_PREFIX = "/memfd:"


def is_memfd(link):
    return link.startswith(MEMFD_PREFIX)


def _name(link):
    return link.removeprefix(MEMFD_PREFIX).removesuffix(" (deleted)")


class Memfds:
    """The memfds of the dumped tree, each dumped once whichever fds and mappings lead to it."""

    def __init__(self, shared_memory):
        self.shared_memory = shared_memory  # criupy.dump.shmem.SharedMemory: where the contents go
        self.inodes = {}  # st_ino -> memfd_inode_entry
        self.mapping_entries = {}  # st_ino -> memfd_file_entry the mappings of it name

    def inode_id(self, what, link, source, st):
        """The memfd_inode_entry id of the memfd open at source (a /proc magic link), added on first sight."""
        entry = self.inodes.get(st.st_ino)
        if entry is not None:
            return entry.inode_id
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            seals = fcntl.fcntl(fd, F_GET_SEALS)
        finally:
            os.close(fd)
        if seals & F_SEAL_FUTURE_WRITE:
            raise CriupyError(f"{what}: memfd {_name(link)} is sealed with F_SEAL_FUTURE_WRITE: not supported yet")
        entry = memfd_pb2.memfd_inode_entry(name=_name(link), uid=st.st_uid, gid=st.st_gid, size=st.st_size,
                                            shmid=st.st_ino, seals=seals, inode_id=len(self.inodes) + 1,
                                            mode=st.st_mode)
        self.inodes[st.st_ino] = entry
        self.shared_memory.add_file(st.st_ino, source, st.st_size)
        return entry.inode_id

    def file_entry(self, file_id, flags, pos, fown, inode_id):
        return memfd_pb2.memfd_file_entry(id=file_id, flags=flags, pos=pos, fown=fown, inode_id=inode_id)

    def mapping_entry(self, what, link, source, st, open_flags, new_id, fown):
        """(entry, whether it is new) of the memfd file entry that mappings of this memfd name."""
        entry = self.mapping_entries.get(st.st_ino)
        if entry is None:
            inode_id = self.inode_id(what, link, source, st)
            entry = self.mapping_entries[st.st_ino] = self.file_entry(new_id(), open_flags, 0, fown, inode_id)
            return entry, True
        if open_flags & os.O_ACCMODE == os.O_RDWR:
            entry.flags = entry.flags & ~os.O_ACCMODE | os.O_RDWR  # a writable shared mapping of it too
        return entry, False

    def write(self, images):
        if self.inodes:
            images.write("memfd", sorted(self.inodes.values(), key=lambda entry: entry.inode_id))
