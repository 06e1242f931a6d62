"""Which pages of a private mapping hold data of the task's own: present or swapped, anonymous, not the zero page.

Pages a private file mapping still shares with the file (PM_FILE) come back from the file at restore;
the zero page reads as zeros in a fresh mapping. Everything else must be saved.

Two ways to ask the kernel, both answering in ranges so Python never looks at single pages:
- the PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7+) filters pages by category and returns
  ranges directly;
- before it, /proc/PID/pagemap holds one 64-bit entry per page; its flag bytes are classified with
  bytes.translate and runs found with regular expressions, both in C.
"""

import ctypes
import fcntl
import mmap
import os
import re
import struct

from criupy.errors import CriupyError

PAGE_SIZE = 4096

# linux/fs.h: struct pm_scan_arg, struct page_region, PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)
PAGEMAP_SCAN = 0xC0606610
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
SCAN_REGIONS = 4096  # page_region slots per ioctl; a scan that fills them goes on from walk_end


class PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_UFFD_WP = 1 << 57
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
ENTRIES_PER_READ = 1 << 16  # 512 KiB of pagemap per read

# The top byte of an entry (bits 56..63) -> 1 if the page is present or swapped and not PM_FILE.
_TOP_BYTE_WANTED = bytes(
    1 if b & ((PM_PRESENT | PM_SWAP) >> 56) and not b & (PM_FILE >> 56) else 0 for b in range(256)
)
_RUNS = re.compile(b"\x01+")


def has_pagemap_scan(pagemap_fd):
    """Whether this kernel knows PAGEMAP_SCAN (an empty scan succeeds)."""
    arg = PmScanArg(size=ctypes.sizeof(PmScanArg), start=0, end=0)
    try:
        fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)
    except OSError:
        return False
    return True


class PagemapReader:
    """The pagemap of one (stopped) task. ranges(start, end) -> [(start, end)] of the pages to save."""

    def __init__(self, pid, use_scan=None):
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CriupyError(f"no process with PID {pid}") from None
        self.use_scan = has_pagemap_scan(self.fd) if use_scan is None else use_scan
        self._regions = (PageRegion * SCAN_REGIONS)() if self.use_scan else None
        self._zero_pfn = None if self.use_scan else _zero_page_pfn()

    def close(self):
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ranges(self, start, end):
        return self._scan(start, end) if self.use_scan else self._read(start, end)

    def _scan(self, start, end):
        result = []
        arg = PmScanArg(
            size=ctypes.sizeof(PmScanArg), start=start, end=end,
            vec=ctypes.addressof(self._regions), vec_len=SCAN_REGIONS,
            # present or swapped, and neither a page of the file nor the zero page
            category_inverted=PAGE_IS_PFNZERO | PAGE_IS_FILE,
            category_mask=PAGE_IS_PFNZERO | PAGE_IS_FILE,
            category_anyof_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask=PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        )
        while arg.start < end:
            try:
                count = fcntl.ioctl(self.fd, PAGEMAP_SCAN, arg)
            except OSError as e:
                raise CriupyError(f"PAGEMAP_SCAN of PID {self.pid} at {arg.start:#x}: {e.strerror}") from None
            _append_ranges(result, ((r.start, r.end) for r in self._regions[:count]))
            if arg.walk_end <= arg.start:
                break
            arg.start = arg.walk_end
        return result

    def _read(self, start, end):
        result = []
        for chunk_start in range(start, end, ENTRIES_PER_READ * PAGE_SIZE):
            chunk_end = min(end, chunk_start + ENTRIES_PER_READ * PAGE_SIZE)
            size = (chunk_end - chunk_start) // PAGE_SIZE * 8
            entries = os.pread(self.fd, size, chunk_start // PAGE_SIZE * 8)
            if len(entries) != size:
                raise CriupyError(f"short read of the pagemap of PID {self.pid} at {chunk_start:#x}")
            wanted = bytearray(entries[7::8].translate(_TOP_BYTE_WANTED))
            for first, last in self._zero_page_runs(entries):
                wanted[first:last] = bytes(last - first)
            _append_ranges(result, (
                (chunk_start + m.start() * PAGE_SIZE, chunk_start + m.end() * PAGE_SIZE)
                for m in _RUNS.finditer(wanted)))
        return result

    def _zero_page_runs(self, entries):
        """(first, last) page indexes of runs of entries mapping the zero page."""
        if not self._zero_pfn:
            return  # PFNs hidden (no CAP_SYS_ADMIN): zero pages are saved like any other
        pattern = _zero_page_pattern(self._zero_pfn)
        for m in pattern.finditer(entries):
            if m.start() % 8 == 0:
                yield m.start() // 8, m.end() // 8


def _append_ranges(result, ranges):
    for start, end in ranges:
        if result and result[-1][1] == start:
            result[-1] = (result[-1][0], end)
        else:
            result.append((start, end))


def _zero_page_pattern(pfn):
    """Runs of 8-byte entries: present, the zero page's PFN, soft-dirty and uffd-wp either way."""
    low = struct.pack("<Q", pfn)
    byte6 = low[6]
    tops = (PM_PRESENT >> 56, (PM_PRESENT | PM_UFFD_WP) >> 56)
    entry = (re.escape(low[:6]) + b"[" + re.escape(bytes([byte6, byte6 | 0x80])) + b"]"
             + b"[" + re.escape(bytes(tops)) + b"]")
    return re.compile(b"(?:" + entry + b")+", re.DOTALL)


def _zero_page_pfn():
    """The PFN of the kernel's zero page, seen by reading a fresh anonymous page of our own; 0 if hidden."""
    page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        page[0]  # a read fault maps the zero page
        view = ctypes.c_char.from_buffer(page)
        address = ctypes.addressof(view)
        del view  # the mapping cannot close while ctypes holds it
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (entry,) = struct.unpack("<Q", os.pread(fd, 8, address // PAGE_SIZE * 8))
        finally:
            os.close(fd)
    finally:
        page.close()
    return entry & PM_PFN_MASK if entry & PM_PRESENT else 0
