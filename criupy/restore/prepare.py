"""Filling in the restorer's argument area from the images, the memory plan and the opened files."""

import ctypes
import signal

from criupy import xsave
from criupy.errors import CriupyError
from criupy.restore import args as rst
from criupy.restore.memory import PAGE_SIZE, TASK_SIZE, restorer_pages
from criupy.restore.region import SIGFRAME_SIZE, THREAD_STACK_SIZE, Region, data_size

PIE_LOG_INFO = 3
PIE_LOG_DEBUG = 4
NO_ACTION_SIGNALS = (signal.SIGKILL, signal.SIGSTOP)
# False: the restorer reads every page with preadv, as it does where userfaultfd is not to be had
# (tests cover that path with it)
PAGES_BY_USERFAULTFD = True


def _cap_last_cap():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _sigactions(core, pid):
    """sa_entry list -> {signal: entry}. CRIU lists signals 1..64 without SIGKILL and SIGSTOP."""
    entries = list(core.tc.sigactions)
    if len(entries) == rst.NR_SIGNALS:
        numbers = range(1, rst.NR_SIGNALS + 1)
    elif len(entries) == rst.NR_SIGNALS - 2:
        numbers = [s for s in range(1, rst.NR_SIGNALS + 1) if s not in NO_ACTION_SIGNALS]
    elif not entries:
        return {}
    else:
        raise CriupyError(f"image core-{pid}.img is corrupt: {len(entries)} signal actions")
    return dict(zip(numbers, entries))


def _mapping_fd(mapping, opened):
    if mapping.sysv_id is not None:
        return mapping.sysv_id  # not an fd: the segment the restorer attaches
    if mapping.shmem_id is not None:
        return opened.shmem_fds[mapping.shmem_id]
    return -1 if mapping.file_id is None else opened.mapping_fds[mapping.file_id]


def _checked_signals(queue, tid, thread_wide):
    """[(thread_wide, siginfo)] of a signal_queue_entry, each siginfo checked."""
    signals = [(thread_wide, s.siginfo) for s in queue.signals]
    for _, siginfo in signals:
        if len(siginfo) != rst.SIGINFO_SIZE:
            raise CriupyError(f"image core-{tid}.img is corrupt: a pending signal's siginfo is "
                              f"{len(siginfo)} bytes")
    return signals


class ThreadArgs:
    """What one thread's rst_thread needs beside its core: its XSAVE image and own pending signals."""

    def __init__(self, tid, core):
        self.tid = tid
        self.core = core
        try:
            self.xsave = xsave.xsave_image(core.thread_info.fpregs)
        except ValueError as e:
            raise CriupyError(f"image core-{tid}.img: {e}") from None
        thread = core.thread_core
        self.signals = _checked_signals(thread.signals_p, tid, 1) if thread.HasField("signals_p") else []

    def size(self):
        """Argument bytes of a thread other than the leader, alignment slack included."""
        groups = len(self.core.thread_core.creds.groups)
        return (ctypes.sizeof(rst.Thread) + len(self.xsave) + 64 + SIGFRAME_SIZE + THREAD_STACK_SIZE
                + len(self.signals) * ctypes.sizeof(rst.Signal) + ctypes.sizeof(rst.Creds) + 4 * groups + 8
                + 2 * PAGE_SIZE)


def build(task, plan, opened, pages_fd, log_fd, go_fd, first_own_fd, verbose=False, plugin=None, images_fd=-1,
          own_mappings=None):
    """Map the restorer region (with the PIE plugin Blob, if any) and write every argument into it;
    returns the Region. images_fd is the images directory, for the plugin's hooks; own_mappings the
    region.OwnMappings that the regions of one tree share."""
    core = task.core
    thread = core.thread_core
    leader = ThreadArgs(task.pid, core)
    others = [ThreadArgs(tid, thread_core) for tid, thread_core in task.thread_cores.items()]
    signals = _checked_signals(core.tc.signals_s, task.pid, 0) if core.tc.HasField("signals_s") else []
    timers = list(core.tc.timers.posix) if core.tc.HasField("timers") else []
    groups = list(thread.creds.groups) if thread.HasField("creds") else []
    specials_size = sum(s.size for s in plan.specials)
    iovecs, runs = restorer_pages(plan)

    region = Region(
        data_size(len(plan.mappings), len(iovecs), len(runs), len(plan.specials), len(opened.fds), len(timers),
                  len(signals) + len(leader.signals), len(groups), len(leader.xsave))
        + sum(t.size() for t in others),
        specials_size,
        [(m.start, m.end) for m in plan.mappings] + [(s.dumped, s.dumped + s.size) for s in plan.specials],
        plugin,
        own_mappings,
    )
    try:
        _fill(region, task, plan, iovecs, runs, opened, leader, others, signals, timers, pages_fd, log_fd, go_fd,
              first_own_fd, verbose)
        _fill_plugin(region, images_fd)
    except BaseException:
        region.unmap()
        raise
    return region


def _fill_creds(region, slot, c):
    """An rst_creds from a creds_entry."""
    slot.present = 1
    slot.uid, slot.euid, slot.suid, slot.fsuid = c.uid, c.euid, c.suid, c.fsuid
    slot.gid, slot.egid, slot.sgid, slot.fsgid = c.gid, c.egid, c.sgid, c.fsgid
    slot.secbits = c.secbits
    slot.no_new_privs = c.no_new_privs
    slot.last_cap = _cap_last_cap()
    for name in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"):
        words = list(getattr(c, name))[:2]
        getattr(slot, name)[: len(words)] = words
    slot.nr_groups = len(c.groups)
    slot.groups = region.bytes(b"".join(g.to_bytes(4, "little") for g in c.groups) or b"\0" * 4)


def _fill_thread(region, slot, thread_args, with_stack):
    """Write one thread's rst_thread into slot; with_stack: it gets its own stack (not the leader)."""
    core = thread_args.core
    thread = core.thread_core
    info = core.thread_info
    slot.tid = thread_args.tid
    for name in rst.REGS_FIELDS:
        setattr(slot.regs, name, getattr(info.gpregs, name))
    slot.blocked = thread.blk_sigset if thread.HasField("blk_sigset") else core.tc.blk_sigset
    if thread.HasField("sas"):
        slot.sas_sp, slot.sas_size, slot.sas_flags = thread.sas.ss_sp, thread.sas.ss_size, thread.sas.ss_flags
    else:
        slot.sas_flags = 2  # SS_DISABLE
    slot.clear_child_tid = info.clear_tid_addr
    slot.robust_list, slot.robust_list_len = thread.futex_rla, thread.futex_rla_len
    if thread.HasField("rseq_entry") and thread.rseq_entry.rseq_abi_pointer:
        r = thread.rseq_entry
        slot.rseq.pointer, slot.rseq.size, slot.rseq.signature = r.rseq_abi_pointer, r.rseq_abi_size, r.signature
    slot.comm = (thread.comm if thread.HasField("comm") else core.tc.comm).encode()[:15]
    slot.sched_policy, slot.sched_prio, slot.sched_nice = thread.sched_policy, thread.sched_prio, thread.sched_nice
    slot.xsave = region.bytes(thread_args.xsave, 64)
    slot.xsave_size = len(thread_args.xsave)
    slot.sigframe = region.allocate(SIGFRAME_SIZE, PAGE_SIZE)
    slot.sigframe_size = SIGFRAME_SIZE
    slot.signals = region.array(rst.Signal, (
        dict(thread=thread_wide, siginfo=(ctypes.c_uint8 * rst.SIGINFO_SIZE).from_buffer_copy(siginfo))
        for thread_wide, siginfo in thread_args.signals))
    slot.nr_signals = len(thread_args.signals)
    if with_stack:
        slot.stack = region.allocate(THREAD_STACK_SIZE, PAGE_SIZE)
        slot.stack_size = THREAD_STACK_SIZE
        if thread.HasField("creds"):
            slot.creds = region.allocate(ctypes.sizeof(rst.Creds))
            _fill_creds(region, rst.Creds.from_address(slot.creds), thread.creds)


def _fill(region, task, plan, iovecs, runs, opened, leader, others, signals, timers, pages_fd, log_fd, go_fd,
          first_own_fd, verbose):
    core = task.core
    thread = core.thread_core
    a = rst.Args.from_address(region.allocate(ctypes.sizeof(rst.Args), 64))
    a.region_start, a.region_size = region.start, region.size
    a.stack_top = region.stack_top
    a.task_size = TASK_SIZE
    a.log_fd, a.sync_fd, a.pages_fd, a.first_own_fd = log_fd, go_fd, pages_fd, first_own_fd
    a.log_level = PIE_LOG_DEBUG if verbose else PIE_LOG_INFO
    a.pages_by_userfaultfd = int(PAGES_BY_USERFAULTFD)

    a.vmas = region.array(rst.Vma, (
        dict(start=m.start, end=m.end, pgoff=m.pgoff, prot=m.prot, flags=m.flags,
             fd=_mapping_fd(m, opened), fill=int(m.fill and not m.premapped), madv=m.madv,
             sysv=int(m.sysv_id is not None), premapped=m.premapped)
        for m in plan.mappings))
    a.nr_vmas = len(plan.mappings)
    a.iovs = region.array(rst.Iovec, (dict(base=base, len=length) for base, length in iovecs))
    a.nr_iovs = len(iovecs)
    a.page_runs = region.array(rst.PageRun, (dict(offset=offset, first_iov=first, nr_iovs=count)
                                             for offset, first, count in runs))
    a.nr_page_runs = len(runs)
    parked = region.parking
    specials = []
    for s in plan.specials:
        specials.append(dict(current=s.current, parked=parked, dumped=s.dumped, size=s.size))
        parked += s.size
    a.specials = region.array(rst.SpecialVma, specials)
    a.nr_specials = len(specials)
    a.fds = region.array(rst.Fd, (dict(source=s, target=t, cloexec=int(c)) for s, t, c in opened.fds))
    a.nr_fds = len(opened.fds)

    a.umask = task.fs.umask if task.fs.HasField("umask") else 0o022
    a.personality = core.tc.personality
    a.cwd_fd, a.root_fd = opened.cwd_fd, opened.root_fd
    # criupy.restore.tree made a session leader (and a group leader) what it was before the task
    # created its children; a task joins another's group here, once all exist
    a.pgid = task.pgid if task.sid != task.pid else 0

    mm = task.mm
    auxv = list(mm.mm_saved_auxv)
    if len(auxv) > rst.AUXV_WORDS:
        raise CriupyError(f"image mm-{task.pid}.img is corrupt: {len(auxv)} auxv words")
    a.auxv[: len(auxv)] = auxv
    a.mm.start_code, a.mm.end_code = mm.mm_start_code, mm.mm_end_code
    a.mm.start_data, a.mm.end_data = mm.mm_start_data, mm.mm_end_data
    a.mm.start_brk, a.mm.brk = mm.mm_start_brk, mm.mm_brk
    a.mm.start_stack = mm.mm_start_stack
    a.mm.arg_start, a.mm.arg_end = mm.mm_arg_start, mm.mm_arg_end
    a.mm.env_start, a.mm.env_end = mm.mm_env_start, mm.mm_env_end
    a.mm.auxv = ctypes.addressof(a.auxv)
    a.mm.auxv_size = len(auxv) * 8
    a.mm.exe_fd = opened.exe_fd if opened.exe_fd >= 0 else 0xFFFFFFFF  # -1: keep

    for sig, entry in _sigactions(core, task.pid).items():
        action = a.sigactions[sig - 1]
        action.handler, action.flags, action.restorer, action.mask = (
            entry.sigaction, entry.flags, entry.restorer, entry.mask)
    if core.tc.HasField("timers"):
        for slot, itimer in zip(a.itimers, (core.tc.timers.real, core.tc.timers.virt, core.tc.timers.prof)):
            slot.interval_sec, slot.interval_usec = itimer.isec, itimer.iusec
            slot.value_sec, slot.value_usec = _armed(itimer.vsec, itimer.vusec, itimer.isec, itimer.iusec)
    a.posix_timers = region.array(rst.PosixTimer, (_posix_timer(t) for t in timers))
    a.nr_posix_timers = len(timers)
    a.signals = region.array(rst.Signal, (
        dict(thread=thread_wide, siginfo=(ctypes.c_uint8 * rst.SIGINFO_SIZE).from_buffer_copy(siginfo))
        for thread_wide, siginfo in signals))
    a.nr_signals = len(signals)
    rlimits = list(core.tc.rlimits.rlimits) if core.tc.HasField("rlimits") else []
    a.nr_rlimits = min(len(rlimits), rst.NR_RLIMITS)
    for slot, limit in zip(a.rlimits, rlimits):
        slot.cur, slot.max = limit.cur, limit.max

    if thread.HasField("creds"):
        _fill_creds(region, a.creds, thread.creds)

    _fill_thread(region, a.leader, leader, with_stack=False)
    a.threads = region.allocate(ctypes.sizeof(rst.Thread) * max(len(others), 1))
    a.nr_threads = len(others)
    for slot, thread_args in zip((rst.Thread * max(len(others), 1)).from_address(a.threads), others):
        _fill_thread(region, slot, thread_args, with_stack=True)
    region.args_address = ctypes.addressof(a)


def _fill_plugin(region, images_fd):
    a = rst.Args.from_address(region.args_address)
    a.hook_post_restore_vmas = region.hook("criupy_hook_post_restore_vmas")
    a.hook_pre_sigreturn = region.hook("criupy_hook_pre_sigreturn")
    a.images_dir_fd = images_fd


def _posix_timer(t):
    value_sec, value_nsec = _armed(t.vsec, t.vnsec, t.isec, t.insec)
    return dict(id=t.it_id, clock_id=t.clock_id, signo=t.si_signo, notify=t.it_sigev_notify,
                notify_tid=t.notify_thread_id, sival=t.sival_ptr, interval_sec=t.isec, interval_nsec=t.insec,
                value_sec=value_sec, value_nsec=value_nsec)


def _armed(value_sec, value_sub, interval_sec, interval_sub):
    """The value to arm a periodic timer with. One that expired while the task was frozen reads as 0
    left until its signal is taken, and the kernel re-arms it only then; that signal may have come
    after the pending signals were read, so 0 would disarm it for good: start a new period instead,
    as CRIU does."""
    if (value_sec, value_sub) == (0, 0):
        return interval_sec, interval_sub
    return value_sec, value_sub
