"""Every thread of a process, seized together (CRIU's seize.c: collect_threads).

    from criupy.infect.threads import seize_threads
    group = seize_threads(pid)
    try:
        group.leader             # the Task of the thread group leader (PID itself)
        group.tasks              # every Task, the leader first, then by TID
    finally:
        group.cure()             # or group.kill()

Each thread is seized with PTRACE_O_TRACECLONE, so a thread it creates before its stop is attached to
us by the kernel and taken over; /proc/PID/task is read again until it shows no thread we do not hold,
so a process that keeps creating threads still ends up with all of them stopped.
"""

import os

from criupy import proc
from criupy.errors import CriupyError
from criupy.infect.task import TaskGone, deferred_signals, seize


def _thread_gone(pid, tid):
    """True when thread TID of PID has exited (or is exiting) since it was listed."""
    try:
        state = proc.status(tid)["State"].split()[0]
    except CriupyError:
        return True
    return state in ("Z", "X") or not os.path.exists(f"/proc/{pid}/task/{tid}")


class ThreadGroup:
    """The seized threads of one process. cure() or kill() always ends it."""

    def __init__(self, pid):
        self.pid = pid
        self.leader = None
        self._by_tid = {}

    @property
    def tasks(self):
        return [self.leader] + [self._by_tid[tid] for tid in sorted(self._by_tid) if tid != self.pid]

    @property
    def tids(self):
        return [task.pid for task in self.tasks]

    def _add(self, task):
        self._by_tid[task.pid] = task
        if task.pid == self.pid:
            self.leader = task
        # threads it created on the way to its stop are already attached to us
        while task.cloned:
            tid = task.cloned.pop()
            try:
                self._add(seize(tid, trace_clones=True, adopt=True))
            except TaskGone:
                pass  # a short-lived thread that is already gone

    def _seize_listed(self):
        """Seize the threads /proc lists that we do not hold yet; False when there were none."""
        new = [tid for tid in proc.task_ids(self.pid) if tid not in self._by_tid]
        if self.pid in new:
            new.remove(self.pid)
            new.insert(0, self.pid)  # the leader first: a PID that is gone fails here
        for tid in new:
            if tid in self._by_tid:
                continue
            try:
                self._add(seize(tid, trace_clones=True))
            except CriupyError:
                if tid == self.pid or not _thread_gone(self.pid, tid):
                    raise
        return bool(new)

    def cure(self):
        """Give every thread back as it was seized; the first problem is raised after all are cured."""
        problems = []
        with deferred_signals():
            for task in reversed(self.tasks if self.leader else list(self._by_tid.values())):
                try:
                    task.cure()
                except CriupyError as e:
                    problems.append(e)
        if problems:
            raise problems[0]

    def kill(self):
        """SIGKILL the process; each thread's end is collected (the leader's last: it is reported last)."""
        with deferred_signals():
            for task in reversed(self.tasks):
                task.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cure()


def seize_threads(pid):
    """Seize every thread of process PID (PID must be its thread group leader). Always cure() or kill()."""
    group = ThreadGroup(pid)
    try:
        while group._seize_listed():
            pass
    except BaseException:
        group.cure()
        raise
    return group
