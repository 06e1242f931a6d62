"""Multi-threaded processes: every thread seized, dumped into its own core-TID.img, and restored with its
TID, name, signal mask and registers, so that what the threads were doing goes on."""

import ctypes
import os
import signal
import subprocess
import sys

import pytest

from criupy import dump, proc
from criupy.dump import threads as dump_threads
from criupy.errors import CriupyError
from criupy.images import ImagesDir
from criupy.restore import restore

from test_dump import QUIET, crit_show, decode_all, wait_for

SYS_futex = 202
SYS_rt_sigtimedwait = 128
SYS_tgkill = 234
libc = ctypes.CDLL(None, use_errno=True)


def _lines(path):
    """The complete lines written so far (a line being written may show in part)."""
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def _start(processes, argv, output):
    with open(output, "a") as out:
        return processes.start(argv, stdout=out, **QUIET)


def _thread_state(pid):
    """{tid: (name, blocked signals, signals pending for it, nice, policy, user and group IDs, capabilities)}
    of every thread of pid."""
    def state(tid):
        status = proc.status(tid)
        return (proc.thread_comm(pid, tid), status["SigBlk"], status["SigPnd"], os.getpriority(os.PRIO_PROCESS, tid),
                os.sched_getscheduler(tid), status["Uid"], status["Gid"], status["CapEff"])
    return {tid: state(tid) for tid in proc.task_ids(pid)}


def _queue_own_signals(pid):
    """Each counter thread I < 24 gets its blocked SIGRTMIN + I, left pending for that thread alone."""
    for tid in proc.task_ids(pid):
        name = proc.thread_comm(pid, tid)
        if name.startswith("count-") and int(name[6:]) < 24:
            assert libc.syscall(SYS_tgkill, pid, tid, signal.SIGRTMIN + int(name[6:])) == 0


THREAD_CORE_FIELDS = ("futex_rla", "futex_rla_len", "sched_nice", "sched_policy", "sched_prio", "blk_sigset",
                      "sas", "comm", "creds", "signals_p")


def _thread_cores(images, pid):
    """{tid: (thread_core fields that must survive a restore, clear_tid_addr, fs_base, rseq area)}."""
    result = {}
    for tid in crit_show(images / "pstree.img")["entries"][0]["threads"]:
        (core,) = crit_show(images / f"core-{tid}.img")["entries"]
        thread = core["thread_core"]
        rseq = thread.get("rseq_entry", {})
        result[tid] = ({k: thread.get(k) for k in THREAD_CORE_FIELDS}, core["thread_info"]["clear_tid_addr"],
                       core["thread_info"]["gpregs"]["fs_base"],
                       (rseq.get("rseq_abi_pointer"), rseq.get("rseq_abi_size"), rseq.get("signature")))
    return result


def _assert_untraced(pid):
    for tid in proc.task_ids(pid):
        status = proc.status(tid)
        assert status["TracerPid"] == "0", f"thread {tid} is still traced"
        assert status["State"].split()[0] in ("S", "R"), f"thread {tid} is {status['State']}"


def _check_turns(output, nr_threads):
    """Lines "THREAD COUNT": threads in turn order, each one's count going on with no gap and no repeat."""
    expected = [0] * nr_threads
    for number, line in enumerate(_lines(output)):
        thread, count = map(int, line.split())
        assert thread == number % nr_threads, f"line {number}: {line!r} out of turn"
        assert count == expected[thread], f"line {number}: {line!r}, thread {thread} was at {expected[thread]}"
        expected[thread] += 1


def _dump_counter(victim, processes, tmp_path, nr_threads):
    output = tmp_path / "counter.out"
    counter = _start(processes, [victim("threads_counter"), str(nr_threads)], output)
    wait_for(lambda: len(_lines(output)) >= 3 * nr_threads, "every thread to count")
    _queue_own_signals(counter.pid)
    before = _thread_state(counter.pid)
    assert len(before) == nr_threads + 1
    images = tmp_path / "images"
    dump(counter.pid, str(images))
    counter.wait()
    return counter.pid, output, images, before


def test_eight_threads_go_on_counting_with_their_tids_names_and_masks(victim, processes, tmp_path):
    pid, output, images, before = _dump_counter(victim, processes, tmp_path, 8)
    assert crit_show(images / "pstree.img")["entries"][0]["threads"] == sorted(before)
    for tid, (name, *_) in before.items():
        (core,) = crit_show(images / f"core-{tid}.img")["entries"]
        assert core["thread_core"]["comm"] == name
        assert ("tc" in core) == (tid == pid)  # the task-wide part is the leader's only, as CRIU writes it

    assert processes.track(restore(str(images), detach=True)) == pid
    assert _thread_state(pid) == before
    _assert_untraced(pid)
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= count + 80, "the threads to count on")
    _check_turns(output, 8)
    # what only each thread can tell (robust list, rseq, altstack, clear_child_tid, TLS) is as dumped
    again = tmp_path / "again"
    dump(pid, str(again), leave_running=True)
    assert _thread_cores(again, pid) == _thread_cores(images, pid)


def test_two_hundred_threads_dump_and_restore(victim, processes, tmp_path):
    pid, output, images, before = _dump_counter(victim, processes, tmp_path, 200)
    assert processes.track(restore(str(images), detach=True)) == pid
    assert _thread_state(pid) == before
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= count + 400, "the threads to count on")
    _check_turns(output, 200)


def test_leave_running_gives_every_thread_back(victim, processes, tmp_path):
    output = tmp_path / "counter.out"
    counter = _start(processes, [victim("threads_counter"), "8"], output)
    wait_for(lambda: len(_lines(output)) >= 24, "every thread to count")
    before = _thread_state(counter.pid)
    dump(counter.pid, str(tmp_path / "images"), leave_running=True)
    _assert_untraced(counter.pid)
    assert _thread_state(counter.pid) == before
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= count + 80, "the threads to count on")
    _check_turns(output, 8)


def test_a_failed_dump_leaves_every_thread_running(victim, processes, tmp_path, monkeypatch):
    output = tmp_path / "counter.out"
    counter = _start(processes, [victim("threads_counter"), "8"], output)
    wait_for(lambda: len(_lines(output)) >= 24, "every thread to count")
    before = _thread_state(counter.pid)

    def fail(*args):
        raise CriupyError("thread core failed on purpose")

    monkeypatch.setattr(dump_threads, "thread_core_entry", fail)
    with pytest.raises(CriupyError, match="on purpose"):
        dump(counter.pid, str(tmp_path / "images"))
    assert not (tmp_path / "images").exists()  # criupy made it, and took it away again
    _assert_untraced(counter.pid)
    assert _thread_state(counter.pid) == before
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= count + 80, "the threads to count on")
    _check_turns(output, 8)


def _syscall_of(pid, tid):
    return int(open(f"/proc/{pid}/task/{tid}/syscall").read().split()[0])


def test_threads_blocked_in_futex_condition_join_and_sigwait_wake_after_restore(victim, processes, tmp_path):
    output = tmp_path / "blocked.out"
    blocked = _start(processes, [victim("threads_blocked")], output)
    waiting = {"futex waiting", "cond waiting", "sigwait waiting", "join waiting"}
    wait_for(lambda: set(_lines(output)) == waiting, "every thread to block")
    names = {proc.thread_comm(blocked.pid, tid): tid for tid in proc.task_ids(blocked.pid)}
    # blocked for real, each in its own system call
    wait_for(lambda: [_syscall_of(blocked.pid, names[n]) for n in ("futex", "cond", "sigwait")]
             == [SYS_futex, SYS_futex, SYS_rt_sigtimedwait], "the threads to sit in their calls")
    wait_for(lambda: _syscall_of(blocked.pid, blocked.pid) == SYS_futex, "the join to block")
    images = tmp_path / "images"
    dump(blocked.pid, str(images))
    blocked.wait()

    pid = processes.track(restore(str(images), detach=True))
    assert {proc.thread_comm(pid, tid): tid for tid in proc.task_ids(pid)} == names
    os.kill(pid, signal.SIGUSR1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert _lines(output)[4:] == ["sigwait woke", "futex woke", "cond woke", "join woke"]


PYTHON_THREADS = """
import sys, threading, time
lock = threading.Lock()
def count(me):
    n = 0
    while True:
        with lock:
            print(me, n, flush=True)
        n += 1
        time.sleep(0.003)
threads = [threading.Thread(target=count, args=(i,), name=f"counter-{i}") for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_cpython_threads_carry_on(processes, tmp_path):
    output = tmp_path / "python.out"
    python = _start(processes, [sys.executable, "-c", PYTHON_THREADS], output)
    wait_for(lambda: len(_lines(output)) >= 40, "the Python threads to count")
    before = _thread_state(python.pid)
    images = tmp_path / "images"
    dump(python.pid, str(images))
    python.wait()
    pid = processes.track(restore(str(images), detach=True))
    assert _thread_state(pid) == before
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= count + 80, "the Python threads to count on")
    expected = {}
    for line in _lines(output):
        thread, n = map(int, line.split())
        assert n == expected.get(thread, 0), f"thread {thread} printed {n} after {expected.get(thread)}"
        expected[thread] = n + 1
    assert sorted(expected) == [0, 1, 2, 3]


def test_a_process_that_keeps_creating_threads_freezes_and_dumps(victim, processes, tmp_path):
    output = tmp_path / "spawner.out"
    spawner = _start(processes, [victim("threads_spawner")], output)
    wait_for(lambda: len(_lines(output)) >= 20, "threads to come and go")
    images = tmp_path / "images"
    dump(spawner.pid, str(images))
    spawner.wait()
    tree = decode_all(images)["pstree"]["entries"][0]
    assert tree["pid"] == spawner.pid
    for tid in tree["threads"]:
        assert (images / f"core-{tid}.img").exists()

    pid = processes.track(restore(str(images), detach=True))
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) >= count + 20, "the spawner to go on")
    numbers = [int(line) for line in _lines(output)]
    assert numbers == list(range(1, len(numbers) + 1))
    assert proc.status(pid)["TracerPid"] == "0"


def test_a_thread_id_in_use_is_a_clear_error_and_no_process_is_left(victim, processes, tmp_path):
    pid, output, images, before = _dump_counter(victim, processes, tmp_path, 2)
    # the images, edited so that one thread has the TID of a live process: this test's own
    taken = os.getpid()
    last = max(before)
    (tree,) = ImagesDir(str(images), "r").read("pstree")
    tree.threads[-1] = taken
    os.rename(images / f"core-{last}.img", images / f"core-{taken}.img")
    ImagesDir(str(tmp_path / "edited"), "w").write("pstree", [tree])
    os.replace(tmp_path / "edited" / "pstree.img", images / "pstree.img")
    with pytest.raises(CriupyError, match=f"TID {taken} \\(a thread of PID {pid}\\) is in use"):
        restore(str(images), detach=True)
    assert not os.path.exists(f"/proc/{pid}")


def test_a_stopped_process_stays_stopped_in_every_thread_after_leave_running(victim, processes, tmp_path):
    output = tmp_path / "counter.out"
    counter = _start(processes, [victim("threads_counter"), "4"], output)
    wait_for(lambda: len(_lines(output)) >= 12, "every thread to count")
    os.kill(counter.pid, signal.SIGSTOP)
    wait_for(lambda: all(proc.status(tid)["State"][0] == "T" for tid in proc.task_ids(counter.pid)),
             "every thread to stop")
    count = len(_lines(output))
    dump(counter.pid, str(tmp_path / "images"), leave_running=True)
    for tid in proc.task_ids(counter.pid):
        assert proc.status(tid)["TracerPid"] == "0", f"thread {tid}"
        # a thread detached in its group-stop is woken to enter that stop again: "R" for a moment (under
        # load, seen as dump() returned), with no user code run meanwhile
        wait_for(lambda: proc.status(tid)["State"][0] == "T", f"thread {tid} to be stopped", timeout=5)
    assert len(_lines(output)) == count
    os.kill(counter.pid, signal.SIGCONT)
    wait_for(lambda: len(_lines(output)) >= count + 40, "the threads to count on")
    _check_turns(output, 4)
