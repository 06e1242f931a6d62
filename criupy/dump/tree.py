"""The process tree: which tasks are dumped (pstree.img), the kernel objects they use (ids-PID.img), inventory.img.

The tree is the root process and its descendants, each with all its threads; zombies among them
are recorded, not seized. Objects tasks may share (mm, files table, fs, signal handlers, namespaces)
get ids from one IdGenerator per dump; namespaces are told apart by inode.
"""

import contextlib
import logging
import os
import signal
import time
from typing import NamedTuple

from criupy import proc
from criupy.errors import CriupyError
from criupy.images.pb import core_pb2, inventory_pb2, pstree_pb2

log = logging.getLogger("criupy.dump")

TASK_DEAD = 2  # task_core_entry.task_state of a zombie (CRIU's TASK_DEAD)

IMAGES_VERSION = 2  # CRIU's CRTOOLS_IMAGES_V1_1
NAMESPACES = (("pid", "pid_ns_id"), ("net", "net_ns_id"), ("ipc", "ipc_ns_id"), ("uts", "uts_ns_id"),
              ("mnt", "mnt_ns_id"), ("user", "user_ns_id"), ("cgroup", "cgroup_ns_id"), ("time", "time_ns_id"))


def check_task(pid):
    """Raise CriupyError if PID is not a single process (of any number of threads) criupy can dump; its
    status otherwise."""
    if not isinstance(pid, int) or pid <= 0:
        raise CriupyError(f"no process with PID {pid}")
    status = proc.status(pid)
    if status.get("Tgid") != str(pid):
        raise CriupyError(f"PID {pid} is a thread of process {status.get('Tgid')}; give the process's PID")
    if status.get("Seccomp", "0") != "0":
        raise CriupyError(f"PID {pid} runs under seccomp: not supported yet")
    return status


def pstree_entry(stat, tids, is_root):
    # The root of the dumped tree has no parent in it: ppid 0, as CRIU writes. tids: the leader first.
    return pstree_pb2.pstree_entry(pid=stat.pid, ppid=0 if is_root else stat.ppid, pgid=stat.pgrp,
                                   sid=stat.session, threads=tids)


def zombie_core_entry(stat):
    """A zombie's core: its state and the exit status its parent will reap (in waitpid's encoding)."""
    task = core_pb2.task_core_entry(task_state=TASK_DEAD, exit_code=stat.exit_code, personality=0, flags=0,
                                    blk_sigset=0, comm=stat.comm)
    return core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64, tc=task)


class Member(NamedTuple):
    """One process of the frozen tree."""

    pid: int
    parent: int       # 0 for the root
    group: object     # its seized threads (criupy.infect.threads.ThreadGroup); None for a zombie

    @property
    def zombie(self):
        return self.group is None


def _state(pid):
    """'Z' for a zombie, None if gone, else the state letter."""
    try:
        return proc.stat(pid).state
    except (CriupyError, FileNotFoundError):
        return None


class FrozenTree:
    """The root and all its descendants, each seized (zombies only recorded), parents before children."""

    def __init__(self):
        self.members = []  # Member, parents before children

    def pids(self):
        return {m.pid for m in self.members}

    def seize_all(self, root):
        """Seize root, then every child of a seized process, until a pass over the tree finds none new.

        A seized process is stopped and forks no more, so this ends even in a tree that forks all the
        time; a child that exits before it is seized is no part of the tree, or is found as a zombie."""
        from criupy.infect.threads import seize_threads as seize

        self.members.append(Member(root, 0, seize(root)))
        while True:
            found = False
            for member in list(self.members):
                if member.zombie:
                    continue
                for child in proc.children(member.pid):
                    if child in self.pids():
                        continue
                    found = True
                    self._seize_child(child, member.pid, seize)
            if not found:
                return

    def _seize_child(self, pid, parent, seize):
        state = _state(pid)
        if state is None:
            return
        if state in ("Z", "X"):
            self.members.append(Member(pid, parent, None))
            return
        try:
            group = seize(pid)
        except CriupyError:
            if _state(pid) in (None, "Z", "X"):
                return  # it exited meanwhile: gone, or found as a zombie on the next pass
            raise
        self.members.append(Member(pid, parent, group))
        log.debug("PID %d (child of %d) seized", pid, parent)

    def cure(self):
        """Give back every seized process as it was; the first problem is raised after all are cured."""
        problems = []
        for member in reversed(self.members):
            if member.group is not None:
                try:
                    member.group.cure()
                except CriupyError as e:
                    problems.append(e)
        if problems:
            raise problems[0]

    def kill(self):
        """SIGKILL every process first, so the kernel frees their memory side by side; then collect each end."""
        for member in self.members:
            if member.group is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.pid, signal.SIGKILL)
        for member in self.members:
            if member.group is not None:
                member.group.kill()


class IdGenerator:
    """Small ids for kernel objects, the same id for the same object (a namespace's inode)."""

    def __init__(self):
        self._next = {}
        self._namespaces = {}
        # criupy's own namespaces (the inventory's root_ids), read when the generator is made: a dump makes
        # it before it freezes the tree (criupy does not change its namespaces meanwhile)
        self.own_namespace_ids = {name: self.namespace_id(os.getpid(), name) for name, _ in NAMESPACES}

    def new(self, kind):
        self._next[kind] = self._next.get(kind, 0) + 1
        return self._next[kind]

    def namespace_id(self, pid, name):
        try:
            inode = os.stat(f"/proc/{pid}/ns/{name}").st_ino
        except FileNotFoundError:
            return None  # a namespace kind this kernel does not have
        if inode not in self._namespaces:
            self._namespaces[inode] = len(self._namespaces) + 1
        return self._namespaces[inode]

    def task_ids(self, pid):
        """ids of a task that shares nothing with an earlier one (each task of a tree of one)."""
        entry = core_pb2.task_kobj_ids_entry(vm_id=self.new("vm"), files_id=self.new("files"),
                                             fs_id=self.new("fs"), sighand_id=self.new("sighand"))
        for name, field in NAMESPACES:
            ns_id = self.namespace_id(pid, name)
            if ns_id is not None:
                setattr(entry, field, ns_id)
        return entry


def inventory_entry(ids):
    """inventory.img; root_ids are criupy's own namespaces, as CRIU records them (criupy's restore does not read them)."""
    root = core_pb2.task_kobj_ids_entry(vm_id=0, files_id=0, fs_id=0, sighand_id=0)
    for name, field in NAMESPACES:
        ns_id = ids.own_namespace_ids[name]
        if ns_id is not None:
            setattr(root, field, ns_id)
    return inventory_pb2.inventory_entry(
        img_version=IMAGES_VERSION, fdinfo_per_id=True, root_ids=root, ns_per_id=True,
        lsmtype=inventory_pb2.NO_LSM, dump_uptime=int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1_000_000))
