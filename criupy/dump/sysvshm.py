"""SysV shared memory segments attached by the dumped tree: ipcns-shm-<ipc ns id>.img, once per segment.

A SysV attach shows in /proc/PID/maps as "/SYSV<key> (deleted)" with the segment's id as its inode
(the kernel numbers the segment's shmem file so). Each segment's ipc_desc_entry comes from
/proc/sysvipc/shm (same ipc namespace as criupy: the dump refuses others); its contents follow the
entry in the image (CRIU's format without in_pagemaps, the one crit decodes), read through
/proc/PID/map_files of an attach. A segment marked for removal (SHM_DEST) has key 0 there; its entry
gets the key it was made with, which its mappings' name keeps, so that restore makes it with that key
(same name in /proc/PID/maps) before it marks it again.
"""

import os

from criupy.dump.memory import PAGE_SIZE, VMA_AREA_SYSVIPC
from criupy.errors import CriupyError
from criupy.images.pb import ipc_desc_pb2, ipc_shm_pb2

SHM_DEST = 0o1000


def segments():
    """shmid -> dict of /proc/sysvipc/shm's columns (numbers) for every segment of criupy's ipc namespace."""
    with open("/proc/sysvipc/shm") as f:
        header, *rows = f.read().splitlines()
    names = header.split()
    table = {}
    for row in rows:
        fields = dict(zip(names, row.split()))
        segment = {name: int(value, 8 if name == "perms" else 10) for name, value in fields.items()}
        table[segment["shmid"]] = segment
    return table


class SysvSegments:
    """The segments the tree has attached: shmid -> a /proc path of an attach to read it through."""

    def __init__(self):
        self.attached = {}

    def add_vmas(self, pid, vmas):
        for vma in vmas:
            e = vma.entry
            if e.status & VMA_AREA_SYSVIPC:
                self.attached.setdefault(e.shmid, (f"/proc/{pid}/map_files/{e.start:x}-{e.end:x}", e))

    def write(self, images, ipc_ns_id):
        if not self.attached:
            return
        table = segments()
        entries, payloads = [], []
        for shmid, (path, vma) in sorted(self.attached.items()):
            segment = table.get(shmid)
            if segment is None:
                raise CriupyError(f"SysV shared memory segment {shmid} is not in /proc/sysvipc/shm")
            size = segment["size"]
            if vma.pgoff or vma.end - vma.start != size + -size % PAGE_SIZE:
                raise CriupyError(f"SysV shared memory segment {shmid} is mapped only in part at {vma.start:#x}: "
                                  "not supported yet")
            key = _key_made_with(path) if segment["perms"] & SHM_DEST else segment["key"] & 0xFFFFFFFF
            desc = ipc_desc_pb2.ipc_desc_entry(
                key=key, uid=segment["uid"], gid=segment["gid"], cuid=segment["cuid"],
                cgid=segment["cgid"], mode=segment["perms"], id=shmid)
            entries.append(ipc_shm_pb2.ipc_shm_entry(desc=desc, size=size))
            payloads.append(_contents(path, shmid, size))
        images.write(f"ipcns-shm-{ipc_ns_id}", entries, payloads=payloads)


def _key_made_with(path):
    """The key in the name of the segment's file, "/SYSV<key in hex> (deleted)"."""
    return int(os.readlink(path)[len("/SYSV"):].split()[0], 16)


def _contents(path, shmid, size):
    try:
        with open(path, "rb") as f:
            data = f.read(size)
    except OSError as e:
        raise CriupyError(f"cannot read SysV shared memory segment {shmid} through {path}: {e.strerror}") from None
    if len(data) != size:
        raise CriupyError(f"SysV shared memory segment {shmid} holds {len(data)} bytes, not {size}")
    return data
