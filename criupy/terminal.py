"""Terminal calls that dump and restore share: settings, window size, pty ioctls, queued bytes.

Settings are read and set with TCGETS2/TCSETS2 (the kernel's struct termios2: its 19 control
characters and the real input and output speeds), so what is put back is exactly what was read.

The bytes queued in a pty (written on one end, not yet read on the other) are taken by reading them
while the slave is non-canonical with VMIN = VTIME = 0, so every queued byte is readable (a partial
line too) and a read never waits; its settings are put back after. They are put back into a pty by
writing them on the other end while the slave is raw (no output processing, no echo, no signals, no
line editing: the bytes went through all of that before they were queued), and waiting until the
reading end holds them before the slave's settings are set again. A slave in canonical mode that
held a partial line gets it back as readable at once (the kernel pushes what a terminal holds when
it turns canonical). The line discipline holds 4095 bytes for a reader; beyond that, the rest is
processed later under the restored settings.
"""

import errno
import fcntl
import os
import select
import struct
import termios
import time
from typing import NamedTuple

from criupy.errors import CriupyError

TCGETS2 = 0x802C542A
TCSETS2 = 0x402C542B
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTLCK = 0x80045439
TIOCGPKT = 0x80045438
TIOCGEXCL = 0x80045440
TIOCGPTPEER = 0x5441
NCCS = 19  # the kernel's control characters (glibc's struct termios has 32)
TERMIOS2 = struct.Struct("<4IB19B2I")
WINSIZE = struct.Struct("<4H")
INT = struct.Struct("<i")
N_TTY_READ_BUFFER = 4095  # what the line discipline holds for a reader; more waits in the driver
REFILL_SECONDS = 5


class Termios(NamedTuple):
    iflag: int
    oflag: int
    cflag: int
    lflag: int
    line: int
    cc: tuple      # NCCS control characters
    ispeed: int
    ospeed: int


def get_termios(fd):
    fields = TERMIOS2.unpack(fcntl.ioctl(fd, TCGETS2, bytes(TERMIOS2.size)))
    return Termios(*fields[:5], cc=tuple(fields[5:5 + NCCS]), ispeed=fields[-2], ospeed=fields[-1])


def set_termios(fd, t):
    fcntl.ioctl(fd, TCSETS2, TERMIOS2.pack(t.iflag, t.oflag, t.cflag, t.lflag, t.line, *t.cc, t.ispeed, t.ospeed))


def get_winsize(fd):
    """(rows, columns, xpixel, ypixel)"""
    return WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(WINSIZE.size)))


def set_winsize(fd, winsize):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, WINSIZE.pack(*winsize))


def get_int(fd, request):
    return INT.unpack(fcntl.ioctl(fd, request, bytes(INT.size)))[0]


def set_int(fd, request, value):
    fcntl.ioctl(fd, request, INT.pack(value))


def pty_index(master_fd):
    return get_int(master_fd, TIOCGPTN)


def set_pty_locked(master_fd, locked):
    set_int(master_fd, TIOCSPTLCK, int(locked))


def open_peer(master_fd, flags):
    """The slave end of a pty, opened from its master (TIOCGPTPEER: no path lookup, never another pty)."""
    return fcntl.ioctl(master_fd, TIOCGPTPEER, flags | os.O_NOCTTY | os.O_CLOEXEC)


def _queued(fd):
    return get_int(fd, termios.FIONREAD)


def _with_cc(t, **values):
    cc = list(t.cc)
    for name, value in values.items():
        cc[getattr(termios, name)] = value
    return cc


def _raw(t):
    """t with no input or output processing, no echo, signals or line editing; reads never wait."""
    return t._replace(iflag=0, oflag=0, lflag=0, cc=tuple(_with_cc(t, VMIN=0, VTIME=0)))


def _readable(fd):
    return bool(select.select([fd], [], [], 0)[0])


def take_queued(fd, slave_fd):
    """Every byte queued for reading on fd (an end of a pty whose slave is slave_fd), taken out of it.

    Settings ioctls on a master act on its slave: the master keeps the raw settings it was made with,
    so only the slave's are changed while reading, and put back after.
    """
    saved = get_termios(slave_fd)
    set_termios(slave_fd, _raw(saved))
    chunks = []
    try:
        while _readable(fd):
            try:
                chunk = os.read(fd, 65536)
            except OSError as e:
                if e.errno in (errno.EIO, errno.EAGAIN):  # EIO: the other end is closed, nothing more comes
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        set_termios(slave_fd, saved)
    return b"".join(chunks)


def put_queued(writer, reader, slave_fd, data, what):
    """Queue data for reading on reader by writing it on writer, the other end of the same pty."""
    if not data:
        return
    saved = get_termios(slave_fd)
    set_termios(slave_fd, _raw(saved))
    try:
        expected = min(_queued(reader) + len(data), N_TTY_READ_BUFFER)
        view = memoryview(data)
        while view:
            view = view[os.write(writer, view):]
        # the bytes reach the reader's line discipline from a kernel worker: wait for them there,
        # so that they are not processed again under the settings put back below
        deadline = time.monotonic() + REFILL_SECONDS
        while _queued(reader) < expected:
            if time.monotonic() > deadline:
                raise CriupyError(f"{what}: the terminal did not take back its {len(data)} queued bytes")
            time.sleep(0.001)
    finally:
        set_termios(slave_fd, saved)
