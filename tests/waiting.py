"""wait_for(): the one way the tests wait for a process to get somewhere (never a timed assertion)."""

import time


def wait_for(condition, what, timeout=30):
    """Poll condition() until true; fails naming what after timeout seconds (a hang, not a slow run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)
