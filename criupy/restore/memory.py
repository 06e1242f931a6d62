"""The dumped address space as the restorer rebuilds it.

From mm-PID.img and pagemap-PID.img: which mappings to create and how, the vectors that read
pages-N.img straight into place, and the kernel's vDSO areas to move; plus an address for the
restorer's own mapping that is free both here and in the dumped address space.
"""

import functools
import mmap
from typing import NamedTuple

from criupy import proc
from criupy.errors import CriupyError

PAGE_SIZE = 4096
TASK_SIZE = 0x7FFFFFFFF000  # end of the user address space with 4-level page tables
MMAP_MIN_ADDR = 0x10000

# vma_entry.status bits (CRIU's criu/include/image.h)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10  # a SysV attach: shmid is the segment's id (criupy.restore.sysvshm makes it)
VMA_AREA_VVAR = 1 << 12
VMA_AREA_MEMFD = 1 << 14  # a file mapping of a memfd: shmid names a MEMFD entry of files.img
VMA_KINDS_SUPPORTED = (
    VMA_AREA_REGULAR | VMA_AREA_STACK | VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_HEAP
    | VMA_FILE_PRIVATE | VMA_FILE_SHARED | VMA_ANON_SHARED | VMA_ANON_PRIVATE | VMA_AREA_VVAR | VMA_AREA_MEMFD
    | VMA_AREA_SYSVIPC
)

# pagemap_entry.flags
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2

# mmap flags a restored mapping keeps; placement flags (MAP_FIXED...) are the restorer's business
MAP_GROWSDOWN = 0x100
MAP_NORESERVE = 0x4000
MAP_KEPT = mmap.MAP_SHARED | mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_NORESERVE

SPECIAL_PATHS = ("[vvar]", "[vvar_vclock]", "[vdso]")


class Mapping(NamedTuple):
    """One mapping to create: restorer Vma fields, with the file still a file id of files.img."""

    start: int
    end: int
    pgoff: int
    prot: int
    flags: int
    file_id: int | None  # None: anonymous
    shared: bool
    shmem_id: int | None  # anonymous shared memory: mapped from the region criupy.restore.shmem makes
    madv: int
    sysv_id: int | None = None  # a SysV segment's id: the restorer attaches it
    fill: bool = False   # pages of pages-N.img go in
    premapped: int = 0   # made and filled before the fork at this address (criupy.restore.cow); 0: not


class SpecialArea(NamedTuple):
    """A vDSO area: where the kernel put it in criupy (and so in the child) and where it goes."""

    current: int
    dumped: int
    size: int


class MemoryPlan(NamedTuple):
    mappings: list   # Mapping, in address order
    iovecs: list     # (address, length), in the order of pages-N.img
    pages_size: int  # bytes of pages-N.img they read
    specials: list   # SpecialArea, in address order


def _kind(status):
    if status & VMA_AREA_VDSO:
        return "vdso"
    if status & VMA_AREA_VVAR:
        return "vvar"
    return None


def plan_memory(task):
    name = f"mm-{task.pid}.img"
    mappings = []
    dumped_specials = []
    for vma in task.mm.vmas:
        if vma.status & ~VMA_KINDS_SUPPORTED & 0xFFFF:
            raise CriupyError(f"{name}: mapping {vma.start:#x}-{vma.end:#x} is of a kind criupy cannot restore "
                              f"(status {vma.status:#x})")
        if vma.status & VMA_AREA_VSYSCALL or vma.start >= TASK_SIZE:
            continue  # the kernel's, at the same place in every process
        if _kind(vma.status):
            dumped_specials.append(vma)
            continue
        if not vma.status & VMA_AREA_REGULAR:
            raise CriupyError(f"{name}: mapping {vma.start:#x}-{vma.end:#x} is not restorable "
                              f"(status {vma.status:#x})")
        file_backed = bool(vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED))
        shared_anonymous = bool(vma.status & VMA_ANON_SHARED)
        sysv = bool(vma.status & VMA_AREA_SYSVIPC)
        flags = vma.flags & MAP_KEPT
        if sysv and (file_backed or shared_anonymous or vma.pgoff):
            raise CriupyError(f"{name}: SysV mapping {vma.start:#x}-{vma.end:#x} is corrupt")
        if shared_anonymous:
            flags = flags & ~mmap.MAP_ANONYMOUS | mmap.MAP_SHARED
        elif file_backed:
            flags &= ~mmap.MAP_ANONYMOUS
            if vma.shmid not in task.files:
                raise CriupyError(f"{name}: mapping {vma.start:#x} names file {vma.shmid}, not in files.img")
        else:
            flags |= mmap.MAP_ANONYMOUS
        mappings.append(Mapping(
            start=vma.start, end=vma.end, pgoff=vma.pgoff if file_backed or shared_anonymous else 0, prot=vma.prot,
            flags=flags, file_id=vma.shmid if file_backed else None, shared=bool(flags & mmap.MAP_SHARED),
            shmem_id=vma.shmid if shared_anonymous else None,
            madv=vma.madv if vma.HasField("madv") else 0, sysv_id=vma.shmid if sysv else None,
        ))
    iovecs, pages_size = _page_vectors(task, mappings)
    return MemoryPlan(mappings=mappings, iovecs=iovecs, pages_size=pages_size,
                      specials=_match_specials(dumped_specials))


def _page_vectors(task, mappings):
    """The pagemap as (address, length) vectors; marks the mappings that receive pages."""
    name = f"pagemap-{task.pid}.img"
    vectors = []
    total = 0
    index = 0  # pagemap entries come in address order: walk the mappings along
    for entry in task.pagemap:
        flags = entry.flags if entry.HasField("flags") else (PE_PARENT if entry.in_parent else PE_PRESENT)
        if flags & PE_PARENT:
            raise CriupyError(f"{name}: pages in a parent image (incremental dumps) are not supported")
        if not flags & PE_PRESENT:
            continue
        nr_pages = entry.nr_pages if entry.HasField("nr_pages") else entry.compat_nr_pages
        start, length = entry.vaddr, nr_pages * PAGE_SIZE
        end = start + length
        if start % PAGE_SIZE or not nr_pages or end > TASK_SIZE:
            raise CriupyError(f"{name} is corrupt: entry at {start:#x} of {nr_pages} pages")
        # every page must land in a private mapping, one mapping after the other without a hole
        while index < len(mappings) and mappings[index].end <= start:
            index += 1
        covered = start
        i = index
        while covered < end:
            if i >= len(mappings) or mappings[i].start > covered:
                raise CriupyError(f"{name} is corrupt: pages at {covered:#x} are outside every mapping")
            mappings[i] = mappings[i]._replace(fill=True)
            covered = mappings[i].end
            i += 1
        if vectors and vectors[-1][0] + vectors[-1][1] == start:
            vectors[-1] = (vectors[-1][0], vectors[-1][1] + length)
        else:
            vectors.append((start, length))
        total += length
    return vectors, total


def file_pieces(plan):
    """The page vectors cut where mappings end: (mapping index, address, length, offset in pages-N.img),
    in the order of the file (and of addresses)."""
    index = 0
    offset = 0
    for address, length in plan.iovecs:
        end = address + length
        while address < end:  # _page_vectors checked that every page is in a mapping
            while plan.mappings[index].end <= address:
                index += 1
            piece = min(end, plan.mappings[index].end) - address
            yield index, address, piece, offset
            address += piece
            offset += piece


def restorer_pages(plan):
    """What the restorer reads: (iovecs, runs), a run being (offset in pages-N.img, first vector, number of
    vectors) of pages one after the other in the file. Premapped mappings have their pages already."""
    iovecs = []
    runs = []
    next_offset = None  # where the last run's pages end in the file
    for index, address, length, offset in file_pieces(plan):
        if plan.mappings[index].premapped:
            continue
        if offset != next_offset:
            runs.append((offset, len(iovecs), 0))
            iovecs.append((address, length))
        elif iovecs[-1][0] + iovecs[-1][1] == address:
            iovecs[-1] = (iovecs[-1][0], iovecs[-1][1] + length)
        else:
            iovecs.append((address, length))
        runs[-1] = (runs[-1][0], runs[-1][1], len(iovecs) - runs[-1][1])
        next_offset = offset + length
    return iovecs, runs


@functools.cache
def _own_special_areas():
    """criupy's own vDSO areas (proc.Mapping), in address order. The kernel placed them when criupy started
    and criupy never moves them: read once, not once for each task of a tree."""
    return tuple(m for m in proc.maps() if m.path in SPECIAL_PATHS)


def _match_specials(dumped):
    """Pair the dumped vDSO areas with this kernel's, in address order; same kernel, same sizes."""
    current = _own_special_areas()
    current_kinds = [("vdso" if m.path == "[vdso]" else "vvar", m.size) for m in current]
    dumped_kinds = [(_kind(v.status), v.end - v.start) for v in dumped]
    if not dumped:
        return [SpecialArea(current=m.start, dumped=0, size=m.size) for m in current]
    if current_kinds != dumped_kinds:
        raise CriupyError(
            "the dumped vDSO does not match this kernel's (dumped on another kernel?): "
            f"dumped {dumped_kinds}, here {current_kinds}"
        )
    return [SpecialArea(current=m.start, dumped=v.start, size=m.size) for m, v in zip(current, dumped)]


def find_free_area(size, taken):
    """A page-aligned address where size bytes are free of every (start, end) range in taken: criupy's
    own mappings and the dumped process's.

    The highest such gap is taken, one guard page from everything, below the top of the ranges.
    """
    taken = sorted(taken)
    candidates = []
    previous_end = MMAP_MIN_ADDR
    for start, end in taken + [(TASK_SIZE, TASK_SIZE)]:
        if start - previous_end >= size + 2 * PAGE_SIZE:
            candidates.append(start - PAGE_SIZE - size)
        previous_end = max(previous_end, end)
    # The top gap is where the kernel puts the stack of new processes; prefer one below it.
    below_top = [c for c in candidates if c < taken[-1][0]]
    if not below_top and not candidates:
        raise CriupyError("no room in the address space for the restorer")
    return max(below_top or candidates) & ~(PAGE_SIZE - 1)
