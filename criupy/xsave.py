"""The XSAVE area (standard format) and CRIU's user_x86_fpregs_entry, both ways: one layout for dump and restore.

Dump turns the area ptrace gives (PTRACE_GETREGSET NT_X86_XSTATE) into the entry (fpregs_entry); restore
turns the entry back into an area (xsave_image) that the restorer copies into its rt_sigframe, where
rt_sigreturn loads it with XRSTOR. The offsets of the extended components come from CPUID leaf 0xD, as
the kernel's own layout does.
"""

import ctypes
import functools
import mmap
import struct

from criupy.images.pb import core_x86_pb2

LEGACY = struct.Struct("<HHHHQQII")  # cwd swd twd fop rip rdp mxcsr mxcsr_mask, then st_space, xmm_space
ST_SPACE_OFFSET = 32
XMM_SPACE_OFFSET = 160
# ptrace puts the enabled features (XCR0) first in these software-reserved bytes; a signal frame, the
# kernel's _fpx_sw_bytes
SW_RESERVED_OFFSET = 464
LEGACY_SIZE = 512
HEADER_SIZE = 64  # xstate_bv first
XSAVE_MIN_SIZE = LEGACY_SIZE + HEADER_SIZE

# XSAVE state components criupy's images carry: (number, user_x86_xsave_entry field, element format)
COMPONENTS = (
    (2, "ymmh_space", "I"),     # AVX: upper halves of ymm0-15
    (3, "bndreg_state", "Q"),   # MPX bound registers
    (4, "bndcsr_state", "Q"),   # MPX config and status
    (5, "opmask_reg", "Q"),     # AVX-512 k0-k7
    (6, "zmm_upper", "Q"),      # AVX-512 upper halves of zmm0-15
    (7, "hi16_zmm", "Q"),       # AVX-512 zmm16-31
    (9, "pkru", "I"),           # protection keys
)
XFEATURE_FP_SSE = 0b11

# cpuid(leaf, subleaf, out[4])
CPUID_ASM = ("push rbx; mov r8, rdx; mov eax, edi; mov ecx, esi; cpuid;"
             "mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret")
# CPUID_ASM as keystone assembles it (a test checks): no keystone at run time, whose start costs milliseconds
CPUID_CODE = b"SI\x89\xd0\x89\xf8\x89\xf1\x0f\xa2A\x89\x00A\x89X\x04A\x89H\x08A\x89P\x0c[\xc3"


@functools.cache
def _cpuid_function():
    """cpuid(leaf, subleaf, out[4]) as machine code in an executable page of our own."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(CPUID_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
    function._page = page  # keep the code mapped as long as the function lives
    return function


def cpuid(leaf, subleaf=0):
    out = (ctypes.c_uint32 * 4)()
    _cpuid_function()(leaf, subleaf, out)
    return tuple(out)


@functools.cache
def component(number):
    """(size, offset) of XSAVE state component number in the standard format (CPUID.(EAX=0xD,ECX=n)),
    or None if this CPU lacks it."""
    size, offset, _, _ = cpuid(0xD, number)
    return (size, offset) if size else None


def fpregs_entry(xsave):
    """user_x86_fpregs_entry from the XSAVE area ptrace gave (standard format)."""
    cwd, swd, twd, fop, rip, rdp, mxcsr, mxcsr_mask = LEGACY.unpack_from(xsave, 0)
    entry = core_x86_pb2.user_x86_fpregs_entry(
        cwd=cwd, swd=swd, twd=twd, fop=fop, rip=rip, rdp=rdp, mxcsr=mxcsr, mxcsr_mask=mxcsr_mask,
        st_space=struct.unpack_from("<32I", xsave, ST_SPACE_OFFSET),
        xmm_space=struct.unpack_from("<64I", xsave, XMM_SPACE_OFFSET))
    if len(xsave) <= LEGACY_SIZE:
        return entry  # FXSAVE only: no extended state
    (xcr0,) = struct.unpack_from("<Q", xsave, SW_RESERVED_OFFSET)
    (xstate_bv,) = struct.unpack_from("<Q", xsave, LEGACY_SIZE)
    entry.xsave.xstate_bv = xstate_bv
    for number, name, element in COMPONENTS:
        placed = component(number)
        if not xcr0 & (1 << number) or placed is None or placed[1] + placed[0] > len(xsave):
            continue
        size, offset = placed
        count = size // struct.calcsize(element)
        getattr(entry.xsave, name).extend(struct.unpack_from(f"<{count}{element}", xsave, offset))
    return entry


def xsave_image(fpregs):
    """The standard-format XSAVE area holding the state in fpregs (a user_x86_fpregs_entry)."""
    area = bytearray(XSAVE_MIN_SIZE)
    LEGACY.pack_into(area, 0, fpregs.cwd, fpregs.swd, fpregs.twd, fpregs.fop,
                     fpregs.rip, fpregs.rdp, fpregs.mxcsr, fpregs.mxcsr_mask)
    struct.pack_into("<32I", area, ST_SPACE_OFFSET, *_exactly(fpregs.st_space, 32, "st_space"))
    struct.pack_into("<64I", area, XMM_SPACE_OFFSET, *_exactly(fpregs.xmm_space, 64, "xmm_space"))
    xstate_bv = XFEATURE_FP_SSE
    if fpregs.HasField("xsave"):
        xsave = fpregs.xsave
        xstate_bv = xsave.xstate_bv
        for number, name, element in COMPONENTS:
            values = list(getattr(xsave, name))
            if not values:
                continue
            placed = component(number)
            if placed is None:
                if xstate_bv & (1 << number):
                    raise ValueError(f"the dumped FPU state uses XSAVE component {number} ({name}), "
                                     "which this CPU does not have")
                continue
            offset = placed[1]
            data = struct.pack(f"<{len(values)}{element}", *values)
            if len(area) < offset + len(data):
                area.extend(bytes(offset + len(data) - len(area)))
            area[offset:offset + len(data)] = data
    struct.pack_into("<Q", area, LEGACY_SIZE, xstate_bv)  # header: xstate_bv; xcomp_bv 0 = standard format
    return bytes(area)


def _exactly(values, count, name):
    values = list(values)
    if len(values) != count:
        raise ValueError(f"fpregs.{name} has {len(values)} words, not {count}")
    return values
