"""The address space: mappings (vma_entry for mm-PID.img) and the pages to save (pagemap-PID.img, pages-N.img).

Mappings come from /proc/PID/smaps, classified the way CRIU does (its vma status bits); file mappings
name a reg_file_entry of files.img. The pages to save are found with criupy.dump.pagemap and written
by the parasite straight from the task's memory into pages-N.img, in the order the pagemap lists them.
"""

import contextlib
import logging
import mmap
import os
import stat
from typing import NamedTuple

from criupy import buildid, proc
from criupy.dump.pagemap import PAGE_SIZE, PagemapReader
from criupy.errors import CriupyError
from criupy.images.pb import pagemap_pb2, vma_pb2

log = logging.getLogger("criupy.dump")

# vma_entry.status bits (CRIU's criu/include/image.h)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_VVAR = 1 << 12
VMA_AREA_MEMFD = 1 << 14

# pagemap_entry.flags
PE_PRESENT = 1 << 2

MAP_GROWSDOWN = 0x100
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000

# smaps VmFlags -> mmap flags, and -> madvise advice numbers (the bit set in vma_entry.madv)
VM_FLAG_MMAP = {"gd": MAP_GROWSDOWN, "lo": MAP_LOCKED, "nr": MAP_NORESERVE, "ht": MAP_HUGETLB}
VM_FLAG_MADVISE = {"sr": 2, "rr": 1, "dc": 10, "dd": 16, "mg": 12, "hg": 14, "nh": 15, "wf": 18}
# VM_IO / VM_PFNMAP: device memory, which neither the parasite nor a restore can copy
VM_FLAGS_DEVICE = ("io", "pf")

VDSO_AREAS = {"[vdso]": VMA_AREA_VDSO, "[vvar]": VMA_AREA_VVAR, "[vvar_vclock]": VMA_AREA_VVAR}
SKIPPED_AREAS = ("[vsyscall]",)  # the kernel's, at the same address in every process


def describe(mapping):
    name = f" ({mapping.path})" if mapping.path else ""
    return f"mapping {mapping.start:#x}-{mapping.end:#x}{name}"


class Vma(NamedTuple):
    """One mapping to dump: its image entry, and whether its pages are the task's to save."""

    entry: object         # vma_entry
    private_pages: bool   # a private mapping whose written pages go to pages-N.img


def _prot(perms):
    return ((mmap.PROT_READ if perms[0] == "r" else 0) | (mmap.PROT_WRITE if perms[1] == "w" else 0)
            | (mmap.PROT_EXEC if perms[2] == "x" else 0))


def _flags_and_madv(vm_flags):
    flags = madv = 0
    for flag in vm_flags:
        flags |= VM_FLAG_MMAP.get(flag, 0)
        if flag in VM_FLAG_MADVISE:
            madv |= 1 << VM_FLAG_MADVISE[flag]
    return flags, madv


def check_mappings(pid):
    """Raise CriupyError naming the first mapping criupy cannot dump.

    The task may still run: a mapping that went away meanwhile is no concern. The mapped files'
    build-ids are read here, out of the frozen time: the dump finds them kept (criupy.buildid.build_id_words)."""
    for entry in proc.smaps(pid):
        kind, st = _classify(pid, entry)
        if kind == "file":
            link = f"/proc/{pid}/map_files/{entry.mapping.start:x}-{entry.mapping.end:x}"
            with contextlib.suppress(OSError):
                buildid.build_id_words(link, st)


def _classify(pid, smaps_entry):
    """(kind, stat) of one mapping: kind 'skip', 'vdso', 'anon', 'shmem', 'sysv', 'memfd', 'file' (or 'gone'),
    stat the mapped file's for 'file' and 'memfd' (else None); raises for what is not supported."""
    m = smaps_entry.mapping
    if m.path in SKIPPED_AREAS:
        return "skip", None
    if m.path in VDSO_AREAS:
        return "vdso", None
    if m.shared and m.path == "/dev/zero (deleted)" and m.inode:
        return "shmem", None  # MAP_SHARED|MAP_ANONYMOUS: the kernel's shmem file, one inode per mmap call
    if m.path.startswith("/memfd:") and m.inode:
        if "ht" in smaps_entry.vm_flags:
            raise CriupyError(f"{describe(m)} maps a hugetlb memfd: not supported yet")
        return "memfd", _mapped_file_stat(pid, m)
    if m.shared and m.path.startswith("/SYSV") and m.path.endswith(" (deleted)"):
        if "ht" in smaps_entry.vm_flags:
            raise CriupyError(f"{describe(m)} is a hugetlb SysV segment: not supported yet")
        return "sysv", None  # a SysV attach: the inode is the segment's id
    if m.shared and (m.inode == 0 or m.path.startswith("/dev/zero")):
        raise CriupyError(f"{describe(m)} is shared memory of a kind not supported yet")
    if any(flag in smaps_entry.vm_flags for flag in VM_FLAGS_DEVICE):
        raise CriupyError(f"{describe(m)} is device memory (VM_IO/VM_PFNMAP): not supported yet")
    if "ss" in smaps_entry.vm_flags:
        raise CriupyError(f"{describe(m)} is a shadow stack: not supported yet")
    if m.inode == 0:
        return "anon", None
    st = _mapped_file_stat(pid, m)
    if st is None:
        return "gone", None
    if not stat.S_ISREG(st.st_mode):
        raise CriupyError(f"{describe(m)} maps a device or special file: not supported yet")
    return "file", st


def _mapped_file_stat(pid, m):
    """The mapped file's stat; None if the mapping is gone (unmapped since smaps was read)."""
    try:
        return os.stat(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
    except FileNotFoundError:
        return None


def collect_vmas(pid, smaps_entries, files):
    """The task's mappings (smaps_entries: its proc.smaps()) as Vma, in address order; file mappings get their
    files.img entry from files.

    Read before the parasite is loaded: its mapping is not the task's."""
    vmas = []
    for smaps_entry in smaps_entries:
        m = smaps_entry.mapping
        kind, st = _classify(pid, smaps_entry)
        if kind == "skip":
            continue
        if kind == "gone":  # the task is stopped: its mappings cannot change
            raise CriupyError(f"{describe(m)} of stopped PID {pid} went away")
        flags, madv = _flags_and_madv(smaps_entry.vm_flags)
        flags |= mmap.MAP_SHARED if m.shared else mmap.MAP_PRIVATE
        entry = vma_pb2.vma_entry(start=m.start, end=m.end, pgoff=0, shmid=0, prot=_prot(m.perms), flags=flags,
                                  status=VMA_AREA_REGULAR, fd=-1)
        if madv:
            entry.madv = madv
        if kind == "vdso":
            entry.status |= VDSO_AREAS[m.path]
            entry.flags |= mmap.MAP_ANONYMOUS
        elif kind == "shmem":
            # shared with other processes of the tree: its pages are dumped once, by criupy.dump.shmem
            entry.status |= VMA_ANON_SHARED
            entry.flags |= mmap.MAP_ANONYMOUS
            entry.shmid = m.inode
            entry.pgoff = m.offset
        elif kind == "sysv":
            # the segment is dumped once, by criupy.dump.sysvshm; the restorer attaches it again
            entry.status |= VMA_AREA_SYSVIPC
            entry.shmid = m.inode
            entry.pgoff = m.offset
        elif kind == "anon":
            entry.status |= VMA_ANON_PRIVATE | (VMA_AREA_HEAP if m.path == "[heap]" else 0)
            entry.flags |= mmap.MAP_ANONYMOUS
        else:
            writable_shared = m.shared and "w" in m.perms
            open_flags = os.O_RDWR if writable_shared else os.O_RDONLY
            entry.status |= VMA_FILE_SHARED if m.shared else VMA_FILE_PRIVATE
            if kind == "memfd":
                entry.status |= VMA_AREA_MEMFD  # shmid names a MEMFD entry of files.img (as CRIU)
            entry.pgoff = m.offset
            entry.fdflags = open_flags
            entry.shmid = files.mapped_file(describe(m), m.path, st, open_flags,
                                            f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
        vmas.append(Vma(entry, private_pages=kind in ("anon", "file", "memfd") and not m.shared))
    return vmas


class PageRanges(NamedTuple):
    """The pages to save: (address, length) ranges in pagemap order, and how many pages were looked at."""

    ranges: list
    pages_scanned: int

    @property
    def pages(self):
        return sum(length for _, length in self.ranges) // PAGE_SIZE


def find_pages(pid, vmas, use_scan=None):
    """The ranges of the private mappings' pages that must be saved (see criupy.dump.pagemap)."""
    ranges = []
    scanned = 0
    with PagemapReader(pid, use_scan) as pagemap:
        log.debug("pagemap of PID %d read with %s", pid, "PAGEMAP_SCAN" if pagemap.use_scan else "reads")
        for vma in vmas:
            if not vma.private_pages:
                continue
            scanned += (vma.entry.end - vma.entry.start) // PAGE_SIZE
            ranges += [(start, end - start) for start, end in pagemap.ranges(vma.entry.start, vma.entry.end)]
    return PageRanges(ranges, scanned)


def pagemap_entries(pages, pages_id):
    """pagemap-PID.img: the head naming pages-<pages_id>.img, then one entry per range, in file order."""
    head = pagemap_pb2.pagemap_head(pages_id=pages_id)
    return [head] + [pagemap_pb2.pagemap_entry(vaddr=address, nr_pages=length // PAGE_SIZE, flags=PE_PRESENT)
                     for address, length in pages.ranges]
