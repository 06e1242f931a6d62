"""Creating the process tree: every task with its dumped PID, parent, session and process group.

criupy clones the root (clone3 with set_tid); each new task is a copy of criupy's Python and, before
anything else, becomes what the dump recorded, in the order CRIU's restore_task_with_children keeps:
  - a session leader calls setsid() first, so the children it creates next are in its session;
  - a process group leader calls setpgid(0, 0), so its group exists before any member joins it;
  - a group whose leader is gone gets a helper with the leader's PID (CRIU's TASK_HELPER), made by
    the session's leader before its children; its members join as they are made, and once all are
    in (criupy releases the helpers) the helper exits and its host reaps it;
  - it premaps the memory its children share with it (criupy.restore.cow) and takes its flock and OFD
    locks (criupy.restore.fds.locks), then creates its children, each the same way (so their parent is
    the dumped one);
  - a zombie exits at once with its dumped status; its parent waits until it has (without reaping
    it) and takes the SIGCHLD it sent, which the dumped parent had seen already;
  - then it calls its own restorer, which waits for criupy's go. A task in a group led by another
    process joins it in the restorer: by then every task, and so every group, exists.
Each task reports every child it created, and itself once in its session and group, on a pipe;
criupy knows the tree is whole when all have.
"""

import ctypes
import os
import resource
import signal
import time

from criupy.errors import CriupyError
from criupy.libc import libc
from criupy.restore.task import clone_with_pid

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
KILL_WAIT_SECONDS = 5
WALL = 0x40000000  # __WALL


def check_tree(tasks):
    """Refuse sessions and groups criupy cannot re-create, and thread IDs in use, before any process exists.

    Returns the helpers: {pgid: PID of the task that hosts it} for each group no task of the tree leads."""
    by_pid = {task.pid: task for task in tasks}
    for task in tasks:
        for tid in task.thread_cores:
            if os.path.exists(f"/proc/{tid}"):
                raise CriupyError(f"TID {tid} (a thread of PID {task.pid}) is in use")
    root = tasks[0]
    helpers = {}
    for task in tasks[1:]:
        parent = by_pid[task.ppid]
        if task.sid != task.pid and task.sid != parent.sid:
            raise CriupyError(f"PID {task.pid} is in session {task.sid}, its parent {parent.pid} in session "
                              f"{parent.sid}: re-creating such a session is not supported yet")
        if task.pgid in by_pid or task.pgid == root.pgid or task.pgid in helpers:
            continue
        # a group whose leader is gone: a helper with its PID leads it while the tasks join, hosted by
        # the session's leader (or the root, in the root's session)
        host = task.sid if task.sid in by_pid else root.pid if task.sid == root.sid else None
        if host is None:
            raise CriupyError(f"process group {task.pgid} of PID {task.pid} has no process of the tree left to "
                              f"lead it, in a session the tree does not lead: not supported yet")
        if os.path.exists(f"/proc/{task.pgid}"):
            raise CriupyError(f"PID {task.pgid} (to lead process group {task.pgid} for a while) is in use")
        helpers[task.pgid] = host
    return helpers


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

    def __init__(self, tasks, start_restorer, helpers=None, before_children=None):
        """start_restorer(task): jump into the task's restorer (in the new task; never returns).
        helpers: {pgid: host PID} from check_tree. before_children(task): runs in the new task before it
        creates its children (criupy.restore.cow premaps what they share with it, the task takes its locks)."""
        self.tasks = tasks
        self.start_restorer = start_restorer
        self.before_children = before_children
        self.children = {task.pid: [] for task in tasks}
        for task in tasks[1:]:
            self.children[task.ppid].append(task)
        self.helpers = helpers or {}
        self.created = []
        self._report_fd = -1
        self._release_fd = -1

    def create(self):
        """Create every task; returns once all exist, each in its session and group (each then waits in
        its restorer for criupy's go), and the helpers are gone."""
        report_read, self._report_fd = os.pipe2(os.O_CLOEXEC)
        self._release_fd, release_write = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                root = self.tasks[0]
                self.created.append(clone_with_pid(root.pid, lambda: self._become(root)))
            finally:
                os.close(self._report_fd)
                os.close(self._release_fd)
            self._collect_reports(report_read)
            os.write(release_write, b"x" * len(self.helpers))  # every task has joined its group: helpers go
        finally:
            os.close(report_read)
            os.close(release_write)

    def _collect_reports(self, report_read):
        """Until every task and helper has said it is in its session and group ("=PID"); "+PID" for each
        process made, "!message" for a failure."""
        pending = b""
        ready = 0
        while ready < len(self.tasks) + len(self.helpers):
            chunk = os.read(report_read, 4096)
            if not chunk:
                raise CriupyError("a process of the tree ended before it was restored")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if text.startswith("+"):
                    self.created.append(int(text[1:]))
                elif text.startswith("="):
                    ready += 1
                else:
                    raise CriupyError(text[1:])

    def _lead_group(self):
        """Runs in a helper: lead its process group until criupy releases it, then end."""
        try:
            os.setpgid(0, 0)
            self._report(f"={os.getpid()}")
            os.read(self._release_fd, 1)
        finally:
            os._exit(0)

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
            hosted = [pgid for pgid, host in self.helpers.items() if host == task.pid]
            for pgid in hosted:  # before its children, which may join the group
                self._report(f"+{clone_with_pid(pgid, self._lead_group)}")
            if task.pgid in self.helpers:
                os.setpgid(0, task.pgid)
            if self.before_children:  # before "=": criupy stops reading once every task said it is ready
                self.before_children(task)
            self._report(f"={task.pid}")
            for child in self.children[task.pid]:
                pid = clone_with_pid(child.pid, lambda child=child: self._become(child))
                self._report(f"+{pid}")
            if task.zombie:
                _exit_as(task.exit_code)
            zombies = [child.pid for child in self.children[task.pid] if child.zombie]
            for pid in zombies:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            for pgid in hosted:
                os.waitpid(pgid, 0)  # reaped: the dumped task never had this child
            if zombies or hosted:
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
            for pid in self.created:
                _reap(pid, deadline)
            for task in self.tasks:  # threads too: those criupy traces report their end to it
                if task.pid in self.created:
                    for tid in task.thread_cores:
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
