"""fds beyond files and pipes: a victim (tests/victims/fds.c) dumped and restored while it waits prints
what its fds hold and how they behave exactly as a run never dumped does, with the same fd numbers,
flags and /proc/PID/fdinfo; and crit decodes every image."""

import fcntl
import json
import os
import signal
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
from waiting import blocked_in, wait_for

CRIT = "/usr/bin/crit"


def _wait_for(path, text):
    deadline = time.monotonic() + 10
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path}: no {text!r}: {path.read_text()!r}"
        time.sleep(0.01)


# fdinfo lines that differ in any two processes (ids), or go on with time (a timer's, checked apart)
VOLATILE = ("mnt_id", "ino", "eventfd-id", "ticks", "it_value")


def _fd_table(pid):
    """{fd: (kind, fdinfo lines that must survive)}: pos, flags, and every kind-specific line but VOLATILE."""
    table = {}
    for fd in proc.fds(pid):
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            lines = [line for line in f.read().splitlines() if line.split(":")[0] not in VOLATILE]
        kept = sorted(" ".join(line.replace("\t", " ").split()) for line in lines)
        kept = [" ".join(word for word in line.split() if not word.startswith(("ino:", "sdev:"))) for line in kept]
        table[fd] = (proc.fd_link(pid, fd).split(":")[0], kept)
    return table


def _timer_expiry(pid, fd):
    """When timerfd fd of pid next expires (CLOCK_MONOTONIC ns), from its fdinfo; None if disarmed."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        fields = dict(line.split(":", 1) for line in f.read().splitlines())
    seconds, nanoseconds = (int(v) for v in fields["it_value"].strip(" ()\t").split(","))
    left = seconds * 1_000_000_000 + nanoseconds
    return now + left if left else None


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
        if kind == "anon":
            tables += ({fd: _timer_expiry(pid, fd) for fd in (23, 24)},)
        trigger.touch()
        _, status = os.waitpid(pid, 0)
    else:
        trigger.touch()
        status = child.wait() << 8
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out.read_text()
    return out.read_text(), tables, (tmp_path / f"{kind}-images" if dumped else None)


def _same_as_plain_run(victim, processes, tmp_path, kind):
    plain, _, _ = _run(victim, processes, tmp_path, kind, dumped=False)
    restored, tables, images = _run(victim, processes, tmp_path, kind, dumped=True)
    assert _without_times(restored) == _without_times(plain)
    assert tables[1] == tables[0]
    return restored, tables, images


def _without_times(report):
    """The report without what differs from run to run: times, and the ports the kernel chose."""
    return [line for line in report.splitlines() if not line.startswith(("t0 ", "t1 ", "port "))]


def test_unix_socket_pairs_keep_their_queues_both_ways(victim, processes, tmp_path):
    report, _, images = _same_as_plain_run(victim, processes, tmp_path, "unix")
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

def _start_printing(processes, script):
    """A Python script's process, and the numbers it prints on its first line (an fd, say)."""
    target = processes.start([sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    return target, [int(word) for word in target.stdout.readline().split()]


def _assert_refused(target, tmp_path, message):
    """Dumping target fails with message (a regular expression); it runs on untouched, and no image is left."""
    maps_before = proc.maps(target.pid)
    with pytest.raises(CriupyError, match=message):
        dump(target.pid, str(tmp_path / "images"), leave_running=True)
    status = proc.status(target.pid)
    assert status["TracerPid"] == "0" and status["State"][0] in "SR"
    assert proc.maps(target.pid) == maps_before
    assert not list((tmp_path / "images").glob("*.img"))


REFUSED = [
    pytest.param("s = socket.socket(socket.AF_UNIX)\ns.bind(PATH)\ns.listen()\nc = socket.socket(socket.AF_UNIX)\n"
                 "c.connect(PATH)\na, _ = s.accept()\ns.close()\nfd = a.fileno()",
                 r"^fd {fd} is a unix socket bound to \S+/bound.sock and connected, and no dumped process listens "
                 r"there: not supported yet$", id="accepted-listener-closed"),
    pytest.param("s = socket.socket(socket.AF_UNIX)\ns.bind(PATH)\ns.listen()\nc = socket.socket(socket.AF_UNIX)\n"
                 "c.connect(PATH)\nfd = s.fileno()",
                 r"^fd {fd} is a unix socket listening on \S+/bound.sock with 1 connections not accepted yet: "
                 r"not supported yet$", id="connection-waiting"),
    pytest.param("s = socket.socket(socket.AF_UNIX)\nos.chdir(os.path.dirname(PATH))\ns.bind('relative.sock')\n"
                 "fd = s.fileno()",
                 r"^fd {fd} is a unix socket bound to relative.sock, a path relative to its directory then: "
                 r"not supported yet$", id="relative"),
    pytest.param("s = socket.socket(socket.AF_UNIX)\ns.connect(LISTENING)\nfd = s.fileno()",
                 r"^fd {fd} is a unix socket connected to a socket outside the dumped processes: not supported yet$",
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
    script = (f"import os, socket, time\nPATH = {str(tmp_path / 'bound.sock')!r}\n"
              f"LISTENING = {str(tmp_path / 'listening.sock')!r}\n{setup}\nprint(fd, flush=True)\n"
              "while True: time.sleep(0.05)")
    victim, (fd,) = _start_printing(processes, script)
    if "LISTENING" in setup:
        accepted, _ = listening.accept()
    _assert_refused(victim, tmp_path, message.replace("{fd}", str(fd)))
    listening.close()


def test_eventfd_signalfd_timerfd_and_epoll_carry_on(victim, processes, tmp_path):
    report, (_, after, expiries), images = _same_as_plain_run(victim, processes, tmp_path, "anon")
    assert "epoll: 0x1111 events 0x1\nepoll: 0x2222 events 0x1\nepoll: 0x3333 events 0x4\n" in report
    assert "eventfd 20: 5\neventfd 21: 1\neventfd 21: 1\neventfd 21: 1\neventfd 20 then: EAGAIN\n" in report
    assert "signalfd: signal 12\nsignalfd then: signal 10\n" in report
    assert "timer 23: ticked\ntimer 24: armed\nepoll del 27: ok\n" in report
    assert [line for _, line in [after[26]] for line in line if line.startswith("tfd:")] == [
        "tfd: 20 events: 19 data: 1111 pos:0", "tfd: 21 events: 1c data: 3333 pos:0",
        "tfd: 22 events: 80000019 data: 2222 pos:0", "tfd: 27 events: 19 data: 4444 pos:0"]
    # the timers keep their dumped schedule: timer 23 every 30 s from t0, timer 24 once at t1
    times = dict(line.split() for line in report.splitlines() if line.startswith(("t0 ", "t1 ")))
    t0, t1 = int(times["t0"]), int(times["t1"])
    assert abs((expiries[23] - t0 + 15_000_000_000) % 30_000_000_000 - 15_000_000_000) < 5_000_000
    assert abs(expiries[24] - t1) < 5_000_000
    shown = json.loads(show(str(images)))
    timers = {e["id"]: e for e in shown["files.img"]["entries"] if e["type"] == "TIMERFD"}
    assert sorted(t["tfd"]["ticks"] for t in timers.values()) == [0, 1]  # 23's one tick, not read by the dump


def test_fifos_keep_their_data(victim, processes, tmp_path):
    report, _, images = _same_as_plain_run(victim, processes, tmp_path, "fifo")
    assert report.endswith("fifo 30: 'fifo one\nfifo two\n'\nfifo 30 then: EAGAIN\nfifo 32: 'both ends'\n"
                           "fifo 30 after: 'after'\n")
    shown = json.loads(show(str(images)))
    assert sorted(e["bytes"] for e in shown["fifo-data.img"]["entries"]) == [9, 18]


def test_inotify_watches_keep_their_wd_mask_and_file(victim, processes, tmp_path):
    """wd 1 on a file, wd 2 removed, wd 3 on a directory with IN_ONESHOT: the events after the restore are those
    of a run never dumped (a watch given another wd, or its IN_ONESHOT lost, would show)."""
    report, _, images = _same_as_plain_run(victim, processes, tmp_path, "inotify")
    assert report.endswith("inotify: wd 1 mask 0x2 name ''\ninotify: wd 3 mask 0x100 name 'new'\n"
                           "inotify: wd 3 mask 0x8000 name ''\ninotify then: EAGAIN\n")
    shown = json.loads(show(str(images)))
    watches = [w for e in shown["files.img"]["entries"] if e["type"] == "INOTIFY" for w in e["ify"]["wd"]]
    trigger = tmp_path / "inotify-dumped.go"
    assert [(w["wd"], w["f_handle"]["path"]) for w in watches] == [(1, f"{trigger}.watched"), (3, f"{trigger}.dir")]


def test_tail_follows_its_file_on_after_a_restore(processes, tmp_path):
    """coreutils' tail -f waits for inotify events on the file it follows."""
    followed, out = tmp_path / "log", tmp_path / "tail.out"
    followed.write_text("one\n")
    with open(out, "w") as f:
        tail = processes.start(["tail", "-f", str(followed)], stdout=f, stdin=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    _wait_for(out, "one\n")
    wait_for(lambda: blocked_in(tail.pid) is not None, "tail to wait for its file")
    dump(tail.pid, str(tmp_path / "images"))
    tail.wait()
    processes.track(restore(str(tmp_path / "images"), detach=True))
    with open(followed, "a") as f:
        f.write("two\n")
    _wait_for(out, "two\n")
    assert out.read_text() == "one\ntwo\n"


def test_an_inotify_watch_of_a_deleted_file_is_refused(processes, tmp_path):
    """The file is mapped (its inode lives on, and a watch with it): the mapping alone would be a ghost file."""
    script = ("import ctypes, os, time\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\n"
              f"path = {str(tmp_path / 'gone')!r}\nwith open(path, 'wb') as f: f.write(bytes(4096))\n"
              "with open(path, 'rb') as f: libc.mmap(None, 4096, 1, 2, f.fileno(), 0)\n"  # PROT_READ, MAP_PRIVATE
              "fd = libc.inotify_init1(0)\nlibc.inotify_add_watch(fd, path.encode(), 2)\nos.unlink(path)\n"
              "print(fd, flush=True)\nwhile True: time.sleep(0.05)")
    target, (fd,) = _start_printing(processes, script)
    _assert_refused(target, tmp_path, rf"^fd {fd}: inotify watch 1: ")


def test_tcp_and_udp_sockets_without_connections_carry_on(victim, processes, tmp_path):
    """Listening TCP sockets (IPv4 and IPv6), a bound and a connected UDP socket, a TCP socket not used yet:
    the same ports, options and behaviour after the restore; clients connect and are accepted."""
    report, _, images = _same_as_plain_run(victim, processes, tmp_path, "inet")
    ports = [line for line in report.splitlines() if line.startswith("port ")]
    assert len(ports) == 6 and ports[:3] == ports[3:]  # at the setup, and after the restore
    assert "50: SO_REUSEADDR 1, TCP_NODELAY 1, O_NONBLOCK 1\n51: IPV6_V6ONLY 1; " in report
    assert "tcp4: 'tcp4', accepted with TCP_NODELAY 1\ntcp6: 'tcp6', accepted with TCP_NODELAY 0\n" in report
    assert "udp 52: 'datagram' from 53: yes\n" in report
    shown = json.loads(show(str(images)))
    sockets = sorted((e["isk"]["proto"], e["isk"]["state"], e["isk"]["src_addr"], e["isk"]["backlog"])
                     for e in shown["files.img"]["entries"] if e["type"] == "INETSK")
    assert sockets == [("TCP", "CLOSE", ["0.0.0.0"], 0), ("TCP", "LISTEN", ["127.0.0.1"], 7),
                       ("TCP", "LISTEN", ["::1"], 3), ("UDP", "CLOSE", ["127.0.0.1"], 0),
                       ("UDP", "ESTABLISHED", ["127.0.0.1"], 0)]


def test_a_python_http_server_serves_on_after_a_restore(processes, tmp_path):
    (tmp_path / "index.html").write_text("restored\n")
    with socket.socket() as probe:  # a port free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = processes.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=tmp_path,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _get(port) == "restored\n", "the server to answer")
    dump(server.pid, str(tmp_path / "images"))
    server.wait()
    processes.track(restore(str(tmp_path / "images"), detach=True))
    assert _get(port) == "restored\n"


def _get(port):
    """The body of GET / from the server on port, or None if nothing answers there."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return b"".join(iter(lambda: client.recv(4096), b"")).partition(b"\r\n\r\n")[2].decode()
    except ConnectionRefusedError:
        return None


def test_a_tcp_connection_is_refused_naming_its_ends(processes, tmp_path):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        script = (f"import socket, time\ns = socket.create_connection(('127.0.0.1', {port}))\n"
                  "print(s.fileno(), s.getsockname()[1], flush=True)\nwhile True: time.sleep(0.05)")
        target, (fd, local_port) = _start_printing(processes, script)
        _assert_refused(target, tmp_path, rf"^fd {fd} is a TCP connection from 127.0.0.1:{local_port} to "
                                          rf"127.0.0.1:{port}: not supported yet$")


UNIX_SERVER = """
import os, select, socket
path, dgram_path, abstract_name = {path!r}, {dgram_path!r}, {abstract_name!r}
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(4)
os.chmod(path, 0o640)
abstract = socket.socket(socket.AF_UNIX)
abstract.bind(abstract_name)
abstract.listen()
dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dgram.bind(dgram_path)
print("ready", flush=True)
while True:
    for ready in select.select([listener, abstract, dgram], [], [])[0]:
        if ready is dgram:
            print("datagram", ready.recv(100).decode(), flush=True)
        else:
            client, _ = ready.accept()
            client.sendall(b"hello from " + (b"path" if ready is listener else b"abstract"))
            client.close()
"""


def test_unix_sockets_listening_or_bound_are_bound_again(processes, tmp_path):
    """A listener on a path (its file's mode kept), one on an abstract name, a datagram socket bound to a path:
    clients reach each after the restore. A second restore while the first runs finds the path in use."""
    path, dgram_path = str(tmp_path / "server.sock"), str(tmp_path / "dgram.sock")
    abstract_name = f"\0criupy-test-{os.getpid()}"
    out = tmp_path / "server.out"
    script = UNIX_SERVER.format(path=path, dgram_path=dgram_path, abstract_name=abstract_name)
    with open(out, "w") as f:
        server = processes.start([sys.executable, "-c", script], stdout=f, stdin=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT)
    _wait_for(out, "ready\n")
    dump(server.pid, str(tmp_path / "images"))
    server.wait()
    processes.track(restore(str(tmp_path / "images"), detach=True))
    for name, greeting in ((path, b"hello from path"), (abstract_name, b"hello from abstract")):
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(name)
            assert client.recv(100) == greeting
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"after", dgram_path)
    _wait_for(out, "datagram after\n")
    assert os.stat(path).st_mode == 0o140640
    with pytest.raises(CriupyError, match=rf"^unix socket {path} is in use by another process$"):
        restore(str(tmp_path / "images"), detach=True)


LOCKER = """
import fcntl, struct, time
exclusive = open({flocked!r}, "w")
fcntl.flock(exclusive, fcntl.LOCK_EX)
shared = open({ofd_locked!r}, "w+")
fcntl.fcntl(shared, 37, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 10, 5, 0))  # F_OFD_SETLK, bytes 10 to 14
ranged = open({posix_locked!r}, "w")
fcntl.lockf(ranged, fcntl.LOCK_EX, 10, 5)  # a POSIX lock of bytes 5 to 14
print(exclusive.fileno(), shared.fileno(), flush=True)
while True:
    time.sleep(0.05)
"""


def _locks_on(*paths):
    """The lines of /proc/locks on these files, without their numbers and device."""
    inodes = {str(os.stat(path).st_ino) for path in paths}
    found = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()[1:]
            if fields[0] != "->" and fields[4].split(":")[2] in inodes:
                found.append(" ".join(fields[:4] + fields[5:]))
    return sorted(found)


def test_file_locks_are_held_again_by_the_restored_process(processes, tmp_path):
    """flock, OFD and POSIX locks: /proc/locks shows the same lines, each owned by the same PID; nobody else
    can take them; and a restore that finds one taken meanwhile fails naming it, leaving no process behind."""
    paths = {name: str(tmp_path / name) for name in ("flocked", "ofd_locked", "posix_locked")}
    target, (exclusive_fd, _) = _start_printing(processes, LOCKER.format(**paths))
    before = _locks_on(*paths.values())
    assert before == [f"FLOCK ADVISORY WRITE {target.pid} 0 EOF", "OFDLCK ADVISORY READ -1 10 14",
                      f"POSIX ADVISORY WRITE {target.pid} 5 14"]
    dump(target.pid, str(tmp_path / "images"))
    target.wait()
    assert _locks_on(*paths.values()) == []
    processes.track(restore(str(tmp_path / "images"), detach=True))
    assert _locks_on(*paths.values()) == before
    with open(paths["flocked"], "w") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(paths["posix_locked"], "w") as other, pytest.raises(OSError):
        fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 14)

    os.kill(target.pid, signal.SIGKILL)  # then another process takes the flock, and a restore cannot
    os.waitpid(target.pid, 0)  # restored detached, it is ours to reap (the tests are a child subreaper)
    with open(paths["flocked"], "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CriupyError, match=rf"^restoring PID {target.pid}: cannot take the flock lock of fd "
                                              rf"{exclusive_fd} of PID {target.pid} again: "):
            restore(str(tmp_path / "images"), detach=True)
    assert not os.path.exists(f"/proc/{target.pid}")


def test_a_lease_is_refused_naming_the_fd(processes, tmp_path):
    leased = tmp_path / "leased"
    leased.write_text("")
    script = (f"import fcntl, time\nf = open({str(leased)!r})\nfcntl.fcntl(f, 1024, fcntl.F_RDLCK)\n"  # F_SETLEASE
              "print(f.fileno(), flush=True)\nwhile True: time.sleep(0.05)")
    target, (fd,) = _start_printing(processes, script)
    _assert_refused(target, tmp_path, rf"^fd {fd}: {leased} holds a LEASE lock: not supported yet$")
