"""Shell jobs and terminals: --shell-job dump and restore, ptys a process holds, jobs stopped with Ctrl-Z.

A job is started as a shell starts one on its terminal: pty.fork() makes the pty the child's
controlling terminal and its fds 0-2. criupy restore --shell-job runs under another pty, as its
controlling terminal, the way a user runs it from a second terminal window.
"""

import errno
import os
import pty
import select
import signal
import subprocess
import sys
import time

import criupy
from criupy import proc, terminal
from criupy.images import ImagesDir

CRIT = "/usr/bin/crit"
GUARD_SECONDS = 30  # only against a hang: no test measures time


def _on_new_pty(argv, processes):
    """Start argv with a new pty as its controlling terminal and fds 0-2: (pid, the pty's master)."""
    pid, master = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    processes.track(pid)
    return pid, master


class Screen:
    """What a program wrote on a pty, read from its master as it comes."""

    def __init__(self, master):
        self.master = master
        self.text = b""
        self.closed = False

    def read_until(self, condition, what):
        deadline = time.monotonic() + GUARD_SECONDS
        while not condition(self.text):
            assert not self.closed, f"the terminal closed before {what}: {self.text[-300:]!r}"
            assert time.monotonic() < deadline, f"no {what} on the terminal: {self.text[-300:]!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    chunk = b""
                self.closed = not chunk
                self.text += chunk

    def read_to_end(self):
        self.read_until(lambda _: self.closed, "the end")

    def lines(self):
        """The complete lines so far."""
        return self.text.split(b"\n")[:-1]

    def numbers(self):
        return [int(line) for line in self.lines() if line.isdigit()]


def _wait_for_count(screen, count):
    screen.read_until(lambda text: len([x for x in text.split(b"\n")[:-1] if x.isdigit()]) >= count,
                      f"{count} lines")


def _reap(pid):
    """Reap our child PID, killed by a dump (criupy, its tracer, may have reaped it already)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _state(pid):
    return proc.stat(pid).state


def _wait_for_state(pid, states):
    deadline = time.monotonic() + GUARD_SECONDS
    while _state(pid) not in states:
        assert time.monotonic() < deadline, f"PID {pid} stays in state {_state(pid)}, not {states}"
        time.sleep(0.01)


def _criupy(*args):
    return subprocess.run([sys.executable, "-m", "criupy", *args], capture_output=True, text=True)


def test_job_goes_on_in_another_terminal_with_its_settings(victim, processes, tmp_path):
    pid, old_master = _on_new_pty([victim("tty_job")], processes)
    old_screen = Screen(old_master)
    _wait_for_count(old_screen, 5)
    dumped_settings = terminal.get_termios(old_master)  # a master's settings calls act on its slave
    assert not dumped_settings.lflag & (terminal.termios.ECHO | terminal.termios.ICANON)  # raw, no echo
    images = tmp_path / "images"

    result = _criupy("dump", "--shell-job", "-t", str(pid), "-D", str(images))
    assert result.returncode == 0, result.stderr
    _reap(pid)
    old_screen.read_to_end()  # everything it wrote before it was dumped
    last_dumped = old_screen.numbers()[-1]
    for name in ("tty-info", "files", "fdinfo-1"):
        assert subprocess.run([CRIT, "decode", "-i", str(images / f"{name}.img")], capture_output=True).returncode == 0
    (info,) = ImagesDir(str(images), "r").read("tty-info")
    assert (info.sid, info.pgrp) == (pid, pid)  # its controlling terminal, its group in the foreground

    criupy_pid, new_master = _on_new_pty(
        [sys.executable, "-m", "criupy", "restore", "--shell-job", "-D", str(images)], processes)
    processes.track(pid)
    screen = Screen(new_master)
    _wait_for_count(screen, 5)
    assert screen.numbers()[:5] == list(range(last_dumped + 1, last_dumped + 6))  # no gap, no repeat

    os.write(new_master, b"ping")
    screen.read_until(lambda text: b"got:ping\n" in text, "what was typed")
    assert b"ping" not in screen.text.replace(b"got:ping", b"")  # not echoed: echo stays off
    numbers = screen.numbers()
    assert numbers == list(range(last_dumped + 1, last_dumped + 1 + len(numbers)))
    assert terminal.get_termios(new_master) == dumped_settings

    restored = proc.stat(pid)
    new_terminal = os.stat(f"/proc/{criupy_pid}/fd/0").st_rdev  # criupy's terminal: the new pty
    assert (restored.session, restored.pgrp) == (criupy_pid, criupy_pid)  # in criupy's session and group
    assert restored.tty_nr == new_terminal and restored.tpgid == criupy_pid  # in the foreground there
    for fd in (0, 1, 2):
        assert os.stat(f"/proc/{pid}/fd/{fd}").st_rdev == new_terminal


def test_without_shell_job_the_dump_names_the_terminal_and_the_job_runs_on(victim, processes, tmp_path):
    pid, master = _on_new_pty([victim("tty_job")], processes)
    screen = Screen(master)
    _wait_for_count(screen, 3)
    images = tmp_path / "images"

    result = _criupy("dump", "-t", str(pid), "-D", str(images))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "fd 0" in line and "/dev/pts/" in line and "--shell-job" in line
    assert not os.listdir(images) if images.exists() else True

    seen = len(screen.numbers())
    _wait_for_count(screen, seen + 5)
    assert screen.numbers() == list(range(len(screen.numbers())))
    status = proc.status(pid)
    assert status["TracerPid"] == "0" and _state(pid) != "T"


def test_without_shell_job_the_dump_names_the_session(victim, processes, tmp_path):
    output = tmp_path / "counter.out"
    with open(output, "w") as out:
        counter = processes.start([victim("counter")], stdout=out, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=False)  # in pytest's session
    result = _criupy("dump", "-t", str(counter.pid), "-D", str(tmp_path / "images"))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert f"session of PID {os.getsid(0)}" in line and "--shell-job" in line
    lines = len(output.read_text().splitlines())
    deadline = time.monotonic() + GUARD_SECONDS
    while len(output.read_text().splitlines()) < lines + 3:
        assert time.monotonic() < deadline, "the counter stopped"
        time.sleep(0.01)


def test_restoring_a_shell_job_without_shell_job_is_refused(victim, processes, tmp_path):
    pid, master = _on_new_pty([victim("tty_job")], processes)
    _wait_for_count(Screen(master), 3)
    images = tmp_path / "images"
    criupy.dump(pid, str(images), shell_job=True)
    _reap(pid)

    result = _criupy("restore", "-D", str(images))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "fd 0" in line and "--shell-job" in line
    assert not os.path.exists(f"/proc/{pid}")


def _pty_pair_report(text):
    """{"name": ..., "termios": ..., and after SIGUSR1 "master"/"slave": hex of the bytes read} of pty_pair."""
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def _start_pty_pair(victim, processes, output):
    """pty_pair started writing to output, once it is ready; and the deadline for the rest of the test."""
    with open(output, "w") as out:
        holder = processes.start([victim("pty_pair")], stdout=out, stdin=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + GUARD_SECONDS
    while "ready" not in output.read_text():
        assert time.monotonic() < deadline and holder.poll() is None, output.read_text()
        time.sleep(0.01)
    return holder, deadline


def test_pty_pair_keeps_its_settings_name_and_queued_bytes(victim, processes, tmp_path):
    output = tmp_path / "pty_pair.out"
    holder, deadline = _start_pty_pair(victim, processes, output)
    before = _pty_pair_report(output.read_text())
    images = tmp_path / "images"

    criupy.dump(holder.pid, str(images))
    holder.wait()
    for name in ("tty-info", "tty-data"):
        assert subprocess.run([CRIT, "decode", "-i", str(images / f"{name}.img")], capture_output=True).returncode == 0
    pid = processes.track(criupy.restore(str(images), detach=True))
    os.kill(pid, signal.SIGUSR1)
    while "done" not in output.read_text():
        assert time.monotonic() < deadline + GUARD_SECONDS and os.path.exists(f"/proc/{pid}"), output.read_text()
        time.sleep(0.01)

    after = _pty_pair_report(output.read_text().split("ready\n", 1)[1])
    assert after["name"] == before["name"]        # /dev/pts/N: the same pty index
    assert after["termios"] == before["termios"]  # echo off, ^H as erase
    assert bytes.fromhex(after["master"]) == b"m1\r\nm2\r\n"  # written on the slave, in order, processed once
    assert bytes.fromhex(after["slave"]) == b"s1\ns2\n"       # typed on the master, in order, not echoed


def test_pty_pair_left_running_keeps_its_queued_bytes(victim, processes, tmp_path):
    output = tmp_path / "pty_pair.out"
    holder, deadline = _start_pty_pair(victim, processes, output)

    criupy.dump(holder.pid, str(tmp_path / "images"), leave_running=True)
    holder.send_signal(signal.SIGUSR1)
    while "done" not in output.read_text():
        assert time.monotonic() < deadline + GUARD_SECONDS and holder.poll() is None, output.read_text()
        time.sleep(0.01)
    after = _pty_pair_report(output.read_text().split("ready\n", 1)[1])
    assert bytes.fromhex(after["master"]) == b"m1\r\nm2\r\n"
    assert bytes.fromhex(after["slave"]) == b"s1\ns2\n"


def test_job_stopped_with_sigtstp_is_restored_stopped_and_runs_on_sigcont(victim, processes, tmp_path):
    # A background job of a shell: its own group in pytest's session (SIGTSTP does not stop a group
    # without a parent in another group of its session, as a process in a session of its own is)
    output = tmp_path / "counter.out"
    with open(output, "w") as out:
        counter = processes.start([victim("counter")], stdout=out, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=False, process_group=0)
    deadline = time.monotonic() + GUARD_SECONDS
    while len(output.read_text().splitlines()) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(counter.pid, signal.SIGTSTP)  # Ctrl-Z
    _wait_for_state(counter.pid, ("T",))
    images = tmp_path / "images"

    criupy.dump(counter.pid, str(images), shell_job=True)
    counter.wait()
    lines_at_dump = output.read_text().splitlines()
    pid = processes.track(criupy.restore(str(images), detach=True, shell_job=True))
    assert os.getpgid(pid) == pid and os.getsid(pid) == os.getsid(0)  # its own group, in the background
    _wait_for_state(pid, ("T",))
    assert output.read_text().splitlines() == lines_at_dump  # it ran no further

    os.kill(pid, signal.SIGCONT)
    while len(output.read_text().splitlines()) < len(lines_at_dump) + 5:
        assert time.monotonic() < deadline + GUARD_SECONDS and _state(pid) != "T"
        time.sleep(0.01)
    numbers = [int(line) for line in output.read_text().splitlines()]
    assert numbers == list(range(len(numbers)))  # no gap, no repeat
