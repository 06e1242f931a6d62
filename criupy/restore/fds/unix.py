"""Unix sockets, rebuilt by criupy. A pair: socketpair(), options, the queued messages sent again from the
peer end, then shutdown. A socket with no peer: socket(), options, bind() to its name, listen(). The
restorer puts each at its fd number."""

import os
import socket
import stat

from criupy.dump.fds.sockets import TCP_LISTEN
from criupy.dump.fds.unix import shown_name
from criupy.errors import CriupyError
from criupy.restore.fds.anon import with_status_flags
from criupy.restore.fds.sockets import set_sk_opts

SEND_SHUTDOWN_HOW = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}  # sk_shutdown -> how


def open_pair(first, second, queues, hold, listener=None):
    """Both ends of a pair (unix_sk_entry each): (fd of first, fd of second), held by hold(fd).

    queues: file id -> [bytes] of the messages queued for that socket. listener: the fd of the listening
    socket that accepted the named end of the pair: the pair is connected through it again, so that each
    end has the names it had; else a socketpair."""
    kinds = {socket.SOCK_STREAM, socket.SOCK_DGRAM}
    if first.type != second.type or first.type not in kinds:
        raise CriupyError(f"image files.img is corrupt: unix sockets {first.ino} and {second.ino} are no pair")
    if listener is None:
        ends = socket.socketpair(socket.AF_UNIX, first.type | socket.SOCK_CLOEXEC)
    else:
        ends = _connected_through(listener, first, second)
    fds = []
    try:
        for sock, entry in zip(ends, (first, second)):
            set_sk_opts(sock, entry.opts)
        for receiver, sender, entry in ((ends[0], ends[1], first), (ends[1], ends[0], second)):
            sender.setblocking(False)
            for message in queues.get(entry.id, []):
                try:
                    sent = sender.send(message)
                except BlockingIOError:
                    sent = 0
                if sent != len(message):
                    raise CriupyError(f"unix socket {entry.ino}: its queued messages no longer fit in it")
        for sock, entry in zip(ends, (first, second)):
            if entry.HasField("shutdown") and entry.shutdown:
                sock.shutdown(SEND_SHUTDOWN_HOW[entry.shutdown])
        for sock, entry in zip(ends, (first, second)):
            fd = sock.detach()
            fds.append(hold(fd))
            with_status_flags(fd, entry.flags)
    finally:
        for sock in ends:
            sock.close()  # a no-op once detached
    return fds


def _connected_through(listener, first, second):
    """(first's socket, second's socket): a client connected to the listener, and the connection it accepts."""
    named = first if first.name else second
    client = socket.socket(socket.AF_UNIX, first.type | socket.SOCK_CLOEXEC)
    try:
        client.connect(named.name)
        with socket.socket(fileno=os.dup(listener)) as accepting:  # a copy: the listener's fd stays held
            accepted, _ = accepting.accept()  # there at once: a unix connect() queues it before it returns
    except BaseException:
        client.close()
        raise
    return (accepted, client) if named is first else (client, accepted)


def open_unpaired(entry):
    """A unix socket with no peer (unix_sk_entry): bound again to its name and listening if it listened.

    A path's file, left by the dumped socket, is removed first, but only if it is a socket nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, entry.type | socket.SOCK_CLOEXEC)
    try:
        set_sk_opts(sock, entry.opts)
        if entry.name:
            is_path = entry.name[:1] != b"\0"
            if is_path:
                _remove_stale(entry.name, entry.type)
            try:
                sock.bind(entry.name)
            except OSError as e:
                raise CriupyError(f"cannot bind a unix socket to {shown_name(entry.name)} again: "
                                  f"{e.strerror}") from None
            if is_path and entry.HasField("file_perms"):
                os.chown(entry.name, entry.file_perms.uid, entry.file_perms.gid)
                os.chmod(entry.name, stat.S_IMODE(entry.file_perms.mode))
        if entry.state == TCP_LISTEN:
            sock.listen(entry.backlog)
        return with_status_flags(sock.detach(), entry.flags)
    finally:
        sock.close()  # a no-op once detached


def _remove_stale(path, sock_type):
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise CriupyError(f"{shown_name(path)}, where a unix socket was bound, is now another kind of file")
    with socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody is bound there: the dumped socket's own file
            return
        except OSError as e:
            raise CriupyError(f"cannot tell whether unix socket {shown_name(path)} is in use: {e.strerror}") from None
    raise CriupyError(f"unix socket {shown_name(path)} is in use by another process")
