"""`criupy demo`: start an example program, dump it, show it gone, restore it, show it going on.

The example is a CPython interpreter counting to a file, so the demo needs no compiler.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

import criupy

EXAMPLE = """
import time
n = 0
while True:
    print(n, flush=True)
    n += 1
    time.sleep(0.05)
"""


def _lines(path):
    with open(path) as f:
        return f.read().split()


def _say(text):
    print(f"demo: {text}", flush=True)


def demo():
    workdir = tempfile.mkdtemp(prefix="criupy-demo-")
    output = os.path.join(workdir, "counter.out")
    images = os.path.join(workdir, "images")
    with open(output, "w") as out:
        # a daemon of its own (no job of the shell, no terminal), so a plain dump takes it
        example = subprocess.Popen([sys.executable, "-c", EXAMPLE], stdout=out, stdin=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
    pid = example.pid
    restored_pid = None
    try:
        time.sleep(1)
        _say(f"started a Python counter, PID {pid}, writing to {output}; last lines: {_lines(output)[-3:]}")

        criupy.dump(pid, images)
        example.wait()  # dump kills the target, as CRIU does; reap it so its PID is free again
        last_dumped = _lines(output)[-1]
        _say(f"dumped into {images}; PID {pid} is gone: {not os.path.exists(f'/proc/{pid}')}; "
             f"it had counted to {last_dumped}")

        restored_pid = criupy.restore(images, detach=True)
        time.sleep(1)
        lines = _lines(output)
        at = lines.index(last_dumped)
        _say(f"restored as PID {restored_pid}; the output goes on: {lines[at - 2:at + 4]} ... {lines[-1]}")
        expected = [str(n) for n in range(len(lines))]
        if lines != expected:
            _say("the output has a gap or a repeat")
            return 1
        _say(f"no gap, no repeat: {len(lines)} lines 0..{lines[-1]}")
        return 0
    finally:
        # Stop only what the demo started: the example while it still runs, then the restored one.
        if example.poll() is None:
            example.kill()
            example.wait()
        if restored_pid is not None:
            os.kill(restored_pid, signal.SIGKILL)
            os.waitpid(restored_pid, 0)
