"""`criupy-blobgen --disasm`: a capstone listing of a built blob module, exports as labels."""

import importlib.util
from pathlib import Path

import capstone

from criupy.errors import CriupyError


def load_module(path):
    """Import a blob module from its file (not through criupy.blobs, so any path works)."""
    path = Path(path)
    if not path.is_file():
        raise CriupyError(f"no blob module at {path}: build it with criupy-blobgen first")
    spec = importlib.util.spec_from_file_location(f"_blob_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.CODE, module.EXPORTS, module.RELOCATIONS, module.BSS_SIZE
    except Exception as e:
        raise CriupyError(f"{path} is not a blob module: {e}")
    return module


def disassemble(module):
    """The listing as text.  Decoding restarts at each export, so every label starts an instruction;
    bytes capstone cannot decode (data after the code) are shown as .byte lines."""
    code = module.CODE
    labels = {}
    for name, offset in sorted(module.EXPORTS.items(), key=lambda item: item[1]):
        labels.setdefault(offset, []).append(name)
    relocated = {offset for offset, _ in module.RELOCATIONS}
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True

    lines = [
        f"; blob {module.NAME}: {len(code):#x} bytes, bss {module.BSS_SIZE:#x}, "
        f"{len(module.EXPORTS)} exports, {len(module.RELOCATIONS)} relocations"
    ]
    starts = sorted({0, *(o for o in labels if o < len(code))})
    for start, end in zip(starts, starts[1:] + [len(code)]):
        for name in labels.get(start, ()):
            lines.append(f"{name}:")
        for insn in md.disasm(code[start:end], start):
            note = "    ; relocated: base + addend" if insn.address in relocated else ""
            lines.append(f"  {insn.address:6x}:  {insn.bytes.hex(' '):<30} {insn.mnemonic} {insn.op_str}{note}".rstrip())
    return "\n".join(lines) + "\n"
