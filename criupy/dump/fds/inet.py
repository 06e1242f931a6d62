"""TCP and UDP sockets, IPv4 and IPv6, that carry no connection: a TCP socket listening or not yet used, a UDP
socket bound or connected (CRIU's sk-inet.c, without its TCP repair of connections).

sock_diag tells each socket's state, addresses and, for a listening socket, its backlog and the connections
waiting to be accepted; the options come from criupy's copy of the socket. A TCP connection, a listening
socket with connections not accepted yet (they would be lost) and other protocols stop the dump, naming
the fd. Datagrams waiting in a UDP socket are not kept (UDP may lose them anyway): the log says how many.
"""

import ctypes
import logging
import os
import socket
import struct

from criupy.dump.fds.sockets import TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, borrowed, sk_opts, sock_diag
from criupy.errors import CriupyError
from criupy.images.pb import sk_inet_pb2, tcp_stream_pb2
from criupy.libc import libc

log = logging.getLogger("criupy.dump")

SYS_pidfd_getfd = 438
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")  # family, protocol, ext, states; the socket id left empty
INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
PROTOCOLS = {socket.IPPROTO_TCP: ("TCP", socket.SOCK_STREAM), socket.IPPROTO_UDP: ("UDP", socket.SOCK_DGRAM)}
ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}


class InetSocket:
    """One TCP or UDP socket as sock_diag reports it (from_diag), or one never bound, which it does not list."""

    def __init__(self, ino, family, protocol, state, src=b"", src_port=0, dst=b"", dst_port=0, rqueue=0, wqueue=0):
        self.ino, self.family, self.protocol, self.state = ino, family, protocol, state
        size = ADDRESS_SIZE[family]
        self.src, self.src_port = src[:size].ljust(size, b"\0"), src_port
        self.dst, self.dst_port = dst[:size].ljust(size, b"\0"), dst_port
        self.rqueue = rqueue  # bytes waiting to be read; a listening socket's connections not accepted yet
        self.wqueue = wqueue  # a listening socket's backlog

    @classmethod
    def from_diag(cls, body, protocol):
        family, state, _, _, sport, dport, src, dst, _, _, _, rqueue, wqueue, _, ino = INET_DIAG_MSG.unpack_from(body)
        return cls(ino, family, protocol, state, src, int.from_bytes(sport, "big"), dst, int.from_bytes(dport, "big"),
                   rqueue, wqueue)

    def address(self, raw, port):
        text = socket.inet_ntop(self.family, raw)
        return f"[{text}]:{port}" if self.family == socket.AF_INET6 else f"{text}:{port}"


def inet_sockets():
    """Every TCP and UDP socket of criupy's network namespace: {inode: InetSocket}."""
    found = {}
    for family in ADDRESS_SIZE:
        for protocol in PROTOCOLS:
            request = INET_DIAG_REQ_V2.pack(family, protocol, 0, 0xFFFFFFFF)
            for body in sock_diag(request, "TCP and UDP sockets"):
                sock = InetSocket.from_diag(body, protocol)
                found[sock.ino] = sock
    return found


def unbound_socket(pid, fd, ino):
    """The InetSocket of a TCP or UDP socket never bound, found through a copy of the task's fd (pidfd_getfd);
    raises naming any other kind of socket."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        raise CriupyError(f"PID {pid}: cannot look at its fd {fd} (pidfd_open): {e.strerror}") from None
    try:
        copy = libc.syscall(ctypes.c_long(SYS_pidfd_getfd), ctypes.c_long(pidfd), ctypes.c_long(fd), ctypes.c_long(0))
    finally:
        os.close(pidfd)
    if copy < 0:
        raise CriupyError(f"fd {fd} of PID {pid} is a socket criupy cannot look at (pidfd_getfd): "
                          f"{os.strerror(ctypes.get_errno())}")
    with socket.socket(fileno=copy) as sock:  # its family, type and protocol, asked of the kernel
        family, protocol = sock.family, sock.proto
    if family not in ADDRESS_SIZE or protocol not in PROTOCOLS:
        name = family.name if isinstance(family, socket.AddressFamily) else f"family {family}"
        raise CriupyError(f"fd {fd} is a socket of {name}, protocol {protocol}: not supported yet")
    return InetSocket(ino, family, protocol, TCP_CLOSE)


def check(fd, sock):
    """Raise naming fd unless criupy dumps sock."""
    name, _ = PROTOCOLS[sock.protocol]
    local = sock.address(sock.src, sock.src_port)
    if sock.protocol == socket.IPPROTO_TCP:
        if sock.state == TCP_LISTEN and sock.rqueue:
            raise CriupyError(f"fd {fd} is a TCP socket listening on {local} with {sock.rqueue} connections not "
                              "accepted yet: not supported yet")
        if sock.state not in (TCP_LISTEN, TCP_CLOSE):
            raise CriupyError(f"fd {fd} is a TCP connection from {local} to {sock.address(sock.dst, sock.dst_port)}: "
                              "not supported yet")
    elif sock.state not in (TCP_ESTABLISHED, TCP_CLOSE):  # UDP: connected or not
        raise CriupyError(f"fd {fd} is a {name} socket on {local} in state {sock.state}: not supported yet")


def socket_entry(fd, file_id, file_flags, sock, stolen_fd, fown):
    """The inet_sk_entry of sock (InetSocket, checked again: it ran until the stop), its options read through
    stolen_fd (criupy's copy)."""
    check(fd, sock)
    name, sock_type = PROTOCOLS[sock.protocol]
    if sock.protocol == socket.IPPROTO_UDP and sock.rqueue:
        log.warning("fd %d: the %d bytes of datagrams waiting in UDP socket %s are not dumped", fd, sock.rqueue,
                    sock.address(sock.src, sock.src_port))
    with borrowed(stolen_fd, sock.family, sock_type, sock.protocol) as copy:
        entry = sk_inet_pb2.inet_sk_entry(
            id=file_id, ino=sock.ino, family=sock.family, type=sock_type, proto=sock.protocol, state=sock.state,
            src_port=sock.src_port, dst_port=sock.dst_port, flags=file_flags,
            backlog=sock.wqueue if sock.state == TCP_LISTEN else 0,  # a listening socket's: its backlog
            src_addr=_words(sock.src), dst_addr=_words(sock.dst), fown=fown, opts=sk_opts(copy))
        if sock.family == socket.AF_INET6:
            entry.v6only = bool(copy.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        if sock.protocol == socket.IPPROTO_TCP:
            entry.tcp_opts.CopyFrom(tcp_stream_pb2.tcp_opts_entry(
                nodelay=bool(copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
                cork=bool(copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)),
                keepcnt=copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                keepidle=copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                keepintvl=copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)))
    log.debug("fd %d: %s socket on %s, state %d", fd, name, sock.address(sock.src, sock.src_port), sock.state)
    return entry


def _words(address):
    """An address's bytes as CRIU keeps them: native-endian 32-bit words."""
    return list(struct.unpack(f"={len(address) // 4}I", address))
