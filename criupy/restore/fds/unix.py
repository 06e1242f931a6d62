"""Unix socket pairs, rebuilt by criupy: socketpair(), options, the queued messages sent again from the
peer end, then shutdown. The restorer puts each end at its fd number."""

import fcntl
import socket

from criupy.errors import CriupyError
from criupy.restore.fds.sockets import set_sk_opts

SEND_SHUTDOWN_HOW = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}  # sk_shutdown -> how
STATUS_FLAGS = 0o4000 | 0o20000  # O_NONBLOCK | O_ASYNC


def open_pair(first, second, queues, hold):
    """Both ends of a pair (unix_sk_entry each): (fd of first, fd of second), held by hold(fd).

    queues: file id -> [bytes] of the messages queued for that socket."""
    kinds = {socket.SOCK_STREAM, socket.SOCK_DGRAM}
    if first.type != second.type or first.type not in kinds:
        raise CriupyError(f"image files.img is corrupt: unix sockets {first.ino} and {second.ino} are no pair")
    ends = socket.socketpair(socket.AF_UNIX, first.type | socket.SOCK_CLOEXEC)
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
            fcntl.fcntl(fd, fcntl.F_SETFL, entry.flags & STATUS_FLAGS)
    finally:
        for sock in ends:
            sock.close()  # a no-op once detached
    return fds
