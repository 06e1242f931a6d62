"""fds beyond files and pipes: a victim (tests/victims/fds.c) dumped and restored while it waits prints
what its fds hold and how they behave exactly as a run never dumped does, with the same fd numbers,
flags and /proc/PID/fdinfo; and crit decodes every image."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from criupy import proc
from criupy.dump import dump
from criupy.errors import CriupyError
from criupy.images.show import show
from criupy.restore import restore

CRIT = "/usr/bin/crit"


def _wait_for(path, text):
    deadline = time.monotonic() + 10
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path}: no {text!r}: {path.read_text()!r}"
        time.sleep(0.01)


def _fd_table(pid):
    """{fd: fdinfo fields that must survive} (pos, flags, and every kind-specific line but ids)."""
    table = {}
    for fd in proc.fds(pid):
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            lines = f.read().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        kept = {key: " ".join(value.split()) for key, value in fields.items()
                if key not in ("mnt_id", "ino", "eventfd-id")}
        table[fd] = (proc.fd_link(pid, fd).split(":")[0], kept)
    return table


def _run(victim, processes, tmp_path, kind, dumped):
    """The victim's report, and its fd table before the dump and after the restore (None if not dumped)."""
    out = tmp_path / f"{kind}-{'dumped' if dumped else 'plain'}.out"
    trigger = tmp_path / f"{kind}-{'dumped' if dumped else 'plain'}.go"
    with open(out, "w") as f:
        child = processes.start([victim("fds"), str(trigger), kind], stdout=f, stdin=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    _wait_for(out, "ready\n")
    tables = None
    if dumped:
        before = _fd_table(child.pid)
        images = tmp_path / f"{kind}-images"
        dump(child.pid, str(images))
        child.wait()
        for name in os.listdir(images):
            if name.startswith("pages-"):
                continue  # raw page contents: nothing for crit to decode
            subprocess.run([CRIT, "decode", "-i", str(images / name)], check=True, capture_output=True)
        pid = processes.track(restore(str(images), detach=True))
        assert pid == child.pid
        tables = (before, _fd_table(pid))
        trigger.touch()
        _, status = os.waitpid(pid, 0)
    else:
        trigger.touch()
        status = child.wait() << 8
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out.read_text()
    return out.read_text(), tables, (tmp_path / f"{kind}-images" if dumped else None)


def _same_as_plain_run(victim, processes, tmp_path, kind):
    plain, _, _ = _run(victim, processes, tmp_path, kind, dumped=False)
    restored, (before, after), images = _run(victim, processes, tmp_path, kind, dumped=True)
    assert restored == plain
    assert after == before
    return plain, images


def test_unix_socket_pairs_keep_their_queues_both_ways(victim, processes, tmp_path):
    report, images = _same_as_plain_run(victim, processes, tmp_path, "unix")
    assert "fd 12: 'back-1' 'back-22'" in report and "fd 13: 'd1' 'dgram-22' 'dgram-333'" in report
    assert "fd 15: 10 bytes, hash" in report and "then EOF" in report
    assert "fd 10 then: 'ping'" in report and "fd 14 after shutdown: EPIPE" in report
    shown = json.loads(show(str(images)))
    queued = {}  # socket file id -> bytes queued for it
    for message in shown["sk-queues.img"]["entries"]:
        queued[message["id_for"]] = queued.get(message["id_for"], 0) + message["length"]
    # fds 11, 10, 13, 12, 15 (14 and 15 shut down: nothing more after their EOF)
    assert sorted(queued.values()) == sorted([12 + 100000 + 10, 13, 2 + 8 + 9, 6 + 7, 10])


# --- what stays refused: one line naming the fd, the process running on untouched ---------------------

REFUSED = [
    pytest.param("s = socket.socket(socket.AF_UNIX)\ns.bind(PATH)\nfd = s.fileno()",
                 r"^fd {fd} is a unix socket bound to \S+/bound.sock: not supported yet$", id="bound"),
    pytest.param("s = socket.socket(socket.AF_UNIX)\ns.connect(LISTENING)\nfd = s.fileno()",
                 r"^fd {fd} is a unix socket connected to a socket outside the process: not supported yet$",
                 id="outside-peer"),
    pytest.param("a, b = socket.socketpair()\nb.close()\nfd = a.fileno()",
                 r"^fd {fd} is a unix socket whose peer is closed \(or not accepted yet\): not supported yet$", id="peer-closed"),
    pytest.param("a, b = socket.socketpair()\nsocket.send_fds(a, [b'x'], [0])\nfd = b.fileno()",
                 r"^fd {fd} is a unix socket with file descriptors queued in it: not supported yet$",
                 id="queued-fds"),
]


@pytest.mark.parametrize("setup, message", REFUSED)
def test_unix_sockets_criupy_cannot_dump_are_named(processes, tmp_path, setup, message):
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "listening.sock"))
    listening.listen()
    script = (f"import socket, time\nPATH = {str(tmp_path / 'bound.sock')!r}\n"
              f"LISTENING = {str(tmp_path / 'listening.sock')!r}\n{setup}\nprint(fd, flush=True)\n"
              "while True: time.sleep(0.05)")
    victim = processes.start([sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    fd = int(victim.stdout.readline())
    if "LISTENING" in setup:
        accepted, _ = listening.accept()
    maps_before = proc.maps(victim.pid)
    with pytest.raises(CriupyError, match=message.replace("{fd}", str(fd))):
        dump(victim.pid, str(tmp_path / "images"), leave_running=True)
    status = proc.status(victim.pid)
    assert status["TracerPid"] == "0" and status["State"][0] in "SR"
    assert proc.maps(victim.pid) == maps_before
    assert not list((tmp_path / "images").glob("*.img"))
    listening.close()
