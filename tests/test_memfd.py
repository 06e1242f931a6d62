"""memfds: their fds and shared mappings (also with the fd closed), in one process and shared by a tree."""

import fcntl
import os
import subprocess

from criupy import proc
from criupy.dump import dump
from criupy.images import ImagesDir
from criupy.images.pb import fdinfo_pb2
from criupy.restore import restore
from tests.test_tree import reap_dumped, tree_of
from tests.waiting import wait_for

QUIET = dict(stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
F_GET_SEALS = 1034
F_SEAL_SHRINK, F_SEAL_GROW = 0x2, 0x4


def lines(path):
    return path.read_text().splitlines()


def numbered(path, tag):
    return [[int(word) for word in line.split()[1:]] for line in lines(path) if line.split()[0] == tag]


def memfd_maps(pid):
    return [(m.start, m.end, m.perms, m.offset, m.path) for m in proc.maps(pid) if m.path.startswith("/memfd:")]


def memfd_fd(pid):
    """(fd, what the fd says: path, size, seals, position, flags, first bytes) of the task's memfd fd."""
    fd = next(fd for fd in proc.fds(pid) if proc.fd_link(pid, fd).startswith("/memfd:"))
    info = proc.fdinfo(pid, fd)
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
    try:
        return fd, (proc.fd_link(pid, fd), os.fstat(own).st_size, fcntl.fcntl(own, F_GET_SEALS), info.pos,
                    info.flags, os.pread(own, 12, 0))
    finally:
        os.close(own)


def start(victim, processes, tmp_path, *args, count=1):
    """The victim, once its count processes are ready; each is stopped at teardown, whatever happens."""
    output = tmp_path / "memfd.out"
    with open(output, "w") as out:
        task = processes.start([victim("memfd"), *args], stdout=out, **QUIET)
    wait_for(lambda: len(numbered(output, "ready")) == count, "the victim to start")
    for pid, in numbered(output, "ready"):
        processes.track(pid)
    return task, output


def test_memfd_fd_and_mappings_keep_contents_seals_size_and_addresses(victim, processes, tmp_path):
    task, output = start(victim, processes, tmp_path)
    wait_for(lambda: len(numbered(output, "n")) > 5, "the victim to count")
    images = tmp_path / "images"
    maps, (fd, fd_state) = memfd_maps(task.pid), memfd_fd(task.pid)
    assert sorted(path for *_, path in maps) == ["/memfd:criupy-buf (deleted)", "/memfd:criupy-mapped (deleted)"]
    assert fd_state[2] == F_SEAL_GROW | F_SEAL_SHRINK and fd_state[1] == 3 * 4096 + 100
    dump(task.pid, str(images))
    task.wait()
    dumped = numbered(output, "n")

    d = ImagesDir(str(images), "r")
    inodes = d.read("memfd")
    assert sorted(entry.name for entry in inodes) == ["criupy-buf", "criupy-mapped"]
    assert len([n for n in d.names() if n.startswith("pagemap-shmem-")]) == 2  # each memfd's contents once
    assert len([e for e in d.read("files") if e.type == fdinfo_pb2.MEMFD]) == 3  # the fd, one per mapped memfd
    shown = subprocess.run(["crit", "show", str(images / "memfd.img")], capture_output=True, text=True, check=True)
    assert "criupy-buf" in shown.stdout

    assert restore(str(images), detach=True) == task.pid
    assert memfd_maps(task.pid) == maps  # same addresses, offsets, names
    assert memfd_fd(task.pid) == (fd, fd_state)  # size, seals, position, flags, contents
    wait_for(lambda: len(numbered(output, "n")) > len(dumped) + 20, "the victim to go on")
    assert not [line for line in lines(output) if "BAD" in line]  # fd and mapping are one file
    counts = numbered(output, "n")
    assert counts == [[n, n] for n in range(1, len(counts) + 1)]  # both counters: no gap, no repeat


def test_parent_and_child_keep_sharing_a_memfd_mapping(victim, processes, tmp_path):
    task, output = start(victim, processes, tmp_path, "tree", count=2)
    wait_for(lambda: len(numbered(output, "turn")) > 10, "parent and child to take turns")
    before = tree_of(task.pid)
    assert len(before) == 2
    maps = {pid: memfd_maps(pid) for pid in before}
    images = tmp_path / "images"
    dump(task.pid, str(images))
    task.wait()
    reap_dumped(before)
    dumped = len(numbered(output, "turn"))
    d = ImagesDir(str(images), "r")
    assert len(d.read("memfd")) == 2 and len([n for n in d.names() if n.startswith("pagemap-shmem-")]) == 2

    restore(str(images), detach=True)
    assert tree_of(task.pid) == before
    assert {pid: memfd_maps(pid) for pid in before} == maps
    inodes = {pid: {m.inode for m in proc.maps(pid) if m.path.startswith("/memfd:")} for pid in before}
    assert len({frozenset(i) for i in inodes.values()}) == 1  # both map the same two memfds
    wait_for(lambda: len(numbered(output, "turn")) > dumped + 20, "the turns to go on in both processes")
    turns = sorted(turn for turn, in numbered(output, "turn"))  # one may print its turn after the other's next
    assert turns == list(range(1, len(turns) + 1))
