"""The process tree: which tasks are dumped (pstree.img), the kernel objects they use (ids-PID.img), inventory.img.

One process (with all its threads) for now. Objects tasks may share (mm, files table, fs, signal handlers,
namespaces) get ids from one IdGenerator per dump, so that in a tree two tasks sharing one get the
same id; namespaces are told apart by inode.
"""

import os
import time

from criupy import proc
from criupy.errors import CriupyError
from criupy.images.pb import core_pb2, inventory_pb2, pstree_pb2

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
    children = proc.children(pid)
    if children:
        raise CriupyError(f"PID {pid} has child processes ({', '.join(map(str, children))}): "
                          f"dumping process trees is not supported yet")
    if status.get("Seccomp", "0") != "0":
        raise CriupyError(f"PID {pid} runs under seccomp: not supported yet")
    return status


def pstree_entry(stat, tids):
    # The root of the dumped tree has no parent in it: ppid 0, as CRIU writes. tids: the leader first.
    return pstree_pb2.pstree_entry(pid=stat.pid, ppid=0, pgid=stat.pgrp, sid=stat.session, threads=tids)


class IdGenerator:
    """Small ids for kernel objects, the same id for the same object (a namespace's inode)."""

    def __init__(self):
        self._next = {}
        self._namespaces = {}

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
    """inventory.img; root_ids are criupy's own namespaces, which restore compares with the dumped ones."""
    root = core_pb2.task_kobj_ids_entry(vm_id=0, files_id=0, fs_id=0, sighand_id=0)
    for name, field in NAMESPACES:
        ns_id = ids.namespace_id(os.getpid(), name)
        if ns_id is not None:
            setattr(root, field, ns_id)
    return inventory_pb2.inventory_entry(
        img_version=IMAGES_VERSION, fdinfo_per_id=True, root_ids=root, ns_per_id=True,
        lsmtype=inventory_pb2.NO_LSM, dump_uptime=int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1_000_000))
