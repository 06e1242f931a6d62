"""Terminals of the restored task, and the session and process group of a shell job.

A pty the task held both ends of (or the master of) is made anew: /dev/ptmx is opened until the
kernel hands out the dumped index (it gives the lowest free one; the fds opened on the way are
closed), so /dev/pts/N keeps its name, which the program may have kept; an index in use is an
error. Slaves are opened from the master (TIOCGPTPEER). Then the dumped settings, window size,
packet mode and lock are set, and the queued bytes put back in each direction (criupy.terminal).
Settings ioctls on a master act on its slave, so they all go through the master.

Every other terminal was the job's (criupy.dump.fds.tty): with shell_job the task gets criupy's own
terminal there (its controlling terminal on one of fds 0-2, else /dev/tty, else a terminal on
fds 0-2), opened anew with the dumped flags, and the dumped settings and window size are set on
that terminal just before the task is created (put back if the restore fails).

A shell job joins criupy's session (as CRIU's --shell-job: the tasks' sid and pgid are rewritten
before the tree is made). If its group was the foreground group of its terminal it joins criupy's
process group too, which the shell made the foreground one: the
job is in the foreground, Ctrl-Z stops it with criupy and the shell's fg and bg act on both. A job
that led its own group in the background (stopped with Ctrl-Z, say) leads its own group again in
criupy's session, in the background; one that did not lead its group joins criupy's, as in CRIU.
"""

import fcntl
import logging
import os
import signal

from criupy import proc, terminal
from criupy.errors import CriupyError
from criupy.images.pb import fdinfo_pb2, tty_pb2

log = logging.getLogger("criupy.restore")

PTMX = "/dev/ptmx"
PTS_MAJORS = range(136, 144)
TTYAUX_MAJOR = 5
OPEN_FLAGS = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND | os.O_ASYNC
TIOCEXCL = 0x540C
TIOCPKT = 0x5420
SHELL_JOB_HINT = "add --shell-job to restore it"


def _is_master(info):
    return os.major(info.rdev) == TTYAUX_MAJOR and os.minor(info.rdev) == 2


def _pty_index(info):
    return info.pty.index if info.type == tty_pb2.PTY and info.HasField("pty") else -1


def _master_indexes(task):
    return {_pty_index(info) for info in task.tty_infos.values() if _is_master(info)}


def is_jobs_terminal(info, master_indexes):
    return not _is_master(info) and not (info.type == tty_pb2.PTY and _pty_index(info) in master_indexes)


def _tty_fds(task):
    """(fd number, tty_file_entry) of every fd of task on a terminal."""
    for fdinfo in task.fdinfo:
        entry = task.files.get(fdinfo.id)
        if entry is not None and entry.type == fdinfo_pb2.TTY:
            yield fdinfo.fd, entry.tty


def check(tasks, shell_job):
    """Refuse images of a shell job without shell_job (one line, before anything is created)."""
    root = tasks[0]
    masters = _master_indexes(root)
    for task in tasks:
        for fd, tty_file in _tty_fds(task):
            info = task.tty_infos.get(tty_file.tty_info_id)
            if info is None:
                raise CriupyError(f"image tty-info.img is corrupt: no terminal {tty_file.tty_info_id} for fd {fd}")
            if not shell_job and is_jobs_terminal(info, masters):
                raise CriupyError(f"fd {fd} of PID {task.pid} was on the terminal of the shell it ran in: "
                                  f"{SHELL_JOB_HINT}")
    if shell_job:
        return
    if root.sid != root.pid:
        raise CriupyError(f"PID {root.pid} was in the session of PID {root.sid}, not dumped: {SHELL_JOB_HINT}")
    if root.pgid != root.pid:
        raise CriupyError(f"PID {root.pid} was in process group {root.pgid}, whose leader was not dumped: "
                          f"{SHELL_JOB_HINT}")


def _was_foreground(root):
    masters = _master_indexes(root)
    return any(info.sid == root.sid and info.pgrp == root.pgid for info in root.tty_infos.values()
               if info.sid and is_jobs_terminal(info, masters))


def adopt_shell_job(tasks, shell_job):
    """Move a shell job's session (and group) to criupy's: rewrites the tasks' sid and pgid, before
    the tree is made (criupy.restore.tree then makes no session, and a group only for a leader)."""
    if not shell_job:
        return
    root = tasks[0]
    masters = _master_indexes(root)
    if root.sid == root.pid and not any(info.sid == root.sid for info in root.tty_infos.values()
                                        if is_jobs_terminal(info, masters)):
        return  # it led a session without the shell's terminal: it leads one again (as in CRIU)
    old_sid, old_pgid = root.sid, root.pgid
    if _was_foreground(root):
        new_pgid = os.getpgid(0)
        log.info("PID %d joins criupy's session and process group (it was in the foreground)", root.pid)
    elif root.pgid == root.pid:
        new_pgid = root.pid
        log.info("PID %d leads its own process group in criupy's session", root.pid)
    else:
        new_pgid = os.getpgid(0)
    for task in tasks:
        if task.sid == old_sid:
            task.sid = os.getsid(0)
        if task.pgid == old_pgid:
            task.pgid = new_pgid


def _own_terminal_path():
    """A path that opens criupy's terminal anew (/proc/self/fd/N of a standard fd on it, or /dev/tty)."""
    controlling = proc.stat(os.getpid()).tty_nr
    standard = [fd for fd in (0, 1, 2) if os.isatty(fd)]
    for fd in standard:
        if os.fstat(fd).st_rdev == controlling:
            return f"/proc/self/fd/{fd}"
    if controlling:
        return "/dev/tty"
    if standard:
        return f"/proc/self/fd/{standard[0]}"
    raise CriupyError("the dumped process had a terminal open and criupy has none: restore it from a terminal")


def _open_ptmx_with_index(index):
    passed = []  # ptys with lower free indexes, opened on the way
    try:
        while True:
            try:
                fd = os.open(PTMX, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as e:
                raise CriupyError(f"cannot open {PTMX} for pty {index}: {e.strerror}") from None
            got = terminal.pty_index(fd)
            if got == index:
                return fd
            passed.append(fd)
            if got > index:
                raise CriupyError(f"pty {index} (/dev/pts/{index}) of the dumped process is in use here")
    finally:
        for fd in passed:
            os.close(fd)


def _termios(entry):
    return terminal.Termios(iflag=entry.c_iflag, oflag=entry.c_oflag, cflag=entry.c_cflag, lflag=entry.c_lflag,
                            line=entry.c_line, cc=tuple(entry.c_cc), ispeed=entry.c_ispeed, ospeed=entry.c_ospeed)


def _set_settings(fd, info):
    if info.HasField("termios"):
        if len(info.termios.c_cc) != terminal.NCCS:
            raise CriupyError(f"image tty-info.img is corrupt: terminal {info.id} has {len(info.termios.c_cc)} "
                              f"control characters")
        terminal.set_termios(fd, _termios(info.termios))
    if info.HasField("winsize") and (info.winsize.ws_row or info.winsize.ws_col):
        w = info.winsize
        terminal.set_winsize(fd, (w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))


class _Pty:
    """A pty made anew for the dumped index: its master, the slaves opened on it, their tty-info entries."""

    def __init__(self, index, hold):
        self.index = index
        self.master = hold(_open_ptmx_with_index(index))
        terminal.set_pty_locked(self.master, False)
        self.slaves = []
        self.master_flags = 0
        self.master_info = None
        self.slave_info = None


class Terminals:
    """The terminal fds criupy opens for the task (held in an OpenedFiles through hold)."""

    def __init__(self, task, hold):
        self.task = task
        self.hold = hold
        self._ptys = {}             # index -> _Pty
        self._masters = _master_indexes(task)
        self._job_terminal = None   # the path criupy opened its own terminal with, for the job's settings
        self._job_infos = []
        self._saved = None          # criupy's terminal settings before the job's were set

    def _pty(self, index):
        if index not in self._ptys:
            self._ptys[index] = _Pty(index, self.hold)
        return self._ptys[index]

    def open(self, tty_file, fd):
        """A new fd for the open file description tty_file (held; the caller closes it with the rest)."""
        info = self.task.tty_infos.get(tty_file.tty_info_id)
        if info is None:
            raise CriupyError(f"image tty-info.img is corrupt: no terminal {tty_file.tty_info_id} for fd {fd}")
        flags = tty_file.flags & OPEN_FLAGS
        if is_jobs_terminal(info, self._masters):
            return self._open_own_terminal(info, flags)
        pty = self._pty(_pty_index(info))
        if _is_master(info):
            if pty.master_info is not None:
                raise CriupyError(f"image files.img is corrupt: two open masters of pty {pty.index}")
            pty.master_info, pty.master_flags = info, flags
            return pty.master
        pty.slave_info = info
        try:
            slave = self.hold(terminal.open_peer(pty.master, flags))
        except OSError as e:
            raise CriupyError(f"cannot open the slave of pty {pty.index}: {e.strerror}") from None
        pty.slaves.append(slave)
        return slave

    def _open_own_terminal(self, info, flags):
        path = "/dev/tty" if info.type == tty_pb2.CTTY and proc.stat(os.getpid()).tty_nr else _own_terminal_path()
        try:
            fd = self.hold(os.open(path, flags | os.O_NOCTTY | os.O_CLOEXEC))
        except OSError as e:
            raise CriupyError(f"cannot open criupy's terminal ({path}) for the restored process: {e.strerror}") from None
        self._job_terminal = path
        self._job_infos.append(info)
        return fd

    def finish_ptys(self):
        """Settings, modes and queued bytes of every pty made anew, once all its ends are open."""
        for pty in self._ptys.values():
            what = f"pty {pty.index}"
            if pty.master_info is None:
                raise CriupyError(f"image files.img is corrupt: {what} has slaves and no master")
            _set_settings(pty.master, pty.slave_info or pty.master_info)
            if pty.master_info.packet_mode:
                terminal.set_int(pty.master, TIOCPKT, 1)
            if pty.slaves:
                typed = self.task.tty_data.get(pty.slave_info.id, b"")
                terminal.put_queued(pty.master, pty.slaves[0], pty.master, typed, what)
                written = self.task.tty_data.get(pty.master_info.id, b"")
                terminal.put_queued(pty.slaves[0], pty.master, pty.master, written, what)
                if pty.slave_info.exclusive:
                    fcntl.ioctl(pty.slaves[0], TIOCEXCL)
            if pty.master_info.exclusive:
                fcntl.ioctl(pty.master, TIOCEXCL)
            if pty.master_info.locked:
                terminal.set_pty_locked(pty.master, True)
            fcntl.fcntl(pty.master, fcntl.F_SETFL, pty.master_flags & ~os.O_ACCMODE)  # O_NONBLOCK, last

    def _on_job_terminal(self, action):
        """action(fd) on criupy's terminal, with SIGTTOU ignored: criupy may be in the background."""
        fd = os.open(self._job_terminal, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        old_handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            return action(fd)
        finally:
            signal.signal(signal.SIGTTOU, old_handler)
            os.close(fd)

    def set_job_settings(self):
        """The job's dumped terminal settings on criupy's terminal (undo_job_settings puts them back)."""
        if self._job_terminal is None:
            return

        def set_dumped(fd):
            self._saved = terminal.get_termios(fd), terminal.get_winsize(fd)
            for info in self._job_infos:
                _set_settings(fd, info)

        try:
            self._on_job_terminal(set_dumped)
        except OSError as e:
            raise CriupyError(f"cannot set the dumped terminal settings on {self._job_terminal}: {e.strerror}") from None
        log.info("the dumped terminal settings are set on criupy's terminal")

    def undo_job_settings(self):
        if self._saved is None:
            return
        settings, winsize = self._saved
        self._saved = None

        def put_back(fd):
            terminal.set_termios(fd, settings)
            terminal.set_winsize(fd, winsize)

        try:
            self._on_job_terminal(put_back)
        except OSError as e:
            log.warning("cannot put criupy's terminal settings back: %s", e.strerror)
