"""TCP and UDP sockets (see criupy/dump/fds/inet.py), made again: socket(), the dumped options, bind() to the
dumped address, then listen() with the dumped backlog or, for a connected UDP socket, connect()."""

import socket
import struct

from criupy.dump.fds.sockets import TCP_ESTABLISHED, TCP_LISTEN
from criupy.errors import CriupyError
from criupy.restore.fds.anon import with_status_flags
from criupy.restore.fds.sockets import set_sk_opts


def _address(family, words, port):
    text = socket.inet_ntop(family, struct.pack(f"={len(words)}I", *words))
    return (text, port, 0, 0) if family == socket.AF_INET6 else (text, port)


def _shown(address):
    return f"[{address[0]}]:{address[1]}" if len(address) == 4 else f"{address[0]}:{address[1]}"


def open_socket(entry):
    if entry.family not in (socket.AF_INET, socket.AF_INET6) or entry.proto not in (socket.IPPROTO_TCP,
                                                                                    socket.IPPROTO_UDP):
        raise CriupyError(f"image files.img: socket {entry.ino} is of family {entry.family}, protocol {entry.proto}, "
                          "which criupy cannot restore")
    name = "TCP" if entry.proto == socket.IPPROTO_TCP else "UDP"
    sock = socket.socket(entry.family, entry.type | socket.SOCK_CLOEXEC, entry.proto)
    try:
        set_sk_opts(sock, entry.opts)
        if entry.HasField("v6only"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(entry.v6only))
        if entry.HasField("tcp_opts"):
            for field, option in (("nodelay", socket.TCP_NODELAY), ("cork", socket.TCP_CORK),
                                  ("keepcnt", socket.TCP_KEEPCNT), ("keepidle", socket.TCP_KEEPIDLE),
                                  ("keepintvl", socket.TCP_KEEPINTVL)):
                if entry.tcp_opts.HasField(field):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(getattr(entry.tcp_opts, field)))
        local = _address(entry.family, entry.src_addr, entry.src_port)
        if entry.src_port:  # else never bound (a TCP socket not used yet)
            try:
                sock.bind(local)
            except OSError as e:
                raise CriupyError(f"cannot bind a {name} socket to {_shown(local)} again: {e.strerror}") from None
        if entry.proto == socket.IPPROTO_TCP and entry.state == TCP_LISTEN:
            sock.listen(entry.backlog)
        elif entry.proto == socket.IPPROTO_UDP and entry.state == TCP_ESTABLISHED:
            peer = _address(entry.family, entry.dst_addr, entry.dst_port)
            try:
                sock.connect(peer)
            except OSError as e:
                raise CriupyError(f"cannot connect a UDP socket to {_shown(peer)} again: {e.strerror}") from None
        return with_status_flags(sock.detach(), entry.flags)
    finally:
        sock.close()  # a no-op once detached
