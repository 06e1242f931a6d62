"""Steps d and e: the loadable bytes, the exports and the relocations of a linked blob."""

import zlib
from dataclasses import dataclass

from elftools.elf.constants import SH_FLAGS

from blobgen.link import dynamic_relocations
from criupy.errors import CriupyError

EXPORT_PREFIX = "__export_"


@dataclass(frozen=True)
class BlobImage:
    """Everything a blob module records."""

    name: str
    code: bytes
    bss_size: int
    exports: dict  # export name (prefix stripped) -> offset
    relocations: tuple  # ((offset, addend), ...) sorted by offset
    sections: tuple  # ((name, start, end, "code" or "data"), ...) of the stored sections, in address order

    @property
    def crc32(self):
        return zlib.crc32(self.code)


def allocated_sections(elf):
    return [s for s in elf.iter_sections() if s["sh_flags"] & SH_FLAGS.SHF_ALLOC and s["sh_size"]]


def extract_image(elf):
    """(code, bss_size) as objcopy -O binary sees it: allocated sections at their addresses,
    gaps zero-filled; NOBITS sections (bss) only counted, as the zero bytes that follow code."""
    sections = allocated_sections(elf)
    stored = [s for s in sections if s["sh_type"] != "SHT_NOBITS"]
    code_end = max((s["sh_addr"] + s["sh_size"] for s in stored), default=0)
    code = bytearray(code_end)
    for section in stored:
        start = section["sh_addr"]
        code[start : start + section["sh_size"]] = section.data()
    image_end = code_end
    for section in sections:
        if section["sh_type"] == "SHT_NOBITS":
            if section["sh_addr"] < code_end:
                raise CriupyError(f"section {section.name} (bss) is followed by data: bss must come last")
            image_end = max(image_end, section["sh_addr"] + section["sh_size"])
    return bytes(code), image_end - code_end


def collect_sections(elf):
    """Where each stored section lies in CODE, and whether it holds instructions (for --disasm)."""
    stored = [s for s in allocated_sections(elf) if s["sh_type"] != "SHT_NOBITS"]
    return tuple(
        (s.name, s["sh_addr"], s["sh_addr"] + s["sh_size"], "code" if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR else "data")
        for s in sorted(stored, key=lambda s: s["sh_addr"])
    )


def collect_exports(elf):
    """{name: offset} for every defined __export_NAME symbol."""
    symtab = elf.get_section_by_name(".symtab")
    exports = {}
    for symbol in symtab.iter_symbols() if symtab else ():
        if symbol.name.startswith(EXPORT_PREFIX) and symbol["st_shndx"] != "SHN_UNDEF":
            exports[symbol.name[len(EXPORT_PREFIX) :]] = symbol["st_value"]
    return dict(sorted(exports.items()))


def collect_relocations(elf, code_size):
    """((offset, addend), ...) of the R_X86_64_RELATIVE relocations (checked beforehand)."""
    relocations = sorted((r["r_offset"], r["r_addend"]) for r in dynamic_relocations(elf))
    for offset, _ in relocations:
        if offset + 8 > code_size:
            raise CriupyError(f"relocation at {offset:#x} is outside the stored image (in bss?)")
    return tuple(relocations)
