"""The restore pipeline: images -> a task with its dumped PID, running the dumped code again.

    criupy.restore(images_dir, detach=False, pidfile=None, log_file=None, verbose=False, pie_plugin=None,
                   call_hooks=())
        -> exit status, or the PID when detached

pie_plugin: a file built by `criupy-blobgen --plugin`, whose hooks the restorer calls (HACKING.md).
call_hooks: "LIB:SYMBOL" functions of the restored process, called in it before it resumes.

Steps, each in its module:
  images   read and check every image (nothing is created before they pass)
  memory   the mappings, page vectors and vDSO moves the restorer performs
  files    open the dumped files (checked against the dump) and pipes (refilled)
  prepare  the restorer's mapping: blob + arguments, at an address free here and in the dump
  task     clone3 with the dumped PID, trace it through the restorer, unmap it, detach

One process, with all its threads (the restorer creates them), is restored for now; trees
(issue 5) add task creation per process around the same restorer.
"""

import logging
import os

from criupy.errors import CriupyError
from criupy.log import log_to

log = logging.getLogger("criupy.restore")


def _highest_open_fd():
    return max(int(fd) for fd in os.listdir("/proc/self/fd"))


def restore(images_dir, detach=False, pidfile=None, log_file=None, verbose=False, pie_plugin=None, call_hooks=()):
    """Restore the process dumped in images_dir. Returns its PID if detach, else its exit status."""
    with log_to(log_file, verbose):
        return _restore(images_dir, detach, pidfile, pie_plugin, call_hooks)


def _restore(images_dir, detach, pidfile, pie_plugin, call_hooks):
    # Imported here: the pipeline's modules load the image schemas, which `import criupy` does not need.
    from criupy.blobs.loader import load_plugin
    from criupy.infect import hook
    from criupy.restore import prepare
    from criupy.restore.args import Args
    from criupy.restore.files import open_files
    from criupy.restore.images import open_pages, read_task
    from criupy.restore.memory import plan_memory
    from criupy.restore.task import Restoring, clone_with_pid

    for spec in call_hooks:
        hook.parse_spec(spec)  # a malformed LIB:SYMBOL is refused before anything is made
    plugin = load_plugin(pie_plugin) if pie_plugin else None
    task = read_task(images_dir)
    plan = plan_memory(task)
    opened = open_files(task)
    log_read, log_write = os.pipe2(os.O_CLOEXEC)
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    try:
        opened.hold(log_write)
        opened.hold(go_read)
        pages_fd, pages_size = open_pages(images_dir, task.pages_id)
        opened.hold(pages_fd)
        opened.hold(os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))  # for plugin hooks
        if pages_size != plan.pages_size:
            raise CriupyError(f"image pages-{task.pages_id}.img is truncated or corrupt: {pages_size} bytes, "
                              f"pagemap-{task.pid}.img describes {plan.pages_size}")
        # The restorer's own fds sit above every fd of the dumped task and of criupy.
        first_own_fd = max([target for _, target, _ in opened.fds] + [_highest_open_fd()]) + 1
        opened.move_above(first_own_fd)
        log_fd, go_fd, pages_fd, images_fd = opened.held[-4:]
        region = prepare.build(task, plan, opened, pages_fd, log_fd, go_fd, first_own_fd,
                               verbose=log.isEnabledFor(logging.DEBUG), plugin=plugin, images_fd=images_fd)
        region_start, region_size = region.start, region.size
        trap, syscall = region.export("restorer_trap"), region.export("restorer_syscall")
        own_rseq = region.args_address + Args.own_rseq.offset
        try:
            pid = clone_with_pid(task.pid, region.entry(), region.args_address)
        finally:
            region.unmap()
    except BaseException:
        os.close(log_read)
        os.close(go_write)
        raise
    finally:
        opened.close()  # the task has its own copies now

    restoring = Restoring(pid, log_read, go_write, trap, syscall, own_rseq, thread_ids=task.thread_cores)
    try:
        restoring.run_to_dumped_code()
        for line in restoring.restorer_log().splitlines():  # the restorer's and the plugin's lines
            log.info("%s", line)
        for spec in call_hooks:
            function = hook.find_function(pid, spec)
            log.info("calling %s at %#x (%s) in PID %d", spec, function.address, function.first_instruction, pid)
            restoring.call_hook(function)
        restoring.unmap_restorer_and_detach(region_start, region_size)
    except BaseException:
        restoring.kill()
        raise
    finally:
        os.close(log_read)
        os.close(go_write)
    log.info("restored PID %d", pid)

    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{pid}\n")
    if detach:
        return pid
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
