"""What every kind of socket shares in a restore: its options (sk_opts_entry, see criupy/dump/fds/sockets.py)."""

import socket

from criupy.dump.fds.sockets import TIMEVAL

SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
# sk_opts_entry's flags that are set only when true (their default is false)
FLAGS = {"reuseaddr": socket.SO_REUSEADDR, "so_reuseport": socket.SO_REUSEPORT, "so_keepalive": socket.SO_KEEPALIVE,
         "so_broadcast": socket.SO_BROADCAST, "so_passcred": socket.SO_PASSCRED}


def _set_buffer(sock, force, plain, size):
    """The kernel doubles what is asked for: ask for half. FORCE passes net.core.*mem_max (root only)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size // 2)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size // 2)


def set_sk_opts(sock, opts):
    """Give sock (a socket object) the dumped options: before it is bound, for SO_REUSEADDR and the like."""
    _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, opts.so_sndbuf)
    _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, opts.so_rcvbuf)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL.pack(opts.so_snd_tmo_sec, opts.so_snd_tmo_usec))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL.pack(opts.so_rcv_tmo_sec, opts.so_rcv_tmo_usec))
    for field, option in FLAGS.items():
        if getattr(opts, field):
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
    if opts.HasField("so_rcvlowat"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, opts.so_rcvlowat)
    if opts.so_priority:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, opts.so_priority)
    if opts.so_bound_dev:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, opts.so_bound_dev.encode())
