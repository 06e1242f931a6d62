"""The injector (CRIU's compel): seize a task, run system calls in it, load the parasite, cure.

    from criupy.infect import seize
    victim = seize(pid)
    try:
        ...victim.regs, victim.xsave, victim.sigmask, victim.syscall(nr, *args)
        parasite = victim.infect()
        ...parasite.sigactions(), parasite.dump_pages(fd, ranges)...
    finally:
        victim.cure()
"""

from criupy.infect.task import ParasiteFault, Task, TaskGone, seize

__all__ = ["seize", "Task", "TaskGone", "ParasiteFault"]
