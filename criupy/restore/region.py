"""The restorer's mapping: blob, PIE plugin, argument area, stack and vDSO parking, built in criupy's memory.

criupy maps it at an address free both here and in the dumped address space and fills it in; the
task created by clone3 gets a copy of it at the same address, and criupy drops its own copy.
"""

import ctypes
import errno
import mmap
import os

from criupy import proc
from criupy.blobs import restorer as restorer_module
from criupy.blobs.loader import Blob, page_round
from criupy.errors import CriupyError
from criupy.libc import libc
from criupy.restore import args as rst
from criupy.restore.memory import TASK_SIZE, find_free_area

STACK_SIZE = 64 * 1024
SIGFRAME_SIZE = 32 * 1024  # rt_sigframe + the largest XSAVE area without AMX tiles, with room to spare
THREAD_STACK_SIZE = 64 * 1024  # each restored thread's own stack in the restorer (PIE plugin hooks run on it too)
MAP_FIXED_NOREPLACE = 0x100000

BLOB = Blob(restorer_module)


class OwnMappings:
    """criupy's own mappings as (start, end), read once for all the regions of a tree (reading and
    parsing /proc/self/maps takes a millisecond or more): each mapping made by map_free_area adds itself,
    and a mapping Python made meanwhile shows as EEXIST when one is mapped there, which reads them again."""

    def __init__(self):
        self.read()

    def read(self):
        self.ranges = [(m.start, m.end) for m in proc.maps() if m.start < TASK_SIZE]

    def map_free_area(self, size, prot, flags, avoid, what):
        """Map size bytes of anonymous memory where nothing of criupy's is, nor any (start, end) of avoid;
        returns the address. what names the mapping in the error."""
        for attempt in (1, 2):
            start = find_free_area(size, self.ranges + list(avoid))
            address = libc.mmap(start, size, prot, flags | mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                                -1, 0)
            if address == start:
                self.ranges.append((start, start + size))
                return start
            err = ctypes.get_errno()
            if err != errno.EEXIST or attempt == 2:
                raise CriupyError(f"cannot map {what} at {start:#x}: {os.strerror(err)}")
            self.read()


class Region:
    """The restorer mapping in criupy; allocate() hands out its argument space in order."""

    def __init__(self, data_size, parking_size, dumped_ranges, plugin=None, own_mappings=None):
        # A PIE plugin (a Blob) goes right after the restorer, relocated for where it lands.
        self.plugin = plugin
        self.blob_size = BLOB.size + (plugin.size if plugin else 0)
        self.data_size = page_round(data_size)
        self.size = self.blob_size + self.data_size + STACK_SIZE + parking_size
        own_mappings = own_mappings or OwnMappings()
        self.start = own_mappings.map_free_area(self.size, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC, 0,
                                                dumped_ranges, "the restorer")
        ctypes.memmove(self.start, BLOB.image(self.start), len(BLOB.code))
        self.plugin_base = self.start + BLOB.size
        if plugin:
            ctypes.memmove(self.plugin_base, plugin.image(self.plugin_base), len(plugin.code))
        self._next = self.start + self.blob_size
        self.stack_top = self.start + self.blob_size + self.data_size + STACK_SIZE
        self.parking = self.stack_top

    def allocate(self, size, align=8):
        address = (self._next + align - 1) & ~(align - 1)
        if address + size > self.start + self.blob_size + self.data_size:
            raise AssertionError("restorer argument area overflow")  # data_size was computed wrong
        self._next = address + size
        return address

    def array(self, ctype, items):
        """Place items (each a dict of fields, or bytes for c_uint8 arrays) as a ctype array; its address."""
        items = list(items)
        address = self.allocate(ctypes.sizeof(ctype) * max(len(items), 1))
        array = (ctype * max(len(items), 1)).from_address(address)
        for slot, fields in zip(array, items):
            for name, value in fields.items():
                setattr(slot, name, value)
        return address

    def bytes(self, data, align=8):
        address = self.allocate(len(data), align)
        ctypes.memmove(address, data, len(data))
        return address

    def entry(self):
        return BLOB.address("restorer_entry", self.start)

    def export(self, name):
        return BLOB.address(name, self.start)

    def hook(self, name):
        """Where the plugin's hook name is, 0 when there is no plugin or it has no such hook."""
        if self.plugin is None or name not in self.plugin.exports:
            return 0
        return self.plugin.address(name, self.plugin_base)

    def unmap(self):
        """Drop criupy's copy (the task has its own)."""
        if self.start:
            libc.munmap(self.start, self.size)
            self.start = 0


def data_size(nr_vmas, nr_iovecs, nr_runs, nr_specials, nr_fds, nr_timers, nr_signals, nr_groups, xsave_size):
    """Bytes of argument area for these counts, alignment slack included."""
    s = ctypes.sizeof
    return (
        s(rst.Args) + nr_vmas * s(rst.Vma) + nr_iovecs * s(rst.Iovec) + nr_runs * s(rst.PageRun)
        + nr_specials * s(rst.SpecialVma)
        + nr_fds * s(rst.Fd) + nr_timers * s(rst.PosixTimer) + nr_signals * s(rst.Signal) + nr_groups * 4
        + xsave_size + SIGFRAME_SIZE + 16 * 64 + mmap.PAGESIZE
    )

