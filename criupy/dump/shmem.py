"""Anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS): pagemap-shmem-ID.img + pages-N.img, once per region.

Such a mapping is a file of the kernel's shmem filesystem ("/dev/zero (deleted)"); every process that
inherited it over fork maps the same inode, which is the mapping's shmid in mm-PID.img (as CRIU keys
them). A memfd is a file of the same filesystem, its contents dumped alike, keyed by its inode (as
CRIU does). Contents are read once, through /proc/PID/map_files of any process mapping it (or an fd of
the memfd), taking only the pages that hold data (SEEK_DATA/SEEK_HOLE, so never-touched pages cost nothing). The pagemap
entries' vaddr is the offset in the region, as CRIU writes them.
"""

import errno
import logging
import os

from criupy.dump.memory import PAGE_SIZE, PE_PRESENT, VMA_ANON_SHARED
from criupy.errors import CriupyError
from criupy.images.pb import pagemap_pb2

log = logging.getLogger("criupy.dump")


class SharedMemory:
    """The shared regions of the dumped tree: inode -> the path to read it through, and its size."""

    def __init__(self):
        self.regions = {}  # shmid -> [path to read it through, size in bytes]

    def add_vmas(self, pid, vmas):
        for vma in vmas:
            e = vma.entry
            if not e.status & VMA_ANON_SHARED:
                continue
            end_offset = e.pgoff + e.end - e.start
            region = self.regions.setdefault(e.shmid, [f"/proc/{pid}/map_files/{e.start:x}-{e.end:x}", 0])
            region[1] = max(region[1], end_offset)

    def add_file(self, shmid, path, size):
        """A memfd's contents: size bytes of the file at path (a /proc magic link to it)."""
        self.regions[shmid] = [path, size + -size % PAGE_SIZE]

    def dump(self, images, first_pages_id):
        """Write each region's pagemap and pages; returns the number of pages written."""
        written = 0
        for pages_id, (shmid, (path, size)) in enumerate(sorted(self.regions.items()), first_pages_id):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise CriupyError(f"cannot read shared memory {shmid} through {path}: {e.strerror}") from None
            try:
                ranges = _data_ranges(fd, size)
                entries = [pagemap_pb2.pagemap_head(pages_id=pages_id)]
                pages_fd = images.open_raw(f"pages-{pages_id}", write=True)
                try:
                    for start, end in ranges:
                        entries.append(pagemap_pb2.pagemap_entry(vaddr=start, nr_pages=(end - start) // PAGE_SIZE,
                                                                 flags=PE_PRESENT))
                        _copy(fd, pages_fd, start, end)
                finally:
                    os.close(pages_fd)
            finally:
                os.close(fd)
            images.write(f"pagemap-shmem-{shmid}", entries)
            pages = sum(end - start for start, end in ranges) // PAGE_SIZE
            log.debug("shared memory %d: %d of %d pages hold data", shmid, pages, size // PAGE_SIZE)
            written += pages
        return written


def _data_ranges(fd, size):
    """(start, end) page-aligned byte ranges below size that hold data."""
    ranges = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # no data after offset
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        start -= start % PAGE_SIZE
        end += -end % PAGE_SIZE
        ranges.append((start, end))
        offset = end
    return ranges


def _copy(src, dst, start, end):
    while start < end:
        chunk = os.pread(src, min(end - start, 1 << 20), start)
        if not chunk:
            raise CriupyError(f"shared memory ended at offset {start:#x}, before {end:#x}")
        os.write(dst, chunk)
        start += len(chunk)
