"""Creating the process tree: every task with its dumped PID, parent, session and process group.

criupy clones the root (clone3 with set_tid); each new task is a copy of criupy's Python and, before
anything else, becomes what the dump recorded, in the order CRIU's restore_task_with_children keeps:
  - a session leader calls setsid() first, so the children it creates next are in its session;
  - a process group leader calls setpgid(0, 0), so its group exists before any member joins it;
  - it creates its children, each the same way (so their parent is the dumped one);
  - a zombie exits at once with its dumped status; its parent waits until it has (without reaping
    it) and takes the SIGCHLD it sent, which the dumped parent had seen already;
  - then it calls its own restorer, which waits for criupy's go. A task in a group led by another
    process joins it in the restorer: by then every task, and so every group, exists.
Each task reports every child it created on a pipe; criupy knows the tree is whole when all are in.
"""

import ctypes
import os
import resource
import signal
import time

from criupy.errors import CriupyError
from criupy.restore.task import clone_with_pid

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
KILL_WAIT_SECONDS = 5
WALL = 0x40000000  # __WALL

libc = ctypes.CDLL(None, use_errno=True)


def check_tree(tasks):
    """Refuse sessions and groups criupy cannot re-create, and thread IDs in use, before any process exists."""
    by_pid = {task.pid: task for task in tasks}
    for task in tasks:
        for tid in task.thread_cores:
            if os.path.exists(f"/proc/{tid}"):
                raise CriupyError(f"TID {tid} (a thread of PID {task.pid}) is in use")
    root = tasks[0]
    for task in tasks[1:]:
        parent = by_pid[task.ppid]
        if task.sid != task.pid and task.sid != parent.sid:
            raise CriupyError(f"PID {task.pid} is in session {task.sid}, its parent {parent.pid} in session "
                              f"{parent.sid}: re-creating such a session is not supported yet")
        if task.pgid not in by_pid and task.pgid != root.pgid:
            raise CriupyError(f"process group {task.pgid} of PID {task.pid} has no process of the tree left to "
                              f"lead it: not supported yet")


def _exit_as(status):
    """End this process so that its parent's waitpid() sees status (waitpid's encoding)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core file would be a new side effect
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status))


class TreeCreation:
    """The tasks' creation; created lists every PID made so far (kill_all() ends them)."""

    def __init__(self, tasks, start_restorer):
        """start_restorer(task): jump into the task's restorer (in the new task; never returns)."""
        self.tasks = tasks
        self.start_restorer = start_restorer
        self.children = {task.pid: [] for task in tasks}
        for task in tasks[1:]:
            self.children[task.ppid].append(task)
        self.created = []
        self._report_fd = -1

    def create(self):
        """Create every task; returns once all exist (each then waits in its restorer for criupy's go)."""
        report_read, self._report_fd = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                root = self.tasks[0]
                self.created.append(clone_with_pid(root.pid, lambda: self._become(root)))
            finally:
                os.close(self._report_fd)
            self._collect_reports(report_read)
        finally:
            os.close(report_read)

    def _collect_reports(self, report_read):
        pending = b""
        while len(self.created) < len(self.tasks):
            chunk = os.read(report_read, 4096)
            if not chunk:
                raise CriupyError("a process of the tree ended before it was restored")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if text.startswith("+"):
                    self.created.append(int(text[1:]))
                else:
                    raise CriupyError(text[1:])

    def _report(self, text):
        os.write(self._report_fd, text.encode() + b"\n")

    def _become(self, task):
        """Runs in the new task, a copy of criupy: see the module's docstring."""
        try:
            # its name (the restorer keeps the one it starts with): a zombie shows it until reaped
            libc.prctl(PR_SET_NAME, task.core.tc.comm.encode()[:15], 0, 0, 0)
            if task.sid == task.pid:
                os.setsid()
            if task.pgid == task.pid and os.getpgid(0) != task.pid:
                os.setpgid(0, 0)
            for child in self.children[task.pid]:
                pid = clone_with_pid(child.pid, lambda child=child: self._become(child))
                self._report(f"+{pid}")
            if task.zombie:
                _exit_as(task.exit_code)
            zombies = [child.pid for child in self.children[task.pid] if child.zombie]
            for pid in zombies:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            if zombies:
                signal.sigtimedwait({signal.SIGCHLD}, 0)
        except BaseException as e:
            message = str(e) if isinstance(e, CriupyError) else f"{type(e).__name__}: {e}"
            self._report(f"!restoring PID {task.pid}: {message}")
            os._exit(1)
        self.start_restorer(task)

    def kill_all(self):
        """SIGKILL every task created, and reap them all: a failed restore leaves no process behind.

        Tasks whose parent dies are handed to criupy (a child subreaper meanwhile), which reaps them."""
        was_subreaper = ctypes.c_int()
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was_subreaper), 0, 0, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        try:
            for pid in self.created:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + KILL_WAIT_SECONDS
            for task in self.tasks:  # threads too: those criupy traces report their end to it
                for tid in list(task.thread_cores) + [task.pid]:
                    if task.pid in self.created:
                        _reap(tid, deadline)
        finally:
            libc.prctl(PR_SET_CHILD_SUBREAPER, was_subreaper.value, 0, 0, 0)
        self.created = []


def _reap(pid, deadline):
    """Wait until pid is gone, reaping it whenever it is criupy's to reap (as tracer, parent, subreaper)."""
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            pass  # not (yet) ours: its parent is still dying
        time.sleep(0.002)
