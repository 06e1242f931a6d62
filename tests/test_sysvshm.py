"""SysV shared memory: a segment attached by a parent and its child comes back with its key, id, size,
mode and contents, attached at the same addresses, and the two go on sharing it."""

import os
import subprocess

import pytest

from criupy.dump import dump
from criupy.errors import CriupyError
from criupy.restore import restore
from tests.test_tree import reap_dumped, tree_of
from tests.waiting import wait_for

QUIET = dict(stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
SHM_DEST = 0o1000


def numbered(path, tag):
    return [[int(word) for word in line.split()[1:]] for line in path.read_text().splitlines()
            if line.split()[0] == tag]


def segment(shmid):
    """The segment's /proc/sysvipc/shm line as {column: number}; None if there is none."""
    with open("/proc/sysvipc/shm") as f:
        header, *rows = f.read().splitlines()
    for row in rows:
        fields = dict(zip(header.split(), (int(value) for value in row.split())))
        if fields["shmid"] == shmid:
            return fields
    return None


def kept(fields):
    """What a restore must bring back (not times, creator and last PIDs)."""
    return {name: fields[name] for name in ("key", "shmid", "perms", "size", "nattch", "uid", "gid", "cuid",
                                            "cgid")}


def sysv_maps(pid):
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            start_end, perms, offset, _, inode, *path = line.split()
            if path and path[0].startswith("/SYSV"):
                maps.append((start_end, perms, offset, int(inode), " ".join(path)))
    return maps


@pytest.fixture
def segments():
    """Ids of SysV segments the test made: removed at teardown, by id."""
    ids = []
    yield ids
    for shmid in ids:
        if segment(shmid) is not None:
            subprocess.run(["ipcrm", "-m", str(shmid)], check=True)


def start(victim, processes, segments, tmp_path, *args):
    output = tmp_path / "sysvshm.out"
    key = 0x43500000 + os.getpid() % 0x10000
    with open(output, "w") as out:
        task = processes.start([victim("sysvshm"), hex(key), *args], stdout=out, **QUIET)
    wait_for(lambda: numbered(output, "shm") or task.poll() is not None, "the victim to make its segment")
    assert task.poll() is None, "the victim could not make its segment"
    (shmid,), = numbered(output, "shm")
    segments.append(shmid)
    wait_for(lambda: len(numbered(output, "ready")) == 2, "the victim's two processes to start")
    for pid, in numbered(output, "ready"):
        processes.track(pid)
    wait_for(lambda: len(numbered(output, "turn")) > 10, "parent and child to take turns")
    return task, output, shmid, key


def dump_tree(task, images):
    before = tree_of(task.pid)
    assert len(before) == 2
    maps = {pid: sysv_maps(pid) for pid in before}
    dump(task.pid, str(images))
    task.wait()
    reap_dumped(before)
    return before, maps


def turns_go_on(output, dumped):
    wait_for(lambda: len(numbered(output, "turn")) > dumped + 20, "the turns to go on in both processes")
    assert "BAD" not in output.read_text()
    turns = sorted(turn for turn, in numbered(output, "turn"))  # one may print its turn after the other's next
    assert turns == list(range(1, len(turns) + 1))


def test_parent_and_child_keep_sharing_a_sysv_segment(victim, processes, segments, tmp_path):
    task, output, shmid, key = start(victim, processes, segments, tmp_path)
    images = tmp_path / "images"
    dumped_segment = kept(segment(shmid))
    assert dumped_segment["key"] == key and dumped_segment["nattch"] == 2
    before, maps = dump_tree(task, images)
    assert all(len(m) == 1 and m[0][3] == shmid for m in maps.values())
    dumped = len(numbered(output, "turn"))
    shm_images = [name for name in os.listdir(images) if name.startswith("ipcns-shm-")]
    assert len(shm_images) == 1  # the segment once, however many attach it
    shown = subprocess.run(["crit", "decode", "-i", str(images / shm_images[0])], capture_output=True, text=True,
                           check=True)
    assert f'"id": {shmid}' in shown.stdout
    subprocess.run(["ipcrm", "-m", str(shmid)], check=True)  # it outlives the dumped tree
    assert segment(shmid) is None

    restore(str(images), detach=True)
    assert tree_of(task.pid) == before
    assert {pid: sysv_maps(pid) for pid in before} == maps
    assert kept(segment(shmid)) == dumped_segment  # same key, id, size, mode, owner; both attached again
    turns_go_on(output, dumped)


def test_a_segment_marked_for_removal_stays_marked_and_goes_with_its_users(victim, processes, segments, tmp_path):
    task, output, shmid, _ = start(victim, processes, segments, tmp_path, "rmid")
    dumped_segment = kept(segment(shmid))
    assert dumped_segment["perms"] & SHM_DEST and dumped_segment["key"] == 0
    before, maps = dump_tree(task, tmp_path / "images")
    assert segment(shmid) is None  # the last detach removed it
    dumped = len(numbered(output, "turn"))

    restore(str(tmp_path / "images"), detach=True)
    assert {pid: sysv_maps(pid) for pid in before} == maps
    assert kept(segment(shmid)) == dumped_segment
    turns_go_on(output, dumped)
    for pid in before:
        os.kill(pid, 9)
    reap_dumped(before)
    assert segment(shmid) is None


def test_restore_refuses_a_segment_that_exists(victim, processes, segments, tmp_path):
    task, output, shmid, _ = start(victim, processes, segments, tmp_path)
    before, _ = dump_tree(task, tmp_path / "images")
    existing = segment(shmid)
    with pytest.raises(CriupyError, match=f"segment {shmid} exists already"):
        restore(str(tmp_path / "images"), detach=True)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in before)
    assert segment(shmid) == existing  # untouched


def test_a_failed_restore_removes_the_segment_it_made(victim, processes, segments, tmp_path):
    task, output, shmid, _ = start(victim, processes, segments, tmp_path)
    before, _ = dump_tree(task, tmp_path / "images")
    subprocess.run(["ipcrm", "-m", str(shmid)], check=True)
    pages = tmp_path / "images" / "pages-2.img"
    os.truncate(pages, os.path.getsize(pages) - 4096)  # found once the segment is made
    with pytest.raises(CriupyError, match="pages-2.img is truncated"):
        restore(str(tmp_path / "images"), detach=True)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in before)
    assert segment(shmid) is None
