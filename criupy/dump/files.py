"""Files: files.img (one file_entry per open file and per file used without an fd), fdinfo-N.img, pipes-data.img.

Open file descriptors come from /proc/PID/fd and /proc/PID/fdinfo. Regular files, directories and
character devices (other than terminals) are dumped by path, with their flags and position; pipes by
inode, with the bytes still in them, read without taking them: the parasite sends criupy a copy of the
pipe's read end and tee() duplicates the buffered data into a pipe of criupy's (as CRIU does). Other
kinds have their own module in criupy/dump/fds (unix: socket pairs with their queues, listening and
bound sockets; inet: TCP and UDP sockets without a connection; anon: eventfd, signalfd, timerfd;
eventpoll; inotify; tty: terminals and ptys; memfd). FIFOs are dumped by path, their data as a pipe's.
Every other kind of file stops the dump, naming the fd.

Files the task uses without an fd (mapped files, the executable, cwd, root) are entries of the same
files.img, shared per file, with what identifies the file (size, mode) so restore can check it. A mapped
file that was deleted (a POSIX semaphore's /dev/shm file, say) is saved as a ghost file (CRIU's
ghost-file-N.img + remap-fpath.img), which restore puts back at its path while the tasks open it.
"""

import ctypes
import errno
import fcntl
import logging
import os
import stat
from typing import NamedTuple

from criupy import buildid, proc
from criupy.dump.fds import anon, eventpoll, inet, inotify, locks, memfd, unix
from criupy.errors import CriupyError
from criupy.images.pb import (fdinfo_pb2, fifo_pb2, fown_pb2, ghost_file_pb2, pipe_data_pb2, pipe_pb2,
                              regfile_pb2, remap_file_path_pb2, time_pb2)
from criupy.libc import libc

log = logging.getLogger("criupy.dump")

FD_CLOEXEC = 1
O_CLOEXEC = 0o2000000
F_GETPIPE_SZ = 1032
F_SETPIPE_SZ = 1031
SPLICE_F_NONBLOCK = 2
SYS_kcmp = 312
GHOST_LIMIT = 16 << 20  # the largest deleted file whose contents go in the images
KCMP_FILE = 0

# character device majors of terminals (devices.txt): ptys, ttys, /dev/tty, /dev/console, ptmx, serial
TTY_MAJORS = {2, 3, 4, 5, *range(128, 144), 188, 204}
FD_READ_TRIES = 10  # a running task may close an fd and reuse its number while criupy reads it
LOCKABLE = ("reg", "memfd")  # the kinds whose locks the frozen dump looks for again (a lock elsewhere is rare)


def _no_owner():
    # F_SETOWN owner and signal: not read yet (the parasite has no command for them)
    return fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)


def _unsupported(fd, kind, link):
    return CriupyError(f"fd {fd} is {kind} ({link}): not supported yet")


def _checked_path(what, link, st):
    """The path of an open or mapped file, checked to still name that very file."""
    if link.endswith(" (deleted)"):
        raise CriupyError(f"{what}: file {link[:-len(' (deleted)')]} was deleted: not supported yet")
    try:
        now = os.stat(link)
    except OSError:
        raise CriupyError(f"{what}: file {link} is missing (moved or removed since it was opened)") from None
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise CriupyError(f"{what}: {link} now names another file than the one open (moved or replaced)")
    return link


def _reg_entry(file_id, flags, pos, path, st, mnt_id):
    entry = regfile_pb2.reg_file_entry(id=file_id, flags=flags, pos=pos, fown=_no_owner(), name=path,
                                       mode=st.st_mode)
    if mnt_id >= 0:
        entry.mnt_id = mnt_id
    if stat.S_ISREG(st.st_mode):
        # what restore checks the file by: a file changed since the dump is refused, naming it
        entry.size = st.st_size
        entry.mtime_ns = st.st_mtime_ns
        entry.build_id.extend(buildid.build_id_words(path, st))
    return entry


class FilesImage:
    """files.img as it is built: file ids handed out from 1, entries in the order they were added."""

    def __init__(self, shared_memory):
        self.entries = []
        self._next_id = 1
        self._by_file = {}  # (st_dev, st_ino) -> reg_file_entry of files used without an fd
        # (pid, OpenFd, file id) of every open file description so far, over the whole tree: fds of
        # processes that share one (dup, fork) get one id
        self.descriptions = []
        self.pipes_read = set()  # pipe inodes, ("fifo", inode) of FIFOs, whose data is saved already
        self.ghosts = {}  # file id -> (path to read it through, stat) of deleted files still mapped
        self.memfds = memfd.Memfds(shared_memory)

    def new_id(self):
        file_id = self._next_id
        self._next_id += 1
        return file_id

    def add_reg(self, entry):
        self.entries.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=entry.id, reg=entry))

    def add_pipe(self, entry):
        self.entries.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.PIPE, id=entry.id, pipe=entry))

    def add(self, fd_type, field, entry):
        """An entry of another kind: field is its file_entry field ("usk", "efd"...)."""
        self.entries.append(fdinfo_pb2.file_entry(type=fd_type, id=entry.id, **{field: entry}))

    def path_file(self, what, link, st, open_flags, mnt_link, deleted_source=None):
        """The id of a file used without an fd (a mapping, exe, cwd, root): one entry per file.

        mnt_link: a /proc magic link to the file, its mount id read through it for a new entry only.

        deleted_source: the file was deleted (link ends with " (deleted)"); its contents are saved as
        a ghost file (write_ghosts), read through this path."""
        key = (st.st_dev, st.st_ino)
        entry = self._by_file.get(key)
        if entry is None:
            if deleted_source is None:
                path = _checked_path(what, link, st)
            else:
                path = link.removesuffix(" (deleted)")
                if not stat.S_ISREG(st.st_mode) or st.st_size > GHOST_LIMIT:
                    raise CriupyError(f"{what}: deleted file {path} ({st.st_size} bytes) is not a regular file of "
                                      f"at most {GHOST_LIMIT >> 20} MiB: not supported")
            entry = _reg_entry(self.new_id(), open_flags, 0, path, st, _mnt_id_of(mnt_link))
            self._by_file[key] = entry
            self.add_reg(entry)
            if deleted_source is not None:
                self.ghosts[entry.id] = (deleted_source, st)
        elif open_flags & os.O_ACCMODE == os.O_RDWR:
            entry.flags = entry.flags & ~os.O_ACCMODE | os.O_RDWR  # a writable shared mapping of it too
        return entry.id

    def mapped_file(self, what, path, st, open_flags, map_files_link):
        if memfd.is_memfd(path):
            entry, new = self.memfds.mapping_entry(what, path, map_files_link, st, open_flags, self.new_id,
                                                   _no_owner())
            if new:
                self.add(fdinfo_pb2.MEMFD, "memfd", entry)
            return entry.id
        deleted_source = map_files_link if path.endswith(" (deleted)") else None
        return self.path_file(what, path, st, open_flags, map_files_link, deleted_source)

    def write_ghosts(self, images):
        """ghost-file-N.img (entry, then the file's contents) for each deleted file, and remap-fpath.img
        naming the ghost of each such files.img entry, as CRIU writes them."""
        remaps = []
        for ghost_id, (file_id, (source, st)) in enumerate(sorted(self.ghosts.items()), 1):
            with open(source, "rb") as f:
                data = f.read(GHOST_LIMIT + 1)
            if len(data) > GHOST_LIMIT:
                raise CriupyError(f"deleted file {source} grew over {GHOST_LIMIT >> 20} MiB")
            entry = ghost_file_pb2.ghost_file_entry(
                uid=st.st_uid, gid=st.st_gid, mode=st.st_mode, dev=os.major(st.st_dev) << 20 | os.minor(st.st_dev),
                ino=st.st_ino, size=len(data),
                atim=time_pb2.timeval(tv_sec=int(st.st_atime), tv_usec=st.st_atime_ns // 1000 % 1_000_000),
                mtim=time_pb2.timeval(tv_sec=int(st.st_mtime), tv_usec=st.st_mtime_ns // 1000 % 1_000_000))
            images.write(f"ghost-file-{ghost_id}", [entry], payloads=[data])
            remaps.append(remap_file_path_pb2.remap_file_path_entry(orig_id=file_id, remap_id=ghost_id,
                                                                   remap_type=remap_file_path_pb2.GHOST))
        if remaps:
            images.write("remap-fpath", remaps)

    def task_file(self, pid, name, what, open_flags):
        """The id of /proc/PID/<name> (exe, cwd, root)."""
        link = f"/proc/{pid}/{name}"
        try:
            path, st = os.readlink(link), os.stat(link)
        except FileNotFoundError:
            raise CriupyError(f"{what} of PID {pid} is gone (deleted?): not supported yet") from None
        return self.path_file(f"{what} of PID {pid}", path, st, open_flags, link)


def _mnt_id_of(link):
    """The mount id of the file a /proc magic link points at (-1 if it cannot be opened)."""
    try:
        fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        return proc.fdinfo("self", fd).mnt_id
    finally:
        os.close(fd)


# --- open file descriptors -------------------------------------------------------------------------


class OpenFd:
    """One fd of a process as /proc shows it; a socket's kind is settled once sock_diag has told."""

    def __init__(self, fd, link, info, st, kind):
        self.fd = fd
        self.link = link    # readlink of /proc/PID/fd/FD
        self.info = info    # proc.FdInfo
        self.st = st        # os.stat_result
        self.kind = kind    # a key of FD_TYPES
        self.sock = None    # unix.UnixSocket for kind "unix", inet.InetSocket for "inet"


# kind -> fdinfo type
FD_TYPES = {"reg": fdinfo_pb2.REG, "pipe": fdinfo_pb2.PIPE, "unix": fdinfo_pb2.UNIXSK, "inet": fdinfo_pb2.INETSK,
            "fifo": fdinfo_pb2.FIFO, "eventfd": fdinfo_pb2.EVENTFD, "signalfd": fdinfo_pb2.SIGNALFD,
            "timerfd": fdinfo_pb2.TIMERFD, "eventpoll": fdinfo_pb2.EVENTPOLL, "tty": fdinfo_pb2.TTY,
            "memfd": fdinfo_pb2.MEMFD, "inotify": fdinfo_pb2.INOTIFY}


def _kind(fd, link, st):
    """A key of FD_TYPES, or raise naming what the fd is."""
    mode = st.st_mode
    if stat.S_ISSOCK(mode):
        return "socket"  # told apart by inspect_fds
    if stat.S_ISFIFO(mode):
        return "pipe" if link.startswith("pipe:") else "fifo"
    if link.startswith("anon_inode:"):
        name = link.removeprefix("anon_inode:").strip("[]")
        if name in FD_TYPES:
            return name
        article = "an" if name[:1] in "aeiou" else "a"
        raise _unsupported(fd, f"{article} {name}", link)
    if not link.startswith("/"):
        raise _unsupported(fd, "a special file", link)  # nsfs, pidfs...
    if memfd.is_memfd(link):
        return "memfd"
    if stat.S_ISCHR(mode):
        return "tty" if os.major(st.st_rdev) in TTY_MAJORS else "reg"
    if stat.S_ISBLK(mode):
        raise _unsupported(fd, "a block device", link)
    return "reg"


def inspect_fds(pid, tree_pids=()):
    """The task's open fds, each checked to be of a kind criupy dumps (else CriupyError naming it).

    tree_pids: the other processes dumped with it; a unix socket's peer may be open in one of them."""
    result = []
    unix_sockets = inet_sockets = None  # every unix socket, every TCP and UDP one: listed once the task has a socket
    for fd in proc.fds(pid):
        read = _read_fd(pid, fd)
        if read is None:
            continue
        link, st, info = read
        kind = _kind(fd, link, st)
        if kind == "reg" and link.endswith(" (deleted)"):
            raise CriupyError(f"fd {fd}: file {link[:-len(' (deleted)')]} was deleted: not supported yet")
        open_fd = OpenFd(fd, link, info, st, kind)
        if kind == "socket":
            if unix_sockets is None:
                unix_sockets, inet_sockets = unix.unix_sockets(), inet.inet_sockets()
            if st.st_ino in unix_sockets:
                open_fd.kind, open_fd.sock = "unix", unix_sockets[st.st_ino]
            else:
                open_fd.kind = "inet"
                open_fd.sock = inet_sockets.get(st.st_ino) or inet.unbound_socket(pid, fd, st.st_ino)
                inet.check(fd, open_fd.sock)
        result.append(open_fd)
    for open_fd in result:
        if "lock" in open_fd.info.extra:  # fdinfo has a "lock:" line
            locks.lock_entries(pid, open_fd.fd, open_fd.link)  # refuses the locks criupy cannot take again
    task_sockets = {open_fd.sock.ino for open_fd in result if open_fd.kind == "unix"}
    if unix_sockets is not None:
        task_sockets |= _socket_inodes(other for other in tree_pids if other != pid)
    for open_fd in result:
        if open_fd.kind == "unix":
            unix.check(open_fd.fd, open_fd.sock, task_sockets, unix_sockets)
        elif open_fd.kind == "eventpoll":
            eventpoll.check(open_fd.fd, eventpoll.registered(pid, open_fd.fd), result)
        elif open_fd.kind == "inotify":
            inotify.watched_files(pid, open_fd.fd)
    return result


def _read_fd(pid, fd):
    """(link, stat, fdinfo) of a task's fd; None if it was closed since the listing (the task still runs
    when criupy first looks). A number closed and opened again while criupy read it is read again."""
    for _ in range(FD_READ_TRIES):
        try:
            return proc.fd_link(pid, fd), os.stat(f"/proc/{pid}/fd/{fd}"), proc.fdinfo(pid, fd)
        except (CriupyError, FileNotFoundError):
            if not os.path.lexists(f"/proc/{pid}/fd/{fd}"):
                return None
    raise CriupyError(f"fd {fd} of PID {pid} was closed and opened again each time criupy looked at it")


def _socket_inodes(pids):
    """The inodes of the sockets the processes have open (those that are gone meanwhile count for none)."""
    found = set()
    for pid in pids:
        try:
            fds = proc.fds(pid)
        except CriupyError:
            continue
        for fd in fds:
            try:
                link = proc.fd_link(pid, fd)
            except (CriupyError, FileNotFoundError):
                continue
            if link.startswith("socket:["):
                found.add(int(link[len("socket:["):-1]))
    return found


def _same_description(pid1, fd1, pid2, fd2):
    """Whether two fds (of one task or two) share one open file description (dup, fork), by kcmp."""
    result = libc.syscall(ctypes.c_long(SYS_kcmp), ctypes.c_int(pid1), ctypes.c_int(pid2), ctypes.c_int(KCMP_FILE),
                          ctypes.c_ulong(fd1), ctypes.c_ulong(fd2))
    if result < 0:
        err = ctypes.get_errno()
        raise CriupyError(f"kcmp of fd {fd1} of PID {pid1} and fd {fd2} of PID {pid2}: {os.strerror(err)}")
    return result == 0


class DumpedFds(NamedTuple):
    fdinfo: list       # fdinfo_entry, by fd
    locks: list        # file_lock_entry of each lock placed through an fd
    pipe_data: list    # (pipe_data_entry, bytes)
    sk_queues: list    # (sk_packet_entry, bytes)
    fifo_data: list    # (pipe_data_entry, bytes) of FIFOs


def dump_fds(pid, open_fds, files, steal_fds, terminals, stat):
    """Add every open file description not yet in files; fdinfo entries, pipe contents and socket queues.

    steal_fds(fds) -> criupy's copies of the task's fds (the parasite's steal_fds), for pipes, sockets
    and terminals. terminals: the tree's criupy.dump.fds.tty.Terminals; stat: the task's proc.Stat.
    A description other processes of the tree share is added once, with the data of a pipe (read
    through the first read end found).
    """
    sockets = {}  # socket inode -> the first OpenFd of it: the fd its copy is stolen from
    for open_fd in open_fds:
        if open_fd.kind in ("unix", "inet"):
            sockets.setdefault(open_fd.sock.ino, open_fd)
    stolen = steal_fds([open_fd.fd for open_fd in sockets.values()]) if sockets else []
    try:
        return _dump_fds(pid, open_fds, files, steal_fds, dict(zip(sockets, stolen)), terminals, stat)
    finally:
        for fd in stolen:
            os.close(fd)


def _dump_fds(pid, open_fds, files, steal_fds, stolen_sockets, terminals, stat):
    fdinfo = []
    sk_queues = []
    file_locks = []
    unix_now = inet_now = None  # unix sockets with no peer, TCP and UDP sockets: listed again once frozen
    pipe_readers = {}  # pipe inode -> OpenFd of the first read end: where its data is read from
    fifo_readers = {}  # the same for FIFOs
    for open_fd in open_fds:
        file_id = next((file_id for other_pid, other, file_id in files.descriptions
                        if (other.st.st_dev, other.st.st_ino) == (open_fd.st.st_dev, open_fd.st.st_ino)
                        and _same_description(other_pid, other.fd, pid, open_fd.fd)), None)
        if file_id is None:
            file_id = files.new_id()
            files.descriptions.append((pid, open_fd, file_id))
            flags = open_fd.info.flags & ~O_CLOEXEC
            if open_fd.kind == "pipe":
                files.add_pipe(pipe_pb2.pipe_entry(id=file_id, pipe_id=open_fd.st.st_ino, flags=flags,
                                                   fown=_no_owner()))
            elif open_fd.kind == "unix" and open_fd.sock.peer == 0:  # listening, bound or unused: checked again
                unix_now = unix.unix_sockets() if unix_now is None else unix_now  # their states at the stop
                now = unix_now.get(open_fd.sock.ino, open_fd.sock)
                unix.check(open_fd.fd, now, (), unix_now)
                files.add(fdinfo_pb2.UNIXSK, "usk",
                          unix.socket_entry(file_id, flags, now, stolen_sockets[now.ino], _no_owner()))
            elif open_fd.kind == "unix":
                copy = stolen_sockets[open_fd.sock.ino]
                files.add(fdinfo_pb2.UNIXSK, "usk",
                          unix.socket_entry(file_id, flags, open_fd.sock, copy, _no_owner()))
                sk_queues += unix.queued_messages(open_fd.fd, file_id, copy)
            elif open_fd.kind == "inet":
                inet_now = inet.inet_sockets() if inet_now is None else inet_now  # their states at the stop
                now = inet_now.get(open_fd.sock.ino, open_fd.sock)
                files.add(fdinfo_pb2.INETSK, "isk", inet.socket_entry(open_fd.fd, file_id, flags, now,
                                                                      stolen_sockets[now.ino], _no_owner()))
            elif open_fd.kind == "eventfd":
                files.add(fdinfo_pb2.EVENTFD, "efd", anon.eventfd_entry(file_id, flags, open_fd.info, _no_owner()))
            elif open_fd.kind == "signalfd":
                files.add(fdinfo_pb2.SIGNALFD, "sgfd", anon.signalfd_entry(file_id, flags, open_fd.info, _no_owner()))
            elif open_fd.kind == "timerfd":
                files.add(fdinfo_pb2.TIMERFD, "tfd", anon.timerfd_entry(file_id, flags, pid, open_fd.fd, _no_owner(),
                                                                        steal_fds))
            elif open_fd.kind == "inotify":
                files.add(fdinfo_pb2.INOTIFY, "ify",
                          inotify.inotify_entry(file_id, flags, pid, open_fd.fd, _no_owner()))
            elif open_fd.kind == "eventpoll":
                watched = eventpoll.registered(pid, open_fd.fd)
                eventpoll.check(open_fd.fd, watched, open_fds)
                files.add(fdinfo_pb2.EVENTPOLL, "epfd", eventpoll.eventpoll_entry(file_id, flags, watched, _no_owner()))
            elif open_fd.kind == "fifo":
                # by path, as a regular file of its own id, which the FIFO entry names (as CRIU)
                path = _checked_path(f"fd {open_fd.fd}", open_fd.link, open_fd.st)
                regf_id = files.new_id()
                files.add_reg(_reg_entry(regf_id, flags, 0, path, open_fd.st, open_fd.info.mnt_id))
                files.add(fdinfo_pb2.FIFO, "fifo", fifo_pb2.fifo_entry(id=file_id, pipe_id=open_fd.st.st_ino,
                                                                       regf_id=regf_id))
            elif open_fd.kind == "memfd":
                inode_id = files.memfds.inode_id(f"fd {open_fd.fd}", open_fd.link, f"/proc/{pid}/fd/{open_fd.fd}",
                                                 open_fd.st)
                files.add(fdinfo_pb2.MEMFD, "memfd", files.memfds.file_entry(file_id, flags, open_fd.info.pos,
                                                                             _no_owner(), inode_id))
            elif open_fd.kind == "tty":
                files.add(fdinfo_pb2.TTY, "tty", terminals.file_entry(open_fd, file_id, flags, _no_owner()))
            else:
                path = _checked_path(f"fd {open_fd.fd}", open_fd.link, open_fd.st)
                files.add_reg(_reg_entry(file_id, flags, open_fd.info.pos, path, open_fd.st, open_fd.info.mnt_id))
        if (open_fd.kind == "pipe" and open_fd.info.flags & os.O_ACCMODE == os.O_RDONLY
                and open_fd.st.st_ino not in files.pipes_read):
            files.pipes_read.add(open_fd.st.st_ino)
            pipe_readers[open_fd.st.st_ino] = open_fd
        if (open_fd.kind == "fifo" and open_fd.info.flags & os.O_ACCMODE != os.O_WRONLY
                and ("fifo", open_fd.st.st_ino) not in files.pipes_read):
            files.pipes_read.add(("fifo", open_fd.st.st_ino))
            fifo_readers[open_fd.st.st_ino] = open_fd
        fdinfo.append(fdinfo_pb2.fdinfo_entry(id=file_id, flags=FD_CLOEXEC if open_fd.info.flags & O_CLOEXEC else 0,
                                              type=FD_TYPES[open_fd.kind], fd=open_fd.fd))
        # read again now, for every file a lock may be taken on since the first look, and every fd that had one
        if open_fd.kind in LOCKABLE or "lock" in open_fd.info.extra:
            file_locks += locks.lock_entries(pid, open_fd.fd, open_fd.link)
    pipe_data = _pipe_contents(list(pipe_readers.items()), steal_fds) if pipe_readers else []
    fifo_data = _pipe_contents(list(fifo_readers.items()), steal_fds) if fifo_readers else []
    terminals.dump(steal_fds, stat)
    return DumpedFds(fdinfo, file_locks, pipe_data, sk_queues, fifo_data)


def _pipe_contents(readers, steal_fds):
    """(pipe_data_entry, bytes) of each pipe, read from a copy of its read end without consuming them.

    A pipe of which the task holds only the write end keeps its data for its reader elsewhere.
    """
    stolen = steal_fds([open_fd.fd for _, open_fd in readers])
    try:
        return [_peek_pipe(pipe_id, fd) for (pipe_id, _), fd in zip(readers, stolen)]
    finally:
        for fd in stolen:
            os.close(fd)


def _peek_pipe(pipe_id, read_end):
    size = fcntl.fcntl(read_end, F_GETPIPE_SZ)
    copy_read, copy_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(copy_write, F_SETPIPE_SZ, size)  # room for everything the pipe can hold
        copied = libc.tee(read_end, copy_write, size, SPLICE_F_NONBLOCK)
        if copied < 0:
            err = ctypes.get_errno()
            if err != errno.EAGAIN:  # EAGAIN: the pipe is empty
                raise CriupyError(f"cannot copy the data of pipe {pipe_id}: {os.strerror(err)}")
            copied = 0
        data = b""
        while len(data) < copied:
            data += os.read(copy_read, copied - len(data))
    finally:
        os.close(copy_read)
        os.close(copy_write)
    log.debug("pipe %d holds %d bytes", pipe_id, len(data))
    return pipe_data_pb2.pipe_data_entry(pipe_id=pipe_id, bytes=len(data), size=size), data
