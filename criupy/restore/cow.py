"""Private memory that a child shares with its parent copy-on-write, as after the fork() that made it.

A forked child's private anonymous memory is its parent's until one of them writes to it. Restoring
every task's pages anew would give each child a copy of its own: a tree of 20 workers forked from a
16 MiB parent would take 20 times the memory it took when dumped. As CRIU does, a mapping that a task
and its child both have (same start, end and flags, private, anonymous, with dumped pages) is made and
filled by the task before it creates its children: premapped, at an address away from every task's
dumped layout, reserved by criupy beforehand. The child gets it by fork, writes only the pages whose
dumped content differs and drops the pages it does not have, and premaps in turn what it shares with
its own children. Each task's restorer moves its premapped memory into place with mremap.

    premaps = plan(tasks, plans, pages_fds, own_mappings)   in criupy, before the tree is created
    premaps.premap(task)                                    in each new task, before it creates its children
    premaps.release()                                       in criupy, once the tree exists
"""

import ctypes
import mmap
import os
from typing import NamedTuple

from criupy.errors import CriupyError
from criupy.libc import MAP_FAILED, libc
from criupy.restore.memory import MAP_GROWSDOWN, MAP_NORESERVE, PAGE_SIZE, file_pieces

PROT_NONE = 0
MAP_FIXED = 0x10
MADV_DONTNEED = 4
MADV_POPULATE_WRITE = 23
COMPARE_CHUNK = 64 * PAGE_SIZE  # compared at once; only a chunk that differs is compared page by page


class Area(NamedTuple):
    """One mapping a task premaps."""

    start: int       # the mapping, as dumped
    end: int
    flags: int
    address: int     # where it is premapped
    inherited: bool  # made by the parent, with the parent's pages: only what differs is written
    pieces: list     # (address, length, offset in pages-N.img): this task's pages in it


class TaskPremaps:
    """What one task premaps before it creates its children."""

    def __init__(self, areas, dropped, pages_fd, pages_size):
        self.areas = areas
        self.dropped = dropped  # (address, size): premapped by the parent, of no use here
        self.pages_fd = pages_fd  # the task's pages-N.img, the fd the task inherits
        self.pages_size = pages_size


class Premaps:
    """The tree's premapped memory: plan() makes it in criupy, premap(task) runs in each new task."""

    def __init__(self, plans):
        self.plans = dict(plans)  # pid -> MemoryPlan, the premapped mappings marked with their address
        self.tasks = {}           # pid -> TaskPremaps, for the tasks that premap (or drop) anything
        self.reserved = []        # (address, size) reserved in criupy

    def premap(self, task):
        """In the new task, before it creates its children: make and fill its premapped memory."""
        if task.pid in self.tasks:
            _premap(self.tasks[task.pid])

    def release(self):
        """Unmap criupy's reservations (the tasks have their own)."""
        for address, size in self.reserved:
            libc.munmap(address, size)
        self.reserved.clear()


def _shareable(mapping):
    """A mapping whose pages a child can share: private anonymous memory with dumped pages. Not a stack
    that grows down (its guard gap would have to move with it), as in CRIU."""
    return (mapping.fill and mapping.file_id is None and mapping.shmem_id is None and mapping.sysv_id is None
            and not mapping.shared and not mapping.flags & MAP_GROWSDOWN)


def _key(mapping):
    return mapping.start, mapping.end, mapping.flags


def plan(tasks, plans, pages_fds, own_mappings):
    """Which mappings each live task premaps and where; reserves that room in criupy (PROT_NONE: every
    task created gets the reservation, and a task maps its own memory over it). pages_fds: pid -> the
    fd of its pages-N.img that the task will have."""
    live = {task.pid: task for task in tasks if not task.zombie}
    children = {pid: [] for pid in live}
    for task in tasks[1:]:
        if task.pid in live:
            children[task.ppid].append(task.pid)
    shareable = {pid: {_key(m) for m in plan.mappings if _shareable(m)} for pid, plan in plans.items()}
    layouts = [(m.start, m.end) for plan in plans.values() for m in plan.mappings]
    layouts += [(s.dumped, s.dumped + s.size) for plan in plans.values() for s in plan.specials]
    premapped = {}  # pid -> {key: address}
    result = Premaps(plans)
    try:
        order = [tasks[0].pid]
        for pid in order:  # parents before their children
            order.extend(children[pid])
            parent = premapped.get(live[pid].ppid, {})
            inherited = {key: address for key, address in parent.items() if key in shareable[pid]}
            wanted = {key for child in children[pid] for key in shareable[child]}
            fresh = sorted((wanted & shareable[pid]) - inherited.keys())
            addresses = dict(inherited)
            if fresh:
                size = sum(end - start for start, end, _ in fresh)
                address = own_mappings.map_free_area(size, PROT_NONE, MAP_NORESERVE, layouts,
                                                     f"the memory PID {pid} shares with its children")
                result.reserved.append((address, size))
                for start, end, flags in fresh:
                    addresses[start, end, flags] = address
                    address += end - start
            premapped[pid] = addresses
            dropped = [(address, key[1] - key[0]) for key, address in parent.items() if key not in inherited]
            if addresses or dropped:
                result.plans[pid], areas = _mark(plans[pid], addresses, inherited)
                result.tasks[pid] = TaskPremaps(areas, dropped, pages_fds[pid], plans[pid].pages_size)
    except BaseException:
        result.release()
        raise
    return result


def _mark(plan, addresses, inherited):
    """The plan with its premapped mappings marked, and their Areas."""
    pieces = {}
    for index, address, length, offset in file_pieces(plan):
        pieces.setdefault(index, []).append((address, length, offset))
    mappings = list(plan.mappings)
    areas = []
    for index, m in enumerate(mappings):
        key = _key(m)
        if key in addresses:
            mappings[index] = m._replace(premapped=addresses[key])
            areas.append(Area(m.start, m.end, m.flags, addresses[key], key in inherited, pieces[index]))
    return plan._replace(mappings=mappings), areas


def _premap(task_premaps):
    for address, size in task_premaps.dropped:
        libc.munmap(address, size)
    if not task_premaps.areas:
        return
    image = libc.mmap(None, task_premaps.pages_size, mmap.PROT_READ, mmap.MAP_PRIVATE, task_premaps.pages_fd, 0)
    if image in (None, MAP_FAILED):
        raise CriupyError(f"cannot map the pages image: {_errno()}")
    try:
        for area in task_premaps.areas:
            if area.inherited:
                _write_differences(area, image)
            else:
                _make(area, image)
    finally:
        libc.munmap(image, task_premaps.pages_size)


def _errno():
    return os.strerror(ctypes.get_errno())


def _make(area, image):
    """Map the area over its reservation and copy its pages in."""
    size = area.end - area.start
    address = libc.mmap(area.address, size, mmap.PROT_READ | mmap.PROT_WRITE, area.flags | MAP_FIXED, -1, 0)
    if address != area.address:
        raise CriupyError(f"cannot premap {area.start:#x}-{area.end:#x} at {area.address:#x}: {_errno()}")
    for start, length, offset in area.pieces:
        target = area.address + start - area.start
        libc.madvise(target, length, MADV_POPULATE_WRITE)  # one call, not a fault per page (EINVAL before 5.14)
        ctypes.memmove(target, image + offset, length)


def _write_differences(area, image):
    """The parent's pages stay shared where they hold what this task's dump says; the others are written,
    and the pages this task does not have are dropped (they read as zeroes again, as when dumped)."""
    shift = area.address - area.start
    covered = area.start
    for start, length, offset in area.pieces:
        if start > covered:
            _drop(covered + shift, start - covered)
        target, source = start + shift, image + offset
        for at in range(0, length, COMPARE_CHUNK):
            chunk = min(COMPARE_CHUNK, length - at)
            if libc.memcmp(target + at, source + at, chunk):
                for page in range(at, at + chunk, PAGE_SIZE):
                    if libc.memcmp(target + page, source + page, PAGE_SIZE):
                        ctypes.memmove(target + page, source + page, PAGE_SIZE)
        covered = start + length
    if area.end > covered:
        _drop(covered + shift, area.end - covered)


def _drop(address, size):
    if libc.madvise(address, size, MADV_DONTNEED):
        raise CriupyError(f"cannot drop the pages at {address:#x}: {_errno()}")
