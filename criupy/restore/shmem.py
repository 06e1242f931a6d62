"""Anonymous shared memory, made once for every task that maps it.

criupy maps a MAP_SHARED|MAP_ANONYMOUS region of the dumped size, reads pagemap-shmem-ID.img's pages
into it, and keeps an fd of the region's shmem file (opened through /proc/self/map_files, as CRIU
does). Each task's restorer maps that fd MAP_SHARED at the dumped address and offset, so all of them
share one region that /proc/PID/maps shows as "/dev/zero (deleted)", as before the dump.
"""

import ctypes
import mmap
import os

from criupy.errors import CriupyError
from criupy.libc import MAP_FAILED, libc
from criupy.restore.memory import PAGE_SIZE, PE_PRESENT, VMA_ANON_SHARED


def region_sizes(tasks):
    """shmid -> bytes the region must hold: the furthest any task maps it."""
    sizes = {}
    for task in tasks:
        for vma in task.mm.vmas:
            if vma.status & VMA_ANON_SHARED:
                sizes[vma.shmid] = max(sizes.get(vma.shmid, 0), vma.pgoff + vma.end - vma.start)
    return sizes


def open_shared_memory(images, tasks, hold):
    """Make every shared region of the tasks with its dumped contents: shmid -> fd (given to hold())."""
    fds = {}
    for shmid, size in region_sizes(tasks).items():
        fds[shmid] = hold(_make_region(images, shmid, size))
    return fds


def _make_region(images, shmid, size):
    name = f"pagemap-shmem-{shmid}"
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
    if address in (None, MAP_FAILED):
        raise CriupyError(f"cannot make shared memory {shmid} of {size} bytes: {os.strerror(ctypes.get_errno())}")
    try:
        if images.exists(name):  # no image: the region held no data
            fill(images, name, address, size)
        return os.open(f"/proc/self/map_files/{address:x}-{address + size:x}", os.O_RDWR | os.O_CLOEXEC)
    finally:
        libc.munmap(address, size)


def fill(images, name, address, size):
    """Copy the pages of pagemap-shmem image name into the size bytes mapped at address."""
    try:
        head, *entries = images.read(name)
    except CriupyError:
        raise
    except Exception as e:
        raise CriupyError(f"image {name}.img is corrupt: {e}") from None
    path = images.path(f"pages-{head.pages_id}")
    try:
        pages = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CriupyError(f"image pages-{head.pages_id}.img is missing") from None
    try:
        offset_in_pages = 0
        for entry in entries:
            if not entry.flags & PE_PRESENT:
                continue
            length = entry.nr_pages * PAGE_SIZE
            if entry.vaddr % PAGE_SIZE or entry.vaddr + length > size:
                raise CriupyError(f"image {name}.img is corrupt: pages at {entry.vaddr:#x} outside the region")
            data = os.pread(pages, length, offset_in_pages)
            if len(data) != length:
                raise CriupyError(f"image pages-{head.pages_id}.img is truncated")
            ctypes.memmove(address + entry.vaddr, data, length)
            offset_in_pages += length
    finally:
        os.close(pages)
