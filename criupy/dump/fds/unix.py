"""Unix sockets: a unix_sk_entry per socket in files.img, the queued messages in sk-queues.img.

What the kernel knows of a unix socket (its type, state, name, peer, shutdown, queue) comes from sock_diag
(criupy/dump/fds/sockets.py), as `ss -x` reads it. criupy dumps connected sockets whose peer is open in the
same process or another of the dumped tree (a socketpair, or a connection accepted by a listener of the
tree, whose accepted end has the listener's name), and sockets with no peer: listening (no connection
waiting to be accepted), datagram sockets bound and not connected (nothing queued), sockets not used yet;
a name is a path (absolute, its file still the socket's) or abstract. Any other unix socket stops the
dump, naming the fd.

The queued messages are read from a copy of the socket (stolen by the parasite) with MSG_PEEK and
SO_PEEK_OFF, so each recvmsg returns the next message and none is taken from the queue; the socket's
own peek offset is put back afterwards. Each message is one sk_packet_entry, id_for being the
receiving socket's file id (as CRIU's sk-queue.c). Messages carrying fds (SCM_RIGHTS) are refused.
"""

import array
import logging
import os
import socket
import struct

from criupy.dump.fds.sockets import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, attributes, borrowed, sk_opts, sock_diag
from criupy.errors import CriupyError
from criupy.images.pb import sk_packet_pb2, sk_unix_pb2

log = logging.getLogger("criupy.dump")

UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN, UDIAG_SHOW_SHUTDOWN = 0x1, 0x2, 0x4, 0x10, 0x80
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 0, 1, 2, 4, 6
UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
UNIX_DIAG_MSG = struct.Struct("=BBBBIII")

SO_PEEK_OFF = 42
SCM_MAX_FD = 253
SOCKET_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}


class UnixSocket:
    """One unix socket as sock_diag reports it; name, peer and shutdown are filled in from its attributes."""

    def __init__(self, ino, type, state):
        self.ino = ino
        self.type = type
        self.state = state
        self.name = b""      # b"" when unnamed; an abstract name starts with a NUL, a path has none
        self.vfs_ino = 0     # the inode of the file a socket bound to a path made
        self.peer = 0        # inode of the peer socket, 0 if none
        self.shutdown = 0    # RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2 (sk_shutdown's values)
        self.rqueue = 0      # a listener's connections not accepted yet; else bytes waiting to be read
        self.wqueue = 0      # a listener's backlog

    @property
    def shown_name(self):
        return shown_name(self.name)


def shown_name(name):
    """A unix socket's name as ss shows it: @ for an abstract name's NUL."""
    if name[:1] == b"\0":
        return "@" + name[1:].decode(errors="replace")
    return name.decode(errors="replace")


def unix_sockets():
    """Every unix socket of criupy's network namespace: {inode: UnixSocket}."""
    show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_SHUTDOWN
    request = UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show, 0xFFFFFFFF, 0xFFFFFFFF)
    found = {}
    for body in sock_diag(request, "unix sockets"):
        _, sock_type, state, _, ino, _, _ = UNIX_DIAG_MSG.unpack_from(body)
        sock = UnixSocket(ino, sock_type, state)
        for attr, value in attributes(body[UNIX_DIAG_MSG.size:]):
            if attr == UNIX_DIAG_NAME:  # as bind() was given it: a path may end with its C string's NUL
                sock.name = bytes(value) if value[:1] == b"\0" else bytes(value).rstrip(b"\0")
            elif attr == UNIX_DIAG_PEER:
                sock.peer = struct.unpack_from("=I", value)[0]
            elif attr == UNIX_DIAG_SHUTDOWN:
                sock.shutdown = value[0]
            elif attr == UNIX_DIAG_VFS:
                sock.vfs_ino = struct.unpack_from("=I", value)[0]
            elif attr == UNIX_DIAG_RQLEN:
                sock.rqueue, sock.wqueue = struct.unpack_from("=II", value)
        found[ino] = sock
    return found


def check(fd, sock, task_sockets, sockets):
    """Raise naming fd unless sock is one end of a pair whose other end is in task_sockets (the task's,
    and those of the other processes dumped with it), or a socket with no peer: listening, bound or unused.

    sockets: every unix socket ({inode: UnixSocket}). A named end of a pair is a connection accepted by a
    listener of that name, which must be in task_sockets: restore connects through it again."""
    if sock.type not in SOCKET_TYPES:
        raise CriupyError(f"fd {fd} is a unix socket of type {sock.type} (seqpacket?): not supported yet")
    if sock.peer == 0 and sock.state in (TCP_LISTEN, TCP_CLOSE):
        _check_unpaired(fd, sock)
        return
    if sock.name and not any(other.name == sock.name and other.state == TCP_LISTEN and other.ino in task_sockets
                             for other in sockets.values()):
        raise CriupyError(f"fd {fd} is a unix socket bound to {sock.shown_name} and connected, and no dumped process "
                          "listens there: not supported yet")
    if sock.state != TCP_ESTABLISHED:
        raise CriupyError(f"fd {fd} is a unix socket that is not connected: not supported yet")
    if sock.peer == 0:
        raise CriupyError(f"fd {fd} is a unix socket whose peer is closed (or not accepted yet): not supported yet")
    if sock.peer not in task_sockets:
        raise CriupyError(f"fd {fd} is a unix socket connected to a socket outside the dumped processes: "
                          f"not supported yet")


def _check_unpaired(fd, sock):
    """A listening socket, a datagram socket bound and not connected, a socket not used yet."""
    what = f"fd {fd} is a unix socket {'listening on' if sock.state == TCP_LISTEN else 'bound to'} {sock.shown_name}"
    if sock.state == TCP_LISTEN and sock.rqueue:
        raise CriupyError(f"{what} with {sock.rqueue} connections not accepted yet: not supported yet")
    if sock.state != TCP_LISTEN and sock.rqueue:
        raise CriupyError(f"{what} with {sock.rqueue} bytes of datagrams waiting in it: not supported yet")
    if sock.name and sock.name[:1] != b"\0":
        path = sock.shown_name
        if not path.startswith("/"):
            raise CriupyError(f"{what}, a path relative to its directory then: not supported yet")
        try:
            found = os.stat(path).st_ino
        except OSError:
            found = None
        if found != sock.vfs_ino:
            raise CriupyError(f"{what}, whose file was removed or replaced since: not supported yet")


def socket_entry(file_id, file_flags, sock, stolen_fd, fown):
    """The unix_sk_entry of sock (UnixSocket), its options read through stolen_fd (criupy's copy)."""
    with borrowed(stolen_fd) as copy:
        opts = sk_opts(copy)
    entry = sk_unix_pb2.unix_sk_entry(
        id=file_id, ino=sock.ino, type=sock.type, state=sock.state, flags=file_flags, uflags=0,
        backlog=sock.wqueue if sock.state == TCP_LISTEN else 0, peer=sock.peer, fown=fown, opts=opts,
        name=sock.name, shutdown=sock.shutdown)
    if sock.name and sock.name[:1] != b"\0":  # its file's mode and owner, which bind() makes anew
        st = os.stat(sock.shown_name)
        entry.file_perms.CopyFrom(sk_unix_pb2.file_perms_entry(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid))
    return entry


def queued_messages(fd, file_id, stolen_fd):
    """[(sk_packet_entry, bytes)] of what waits in the socket's receive queue, in order, left in place."""
    with borrowed(stolen_fd) as copy:
        return _peek_all(fd, file_id, copy)


def _peek_all(fd, file_id, sock):
    original_offset = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    size = max(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
               sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    messages = []
    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)  # each peek now starts where the last one ended
    try:
        while True:
            try:
                data, ancillary, flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(SCM_MAX_FD * 4),
                                                         socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for passed in array.array("i", payload[: len(payload) - len(payload) % 4]):
                        socket.close(passed)
                    raise CriupyError(f"fd {fd} is a unix socket with file descriptors queued in it: "
                                      "not supported yet")
            if flags & socket.MSG_TRUNC:
                raise CriupyError(f"fd {fd}: a message queued on the unix socket is larger than its buffers")
            if not data:
                break  # end of stream (the peer shut down writing); an empty datagram is dropped, as by CRIU
            messages.append((sk_packet_pb2.sk_packet_entry(id_for=file_id, length=len(data)), data))
    finally:
        sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, original_offset)
    log.debug("fd %d: %d messages, %d bytes queued", fd, len(messages), sum(len(d) for _, d in messages))
    return messages
