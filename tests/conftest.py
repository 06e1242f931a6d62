"""Shared fixtures: victims compiled from tests/victims/*.c, and processes that are always stopped by PID."""

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

VICTIMS_DIR = Path(__file__).parent / "victims"
PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config):
    # Processes that criupy restores detached are re-parented to us instead of init, so the
    # tests can reap them and no zombie outlives the run.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(scope="session")
def victim(tmp_path_factory):
    """victim(name, *cflags) -> path of tests/victims/NAME.c compiled with gcc (built once per session)."""
    out_dir = tmp_path_factory.mktemp("victims")
    built = {}

    def build(name, *cflags):
        key = (name, cflags)
        if key not in built:
            out = out_dir / (name + "".join(f.replace("-", "_") for f in cflags))
            subprocess.run(
                ["gcc", "-O1", "-g", "-Wall", "-o", str(out), str(VICTIMS_DIR / f"{name}.c"), "-pthread", *cflags],
                check=True,
            )
            built[key] = str(out)
        return built[key]

    return build


class Processes:
    """Starts processes and stops exactly those (and any PID handed to track()) at teardown.

    Each starts in a session of its own, as a daemon does: one that is in pytest's session is a job of
    a shell to criupy (criupy.dump.fds.tty), dumped only with shell_job. Pass start_new_session=False for one.
    """

    def __init__(self):
        self.pids = []

    def start(self, argv, **popen_kwargs):
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(argv, **popen_kwargs)
        self.pids.append(proc.pid)
        return proc

    def track(self, pid):
        """Also stop PID at teardown: a process restored by criupy, say."""
        self.pids.append(pid)
        return pid

    def stop_all(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 5
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    # not our child (or already reaped): wait for it to disappear
                    if not os.path.exists(f"/proc/{pid}"):
                        break
                time.sleep(0.01)


@pytest.fixture
def processes():
    procs = Processes()
    yield procs
    procs.stop_all()
