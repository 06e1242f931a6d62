"""Step c: link the objects through pie.lds into a PIE, then check what ld made of them."""

import re
import subprocess

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_RELOC_TYPE_x64
from elftools.elf.relocation import RelocationSection

from criupy.errors import CriupyError

R_X86_64_RELATIVE = ENUM_RELOC_TYPE_x64["R_X86_64_RELATIVE"]
RELOC_TYPE_NAMES = {number: name for name, number in ENUM_RELOC_TYPE_x64.items() if name != "_default_"}

# Output sections named in an ld script: ".name [(TYPE)] :" at the start of a line.
_OUTPUT_SECTION = re.compile(r"^\s*(\.[\w.]+)\s*(\(\w+\))?\s*:", re.MULTILINE)


def link(objects, lds, entry, output):
    """ld -pie without a dynamic linker: the result needs only R_X86_64_RELATIVE fix-ups."""
    command = [
        "ld",
        "-pie",
        "--no-dynamic-linker",
        "-z", "noexecstack",
        "-z", "noseparate-code",
        "--build-id=none",
        "--no-warn-rwx-segments",  # a blob is one RWX image on purpose
        "-T", str(lds),
        "-e", entry,
        "-o", str(output),
        *map(str, objects),
    ]
    try:
        result = subprocess.run(command)
    except FileNotFoundError:
        raise CriupyError("ld not found: install binutils to build blobs")
    if result.returncode != 0:
        raise CriupyError(f"ld failed to link {output.name} (see its messages above)")


def placed_sections(lds):
    """Names of the allocated output sections the ld script places (INFO ones are not allocated)."""
    text = re.sub(r"/\*.*?\*/", "", lds.read_text(), flags=re.DOTALL)
    return {name for name, kind in _OUTPUT_SECTION.findall(text) if not kind}


def input_sections_named(objects, name, display_name):
    """The objects that have a section called name (to say where an unplaced section came from)."""
    found = []
    for obj in objects:
        with open(obj, "rb") as f:
            if ELFFile(f).get_section_by_name(name) is not None:
                found.append(display_name(obj))
    return found


def check_sections(elf, lds, objects, display_name=lambda obj: obj.name):
    """Refuse allocated sections that pie.lds did not place (ld's 'orphans')."""
    allowed = placed_sections(lds)
    unplaced = []
    for section in elf.iter_sections():
        if section["sh_flags"] & SH_FLAGS.SHF_ALLOC and section.name not in allowed:
            sources = input_sections_named(objects, section.name, display_name) or ["the linker"]
            unplaced.append(f"{section.name} (from {', '.join(sources)})")
    if unplaced:
        raise CriupyError(f"sections not placed by {lds.name}: {'; '.join(unplaced)}")


def section_at(elf, address):
    """'name+0xoff' for the allocated section holding address."""
    for section in elf.iter_sections():
        start = section["sh_addr"]
        if section["sh_flags"] & SH_FLAGS.SHF_ALLOC and start <= address < start + section["sh_size"]:
            return f"{section.name}+{address - start:#x}"
    return f"{address:#x}"


def dynamic_relocations(elf):
    """Every relocation in the linked file's relocation sections, as pyelftools entries."""
    for section in elf.iter_sections():
        if isinstance(section, RelocationSection):
            yield from section.iter_relocations()


def check_relocations(elf):
    """Refuse any dynamic relocation other than R_X86_64_RELATIVE, naming its kind and place."""
    unsupported = []
    for reloc in dynamic_relocations(elf):
        kind = reloc["r_info_type"]
        if kind != R_X86_64_RELATIVE:
            name = RELOC_TYPE_NAMES.get(kind, f"type {kind}")
            unsupported.append(f"{name} at {section_at(elf, reloc['r_offset'])}")
    if unsupported:
        raise CriupyError(
            f"unsupported relocations (a blob can only have R_X86_64_RELATIVE): {'; '.join(unsupported)}"
        )
