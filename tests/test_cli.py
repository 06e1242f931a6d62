"""The `criupy` command: restore waits for the process and takes its exit status, -d and --pidfile,
the demo, and errors as one `criupy: ...` line with a non-zero exit."""

import os
import signal
import subprocess
import sys
import time

import pytest

from waiting import blocked_in, wait_for

from criupy import proc

CRIUPY = [sys.executable, "-m", "criupy"]
# Waits for SIGUSR1 (blocked, so none is missed), then exits with status 7: `criupy restore`'s status.
EXIT_7_ON_SIGUSR1 = ("import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
                     "print('ready', flush=True)\nsignal.sigwait([signal.SIGUSR1])\nraise SystemExit(7)\n")
SYS_rt_sigtimedwait = 128


def criupy(*args, **kwargs):
    return subprocess.run([*CRIUPY, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)



def _lines(path):
    return path.read_text().splitlines()


def _dump_with_cli(processes, argv, output, images):
    with open(output, "w") as out:
        started = processes.start(argv, stdout=out, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _lines(output), "the victim's first line")
    result = criupy("dump", "-t", str(started.pid), "-D", str(images))
    assert result.returncode == 0, result.stderr
    started.wait()
    return started.pid


def test_restore_waits_and_exits_with_the_restored_process_status(processes, tmp_path):
    output = tmp_path / "out"
    pid = _dump_with_cli(processes, [sys.executable, "-c", EXIT_7_ON_SIGUSR1], output, tmp_path / "images")
    restoring = processes.start([*CRIUPY, "restore", "-D", str(tmp_path / "images")], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.track(pid)

    def waits_for_the_signal():
        try:
            return blocked_in(pid) == SYS_rt_sigtimedwait and proc.status(pid)["TracerPid"] == "0"
        except (FileNotFoundError, ProcessLookupError):
            assert restoring.poll() is None, restoring.communicate()
            return False

    wait_for(waits_for_the_signal, "the restored process in sigwait")
    assert restoring.poll() is None  # criupy waits for it
    os.kill(pid, signal.SIGUSR1)
    stdout, stderr = restoring.communicate(timeout=60)
    assert restoring.returncode == 7, stderr
    assert stdout == stderr == ""


def test_detached_restore_returns_while_the_process_runs_and_writes_the_pidfile(victim, processes, tmp_path):
    output = tmp_path / "out"
    pid = _dump_with_cli(processes, [victim("counter")], output, tmp_path / "images")
    pidfile = tmp_path / "restored.pid"
    result = criupy("restore", "-d", "-D", str(tmp_path / "images"), "--pidfile", str(pidfile), timeout=60)
    assert result.returncode == 0, result.stderr
    processes.track(pid)
    assert pidfile.read_text() == f"{pid}\n"
    status = proc.status(pid)
    assert status["State"][0] in "RS" and status["TracerPid"] == "0"
    count = len(_lines(output))
    wait_for(lambda: len(_lines(output)) > count + 5, "the restored counter to go on")
    numbers = [int(line) for line in _lines(output)]
    assert numbers == list(range(len(numbers)))


def test_show_prints_all_of_an_image_into_a_pipe(victim, processes, tmp_path):
    """The command leaves without the interpreter's teardown: what it printed must still all be there."""
    from criupy.images.show import show

    _dump_with_cli(processes, [victim("counter")], tmp_path / "out", tmp_path / "images")
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    for name in ("pstree.img", "files.img"):
        result = criupy("show", str(tmp_path / "images" / name), env=buffered)
        assert result.returncode == 0, result.stderr
        assert result.stdout == show(str(tmp_path / "images" / name)) + "\n"


def test_a_profiler_run_of_a_command_writes_its_profile(tmp_path):
    """The exit without teardown is skipped under a profiler (or a tracer such as coverage)."""
    profile = tmp_path / "criupy.prof"
    result = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "criupy", "show",
                             str(tmp_path / "core-1.img")], capture_output=True, text=True)
    assert "core-1.img" in result.stderr
    assert profile.stat().st_size > 0


def test_demo_shows_the_counter_going_on():
    result = criupy("demo", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no gap, no repeat" in result.stdout
    assert "Traceback" not in result.stderr


def _nothing_listening_pid():
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


@pytest.mark.parametrize("case", ["no such PID", "missing images dir", "dir without images", "unknown option",
                                  "missing option", "no command", "PID not a number"])
def test_errors_are_one_line_and_a_failure_status(tmp_path, case):
    (tmp_path / "empty").mkdir()
    args = {
        "no such PID": ["dump", "-t", str(_nothing_listening_pid()), "-D", str(tmp_path / "images")],
        "missing images dir": ["restore", "-D", str(tmp_path / "nowhere")],
        "dir without images": ["restore", "-D", str(tmp_path / "empty")],
        "unknown option": ["restore", "-D", str(tmp_path / "empty"), "--no-such-option"],
        "missing option": ["dump", "-D", str(tmp_path / "images")],
        "no command": [],
        "PID not a number": ["dump", "-t", "twelve", "-D", str(tmp_path / "images")],
    }[case]
    result = criupy(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("criupy: "), result.stderr
    assert not (tmp_path / "images").exists() or not os.listdir(tmp_path / "images")
