"""Hooks inside the target: a function of a library it has mapped, called in it (--call-hook LIB:SYMBOL).

find_function() reads where LIB is mapped (/proc/PID/maps) and SYMBOL's value in its dynamic or static
symbol table (pyelftools), and checks with capstone that the bytes at that place in the file decode as an
instruction: all from outside, before the target is touched, so a missing library or symbol changes
nothing. call() then runs the function as `int SYMBOL(void)` in a stopped, traced task:

- on the thread's own stack, below the x86-64 red zone, 16-byte aligned at the call as the ABI wants;
- returning to RETURN_ADDRESS, page 0, which is never mapped (vm.mmap_min_addr): the return is a fault
  at exactly that address with the stack pointer just above our return slot, which criupy catches as a
  tracer and never delivers. No code of the target is written, so nothing but the stack changes.

The caller saves the registers, the FPU state and the signal mask before and puts them back after (the
function may clobber any of them), and blocks signals for the call.
"""

import os
import signal
import struct
import time
from typing import NamedTuple

from criupy import proc
from criupy.errors import CriupyError
from criupy.infect import trace

RED_ZONE = 128
RETURN_ADDRESS = 0x10  # in page 0: fetching it faults, so the function's `ret` hands the task back to us
TIMEOUT = 30.0  # seconds a hook may run before criupy gives up on it
POLL_INTERVAL = 0.002
EFLAGS_TF = 0x100
EFLAGS_DF = 0x400
FAULT_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)


class TargetFunction(NamedTuple):
    spec: str        # LIB:SYMBOL as the user gave it
    path: str        # the mapped file that matched LIB
    symbol: str
    address: int     # where the function is in the target
    first_instruction: str


class HookFailed(CriupyError):
    """The hook crashed, or did not return in time (stopped is False then: it still runs)."""

    def __init__(self, message, stopped):
        super().__init__(message)
        self.stopped = stopped


def parse_spec(spec):
    library, _, symbol = spec.rpartition(":")
    if not library or not symbol:
        raise CriupyError(f"--call-hook {spec!r}: expected LIB:SYMBOL (a library file name or path, a function)")
    return library, symbol


def _mapped_path(path):
    return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path


def _library_mappings(pid, library, spec):
    """The mappings of the one file that LIB names (its path, or its base name)."""
    by_path = {}
    for m in proc.maps(pid):
        if m.path.startswith("/"):
            by_path.setdefault(m.path, []).append(m)
    matches = [p for p in by_path if _mapped_path(p) == library or os.path.basename(_mapped_path(p)) == library]
    if not matches:
        raise CriupyError(f"--call-hook {spec}: PID {pid} has no library {library} mapped")
    if len(matches) > 1:
        raise CriupyError(f"--call-hook {spec}: {library} names several files mapped in PID {pid}: "
                          f"{', '.join(matches)} (give the path)")
    return matches[0], by_path[matches[0]]


def _symbol(elf, name):
    """The defined function symbol name, from .dynsym first, then .symtab; None if neither has it."""
    from elftools.elf.sections import SymbolTableSection  # imported here: see find_function

    for table in (elf.get_section_by_name(".dynsym"), elf.get_section_by_name(".symtab")):
        if not isinstance(table, SymbolTableSection):
            continue
        for symbol in table.get_symbol_by_name(name) or ():
            if symbol["st_shndx"] != "SHN_UNDEF" and symbol["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC"):
                return symbol
    return None


def _segment_of(elf, vaddr):
    for segment in elf.iter_segments(type="PT_LOAD"):
        if segment["p_vaddr"] <= vaddr < segment["p_vaddr"] + segment["p_filesz"]:
            return segment
    return None


def find_function(pid, spec):
    """Where LIB:SYMBOL is in PID; CriupyError naming what is missing. Reads only /proc and the file."""
    # Imported here, not with the module: only --call-hook reads symbol tables and decodes code, and every
    # dump and restore loads this module (~100 ms of start-up otherwise).
    import capstone
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    library, name = parse_spec(spec)
    path, mappings = _library_mappings(pid, library, spec)
    first = next((m for m in mappings if m.offset == 0), None)
    if first is None:
        raise CriupyError(f"--call-hook {spec}: the start of {path} is not mapped in PID {pid}")
    try:
        # The file that is mapped, even if the path now names another one.
        f = open(f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}", "rb")
    except OSError as e:
        raise CriupyError(f"--call-hook {spec}: cannot read {path} as mapped in PID {pid}: {e.strerror}") from None
    with f:
        try:
            elf = ELFFile(f)
            symbol = _symbol(elf, name)
            if symbol is None:
                raise CriupyError(f"--call-hook {spec}: {path} has no function {name}")
            if symbol["st_info"]["type"] == "STT_GNU_IFUNC":
                raise CriupyError(f"--call-hook {spec}: {name} is an ifunc (its resolver is no hook)")
            segment = _segment_of(elf, symbol["st_value"])
            loads = list(elf.iter_segments(type="PT_LOAD"))
            if segment is None or not loads:
                raise CriupyError(f"--call-hook {spec}: {name} is not in a loaded part of {path}")
            # The file's offset 0 is mapped at first.start; the first PT_LOAD maps it at p_vaddr - p_offset.
            bias = first.start - ((loads[0]["p_vaddr"] - loads[0]["p_offset"]) & ~(os.sysconf("SC_PAGE_SIZE") - 1))
            f.seek(segment["p_offset"] + symbol["st_value"] - segment["p_vaddr"])
            code = f.read(16)
        except ELFError as e:
            raise CriupyError(f"--call-hook {spec}: {path} is not a readable ELF file: {e}") from None
    address = symbol["st_value"] + bias
    if not any(m.start <= address < m.end and "x" in m.perms for m in mappings):
        raise CriupyError(f"--call-hook {spec}: {name} at {address:#x} is not in an executable mapping of {path}")
    decoded = next(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(code, address), None)
    if decoded is None:
        raise CriupyError(f"--call-hook {spec}: the bytes at {name} ({code.hex()}) are not an instruction")
    return TargetFunction(spec, path, name, address, f"{decoded.mnemonic} {decoded.op_str}".strip())


def call(pid, saved_regs, function, held_signals, timeout=TIMEOUT):
    """Run function.address as int f(void) in traced task pid (in a ptrace stop, signals blocked).

    Returns its int result; the task is left stopped, its registers those of the return. Signals that
    stopped it on the way (a SIGSTOP...) are appended to held_signals, for the caller to send again.
    Raises HookFailed if the function crashed (task stopped) or ran past timeout (task running).
    """
    regs = trace.copy_regs(saved_regs)
    sp = ((regs.rsp - RED_ZONE) & ~0xF) - 8  # at a function's first instruction, rsp + 8 is 16-aligned
    trace.write_memory(pid, sp, struct.pack("<Q", RETURN_ADDRESS))
    regs.rsp = sp
    regs.rip = function.address
    regs.rax = 0  # a variadic callee reads al as its count of vector arguments
    regs.orig_rax = 0xFFFFFFFFFFFFFFFF  # no system call restart on the way
    regs.eflags &= ~(EFLAGS_TF | EFLAGS_DF)
    trace.ptrace_setregs(pid, regs)
    trace.request(trace.PTRACE_CONT, pid, 0, 0)
    deadline = time.monotonic() + timeout
    while True:
        status = trace.wait_stop(pid, block=False)
        if status is None:
            if time.monotonic() > deadline:
                raise HookFailed(f"hook {function.spec} did not return within {timeout:g} s in PID {pid}",
                                 stopped=False)
            time.sleep(POLL_INTERVAL)
            continue
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            raise HookFailed(f"PID {pid} ended while hook {function.spec} ran", stopped=True)
        sig = os.WSTOPSIG(status)
        if trace.event_of(status) != trace.PTRACE_EVENT_STOP:
            if sig in FAULT_SIGNALS:
                now = trace.ptrace_getregs(pid)
                if sig == signal.SIGSEGV and now.rip == RETURN_ADDRESS and now.rsp == sp + 8:
                    return _int32(now.rax)
                raise HookFailed(f"hook {function.spec} crashed in PID {pid}: {signal.Signals(sig).name} at "
                                 f"{now.rip:#x}", stopped=True)
            held_signals.append(sig)  # unblockable (SIGSTOP) or not ours to block: given back later
        trace.request(trace.PTRACE_CONT, pid, 0, 0)


def _int32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
