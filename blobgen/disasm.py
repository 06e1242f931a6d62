"""`criupy-blobgen --disasm`: a capstone listing of a built blob module or PIE plugin, exports as labels.

Only the sections the module records as code are decoded as instructions; the others (.rodata,
.data, .got) are listed as bytes, so strings and tables never show up as made-up instructions.
"""

import importlib.util
from pathlib import Path

import capstone

from criupy.blobs.loader import plugin_module
from criupy.errors import CriupyError

DATA_BYTES_PER_LINE = 16


def load_module(path):
    """Import a blob module from its file (not through criupy.blobs, so any path works); a file not
    ending in .py is read as a PIE plugin."""
    path = Path(path)
    if not path.is_file():
        raise CriupyError(f"no blob module at {path}: build it with criupy-blobgen first")
    if path.suffix != ".py":
        return plugin_module(path)
    spec = importlib.util.spec_from_file_location(f"_blob_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.CODE, module.EXPORTS, module.RELOCATIONS, module.BSS_SIZE, module.SECTIONS
    except Exception as e:
        raise CriupyError(f"{path} is not a blob module (rebuild it with criupy-blobgen): {e}")
    return module


def _printable(data):
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def _code_lines(module, md, start, end, labels, relocated):
    """Instructions in [start, end); decoding restarts at each label, so every label starts one."""
    lines = []
    starts = sorted({start, *(o for o in labels if start < o < end)})
    for piece_start, piece_end in zip(starts, starts[1:] + [end]):
        for name in labels.get(piece_start, ()):
            lines.append(f"{name}:")
        for insn in md.disasm(module.CODE[piece_start:piece_end], piece_start):
            note = "    ; relocated: base + addend" if insn.address in relocated else ""
            lines.append(f"  {insn.address:6x}:  {insn.bytes.hex(' '):<30} {insn.mnemonic} {insn.op_str}{note}".rstrip())
    return lines


def _data_lines(module, start, end, labels, relocated):
    lines = []
    for offset in range(start, end, DATA_BYTES_PER_LINE):
        chunk = module.CODE[offset : min(offset + DATA_BYTES_PER_LINE, end)]
        for name in labels.get(offset, ()):
            lines.append(f"{name}:")
        notes = [f"{o:#x}" for o in range(offset, offset + len(chunk)) if o in relocated]
        note = f"    ; relocated u64 at {', '.join(notes)}" if notes else ""
        lines.append(f"  {offset:6x}:  .byte {chunk.hex(' '):<47} |{_printable(chunk)}|{note}")
    return lines


def disassemble(module):
    """The listing as text: each recorded section in address order, code decoded, data as bytes.
    Bytes capstone cannot decode inside code are shown as .byte lines."""
    labels = {}
    for name, offset in sorted(module.EXPORTS.items(), key=lambda item: item[1]):
        labels.setdefault(offset, []).append(name)
    relocated = {offset for offset, _ in module.RELOCATIONS}
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True

    lines = [
        f"; blob {module.NAME}: {len(module.CODE):#x} bytes, bss {module.BSS_SIZE:#x}, "
        f"{len(module.EXPORTS)} exports, {len(module.RELOCATIONS)} relocations"
    ]
    for name, start, end, kind in module.SECTIONS:
        lines.append(f"; section {name} {start:#x}-{end:#x} ({kind})")
        if kind == "code":
            lines += _code_lines(module, md, start, end, labels, relocated)
        else:
            lines += _data_lines(module, start, end, labels, relocated)
    return "\n".join(lines) + "\n"
