"""What criupy reads from ELF files with pyelftools: the GNU build-id, which names one build of a binary.

Loading pyelftools costs a small command ~25 ms: criupy.buildid reads build-ids through this module in a
helper process while criupy loads the rest."""

import functools
import os
from types import SimpleNamespace

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.elf.notes import iter_notes
from elftools.elf.structs import ELFStructs

from criupy.buildid import ELF_MAGIC

PN_XNUM = 0xFFFF  # e_phnum saying the real count is in section 0's sh_info


def build_id(path):
    """The build-id bytes of the ELF file at path, or None (not ELF, or no build-id note).

    Reads only the header, the program headers and the PT_NOTE segments, with pyelftools' structs and
    note parser: its ELFFile would import its DWARF support (tens of ms at start-up) and parse the whole
    dynamic table of every file."""
    with open(path, "rb") as f:
        ident = f.read(6)
        if ident[:4] != ELF_MAGIC:
            return None
        if len(ident) < 6 or ident[4] not in (1, 2) or ident[5] not in (1, 2):  # EI_CLASS 32/64, EI_DATA LE/BE
            return None
        size = os.fstat(f.fileno()).st_size
        try:
            little_endian, elfclass = ident[5] == 1, 32 * ident[4]
            header = struct_parse(_structs(little_endian, elfclass).Elf_Ehdr, f, stream_pos=0)
            structs = _structs(little_endian, elfclass, (header.e_type, header.e_machine, header.e_ident.EI_OSABI))
            count = header.e_phnum
            if count == PN_XNUM:
                count = struct_parse(structs.Elf_Shdr, f, stream_pos=header.e_shoff).sh_info
            elf = SimpleNamespace(structs=structs, stream=f, elfclass=structs.elfclass)  # what iter_notes reads
            for n in range(count):
                segment = struct_parse(structs.Elf_Phdr, f, stream_pos=header.e_phoff + n * header.e_phentsize)
                if segment.p_type != "PT_NOTE":
                    continue
                if segment.p_offset + segment.p_filesz > size:
                    return None  # a truncated file: its notes would be cut
                for note in iter_notes(elf, segment.p_offset, segment.p_filesz):
                    if note.n_type == "NT_GNU_BUILD_ID":
                        return bytes.fromhex(note.n_desc)
        except ELFError:
            return None
    return None


@functools.cache
def _structs(little_endian, elfclass, kind=None):
    """pyelftools' ELFStructs for files of one kind (e_type, e_machine, EI_OSABI), or the header's alone:
    made once, as building them costs more than reading a build-id."""
    structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
    structs.create_basic_structs()
    if kind:
        structs.create_advanced_structs(*kind)
    return structs

