"""wait_for(): the one way the tests wait for a process to get somewhere (never a timed assertion);
start_sleep(): `sleep 1000` once it sleeps; crit_show(): what CRIU's crit makes of an image."""

import json
import subprocess
import time

CRIT = "/usr/bin/crit"


def wait_for(condition, what, timeout=30):
    """Poll condition() until true; fails naming what after timeout seconds (a hang, not a slow run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


SLEEP_SYSCALLS = {"35", "230"}  # nanosleep, clock_nanosleep


def start_sleep(processes):
    """`sleep 1000` (started with the processes fixture), once it waits in its sleep: just after its exec
    it opens and closes files (its locale's), and a dump in that moment rightly fails on the fd that
    closed while criupy looked at it."""
    sleeper = processes.start(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def sleeping():
        with open(f"/proc/{sleeper.pid}/syscall") as f:
            return f.read().split()[0] in SLEEP_SYSCALLS

    wait_for(sleeping, f"sleep (PID {sleeper.pid}) to sleep")
    return sleeper


def crit_show(path):
    result = subprocess.run([CRIT, "show", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"crit cannot decode {path}: {result.stderr}"
    return json.loads(result.stdout)
