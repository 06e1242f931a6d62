"""The files of the dumped task, opened by criupy before the task exists.

Each open file description is opened once here (its flags and position set) and handed to the
restorer, which puts it at every fd number it had. Files the dumped mappings and /proc/PID/exe
point at are opened too, after checking that they are the files that were dumped; any mismatch
is a CriupyError before a process is created.
"""

import datetime
import fcntl
import mmap
import os
import stat

from criupy import buildid
from criupy.errors import CriupyError
from criupy.restore.fds import anon, eventpoll, fifo, inotify, memfd, tty
from criupy.images.pb import fdinfo_pb2
from criupy.restore.memory import VMA_FILE_PRIVATE, VMA_FILE_SHARED

FD_CLOEXEC = 1
# fd type -> (file_entry field, function opening one from that entry)
OPENERS = {fdinfo_pb2.EVENTFD: ("efd", anon.open_eventfd), fdinfo_pb2.SIGNALFD: ("sgfd", anon.open_signalfd),
           fdinfo_pb2.TIMERFD: ("tfd", anon.open_timerfd), fdinfo_pb2.INOTIFY: ("ify", inotify.open_inotify),
           fdinfo_pb2.EVENTPOLL: ("epfd", eventpoll.open_eventpoll)}
F_SETPIPE_SZ = 1031
# f_flags that only matter when a file is created or that open() would act on again
OPEN_FLAGS_DROPPED = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY
STATUS_FLAGS = os.O_APPEND | os.O_NONBLOCK | os.O_ASYNC | os.O_DIRECT | os.O_NOATIME


class OpenedFiles:
    """fds criupy holds for one task's restorer. The tasks of a tree share one `held` list: close() on
    any of them releases every fd of all."""

    def __init__(self, held):
        self.fds = []              # (source fd, target fd, cloexec)
        self.mapping_fds = {}      # files.img id -> fd, for file mappings
        self.shmem_fds = {}        # shmid -> fd, for anonymous shared memory
        self.exe_fd = -1           # -1: /proc/PID/exe is right already
        self.cwd_fd = -1
        self.root_fd = -1
        self.held = held           # every fd above, once
        self.terminals = None      # criupy.restore.fds.tty.Terminals, the tree's

    def hold(self, fd):
        self.held.append(fd)
        return fd

    def _renumber(self, moved):
        self.fds = [(moved[source], target, cloexec) for source, target, cloexec in self.fds]
        self.mapping_fds = {file_id: moved[fd] for file_id, fd in self.mapping_fds.items()}
        self.shmem_fds = {shmid: moved[fd] for shmid, fd in self.shmem_fds.items()}
        for name in ("exe_fd", "cwd_fd", "root_fd"):
            setattr(self, name, moved.get(getattr(self, name), -1))

    def close(self):
        for fd in self.held:
            os.close(fd)
        self.held.clear()


def move_above(opened_list, base):
    """Renumber every held fd to base or above, so none collides with a dumped fd number; old -> new."""
    held = opened_list[0].held
    moved = {}
    for fd in held:
        moved[fd] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base)
        os.close(fd)
    held[:] = moved.values()
    for opened in opened_list:
        opened._renumber(moved)
    return moved


def _path(reg):
    name = reg.name
    if name.endswith(" (deleted)"):
        raise CriupyError(f"file {name[:-10]} was deleted before the dump; criupy cannot restore it")
    return name if name.startswith("/") else "/" + name


def _reg(task, file_id, what):
    entry = task.files.get(file_id)
    if entry is None or not entry.HasField("reg"):
        raise CriupyError(f"image files.img is corrupt: no regular file {file_id} for {what}")
    return entry.reg


def _check_same_file(path, reg, fd, check_size=True):
    """The file open at fd must be the one dumped, as far as files.img records it: kind, size, build-id
    and, for a file the task could only read (exe, mappings, read-only fds), its modification time.

    A file the task may write changes with the task's own writes (restoring the same images twice):
    only its size is checked, as CRIU does."""
    st = os.fstat(fd)
    if reg.HasField("mode") and stat.S_IFMT(st.st_mode) != stat.S_IFMT(reg.mode):
        raise CriupyError(f"file {path} is no longer the kind of file it was at the dump")
    if not stat.S_ISREG(st.st_mode):
        return
    if check_size and reg.HasField("size") and st.st_size != reg.size:
        raise CriupyError(f"file {path} changed size since the dump ({reg.size} bytes, now {st.st_size})")
    read_only = reg.flags & os.O_ACCMODE == os.O_RDONLY
    if read_only and reg.HasField("mtime_ns") and st.st_mtime_ns != reg.mtime_ns:
        raise CriupyError(f"file {path} was modified since the dump (at {_when(st.st_mtime_ns)}, dumped as of "
                          f"{_when(reg.mtime_ns)})")
    # st: read once per file (the tasks of a tree map the same files), and again if it changed
    if reg.build_id and tuple(reg.build_id) != buildid.build_id_words(f"/proc/self/fd/{fd}", st):
        raise CriupyError(f"file {path} is not the build that was dumped (another ELF build-id)")


def _when(nanoseconds):
    return datetime.datetime.fromtimestamp(nanoseconds / 1e9).isoformat(sep=" ", timespec="microseconds")


def _open_checked(path, flags, reg, check_size=True):
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CriupyError(f"file {path} is gone since the dump") from None
    except OSError as e:
        raise CriupyError(f"cannot open {path}: {e.strerror}") from None
    try:
        _check_same_file(path, reg, fd, check_size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _appends_only(flags):
    """A write-only append file (a log): it may grow meanwhile, writes go to its end anyway (as CRIU)."""
    return flags & os.O_ACCMODE == os.O_WRONLY and flags & os.O_APPEND


def _open_regular(reg):
    path = _path(reg)
    fd = _open_checked(path, reg.flags & ~OPEN_FLAGS_DROPPED, reg, check_size=not _appends_only(reg.flags))
    try:
        os.lseek(fd, reg.pos, os.SEEK_SET)
    except OSError:
        pass  # not seekable (a character device): nothing to put back
    return fd


def _open_pipes(task, opened):
    """One pipe per pipe_id, its dumped contents written back: pipe_id -> (read fd, write fd)."""
    pipes = {}
    for entry in task.files.values():
        if entry.type != fdinfo_pb2.PIPE or entry.pipe.pipe_id in pipes:
            continue
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pipes[entry.pipe.pipe_id] = (opened.hold(read_end), opened.hold(write_end))
        _refill(write_end, task.pipe_data.get(entry.pipe.pipe_id))
    return pipes


def _refill(write_end, dumped):
    """Write a pipe's dumped (pipe_data_entry, bytes) back into it, its capacity first."""
    if dumped:
        data_entry, data = dumped
        capacity = max(data_entry.size if data_entry.HasField("size") else 0, len(data))
        if capacity > 65536:
            fcntl.fcntl(write_end, F_SETPIPE_SZ, capacity)
        os.write(write_end, data)


def _open_fifos(task, opened):
    """A keeper (see criupy/restore/fds/fifo.py) per FIFO, its data written back: pipe_id -> keeper fd."""
    keepers = {}
    for entry in task.files.values():
        if entry.type != fdinfo_pb2.FIFO or entry.fifo.pipe_id in keepers:
            continue
        keeper = opened.hold(fifo.open_keeper(_path(_reg(task, entry.fifo.regf_id, "a FIFO"))))
        keepers[entry.fifo.pipe_id] = keeper
        _refill(keeper, task.fifo_data.get(entry.fifo.pipe_id))
    return keepers


def open_files(tasks, images):
    """Open everything the tasks' restorers need: {pid: OpenedFiles}, sharing one held list (close()
    on any releases all, once the tasks have their copies). A file description several tasks share
    (one files.img id) is opened once and given to each. images: the ImagesDir (memfd contents)."""
    held = []
    opened = {task.pid: OpenedFiles(held) for task in tasks}
    ghost_paths = _create_ghosts(tasks[0])
    terminals = tty.Terminals(tasks[0], opened[tasks[0].pid].hold)
    for each in opened.values():
        each.terminals = terminals
    try:
        # files.img, pipes-data, sk-queues and fifo-data are the tree's: pipes, socket pairs and FIFOs are made once
        pipes = _open_pipes(tasks[0], opened[tasks[0].pid])
        sockets = _open_socket_pairs(tasks[0], opened[tasks[0].pid])
        fifos = _open_fifos(tasks[0], opened[tasks[0].pid])
        memfds = memfd.make_memfds(tasks[0].memfd_inodes, images, opened[tasks[0].pid].hold)
        by_file_id = {}
        for task in tasks:
            _open_all(task, opened[task.pid], pipes, sockets, fifos, memfds, by_file_id)
        terminals.finish_ptys()
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    finally:
        for path in ghost_paths:  # deleted again, as at the dump, once every task has it open
            os.unlink(path)
    return opened


def _create_ghosts(task):
    """Put each deleted file (a ghost file of the images) back at its path with its contents, so that
    every task opens the same file there; returns the paths made, which the caller unlinks."""
    made = []
    try:
        for file_id, (ghost, data) in task.ghosts.items():
            path = _path(task.files[file_id].reg)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise CriupyError(f"cannot re-create the deleted file {path}: {e.strerror}") from None
            made.append(path)
            try:
                os.write(fd, data)  # a regular file takes all of it in one write
                os.fchown(fd, ghost.uid, ghost.gid)
                os.fchmod(fd, ghost.mode & 0o7777)
            finally:
                os.close(fd)
    except BaseException:
        for path in made:
            os.unlink(path)
        raise
    return made


def _open_socket_pairs(task, opened):
    """Every unix socket pair, queues refilled, and every unix socket with no peer: file id -> fd."""
    by_ino = {entry.usk.ino: entry.usk for entry in task.files.values() if entry.type == fdinfo_pb2.UNIXSK}
    if not by_ino:
        return {}
    from criupy.restore.fds import unix  # here: it loads the socket module, which a task without sockets skips

    fds = {}
    listeners = {}  # name -> fd of each listening socket: accepted connections are made through it again
    for sock in by_ino.values():
        if sock.peer == 0:  # listening, bound or not used yet
            fds[sock.id] = opened.hold(unix.open_unpaired(sock))
            if sock.state == unix.TCP_LISTEN:
                listeners[sock.name] = fds[sock.id]
    for sock in by_ino.values():
        if sock.id in fds:
            continue
        peer = by_ino.get(sock.peer)
        if peer is None or peer.peer != sock.ino:
            raise CriupyError(f"image files.img is corrupt: unix socket {sock.ino} has no peer {sock.peer} in it")
        name = sock.name or peer.name  # the accepted end's: the listener's
        if name and name not in listeners:
            raise CriupyError(f"image files.img is corrupt: unix socket {sock.ino} was accepted on a name no "
                              "listener of the images has")
        fds[sock.id], fds[peer.id] = unix.open_pair(sock, peer, task.sk_queues, opened.hold, listeners.get(name))
    return fds


def _open_all(task, opened, pipes, sockets, fifos, memfds, by_file_id):
    epolls = {}  # file id -> (its fd number here, eventpoll_file_entry) of each epoll first opened for this task
    for fdinfo in sorted(task.fdinfo, key=lambda e: e.fd):
        source = by_file_id.get(fdinfo.id)
        if source is None:
            entry = task.files.get(fdinfo.id)
            if entry is None:
                raise CriupyError(f"image files.img is corrupt: fd {fdinfo.fd} names file {fdinfo.id}, not there")
            if entry.type == fdinfo_pb2.REG:
                source = opened.hold(_open_regular(entry.reg))
            elif entry.type == fdinfo_pb2.PIPE:
                read_end, write_end = pipes[entry.pipe.pipe_id]
                writes = entry.pipe.flags & os.O_ACCMODE == os.O_WRONLY
                # each end's own description, so the dumped O_NONBLOCK applies to it alone
                source = opened.hold(os.dup(write_end if writes else read_end))
                fcntl.fcntl(source, fcntl.F_SETFL, entry.pipe.flags & STATUS_FLAGS)
            elif entry.type == fdinfo_pb2.UNIXSK:
                source = sockets[fdinfo.id]
            elif entry.type == fdinfo_pb2.INETSK:
                from criupy.restore.fds import inet  # here, as unix: the socket module only for tasks with sockets
                source = opened.hold(inet.open_socket(entry.isk))
            elif entry.type == fdinfo_pb2.FIFO:
                reg = _reg(task, entry.fifo.regf_id, f"fd {fdinfo.fd}")
                source = opened.hold(fifo.open_end(_path(reg), reg.flags & ~OPEN_FLAGS_DROPPED,
                                                   reg.flags & STATUS_FLAGS, fifos[entry.fifo.pipe_id]))
            elif entry.type in OPENERS:
                field, opener = OPENERS[entry.type]
                source = opened.hold(opener(getattr(entry, field)))
                if entry.type == fdinfo_pb2.EVENTPOLL:
                    epolls[fdinfo.id] = (fdinfo.fd, entry.epfd)
            elif entry.type == fdinfo_pb2.TTY:
                source = opened.terminals.open(entry.tty, fdinfo.fd)
            elif entry.type == fdinfo_pb2.MEMFD:
                source = opened.hold(memfd.open_file(entry.memfd, memfds, entry.memfd.flags & ~OPEN_FLAGS_DROPPED))
            else:
                kind = fdinfo_pb2.fd_types.Name(entry.type)
                raise CriupyError(f"fd {fdinfo.fd} is a {kind} file, which criupy cannot restore yet")
            by_file_id[fdinfo.id] = source
        opened.fds.append((source, fdinfo.fd, bool(fdinfo.flags & FD_CLOEXEC)))
    eventpoll.register(opened.fds, list(epolls.values()))  # once per epoll, in the first task that has it

    for mapping_file_id in {v.shmid for v in task.mm.vmas if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)}:
        shared_writable = any(
            v.shmid == mapping_file_id and v.status & VMA_FILE_SHARED and v.prot & mmap.PROT_WRITE for v in task.mm.vmas
        )
        access = os.O_RDWR if shared_writable else os.O_RDONLY
        entry = task.files.get(mapping_file_id)
        if entry is not None and entry.type == fdinfo_pb2.MEMFD:
            fd = memfd.open_file(entry.memfd, memfds, access)
        else:
            reg = _reg(task, mapping_file_id, "a mapping")
            fd = _open_checked(_path(reg), access, reg)
        opened.mapping_fds[mapping_file_id] = opened.hold(fd)

    exe = _reg(task, task.mm.exe_file_id, "the executable")
    exe_fd = _open_checked(_path(exe), os.O_RDONLY, exe)
    here, dumped = os.stat("/proc/self/exe"), os.fstat(exe_fd)
    if (here.st_dev, here.st_ino) == (dumped.st_dev, dumped.st_ino):
        # criupy's own interpreter: the link is right already, and the kernel refuses to set it
        # while the file is mapped (it is: by the restored process itself)
        os.close(exe_fd)
    else:
        opened.exe_fd = opened.hold(exe_fd)

    for name, file_id in (("cwd", task.fs.cwd_id), ("root", task.fs.root_id)):
        path = _path(_reg(task, file_id, f"the {name}"))
        if name == "root" and path == "/":
            continue  # the root criupy runs in: nothing to change
        try:
            fd = opened.hold(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            raise CriupyError(f"the {name} directory {path} of the dumped process: {e.strerror}") from None
        setattr(opened, f"{name}_fd", fd)
