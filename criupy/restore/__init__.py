"""The restore pipeline: images -> the dumped tree of tasks with their PIDs, running the dumped code again.

    criupy.restore(images_dir, detach=False, pidfile=None, log_file=None, verbose=False, pie_plugin=None,
                   call_hooks=(), shell_job=False)
        -> exit status, or the PID when detached

pie_plugin: a file built by `criupy-blobgen --plugin`, whose hooks the restorer calls (HACKING.md).
call_hooks: "LIB:SYMBOL" functions of the restored process, called in it before it resumes.
shell_job: images dumped with shell_job are restored into criupy's session and terminal (fds/tty.py).

Steps, each in its module:
  images   read and check every image (nothing is created before they pass)
  memory   the mappings, page vectors and vDSO moves each task's restorer performs
  shmem    anonymous shared memory, made once and filled, for every task that maps it
  sysvshm  SysV shared memory segments, made again with their key and id, attached by each restorer
  files    open the dumped files (checked against the dump), pipes and ptys (refilled), once per
           file description however many tasks share it; a shell job's terminal is criupy's own
  cow      what a child shares with its parent copy-on-write: premapped by the parent before the fork
  locks    flock and OFD locks, taken again by each new task on its open file descriptions (fds/locks.py);
           POSIX locks by the task itself once its fds are in place (task.py)
  prepare  each task's restorer mapping: blob + arguments, at an address free here and in its dump
  tree     clone3 with the dumped PIDs, parents, sessions and groups (tasks.py's clone_with_pid)
  task     let every task's restorer go, then trace each through it to the dumped code, unmap it, detach
A failure once tasks exist kills and reaps every one of them.

Each task is restored with all its threads (its restorer creates them).
"""

import logging
import os
import signal

from criupy import buildid
from criupy.errors import CriupyError
from criupy.log import log_to

log = logging.getLogger("criupy.restore")
TASK_STOPPED = 3  # core_entry's task_state of a task in job-control stop


def _stop_signal(task):
    """The signal that stops the restored task again if it was stopped (0 if it was not), as CRIU sends."""
    tc = task.core.tc
    if tc.task_state != TASK_STOPPED:
        return 0
    return tc.stop_signo if tc.HasField("stop_signo") and tc.stop_signo else signal.SIGSTOP


def _highest_open_fd():
    return max(int(fd) for fd in os.listdir("/proc/self/fd"))


def restore(images_dir, detach=False, pidfile=None, log_file=None, verbose=False, pie_plugin=None, call_hooks=(),
            shell_job=False):
    """Restore the process dumped in images_dir. Returns its PID if detach, else its exit status."""
    with log_to(log_file, verbose):
        return _restore(images_dir, detach, pidfile, pie_plugin, call_hooks, shell_job)


def _restore(images_dir, detach, pidfile, pie_plugin, call_hooks, shell_job):
    buildid.start_helper()  # first: it loads pyelftools while criupy loads the rest
    try:
        # Imported here: the pipeline's modules load the image schemas, which `import criupy` does not need.
        from criupy.restore.images import read_tree

        tasks = read_tree(images_dir)
        tree_ids = {n for task in tasks for n in (task.pid, task.pgid, task.sid, *task.thread_cores)}
        buildid.stop_helper(if_pid_in=tree_ids)  # the helper took a PID the tree needs back
        return _restore_tree(images_dir, tasks, detach, pidfile, pie_plugin, call_hooks, shell_job)
    finally:
        buildid.stop_helper()


def _restore_tree(images_dir, tasks, detach, pidfile, pie_plugin, call_hooks, shell_job):
    from criupy.blobs.loader import load_plugin
    from criupy.images import ImagesDir
    from criupy.infect import hook
    from criupy.restore import cow, prepare
    from criupy.restore.args import Args
    from criupy.restore.fds import tty
    from criupy.restore.fds.locks import posix_locks, take_locks
    from criupy.restore.files import move_above, open_files
    from criupy.restore.images import open_pages
    from criupy.restore.memory import plan_memory
    from criupy.restore.region import OwnMappings
    from criupy.restore.shmem import open_shared_memory
    from criupy.restore.sysvshm import SysvSegments
    from criupy.restore.task import Restoring, call_restorer
    from criupy.restore.tree import TreeCreation, check_tree

    for spec in call_hooks:
        hook.parse_spec(spec)  # a malformed LIB:SYMBOL is refused before anything is made
    plugin = load_plugin(pie_plugin) if pie_plugin else None
    tty.check(tasks, shell_job)
    tty.adopt_shell_job(tasks, shell_job)
    helpers = check_tree(tasks)
    live = [task for task in tasks if not task.zombie]
    plans = {task.pid: plan_memory(task) for task in live}
    opened = open_files(live, ImagesDir(images_dir, "r"))
    buildid.stop_helper()  # the files are open and checked; no task may inherit it
    any_opened = opened[live[0].pid]
    pipes = {}  # pid -> (log read, go write): criupy's ends of the task's log and go pipes
    own_fds = {}  # pid -> (log write, go read, pages, images dir): the task's ends, held for it
    regions = {}
    premaps = None
    segments = SysvSegments()
    try:
        segments.create(ImagesDir(images_dir, "r"))
        shared_memory = open_shared_memory(ImagesDir(images_dir, "r"), live, any_opened.hold)
        for task in live:
            opened[task.pid].shmem_fds = dict(shared_memory)
            log_read, log_write = os.pipe2(os.O_CLOEXEC)
            go_read, go_write = os.pipe2(os.O_CLOEXEC)
            pipes[task.pid] = (log_read, go_write)
            own = own_fds[task.pid] = [any_opened.hold(log_write), any_opened.hold(go_read)]
            pages_fd, pages_size = open_pages(images_dir, task.pages_id)
            own.append(any_opened.hold(pages_fd))
            own.append(any_opened.hold(os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)))  # plugins
            if pages_size != plans[task.pid].pages_size:
                raise CriupyError(f"image pages-{task.pages_id}.img is truncated or corrupt: {pages_size} bytes, "
                                  f"pagemap-{task.pid}.img describes {plans[task.pid].pages_size}")
        # The restorers' own fds sit above every fd of the dumped tasks and of criupy.
        first_own_fd = max([target for task in live for _, target, _ in opened[task.pid].fds]
                           + [_highest_open_fd()]) + 1
        moved = move_above(list(opened.values()), first_own_fd)
        own_mappings = OwnMappings()
        task_fds = {pid: [moved[fd] for fd in fds] for pid, fds in own_fds.items()}  # their numbers, moved
        premaps = cow.plan(tasks, plans, {pid: pages for pid, (_, _, pages, _) in task_fds.items()}, own_mappings)
        for task in live:
            log_fd, go_fd, pages_fd, images_fd = task_fds[task.pid]
            regions[task.pid] = prepare.build(task, premaps.plans[task.pid], opened[task.pid], pages_fd, log_fd,
                                              go_fd, first_own_fd, verbose=log.isEnabledFor(logging.DEBUG),
                                              plugin=plugin, images_fd=images_fd, own_mappings=own_mappings)

        def before_children(task):  # in the new task: what it shares with its children, and holds
            premaps.premap(task)
            if task.file_locks:  # a zombie has none
                take_locks(task, opened[task.pid])  # flock's owner is then the task's PID, as at the dump

        creation = TreeCreation(tasks, lambda task: call_restorer(regions[task.pid].entry(),
                                                                  regions[task.pid].args_address), helpers,
                                before_children)
        restorings = [(Restoring(task.pid, *pipes[task.pid], regions[task.pid].export("restorer_trap"),
                                 regions[task.pid].export("restorer_syscall"),
                                 regions[task.pid].args_address + Args.own_rseq.offset,
                                 thread_ids=task.thread_cores),
                       regions[task.pid].start, regions[task.pid].size, _stop_signal(task), posix_locks(task),
                       regions[task.pid].args_address) for task in live]
        terminals = any_opened.terminals
        try:
            terminals.set_job_settings()
            creation.create()
        except BaseException:
            creation.kill_all()
            terminals.undo_job_settings()
            raise
    except BaseException:
        for log_read, go_write in pipes.values():
            os.close(log_read)
            os.close(go_write)
        segments.remove_all()
        raise
    finally:
        any_opened.close()  # the tasks have their own copies now
        for region in regions.values():
            region.unmap()
        if premaps:
            premaps.release()

    try:
        for restoring, *_ in restorings:
            restoring.seize()
        for restoring, *_ in restorings:  # the restorers work at once, on every CPU
            restoring.let_go()
        for restoring, region_start, region_size, stop_signal, locks, scratch in restorings:
            restoring.run_to_dumped_code()
            for line in restoring.restorer_log().splitlines():  # the restorer's and the plugin's lines
                log.info("%s", line)
            if restoring.pid == tasks[0].pid:  # hooks run in the root
                for spec in call_hooks:
                    function = hook.find_function(restoring.pid, spec)
                    log.info("calling %s at %#x (%s) in PID %d", spec, function.address, function.first_instruction,
                             restoring.pid)
                    restoring.call_hook(function)
            # the restorer's arguments, read and done with: a scratch for the locks' struct flock
            restoring.unmap_restorer_and_detach(region_start, region_size, stop_signal, locks, scratch)
    except BaseException:
        creation.kill_all()
        terminals.undo_job_settings()
        segments.remove_all()
        raise
    finally:
        for log_read, go_write in pipes.values():
            os.close(log_read)
            os.close(go_write)
    segments.remove_marked()
    root = tasks[0].pid
    log.info("restored PID %d%s", root, f" and {len(tasks) - 1} more processes" if len(tasks) > 1 else "")

    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{root}\n")
    if detach:
        return root
    _, status = os.waitpid(root, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
