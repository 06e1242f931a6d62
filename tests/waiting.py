"""wait_for(): the one way the tests wait for a process to get somewhere (never a timed assertion);
crit_show(): what CRIU's crit makes of an image."""

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


def crit_show(path):
    result = subprocess.run([CRIT, "show", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"crit cannot decode {path}: {result.stderr}"
    return json.loads(result.stdout)
