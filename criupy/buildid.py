"""Build-ids of files as CRIU's reg_file_entry keeps them, read once per file, by a helper process if one runs.

A build-id names one build of a binary; criupy.elf reads it with pyelftools, whose import takes ~25 ms here,
a sixth of the dump or restore of a small process. So those commands start a helper first (start_helper):
a fork of criupy that loads pyelftools on the other CPU while criupy loads protobuf and python-ptrace, then
reads one build-id per request, through /proc/<criupy>/fd/<fd> of the fd criupy holds open for it (two pipes:
the fd's number, the bytes back). The helper only saves time: stopped, dead or never started, criupy reads
the build-id itself."""

import os
import signal
import struct
import sys

ELF_MAGIC = b"\x7fELF"
PR_SET_PDEATHSIG = 1
PIPE_BUF = 4096  # a pipe write of up to this many bytes arrives whole

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) -> build_id_words of that file (ctime too: a file rewritten
# in place with its mtime set back has a new one): parsing ELF takes milliseconds, so
# the dump reads the mapped files' build-ids before it stops the process (criupy.dump.memory.check_mappings),
# and a restore reads each once for all the tasks of a tree that map it (criupy.restore.files)
_words_by_file = {}
_helper = None  # (the helper's PID, criupy's ends of the request and reply pipes) while it runs
_helper_started = False


def build_id_words(path, st=None):
    """The build-id as CRIU's reg_file_entry keeps it: little-endian 32-bit words; () if none or unreadable.

    st: the file's os.stat: the result is kept for it, and a file changed since (size, mtime or ctime) is read again."""
    if st is None:
        return _words(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _words_by_file:
        _words_by_file[key] = _words(path)
    return _words_by_file[key]


def _words(path):
    try:
        found = _ask_helper(path) if _helper else None
        if found is None:
            from criupy import elf  # no helper, or it could not answer

            found = elf.build_id(path) or b""
    except OSError:
        return ()
    found = found.ljust(-(-len(found) // 4) * 4, b"\0")
    return struct.unpack(f"<{len(found) // 4}I", found)


def _ask_helper(path):
    """The build-id bytes (b"" for none) the helper reads from the file at path; None if it did not answer
    (it is stopped then). Raises OSError if the file cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.pread(fd, len(ELF_MAGIC), 0) != ELF_MAGIC:
            return b""  # most open files: no need to wake the helper (a dump may be in its frozen time)
        _, requests, replies = _helper
        try:
            os.write(requests, b"%d\n" % fd)  # the helper opens it as /proc/<criupy>/fd/<fd>, while it is open
            reply = os.read(replies, PIPE_BUF)  # one request at a time: one reply, written whole
        except OSError:
            reply = b""
    finally:
        os.close(fd)
    if not reply.startswith(b"!"):  # gone, or a build-id too long for one reply: criupy reads them from now on
        stop_helper()
        return None
    return reply[1:]


def start_helper():
    """Fork the helper, the first time only: it shortens a command's start-up, which a program that calls criupy
    again has behind it (it loads pyelftools here then, once). Not if pyelftools is loaded already."""
    global _helper, _helper_started
    if _helper_started or "elftools" in sys.modules:
        return
    _helper_started = True
    request_read, request_write = os.pipe2(os.O_CLOEXEC)
    reply_read, reply_write = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:  # no process to spare (RLIMIT_NPROC, say): criupy reads build-ids itself
        pid = None
    if pid == 0:
        status = 1
        try:
            os.close(request_write)
            os.close(reply_read)
            _serve(request_read, reply_write, parent)
            status = 0
        finally:
            os._exit(status)  # never criupy's cleanups, nor an exception's trace, in the helper
    os.close(request_read)
    os.close(reply_write)
    if pid is None:
        os.close(request_write)
        os.close(reply_read)
        return
    _helper = (pid, request_write, reply_read)


def stop_helper(if_pid_in=None):
    """End the helper, if it runs, and reap it. if_pid_in: only if its PID is one of these (a restore's)."""
    global _helper
    if _helper is None or if_pid_in is not None and _helper[0] not in if_pid_in:
        return
    pid, requests, replies = _helper
    _helper = None
    os.close(requests)
    os.close(replies)
    os.kill(pid, signal.SIGKILL)  # now, even in the middle of its imports or of a file
    os.waitpid(pid, 0)


def _serve(requests, replies, parent):
    from criupy.libc import libc

    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # it never outlives criupy
    if os.getppid() != parent:
        return
    from criupy import elf

    while True:
        request = os.read(requests, 64)
        if not request:
            return  # criupy closed its end
        try:
            found = elf.build_id(f"/proc/{parent}/fd/{int(request)}") or b""
        except OSError:
            found = b""
        os.write(replies, b"!" + found if len(found) < PIPE_BUF else b"too long")
