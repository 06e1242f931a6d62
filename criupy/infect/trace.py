"""The ptrace requests and wait-status decoding the injector uses, on top of python-ptrace.

Every ptrace call goes through python-ptrace's raw `ptrace(request, pid, addr, data)`; this module only
names the requests python-ptrace has no constant for and wraps the ones that pass buffers. The tracee's
memory is read and written with one pread/pwrite of /proc/PID/mem (a system call of criupy's, not one
ptrace request per word), word by word with ptrace where that fails.
"""

import contextlib
import ctypes
import os
import struct
import sys
import types

from criupy.libc import libc

# python-ptrace looks for the C library when first imported: ctypes.util.find_library imports
# subprocess, shutil and tempfile and runs ldconfig, about 10 ms of every command. The module it does
# that in, ptrace.ctypes_libc, holds only the library's file name and handle: it gets criupy's.
_ctypes_libc = types.ModuleType("ptrace.ctypes_libc")
_ctypes_libc.LIBC_FILENAME = "libc.so.6"
_ctypes_libc.libc = libc
sys.modules.setdefault("ptrace.ctypes_libc", _ctypes_libc)

from ptrace.binding.func import ptrace as raw_ptrace
from ptrace.binding.func import ptrace_getregs, ptrace_getsiginfo, ptrace_peekdata, ptrace_pokedata, ptrace_setregs
from ptrace.binding.linux_struct import iovec_struct, user_regs_struct
from ptrace.error import PtraceError

__all__ = [
    "PtraceError", "user_regs_struct", "ptrace_getregs", "ptrace_setregs", "ptrace_getsiginfo",
]

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GETEVENTMSG = 0x4201

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128

NT_X86_XSTATE = 0x202
# Large enough for every XSAVE layout the kernel offers, AMX tiles included; the kernel tells the real size.
XSTATE_BUFFER_SIZE = 64 * 1024

WALL = 0x40000000  # __WALL: wait for threads and for children of any kind
SI_KERNEL = 0x80   # si_code of the SIGTRAP an int3 raises
PROC_MEM = "/proc/{pid}/mem"


def request(req, pid, addr=0, data=0):
    return raw_ptrace(req, pid, addr, data)


def get_xstate(pid):
    """The task's XSAVE area as the kernel exports it (standard format, sw_reserved filled in)."""
    buf = ctypes.create_string_buffer(XSTATE_BUFFER_SIZE)
    iov = iovec_struct(ctypes.addressof(buf), XSTATE_BUFFER_SIZE)
    raw_ptrace(PTRACE_GETREGSET, pid, NT_X86_XSTATE, ctypes.addressof(iov))
    return buf.raw[: iov.len]


def set_xstate(pid, xstate):
    buf = ctypes.create_string_buffer(xstate, len(xstate))
    iov = iovec_struct(ctypes.addressof(buf), len(xstate))
    raw_ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE, ctypes.addressof(iov))


def get_sigmask(pid):
    mask = ctypes.c_uint64()
    raw_ptrace(PTRACE_GETSIGMASK, pid, ctypes.sizeof(mask), ctypes.addressof(mask))
    return mask.value


def set_sigmask(pid, value):
    mask = ctypes.c_uint64(value)
    raw_ptrace(PTRACE_SETSIGMASK, pid, ctypes.sizeof(mask), ctypes.addressof(mask))


def get_event_message(pid):
    message = ctypes.c_ulong()
    raw_ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(message))
    return message.value


def copy_regs(regs):
    copy = user_regs_struct()
    ctypes.memmove(ctypes.addressof(copy), ctypes.addressof(regs), ctypes.sizeof(regs))
    return copy


def _with_proc_mem(pid, flags, call):
    """call(fd) on the tracee's /proc/PID/mem opened with flags; None where opening or the call fails."""
    with contextlib.suppress(OSError):
        fd = os.open(PROC_MEM.format(pid=pid), flags | os.O_CLOEXEC)
        try:
            return call(fd)
        finally:
            os.close(fd)
    return None


def read_memory(pid, address, size):
    """size bytes of the tracee's memory at address: one read of /proc/PID/mem, or, where that does not
    give them all, a word at a time with PTRACE_PEEKDATA (whose errors are the caller's: PtraceError)."""
    data = _with_proc_mem(pid, os.O_RDONLY, lambda fd: os.pread(fd, size, address))
    return data if data is not None and len(data) == size else _peek(pid, address, size)


def write_memory(pid, address, data):
    """Write data into the tracee's memory (even read-only text: both ways write through a private copy):
    one write of /proc/PID/mem, or, where that is refused (a kernel that forbids forced writes there),
    a word at a time with PTRACE_POKEDATA."""
    if _with_proc_mem(pid, os.O_WRONLY, lambda fd: os.pwrite(fd, data, address)) != len(data):
        _poke(pid, address, data)


def _peek(pid, address, size):
    start = address & ~7
    end = (address + size + 7) & ~7
    words = b"".join(
        struct.pack("<Q", ptrace_peekdata(pid, a) & 0xFFFFFFFFFFFFFFFF) for a in range(start, end, 8)
    )
    return words[address - start : address - start + size]


def _poke(pid, address, data):
    start = address & ~7
    end = (address + len(data) + 7) & ~7
    current = bytearray(_peek(pid, start, end - start))
    current[address - start : address - start + len(data)] = data
    for offset in range(0, len(current), 8):
        (word,) = struct.unpack_from("<q", current, offset)
        ptrace_pokedata(pid, start + offset, word)


def wait_stop(pid, block=True):
    """waitpid the tracee: None if nothing happened (block=False), else the raw status."""
    flags = WALL if block else WALL | os.WNOHANG
    waited, status = os.waitpid(pid, flags)
    if waited == 0:
        return None
    return status


def event_of(status):
    return (status >> 16) & 0xFF
