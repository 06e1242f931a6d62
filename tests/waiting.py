"""wait_for(): the one way the tests wait for a process to get somewhere (never a timed assertion);
blocked_in(): the system call a process waits in;
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


def blocked_in(pid):
    """The number of the system call pid is blocked in, from /proc/PID/syscall; None while it runs."""
    with open(f"/proc/{pid}/syscall") as f:
        first = f.read().split()[0]
    return None if first in ("running", "-1") else int(first)


SLEEP_SYSCALLS = {35, 230}  # nanosleep, clock_nanosleep


def start_sleep(processes):
    """`sleep 1000` (started with the processes fixture), once it waits in its sleep: just after its exec
    it still opens and closes files (its locale's), and a test wants the process it dumps to stand still."""
    sleeper = processes.start(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for(lambda: blocked_in(sleeper.pid) in SLEEP_SYSCALLS, f"sleep (PID {sleeper.pid}) to sleep")
    return sleeper


def crit_show(path):
    result = subprocess.run([CRIT, "show", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"crit cannot decode {path}: {result.stderr}"
    return json.loads(result.stdout)
