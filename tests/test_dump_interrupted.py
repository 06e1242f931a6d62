"""`criupy dump` ended by SIGINT or SIGTERM at several moments of the dump (a test-only pause,
CRIUPY_TEST_DUMP_PAUSE, holds it there): the target runs on with its output intact, nothing stays
stopped or traced, the images the dump wrote are removed; once the target was killed, they stay.

(criupy's injector under SIGKILL, SIGINT and SIGTERM while the parasite runs is test_infect's.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from waiting import wait_for

from criupy import proc
from criupy.restore import restore

CRIUPY = [sys.executable, "-m", "criupy"]



def _numbers(path):
    return [int(line) for line in path.read_text().split("\n")[:-1]]


def _start_counter(victim, processes, tmp_path):
    output = tmp_path / "counter.out"
    with open(output, "w") as out:
        counter = processes.start([victim("counter")], stdout=out, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    wait_for(lambda: len(_numbers(output)) >= 3, "the counter")
    return counter, output


def _dump_paused_at(processes, pid, images, point, *options):
    dumping = processes.start([*CRIUPY, "dump", "-t", str(pid), "-D", str(images), *options],
                              env={**os.environ, "CRIUPY_TEST_DUMP_PAUSE": point},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = dumping.stderr.readline()
    assert line == f"criupy: test pause at {point}\n", line + dumping.stderr.read()
    return dumping


def _assert_runs_on_untouched(pid, output):
    status = proc.status(pid)
    assert status["TracerPid"] == "0" and status["State"][0] in "RS"
    assert not any(m.perms == "rwxs" for m in proc.maps(pid))  # the parasite's shared anonymous memory
    count = len(_numbers(output))
    wait_for(lambda: len(_numbers(output)) >= count + 10, "the counter to go on")
    numbers = _numbers(output)
    assert numbers == list(range(len(numbers)))  # no gap, no repeat


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("point", ["seized", "infected", "written"])
def test_dump_interrupted_leaves_the_target_running_and_no_images(victim, processes, tmp_path, sig, point):
    counter, output = _start_counter(victim, processes, tmp_path)
    images = tmp_path / "images"
    dumping = _dump_paused_at(processes, counter.pid, images, point)
    assert proc.status(counter.pid)["TracerPid"] == str(dumping.pid)  # held by the dump when the signal comes
    dumping.send_signal(sig)
    _, stderr = dumping.communicate(timeout=60)
    assert dumping.returncode != 0
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("criupy: ")] == stderr.splitlines()
    _assert_runs_on_untouched(counter.pid, output)
    assert not images.exists()  # the dump made the directory: it is gone with what it wrote


def test_dump_interrupted_after_the_target_was_killed_keeps_the_images(victim, processes, tmp_path):
    counter, output = _start_counter(victim, processes, tmp_path)
    images = tmp_path / "images"
    dumping = _dump_paused_at(processes, counter.pid, images, "ended")
    counter.wait()  # killed by the dump
    dumping.send_signal(signal.SIGINT)
    dumping.communicate(timeout=60)
    restored = processes.track(restore(str(images), detach=True))
    assert restored == counter.pid
    _assert_runs_on_untouched(restored, output)
