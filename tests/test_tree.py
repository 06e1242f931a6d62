"""Process trees: dump and restore a root with its descendants, what they share, zombies, failures."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import waiting

from criupy import proc
from criupy.dump import dump
from criupy.dump.fds import unix
from criupy.errors import CriupyError
from criupy.images import ImagesDir
from criupy.restore import restore
from criupy.restore.task import clone_with_pid

QUIET = dict(stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
WALL = 0x40000000


def wait_for(condition, what):
    waiting.wait_for(condition, what, timeout=60)  # a tree takes longer to start and to restore


def tree_of(root):
    """{pid: (ppid, pgid, sid, zombie)} of root and its descendants."""
    result = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        stat = proc.stat(pid)
        result[pid] = (stat.ppid, stat.pgrp, stat.session, stat.state == "Z")
        todo += proc.children(pid)
    return result


def reap_dumped(pids):
    """The dump killed the tree: reap whatever of it became ours (tests run as a child subreaper)."""
    for pid in pids:
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG | WALL)
            except ChildProcessError:
                pass
            time.sleep(0.005)
        assert not os.path.exists(f"/proc/{pid}"), f"PID {pid} of the dumped tree is still there"


def descendants_now(root):
    """root and its descendants, as far as they can be listed (processes may end meanwhile)."""
    found = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            todo += proc.children(pid)
        except CriupyError:
            pass
    return found


@pytest.fixture
def trees():
    """Roots of trees the test made (or restored): at teardown every process of each is killed and reaped."""
    roots = []
    yield roots
    for root in roots:
        try:
            os.kill(root, signal.SIGSTOP)  # forks no more
        except ProcessLookupError:
            continue
        pids = descendants_now(root)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reap_dumped(pids)


def lines(path):
    return path.read_text().splitlines()


def numbered(path, tag):
    return [int(line.split()[1]) for line in lines(path) if line.split()[0] == tag]


def assert_untraced_and_running(pid):
    status = proc.status(pid)
    assert status["TracerPid"] == "0"
    assert status["State"][0] in "RSD"


def start_tree(victim, processes, trees, tmp_path):
    output = tmp_path / "tree.out"
    with open(output, "w") as out:  # one description for the whole tree, without O_APPEND: one offset
        root = processes.start([victim("tree")], stdout=out, start_new_session=True, **QUIET)
    trees.append(root.pid)
    wait_for(lambda: any(line.startswith("ready") for line in lines(output)), "the tree to start")
    zombie = int(next(line for line in lines(output) if line.startswith("ready")).split()[1])
    return root, output, zombie


def dump_tree(root, images):
    """Dump the tree of root (a Popen) into images; the killed processes reaped. Its layout before."""
    before = tree_of(root.pid)
    dump(root.pid, str(images))
    root.wait()
    reap_dumped(before)
    return before


def test_tree_with_pipes_shared_memory_groups_sessions_and_a_zombie(victim, processes, trees, tmp_path):
    root, output, zombie = start_tree(victim, processes, trees, tmp_path)
    images = tmp_path / "images"
    before = dump_tree(root, images)
    assert len(before) == 6 and before[zombie][3]
    assert len({(pgid, sid) for _, pgid, sid, _ in before.values()}) == 3  # the victim is what it says
    dumped = len(lines(output))

    d = ImagesDir(str(images), "r")
    assert len([n for n in d.names() if n.startswith("pagemap-shmem-")]) == 1  # the turn page, once
    out_entries = [e for e in d.read("files") if e.HasField("reg") and e.reg.name == str(output)]
    assert len(out_entries) == 1  # stdout: one description shared by all six
    assert any(entry.bytes for entry, _ in d.read_with_payloads("pipes-data"))  # C1's pipe held data

    for pid in before:
        processes.track(pid)
    assert restore(str(images), detach=True) == root.pid
    assert tree_of(root.pid) == before  # PIDs, parents, groups, sessions, and the zombie

    counts = {tag: len(numbered(output, tag)) for tag in ("c1", "p", "c3", "turn")}
    wait_for(lambda: all(len(numbered(output, tag)) > count + 50 for tag, count in counts.items()),
             "every process to go on")
    assert len(lines(output)) > dumped
    assert not [line for line in lines(output) if "BAD" in line]
    for tag in ("c1", "p", "c3"):  # pipe traffic goes on: no gap, no repeat
        numbers = numbered(output, tag)
        assert numbers == list(range(len(numbers))), tag
    turns = sorted(numbered(output, "turn"))  # P and G take turns through the shared page
    assert turns == list(range(1, len(turns) + 1))

    # the zombie is reaped with the status it had
    os.kill(root.pid, signal.SIGUSR1)
    wait_for(lambda: any(line.startswith("reaped") for line in lines(output)), "the zombie to be reaped")
    reaped = next(line for line in lines(output) if line.startswith("reaped")).split()
    assert int(reaped[1]) == zombie
    assert os.WIFEXITED(int(reaped[2])) and os.WEXITSTATUS(int(reaped[2])) == 7


def test_a_restored_tree_dumps_and_restores_again(victim, processes, trees, tmp_path):
    root, output, zombie = start_tree(victim, processes, trees, tmp_path)
    first = dump_tree(root, tmp_path / "first")
    for pid in first:
        processes.track(pid)
    restore(str(tmp_path / "first"), detach=True)

    class Restored:  # dump_tree's view of a process that is not our Popen (criupy may have reaped it)
        pid = root.pid

        @staticmethod
        def wait():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(root.pid, 0)

    second = dump_tree(Restored, tmp_path / "second")
    assert second == first
    d = ImagesDir(str(tmp_path / "second"), "r")
    assert len([n for n in d.names() if n.startswith("pagemap-shmem-")]) == 1
    restore(str(tmp_path / "second"), detach=True)
    assert tree_of(root.pid) == first
    count = len(numbered(output, "turn"))
    wait_for(lambda: len(numbered(output, "turn")) > count + 50, "the tree to go on")
    os.kill(root.pid, signal.SIGUSR1)
    wait_for(lambda: any(line.startswith("reaped") for line in lines(output)), "the zombie to be reaped")
    reaped = next(line for line in lines(output) if line.startswith("reaped")).split()
    assert int(reaped[1]) == zombie and os.WEXITSTATUS(int(reaped[2])) == 7
    assert not [line for line in lines(output) if "BAD" in line]


def test_restored_tree_shares_memory_and_file_descriptions(victim, processes, trees, tmp_path):
    root, output, _ = start_tree(victim, processes, trees, tmp_path)
    images = tmp_path / "images"
    before = dump_tree(root, images)
    for pid in before:
        processes.track(pid)
    restore(str(images), detach=True)

    live = [pid for pid, (_, _, _, zombie) in before.items() if not zombie]
    shared = {pid: [(m.dev_major, m.dev_minor, m.inode) for m in proc.maps(pid) if m.path == "/dev/zero (deleted)"]
              for pid in live}
    assert len({tuple(s) for s in shared.values()}) == 1 and shared[root.pid]  # one region, in every process
    stdout = {pid: os.stat(f"/proc/{pid}/fd/1").st_ino for pid in live}
    assert len(set(stdout.values())) == 1
    # one description: the offset of fd 1 is the same in every process
    try:
        positions = set()
        for pid in live:
            os.kill(pid, signal.SIGSTOP)
        for pid in live:
            positions.add(proc.fdinfo(pid, 1).pos)
        assert len(positions) == 1
    finally:
        for pid in live:
            os.kill(pid, signal.SIGCONT)


def test_a_tree_forking_every_millisecond_freezes_dumps_and_restores(victim, processes, trees, tmp_path):
    output = tmp_path / "forker.out"
    with open(output, "w") as out:
        root = processes.start([victim("forker")], stdout=out, **QUIET)
    trees.append(root.pid)
    wait_for(lambda: len(lines(output)) > 100, "the forker to start")
    images = tmp_path / "images"
    dump(root.pid, str(images))
    root.wait()
    dumped = [e.pid for e in ImagesDir(str(images), "r").read("pstree")]
    reap_dumped(dumped)
    assert dumped[0] == root.pid

    for pid in dumped:
        processes.track(pid)
    assert restore(str(images), detach=True) == root.pid
    count = len(lines(output))
    wait_for(lambda: len(lines(output)) > count + 200, "the forker to go on")
    assert not [line for line in lines(output) if "BAD" in line]
    forks = [int(line.split()[0]) for line in lines(output)]
    assert forks == list(range(len(forks)))
    reaped = [int(line.split()[1]) for line in lines(output)]
    assert reaped[-1] >= forks[-1] - 10  # children restored or forked since all end and are reaped


MULTIPROCESSING_START = """
import multiprocessing, sys, time

def square(n):
    return n, n * n

def serve(requests, replies):
    while True:
        replies.put(square(requests.get()))

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
"""

MULTIPROCESSING = {
    # Process and Queue: pipes, a feeder thread, and POSIX semaphores (deleted /dev/shm files, mapped shared)
    "process-and-queue": MULTIPROCESSING_START + """
    requests, replies = ctx.Queue(), ctx.Queue()
    for _ in range(2):
        ctx.Process(target=serve, args=(requests, replies), daemon=True).start()
    n = 0
    while True:
        requests.put(n)
        print(*replies.get(), flush=True)
        n += 1
        time.sleep(0.005)
""",
    # a Pool: worker processes, the pool's own threads, its queues and their locks
    "pool": MULTIPROCESSING_START + """
    with ctx.Pool(3) as pool:
        n = 0
        while True:
            print(*pool.apply(square, (n,)), flush=True)
            n += 1
            time.sleep(0.005)
""",
}


@pytest.mark.parametrize("kind", sorted(MULTIPROCESSING))
def test_cpython_multiprocessing_carries_on(kind, processes, trees, tmp_path):
    output = tmp_path / "mp.out"
    with open(output, "w") as out:
        root = processes.start([sys.executable, "-c", MULTIPROCESSING[kind]], stdout=out, **QUIET)
    trees.append(root.pid)
    wait_for(lambda: len(lines(output)) > 20, "the workers to start")
    images = tmp_path / "images"
    before = dump_tree(root, images)
    assert len(before) >= 3
    assert ImagesDir(str(images), "r").exists("remap-fpath")  # the semaphores' deleted files
    for pid in before:
        processes.track(pid)
    restore(str(images), detach=True)
    assert tree_of(root.pid) == before
    count = len(lines(output))
    wait_for(lambda: len(lines(output)) > count + 50, "the program to go on")
    pairs = [tuple(map(int, line.split())) for line in lines(output)]
    assert pairs == [(n, n * n) for n in range(len(pairs))]


SOCKET_PAIR = """
import os, socket, time
parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
if os.fork() == 0:
    parent_end.close()
    while True:
        n = int(child_end.recv(64))
        child_end.send(str(n * n).encode())
        time.sleep(0.01)  # slower than the parent asks: requests wait in the queue
child_end.close()
asked = answered = 0
while True:
    while asked < answered + 5:
        parent_end.send(str(asked).encode())
        asked += 1
    print(answered, int(parent_end.recv(64)), flush=True)
    answered += 1
"""


def test_a_socket_pair_between_parent_and_child_carries_on_with_its_queue(processes, trees, tmp_path):
    output = tmp_path / "pair.out"
    with open(output, "w") as out:
        root = processes.start([sys.executable, "-c", SOCKET_PAIR], stdout=out, **QUIET)
    trees.append(root.pid)
    wait_for(lambda: len(lines(output)) > 20, "the pair to talk")
    images = tmp_path / "images"
    before = dump_tree(root, images)
    assert ImagesDir(str(images), "r").read_with_payloads("sk-queues")  # requests were waiting
    for pid in before:
        processes.track(pid)
    restore(str(images), detach=True)
    count = len(lines(output))
    wait_for(lambda: len(lines(output)) > count + 30, "the pair to go on")
    pairs = [tuple(map(int, line.split())) for line in lines(output)]
    assert pairs == [(n, n * n) for n in range(len(pairs))]


def test_a_group_whose_leader_is_gone_is_led_by_a_helper_while_its_members_join(victim, processes, trees,
                                                                               tmp_path):
    output = tmp_path / "orphan.out"
    with open(output, "w") as out:
        root = processes.start([victim("orphan_group")], stdout=out, start_new_session=True, **QUIET)
    trees.append(root.pid)
    wait_for(lambda: len(numbered(output, "y")) > 10 and len(numbered(output, "root")) > 10, "the tree to start")
    leader, member = map(int, next(line for line in lines(output) if line.startswith("ready")).split()[1:])
    images = tmp_path / "images"
    before = dump_tree(root, images)
    assert before[member][1] == leader and leader not in before
    for pid in before:
        processes.track(pid)
    restore(str(images), detach=True)
    assert tree_of(root.pid) == before  # the member in the leaderless group, the helper gone
    assert not os.path.exists(f"/proc/{leader}")
    counts = {name: len(numbered(output, name)) for name in ("y", "root")}
    wait_for(lambda: all(len(numbered(output, name)) > counts[name] + 20 for name in counts), "the tree to go on")
    for name in counts:
        numbers = numbered(output, name)
        assert numbers == list(range(len(numbers))), name


def test_a_dump_failing_while_the_tree_is_stopped_resumes_every_process(victim, processes, trees, tmp_path, monkeypatch):
    from criupy.dump import shmem

    root, output, _ = start_tree(victim, processes, trees, tmp_path)
    before = tree_of(root.pid)

    def broken(self, images, first_pages_id):
        raise CriupyError("shared memory broke")

    monkeypatch.setattr(shmem.SharedMemory, "dump", broken)
    with pytest.raises(CriupyError, match="^shared memory broke$"):
        dump(root.pid, str(tmp_path / "images"))
    assert tree_of(root.pid) == before
    for pid, (_, _, _, zombie) in before.items():
        if not zombie:
            assert_untraced_and_running(pid)
    count = len(lines(output))
    wait_for(lambda: len(lines(output)) > count + 50, "the tree to go on")
    assert not os.path.exists(tmp_path / "images") or not os.listdir(tmp_path / "images")


def fd_table(pid):
    return {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_a_dump_failing_while_parasites_write_pages_resumes_every_process_as_it_was(victim, processes, trees,
                                                                                    tmp_path, monkeypatch):
    from criupy.dump import core

    root, output, _ = start_tree(victim, processes, trees, tmp_path)
    before = tree_of(root.pid)
    live = [pid for pid, (_, _, _, zombie) in before.items() if not zombie]
    fds_before = {pid: fd_table(pid) for pid in live}
    real_core_entry = core.core_entry
    dumped = []

    def failing_for_the_third(pid, *args):  # the parasites of the first two are writing their pages then
        dumped.append(pid)
        if len(dumped) == 3:
            raise CriupyError("core broke")
        return real_core_entry(pid, *args)

    monkeypatch.setattr(core, "core_entry", failing_for_the_third)
    with pytest.raises(CriupyError, match="^core broke$"):
        dump(root.pid, str(tmp_path / "images"))
    assert len(dumped) == 3
    assert tree_of(root.pid) == before
    for pid in live:
        assert_untraced_and_running(pid)
        assert fd_table(pid) == fds_before[pid]  # no copy of criupy's pages fd left in any
    count = len(lines(output))
    wait_for(lambda: len(lines(output)) > count + 50, "the tree to go on")
    assert not os.path.exists(tmp_path / "images") or not os.listdir(tmp_path / "images")


def test_a_restore_failing_half_way_leaves_no_process(victim, processes, trees, tmp_path):
    root, output, _ = start_tree(victim, processes, trees, tmp_path)
    images = tmp_path / "images"
    before = dump_tree(root, images)

    # the grandchild's PID is taken: its parent cannot create it, after four others exist
    grandchild = next(pid for pid, (ppid, *_) in before.items() if ppid not in (root.pid, 0) and ppid in before)
    blocker = processes.track(clone_with_pid(grandchild, lambda: os.execv("/bin/sleep", ["sleep", "1000"])))
    with pytest.raises(CriupyError, match=rf"^restoring PID \d+: PID {grandchild} is in use$"):
        restore(str(images), detach=True)
    for pid in before:
        if pid != blocker:
            assert not os.path.exists(f"/proc/{pid}"), f"PID {pid} was left behind"


THREADED_TREE = """
import os, sys, threading, time

def count(name):
    n = 0
    while True:
        os.write(1, f"{name} {n}\\n".encode())
        n += 1
        time.sleep(0.003)

role = "parent" if os.fork() else "child"
threads = [threading.Thread(target=count, args=(f"{role}-{i}",), daemon=True) for i in range(3)]
for t in threads:
    t.start()
count(role)
"""


def test_a_tree_of_multi_threaded_processes_carries_on(processes, trees, tmp_path):
    output = tmp_path / "threaded.out"
    with open(output, "w") as out:
        root = processes.start([sys.executable, "-c", THREADED_TREE], stdout=out, **QUIET)
    trees.append(root.pid)
    names = [f"{role}{suffix}" for role in ("parent", "child") for suffix in ("", "-0", "-1", "-2")]
    wait_for(lambda: all(numbered(output, name) for name in names), "every thread to count")
    images = tmp_path / "images"
    before = dump_tree(root, images)
    assert [len(entry.threads) for entry in ImagesDir(str(images), "r").read("pstree")] == [4, 4]
    for pid in before:
        processes.track(pid)
    restore(str(images), detach=True)
    assert tree_of(root.pid) == before
    counts = {name: len(numbered(output, name)) for name in names}
    wait_for(lambda: all(len(numbered(output, name)) > counts[name] + 20 for name in names), "every thread to go on")
    for name in names:
        numbers = numbered(output, name)
        assert numbers == list(range(len(numbers))), name


def test_pie_plugin_hooks_run_once_in_every_restored_process(victim, processes, trees, tmp_path):
    root, output, _ = start_tree(victim, processes, trees, tmp_path)
    images = tmp_path / "images"
    before = dump_tree(root, images)
    plugin = tmp_path / "marker.plugin"
    marker = os.path.join(os.path.dirname(__file__), "plugins", "marker.c")
    subprocess.run([sys.executable, "-m", "blobgen.cli", "--plugin", marker, "-o", str(plugin)], check=True)
    log = tmp_path / "restore.log"
    trees.append(restore(str(images), detach=True, pie_plugin=str(plugin), log_file=str(log)))
    living = sorted(pid for pid, (*_, zombie) in before.items() if not zombie)
    text = log.read_text()
    pre = [(int(m[1]), int(m[2])) for m in re.finditer(r"plugin-marker pre_sigreturn pid (\d+) tid (\d+)", text)]
    assert sorted(pre) == [(pid, pid) for pid in living]  # single-threaded processes: one call each
    post = [int(m[1]) for m in re.finditer(r"plugin-marker post_restore_vmas pid (\d+)", text)]
    assert sorted(post) == living


def region_memory(pid, address):
    """(Private_Dirty, Shared_Dirty) in KiB of the mapping of pid that starts at address, from smaps."""
    fields = {}
    inside = False
    for line in open(f"/proc/{pid}/smaps"):
        if line[:1] in "0123456789abcdef":
            inside = int(line.split("-")[0], 16) == address
        elif inside and line.split(":")[0] in ("Private_Dirty", "Shared_Dirty"):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields["Private_Dirty"], fields["Shared_Dirty"]


@pytest.mark.parametrize("by_userfaultfd", [True, False])
def test_a_restored_tree_shares_private_memory_copy_on_write_as_it_did(by_userfaultfd, victim, processes, trees,
                                                                       tmp_path, monkeypatch):
    """Children forked from one parent share its pages until they write: restored, each process's region
    takes the private and shared memory it took before (not a copy each), and holds what it held; the
    restorers fill the rest of the memory (with UFFDIO_COPY, and with preadv)."""
    from criupy.restore import prepare

    monkeypatch.setattr(prepare, "PAGES_BY_USERFAULTFD", by_userfaultfd)
    output = tmp_path / "cow.out"
    with open(output, "w") as out:
        root = processes.start([victim("cow_tree")], stdout=out, start_new_session=True, **QUIET)
    trees.append(root.pid)
    wait_for(lambda: len([line for line in lines(output) if line.startswith("ready")]) == 4, "the tree to start")
    ready = {int(pid): int(address, 16) for _, pid, address in (line.split() for line in lines(output))}

    def sums():
        count = len(numbered(output, "sum"))
        for pid in ready:
            os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: len(numbered(output, "sum")) == count + 4, "every process's checksum")
        return {int(pid): value for tag, pid, value in (line.split() for line in lines(output)[-4:])}

    sums_before = sums()
    memory_before = {pid: region_memory(pid, address) for pid, address in ready.items()}
    maps_before = {pid: proc.maps(pid) for pid in ready}
    children = proc.children(root.pid)
    b = next(pid for pid in children if proc.children(pid))
    a = next(pid for pid in children if pid != b)
    assert sums_before[a] != sums_before[root.pid] and sums_before[b] not in (sums_before[a], sums_before[root.pid])
    assert memory_before[a][1] > 4096  # A shares most of its 8 MiB with P

    images = tmp_path / "images"
    dump_tree(root, images)
    restore(str(images), detach=True)
    assert {pid: region_memory(pid, address) for pid, address in ready.items()} == memory_before
    assert {pid: proc.maps(pid) for pid in ready} == maps_before
    assert sums() == sums_before


MANAGER = """
import multiprocessing, os, socket, time
if __name__ == "__main__":
    manager = multiprocessing.Manager()  # a server process listening on a unix socket, connected to us
    shared = manager.dict()
    n = 0
    while True:
        shared["n"] = n
        print("count", shared["n"], flush=True)
        n += 1
        time.sleep(0.02)
"""


def test_a_multiprocessing_manager_and_its_connections_carry_on(processes, trees, tmp_path):
    """Its server process listens on a unix socket and has accepted the parent's connections: restored through
    the listener again, with the names each end had; the shared dict goes on counting with no gap."""
    output = tmp_path / "manager.out"
    with open(output, "w") as out:
        # TMPDIR: the directory of its socket in tmp_path, as a killed manager leaves it behind
        root = processes.start([sys.executable, "-c", MANAGER], stdout=out,
                               env=dict(os.environ, TMPDIR=str(tmp_path)), **QUIET)
    trees.append(root.pid)
    wait_for(lambda: len(numbered(output, "count")) > 5, "the manager to count")
    names = _unix_names(root.pid)
    dump_tree(root, tmp_path / "images")
    counted = numbered(output, "count")
    processes.track(restore(str(tmp_path / "images"), detach=True))
    wait_for(lambda: len(numbered(output, "count")) > len(counted) + 5, "the manager to count on")
    assert numbered(output, "count") == list(range(len(numbered(output, "count"))))
    assert _unix_names(root.pid) == names


def _unix_names(root):
    """{(pid, fd): (its name, its peer's name)} of the unix sockets of root's tree, as sock_diag lists them."""
    sockets = unix.unix_sockets()
    names = {}
    for pid in tree_of(root):
        for fd in proc.fds(pid):
            sock = sockets.get(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
            if sock is not None:
                names[pid, fd] = (sock.name, sockets[sock.peer].name if sock.peer else None)
    return names
