"""The dump pipeline: a tree of processes, each with all its threads -> CRIU's images.

    criupy.dump(pid, images_dir, leave_running=False, overwrite=False, log_file=None, verbose=False,
                call_hooks=(), shell_job=False)

Steps (as CRIU's cr-dump.c):
  check     the processes, their fds and their mappings are of kinds criupy dumps (before they stop)
  seize     stop the root and every descendant, every thread of each, with ptrace (tree.py,
            criupy.infect.threads), until no new child appears; zombies are recorded
  hooks     call_hooks ("LIB:SYMBOL"), found before the seize, run in the root's main thread: before
            anything is read, since they may change its files and memory
  memory    mappings from smaps, pages to save from the pagemap (memory.py, pagemap.py)
  infect    the parasite runs in each process: signal actions, misc state, timers, pipes' fds, pages
  threads   what each other thread tells from inside (threads.py), before the parasite comes in
  images    per process core (one per thread), ids, mm, pagemap, pages, fdinfo, fs; for the tree
            pstree, files (file descriptions shared by processes once), file-lock, pipes-data, sk-queues,
            fifo-data, shared memory (shmem.py), inventory, then stats-dump
  end       the processes are killed, or resumed untouched with leave_running; a failed (or interrupted)
            dump always resumes them and removes the images it wrote; once they are killed, the images stay
"""

import contextlib
import logging
import os
import sys
import time

from criupy import buildid, proc
from criupy.errors import CriupyError
from criupy.log import log_to

log = logging.getLogger("criupy.dump")


class DumpStats:
    """What goes into stats-dump (times in microseconds, as CRIU counts them)."""

    def __init__(self):
        self.freezing_time = 0
        self.frozen_time = 0
        self.memdump_time = 0
        self.memwrite_time = 0
        self.pages_scanned = 0
        self.pages_written = 0


def _microseconds(since):
    return int((time.monotonic() - since) * 1_000_000)


def dump(pid, images_dir, leave_running=False, overwrite=False, log_file=None, verbose=False, call_hooks=(),
         shell_job=False):
    """Dump process PID into images_dir. Raises CriupyError (the process running as before) on failure.

    overwrite: replace the images a directory already holds (else such a directory is refused).
    call_hooks: "LIB:SYMBOL" functions of the process, each called in it (int f(void), 0 for success)
    once it is stopped, before anything is dumped.
    shell_job: the process is a job of a shell: its session or group leader is outside the dump, and it
    may have the shell's terminal open (criupy.dump.fds.tty)."""
    with log_to(log_file, verbose):
        buildid.start_helper()  # first: it loads pyelftools while criupy loads the rest
        try:
            from criupy.infect.task import deferred_signals

            frozen = _dump_into(pid, images_dir, call_hooks, leave_running, overwrite, shell_job)
            # The images are complete. Killing the tree commits the dump: from here an interrupt must not
            # remove them, and none may come between the kill and that decision.
            with deferred_signals():
                if leave_running:
                    frozen.cure()
                    log.info("PID %d and its descendants left running", pid)
                else:
                    frozen.kill()
                    log.info("PID %d and its descendants killed", pid)
        finally:
            buildid.stop_helper()
        log.info("dumped PID %d into %s", pid, images_dir)
        _test_pause("ended")


def _dump_into(pid, images_dir, call_hooks, leave_running, overwrite, shell_job):
    """Check the tree, then dump it into a new images directory; returns the FrozenTree, still seized. On failure
    the tree is cured and the images directory is as it was."""
    # Imported here: `import criupy` must not load the image schemas.
    from criupy.images import ImagesDir

    from criupy.dump import tree
    from criupy.infect import hook

    tree.check_task(pid)  # before touching the images directory: a wrong PID changes nothing
    hooks = [hook.find_function(pid, spec) for spec in call_hooks]  # so does a missing hook
    images = ImagesDir(images_dir, "w", overwrite=overwrite)
    written_before = set(images.names())
    try:
        return _dump(pid, images, hooks, leave_running, shell_job)
    except BaseException:
        images.release_reserved()
        for name in set(images.names()) - written_before:
            with contextlib.suppress(OSError):
                os.unlink(images.path(name))
        if images.created:
            with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                os.rmdir(images_dir)
        raise


def _test_pause(point):
    """For tests: CRIUPY_TEST_DUMP_PAUSE=<point> stops the dump at point (seized, infected, written, ended)
    until a signal ends criupy; it says so on stderr first."""
    if os.environ.get("CRIUPY_TEST_DUMP_PAUSE") == point:
        print(f"criupy: test pause at {point}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


def _dump(pid, images, hooks, leave_running, shell_job):
    """Seize the tree and write every image; returns the FrozenTree, still seized (cured on failure).
    The bytes taken out of ptys are put back before it returns if leave_running, or on failure."""
    from criupy.dump import files, memory, tree
    from criupy.dump.fds import tty

    # Refuse what criupy cannot dump while the tree still runs untouched (a process that comes or
    # goes meanwhile is judged once seized).
    descendants = _descendants(pid)
    tree_pids = [pid] + descendants
    processes = {pid: (files.inspect_fds(pid, descendants), proc.stat(pid))}
    memory.check_mappings(pid)
    for descendant in descendants:
        checked = _suppress_gone(lambda p: _check_process(p, tree_pids), descendant)
        if checked is not None:
            processes[descendant] = checked
    tty.check(pid, processes, shell_job)
    _load_frozen_modules()
    # the files of the images every dump writes, created now: a file's creation is no frozen time
    images.reserve(["inventory", "pstree", "files", "stats-dump", "pages-1"]
                   + [f"{kind}-{pid}" for kind in ("core", "ids", "mm", "pagemap", "fs")])
    ids = tree.IdGenerator()  # reads criupy's own namespaces, for the inventory

    stats = DumpStats()
    started = time.monotonic()
    frozen = tree.FrozenTree()
    try:
        frozen.seize_all(pid)
    except BaseException:
        frozen.cure()
        raise
    frozen_at = time.monotonic()
    stats.freezing_time = _microseconds(started)
    log.info("PID %d seized in %d us, with %d descendants", pid, stats.freezing_time, len(frozen.members) - 1)
    terminals = tty.Terminals()
    try:
        try:
            _test_pause("seized")
            for function in hooks:
                _call_hook(pid, frozen.members[0].group.leader, function)
            _dump_seized(frozen, images, stats, terminals, shell_job, ids)
            stats.frozen_time = _microseconds(frozen_at)  # until the images are written: the end is quick
            _write_stats(images, stats)
            images.release_reserved()
            _test_pause("written")
            if leave_running:
                terminals.put_back()
        except BaseException:
            try:
                terminals.put_back()  # before the tree runs again and looks for them
            finally:
                frozen.cure()
            raise
    finally:
        terminals.close()
    return frozen


def _load_frozen_modules():
    """Import now what the dump needs once the tree is stopped, and read the CPU's XSAVE layout (CPUID):
    neither is frozen time."""
    import criupy.infect.parasite  # noqa: F401  (loaded by infect())
    from criupy import xsave
    from criupy.dump import core, shmem, sysvshm, threads  # noqa: F401
    from criupy.images.pb import fs_pb2, mm_pb2, stats_pb2  # noqa: F401

    for number, _, _ in xsave.COMPONENTS:
        xsave.component(number)


def _descendants(pid):
    """The descendants of a running process as far as they can be listed now."""
    found = []
    todo = [pid]
    while todo:
        with contextlib.suppress(CriupyError):
            children = proc.children(todo.pop())
            found += children
            todo += children
    return found


def _check_process(pid, tree_pids):
    """Refuse what criupy cannot dump in a running descendant; its (fds, stat), or None for a zombie."""
    from criupy.dump import files, memory, tree

    stat = proc.stat(pid)
    if stat.state in ("Z", "X"):
        return None
    tree.check_task(pid)
    open_fds = files.inspect_fds(pid, tree_pids)
    memory.check_mappings(pid)
    return open_fds, stat


def _suppress_gone(check, pid):
    """check(pid)'s result, where a process that went away (or became a zombie) is no concern: None then."""
    try:
        return check(pid)
    except (CriupyError, OSError):
        with contextlib.suppress(CriupyError):
            if proc.stat(pid).state in ("Z", "X"):
                return None
        if os.path.exists(f"/proc/{pid}"):
            raise
        return None


def _dump_seized(frozen, images, stats, terminals, shell_job, ids):
    from criupy.dump import files, memory, shmem, sysvshm, tree
    from criupy.dump.fds import tty

    # seized now: check again what was checked while the tree ran; each process's fds and stat as
    # read here are the ones it is dumped with (nothing of criupy's is in any process yet)
    processes = {m.pid: (files.inspect_fds(m.pid, frozen.pids()), proc.stat(m.pid))
                 for m in frozen.members if not m.zombie}
    tty.check(frozen.members[0].pid, processes, shell_job)
    shared_memory = shmem.SharedMemory()
    sysv_segments = sysvshm.SysvSegments()
    files_image = files.FilesImage(shared_memory)
    pstree = []
    pipe_data = []
    sk_queues = []
    fifo_data = []
    file_locks = []
    writing = []  # pages_written() of the process whose parasite writes its pages while the next is dumped
    try:
        for pages_id, member in enumerate(frozen.members, 1):
            if member.zombie:
                stat = proc.stat(member.pid)
                pstree.append(tree.pstree_entry(stat, [member.pid], is_root=member.parent == 0))
                images.write(f"core-{member.pid}", [tree.zombie_core_entry(stat)])
                continue
            open_fds, stat = processes[member.pid]
            pstree.append(tree.pstree_entry(stat, member.group.tids, is_root=member.parent == 0))
            dumped_fds, pages_written = _dump_process(member.pid, member.group, open_fds, stat, pages_id, images,
                                                      stats, files_image, shared_memory, sysv_segments, ids,
                                                      terminals)
            writing.append(pages_written)
            # only this process's writer goes on while criupy dumps the next: more writers at once slow each
            # other and the dump on 2 CPUs, ext4 most (20-process tree to disk: frozen 374 -> 263 ms)
            while len(writing) > 1:
                writing.pop(0)()
            pipe_data += dumped_fds.pipe_data
            sk_queues += dumped_fds.sk_queues
            fifo_data += dumped_fds.fifo_data
            file_locks += dumped_fds.locks
        while writing:
            writing.pop(0)()
    except BaseException:
        # each parasite still writing finishes first (it holds a copy of criupy's fd): then its cure is
        # the usual one, not an interrupt in the middle of a command
        for pages_written in writing:
            with contextlib.suppress(Exception):
                pages_written()
        raise
    terminals.take_queued()

    write_started = time.monotonic()
    stats.pages_written += shared_memory.dump(images, len(frozen.members) + 1)
    sysv_segments.write(images, ids.namespace_id(frozen.members[0].pid, "ipc"))
    stats.memwrite_time += _microseconds(write_started)

    images.write("inventory", [tree.inventory_entry(ids)])
    images.write("pstree", pstree)
    images.write("files", files_image.entries)
    files_image.write_ghosts(images)
    files_image.memfds.write(images)
    if pipe_data:
        images.write("pipes-data", [entry for entry, _ in pipe_data], payloads=[data for _, data in pipe_data])
    if sk_queues:
        images.write("sk-queues", [entry for entry, _ in sk_queues], payloads=[data for _, data in sk_queues])
    if fifo_data:
        images.write("fifo-data", [entry for entry, _ in fifo_data], payloads=[data for _, data in fifo_data])
    if file_locks:
        images.write("file-lock", file_locks)
    if terminals.infos:
        images.write("tty-info", terminals.infos)
    if terminals.data:
        images.write("tty-data", terminals.data)


def _dump_process(pid, group, open_fds, stat, pages_id, images, stats, files_image, shared_memory, sysv_segments, ids,
                  terminals):
    """The images of one seized process (core per thread, ids, mm, pagemap + pages-<pages_id>, fdinfo, fs).
    open_fds and stat: its fds (files.inspect_fds) and /proc/PID/stat, read once it was seized.

    Returns its DumpedFds (the pipe data and socket queues first read here go in the tree's images) and
    pages_written(): its parasite is still writing pages-<pages_id>, pages_written() waits until it is done."""
    from criupy.dump import core, files, memory, threads, tree
    from criupy.images.pb import fs_pb2, mm_pb2

    # Everything read from outside first, while nothing of criupy's is in the task yet: the parasite's
    # mapping, and the code page the injector borrows, would otherwise show in the mappings and pagemap.
    status = tree.check_task(pid)  # again: it may have changed before it was stopped
    smaps_entries = proc.smaps(pid)
    vmas = memory.collect_vmas(pid, smaps_entries, files_image)
    group.leader.borrow_code_from([entry.mapping for entry in smaps_entries])  # no read of maps for it later
    shared_memory.add_vmas(pid, vmas)
    sysv_segments.add_vmas(pid, vmas)
    memdump_started = time.monotonic()
    pages = memory.find_pages(pid, vmas)
    stats.memdump_time += _microseconds(memdump_started)
    stats.pages_scanned += pages.pages_scanned
    log.info("PID %d: %d mappings, %d of %d pages to save", pid, len(vmas), pages.pages, pages.pages_scanned)

    victim = group.leader
    others = group.tasks[1:]
    seized = core.read_seized(pid, victim)
    others_seized = threads.read_seized(others)
    others_told = threads.ask_threads(victim, others)
    parasite = victim.infect()
    misc = parasite.misc()
    core_entry = core.core_entry(pid, victim, seized, parasite, misc, stat, status)
    thread_cores = {task.pid: threads.thread_core_entry(pid, task, others_seized[task.pid], others_told[task.pid],
                                                        misc)
                    for task in others}
    dumped_fds = files.dump_fds(pid, open_fds, files_image, parasite.steal_fds, terminals, stat)

    task_ids = ids.task_ids(pid)
    mm = mm_pb2.mm_entry(
        mm_start_code=stat.start_code, mm_end_code=stat.end_code, mm_start_data=stat.start_data,
        mm_end_data=stat.end_data, mm_start_stack=stat.start_stack, mm_start_brk=stat.start_brk, mm_brk=misc.brk,
        mm_arg_start=stat.arg_start, mm_arg_end=stat.arg_end, mm_env_start=stat.env_start,
        mm_env_end=stat.env_end, exe_file_id=files_image.task_file(pid, "exe", "the executable", os.O_RDONLY),
        mm_saved_auxv=proc.auxv(pid), vmas=[v.entry for v in vmas], dumpable=misc.dumpable,
        thp_disabled=status.get("THP_enabled", "1") == "0")
    fs = fs_pb2.fs_entry(
        cwd_id=files_image.task_file(pid, "cwd", "the working directory", os.O_RDONLY | os.O_DIRECTORY),
        root_id=files_image.task_file(pid, "root", "the root directory", os.O_RDONLY | os.O_DIRECTORY),
        umask=misc.umask)

    _test_pause("infected")
    images.write(f"core-{pid}", [core_entry])
    for tid, entry in thread_cores.items():
        images.write(f"core-{tid}", [entry])
    images.write(f"ids-{pid}", [task_ids])
    images.write(f"mm-{pid}", [mm])
    images.write(f"pagemap-{pid}", memory.pagemap_entries(pages, pages_id))
    images.write(f"fdinfo-{task_ids.files_id}", dumped_fds.fdinfo)
    images.write(f"fs-{pid}", [fs])

    # the last step, as nothing may fail once the parasite writes (the caller waits for it)
    write_started = time.monotonic()
    pages_fd = images.open_raw(f"pages-{pages_id}", write=True)
    try:
        finish_pages = parasite.start_dump_pages(pages_fd, pages.ranges)
    except BaseException:
        os.close(pages_fd)
        raise
    stats.memwrite_time += _microseconds(write_started)

    def pages_written():
        """Wait until the parasite has written them all (memwrite_time: criupy's time waiting for it)."""
        waited_from = time.monotonic()
        try:
            written = finish_pages()
        finally:
            os.close(pages_fd)
        stats.memwrite_time += _microseconds(waited_from)
        stats.pages_written += written // memory.PAGE_SIZE
        if written != pages.pages * memory.PAGE_SIZE:
            raise CriupyError(f"the parasite wrote {written} bytes of PID {pid}'s memory, not {pages.pages} pages")
        log.info("PID %d: %d pages written", pid, written // memory.PAGE_SIZE)

    return dumped_fds, pages_written


def _call_hook(pid, victim, function):
    log.info("calling %s at %#x (%s) in PID %d", function.spec, function.address, function.first_instruction, pid)
    result = victim.call_function(function)
    if result:
        raise CriupyError(f"hook {function.spec} returned {result} in PID {pid}")


def _write_stats(images, stats):
    from criupy.images.pb import stats_pb2

    entry = stats_pb2.dump_stats_entry(
        freezing_time=stats.freezing_time, frozen_time=stats.frozen_time, memdump_time=stats.memdump_time,
        memwrite_time=stats.memwrite_time, pages_scanned=stats.pages_scanned, pages_skipped_parent=0,
        pages_written=stats.pages_written, pages_lazy=0)
    images.write("stats-dump", [stats_pb2.stats_entry(dump=entry)])
