"""What every kind of socket shares: the kernel's list of them (sock_diag, NETLINK_SOCK_DIAG, as `ss` reads
it), their states, and their options (CRIU's sk_opts_entry), read through criupy's copy of the socket."""

import contextlib
import functools
import socket
import struct

from criupy.errors import CriupyError
from criupy.images.pb import sk_opts_pb2

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGHDR = struct.Struct("=IHHII")
RTATTR = struct.Struct("=HH")
TIMEVAL = struct.Struct("=qq")
# the states sock_diag reports (the kernel's TCP_* values serve unix sockets too)
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10


def sock_diag(request, what):
    """The body of each message sock_diag answers request with (a *_diag_req of every socket)."""
    header = NLMSGHDR.pack(NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.sendto(header + request, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            while len(data) >= NLMSGHDR.size:
                length, kind, _, _, _ = NLMSGHDR.unpack_from(data)
                body, data = data[NLMSGHDR.size:length], data[(length + 3) & ~3:]
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", body)[0]
                    raise CriupyError(f"cannot list {what} (sock_diag): error {error}")
                yield body


def attributes(data):
    """(kind, value) of each netlink attribute in data."""
    while len(data) >= RTATTR.size:
        length, kind = RTATTR.unpack_from(data)
        if length < RTATTR.size:
            break
        yield kind, data[RTATTR.size:length]
        data = data[(length + 3) & ~3:]


@contextlib.contextmanager
def borrowed(stolen_fd, *kind):
    """A socket object on stolen_fd (criupy's copy of a task's socket) for the block; the fd stays open,
    its owner closes it. kind: family, type, protocol, else the kernel is asked."""
    sock = socket.socket(*kind, fileno=stolen_fd)
    try:
        yield sock
    finally:
        sock.detach()


def sk_opts(sock):
    """The socket-level options of sock (a socket object on criupy's copy of the task's socket)."""
    get = functools.partial(sock.getsockopt, socket.SOL_SOCKET)
    snd_sec, snd_usec = TIMEVAL.unpack(get(socket.SO_SNDTIMEO, TIMEVAL.size))
    rcv_sec, rcv_usec = TIMEVAL.unpack(get(socket.SO_RCVTIMEO, TIMEVAL.size))
    opts = sk_opts_pb2.sk_opts_entry(
        so_sndbuf=get(socket.SO_SNDBUF), so_rcvbuf=get(socket.SO_RCVBUF),
        so_snd_tmo_sec=snd_sec, so_snd_tmo_usec=snd_usec, so_rcv_tmo_sec=rcv_sec, so_rcv_tmo_usec=rcv_usec,
        so_rcvlowat=get(socket.SO_RCVLOWAT), reuseaddr=bool(get(socket.SO_REUSEADDR)),
        so_reuseport=bool(get(socket.SO_REUSEPORT)), so_keepalive=bool(get(socket.SO_KEEPALIVE)),
        so_broadcast=bool(get(socket.SO_BROADCAST)), so_priority=get(socket.SO_PRIORITY),
        so_bound_dev=get(socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode())
    if sock.family == socket.AF_UNIX:
        opts.so_passcred = bool(get(socket.SO_PASSCRED))  # EOPNOTSUPP on other families
    return opts
