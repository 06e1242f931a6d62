"""Terminals of the dumped task: TTY entries of files.img, tty-info.img, tty-data.img (CRIU's images).

What a terminal fd is decides how it is dumped:
  pty pair    the tree holds the master (/dev/ptmx) and the slave (/dev/pts/N) of one pty: both are
              dumped with their settings, and the bytes queued in each direction (tty-data.img, keyed
              by the tty-info id of the end that reads them) are taken out while the tree is stopped.
              A dump that fails, or leaves the tree running, puts them back.
  master      a master whose slave is held outside the dump: dumped alone, without queued bytes.
  the job's   any other terminal: a slave whose master is outside (a terminal emulator's, sshd's), the
  terminal    controlling terminal (/dev/tty), a console, a serial line. It belongs to the shell the
              task runs in, so it is dumped only with shell_job (--shell-job), with its settings and
              window size, and whether it is the task's controlling terminal with the task's group in
              the foreground (sid, pgrp). Restore gives the task criupy's own terminal in its place.

shell_job also allows a root that does not lead its session or its process group (a job started
from a shell); without it such a root, or a job's terminal, stops the dump before the tree is stopped.
One tty-info entry per terminal end (the same id for every fd on it), as CRIU does.
"""

import logging
import os
from typing import NamedTuple

from criupy import terminal
from criupy.errors import CriupyError
from criupy.images.pb import tty_pb2

log = logging.getLogger("criupy.dump")

PTS_MAJORS = range(136, 144)
TTYAUX_MAJOR = 5   # 5:0 /dev/tty, 5:1 /dev/console, 5:2 /dev/ptmx
TTY_MAJOR = 4      # 4:0-63 virtual consoles, 4:64-255 serial lines
SHELL_JOB_HINT = "add --shell-job to dump it"


class Terminal(NamedTuple):
    """What a terminal fd is open on: kind ("master", "slave", "ctty", "console", "vt", "serial"), pty index."""

    kind: str
    index: int = -1
    rdev: int = 0

    @property
    def tty_type(self):
        return {"master": tty_pb2.PTY, "slave": tty_pb2.PTY, "ctty": tty_pb2.CTTY, "console": tty_pb2.CONSOLE,
                "vt": tty_pb2.VT, "serial": tty_pb2.SERIAL}[self.kind]


def terminal_of(open_fd):
    """The Terminal an fd of kind "tty" is open on."""
    rdev = open_fd.st.st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    if major in PTS_MAJORS:
        return Terminal("slave", (major - PTS_MAJORS.start) * 256 + minor, rdev)
    if major == TTYAUX_MAJOR:
        if minor == 2:
            return Terminal("master", int(open_fd.info.extra.get("tty-index", "-1")), rdev)
        return Terminal("ctty" if minor == 0 else "console", -1, rdev)
    return Terminal("vt" if major == TTY_MAJOR and minor < 64 else "serial", -1, rdev)


def _master_indexes(open_fds):
    indexes = set()
    for open_fd in open_fds:
        if open_fd.kind == "tty" and terminal_of(open_fd).kind == "master":
            indexes.add(terminal_of(open_fd).index)
    return indexes


def is_jobs_terminal(terminal_now, master_indexes):
    """A terminal of the shell the task runs in, not a pty the tree holds both ends of (or the master of)."""
    return terminal_now.kind != "master" and not (terminal_now.kind == "slave" and terminal_now.index in master_indexes)


def check(root, processes, shell_job):
    """Refuse, before the tree is stopped, a job's terminal or session without shell_job.

    processes: {pid: (its OpenFds, its proc.Stat)} of root and every descendant."""
    masters = _master_indexes(fd for open_fds, _ in processes.values() for fd in open_fds)
    for pid, (open_fds, stat) in processes.items():
        for open_fd in open_fds:
            if open_fd.kind != "tty":
                continue
            terminal_now = terminal_of(open_fd)
            if terminal_now.kind == "master" and terminal_now.index < 0:
                raise CriupyError(f"fd {open_fd.fd} of PID {pid} is a pty master ({open_fd.link}) whose index this "
                                  f"kernel does not show: not supported")
            if not shell_job and is_jobs_terminal(terminal_now, masters):
                raise CriupyError(f"fd {open_fd.fd} of PID {pid} is a terminal ({open_fd.link}) of the shell it "
                                  f"runs in: {SHELL_JOB_HINT}")
            if terminal_now.kind == "slave" and terminal_now.index in masters and stat.tty_nr == terminal_now.rdev:
                raise CriupyError(f"fd {open_fd.fd}: PID {pid}'s controlling terminal is a pty the dumped tree "
                                  f"holds both ends of ({open_fd.link}): not supported yet")
    if shell_job:
        return
    stat = processes[root][1]
    if stat.session != root:
        raise CriupyError(f"PID {root} is in the session of PID {stat.session}, outside the dumped tree: "
                          f"{SHELL_JOB_HINT}")
    if stat.pgrp != root:
        raise CriupyError(f"PID {root} is in process group {stat.pgrp}, whose leader is outside the dumped tree: "
                          f"{SHELL_JOB_HINT}")


def _termios_entry(t):
    return tty_pb2.termios_entry(c_iflag=t.iflag, c_oflag=t.oflag, c_cflag=t.cflag, c_lflag=t.lflag,
                                 c_line=t.line, c_ispeed=t.ispeed, c_ospeed=t.ospeed, c_cc=list(t.cc))


class _End:
    """One terminal end of the dump: its tty-info entry and criupy's copy of an fd on it (-1 until stolen)."""

    def __init__(self, terminal, info):
        self.terminal = terminal
        self.info = info
        self.fd = -1


class Terminals:
    """The terminals of the tree as dump_fds meets their fds: dump() reads each process's through its
    parasite, take_queued() takes the queued bytes of every pair once all processes are dumped."""

    def __init__(self):
        self._ends = {}       # Terminal -> _End
        self._pending = []    # (OpenFd, _End) whose fd is still to be stolen
        self._stolen = []
        self.data = []        # tty_data_entry, the queued bytes taken out
        self._taken = []      # (writer, reader, slave, bytes) to put back

    def file_entry(self, open_fd, file_id, flags, fown):
        """The tty_file_entry of a new open file description on a terminal."""
        terminal_now = terminal_of(open_fd)
        end = self._ends.get(terminal_now)
        if end is None:
            st = open_fd.st
            info = tty_pb2.tty_info_entry(
                id=len(self._ends) + 1, type=terminal_now.tty_type, locked=False, exclusive=False,
                packet_mode=False, sid=0, pgrp=0, rdev=st.st_rdev, dev=st.st_dev, uid=st.st_uid, gid=st.st_gid)
            if terminal_now.index >= 0:
                info.pty.index = terminal_now.index
            end = self._ends[terminal_now] = _End(terminal_now, info)
            self._pending.append((open_fd, end))
        return tty_pb2.tty_file_entry(id=file_id, tty_info_id=end.info.id, flags=flags, fown=fown)

    @property
    def infos(self):
        return [end.info for end in self._ends.values()]

    def dump(self, steal_fds, stat):
        """Read the state of the terminals first met in one process (stat: its proc.Stat), through
        criupy's copies of its fds (kept for take_queued)."""
        if not self._pending:
            return
        stolen = steal_fds([open_fd.fd for open_fd, _ in self._pending])
        self._stolen += stolen
        for (open_fd, end), fd in zip(self._pending, stolen):
            end.fd = fd
            self._read_state(open_fd, end, stat)
        self._pending.clear()

    def take_queued(self):
        """Take the bytes queued in each pty the tree holds both ends of (the tree is stopped)."""
        masters = {end.terminal.index: end for end in self._ends.values() if end.terminal.kind == "master"}
        for end in self._ends.values():
            master = masters.get(end.terminal.index) if end.terminal.kind == "slave" else None
            if master is not None:
                self._take(reader=end, writer=master, slave=end)   # typed in, not read by the program yet
                self._take(reader=master, writer=end, slave=end)   # written by the program, not read yet

    def _read_state(self, open_fd, end, stat):
        info, fd, kind = end.info, end.fd, end.terminal.kind
        if kind == "master":
            info.locked = bool(terminal.get_int(fd, terminal.TIOCGPTLCK))
            info.packet_mode = bool(terminal.get_int(fd, terminal.TIOCGPKT))
        try:
            info.exclusive = bool(terminal.get_int(fd, terminal.TIOCGEXCL))
            info.termios.CopyFrom(_termios_entry(terminal.get_termios(fd)))
            rows, columns, xpixel, ypixel = terminal.get_winsize(fd)
            info.winsize.CopyFrom(tty_pb2.winsize_entry(ws_row=rows, ws_col=columns, ws_xpixel=xpixel,
                                                        ws_ypixel=ypixel))
        except OSError as e:  # a hung-up terminal answers nothing: keep what is known, as CRIU does
            log.warning("fd %d (%s): no terminal settings: %s", open_fd.fd, open_fd.link, e.strerror)
        if kind == "ctty" or (kind != "master" and end.terminal.rdev == stat.tty_nr):
            info.sid, info.pgrp = stat.session, max(stat.tpgid, 0)

    def _take(self, reader, writer, slave):
        data = terminal.take_queued(reader.fd, slave.fd)
        if data:
            log.debug("pty %d: %d bytes queued for its %s", reader.terminal.index, len(data), reader.terminal.kind)
            self.data.append(tty_pb2.tty_data_entry(tty_id=reader.info.id, data=data))
            self._taken.append((writer, reader, slave, data))

    def put_back(self):
        """Queue the taken bytes again: the task goes on running (left running, or the dump failed)."""
        while self._taken:
            writer, reader, slave, data = self._taken.pop()
            terminal.put_queued(writer.fd, reader.fd, slave.fd, data, f"pty {reader.terminal.index}")

    def close(self):
        for fd in self._stolen:
            os.close(fd)
        self._stolen.clear()
