"""The C library through ctypes, one handle for all of criupy: one set of prototypes for the calls that
take or return more than an int (ctypes' default would cut addresses and sizes to 32 bits), errno kept
for the messages. python-ptrace is given the same handle (criupy.infect.trace)."""

import ctypes

libc = ctypes.CDLL(None, use_errno=True)
# syscall() is variadic: callers pass each argument as a ctypes value of the kernel's width
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
libc.tee.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint)
libc.tee.restype = ctypes.c_ssize_t
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
libc.shmdt.argtypes = (ctypes.c_void_p,)
libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
MAP_FAILED = ctypes.c_void_p(-1).value
