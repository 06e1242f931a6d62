"""Step b: before linking, refuse symbols that some object needs and no object defines."""

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from criupy.errors import CriupyError

# Symbols ld itself provides to any link.
LINKER_DEFINED = frozenset({"_GLOBAL_OFFSET_TABLE_"})


def object_symbols(obj):
    """(defined, undefined): sets of global/weak symbol names in one object file."""
    defined, undefined = set(), set()
    with open(obj, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if not isinstance(section, SymbolTableSection):
                continue
            for symbol in section.iter_symbols():
                if not symbol.name or symbol["st_info"]["bind"] == "STB_LOCAL":
                    continue
                if symbol["st_shndx"] == "SHN_UNDEF":
                    undefined.add(symbol.name)
                else:
                    defined.add(symbol.name)
    return defined, undefined


def check_undefined_symbols(objects, display_name=lambda obj: obj.name):
    """Raise CriupyError naming every undefined symbol and the objects that need it.

    A weak undefined symbol is refused too: in a blob it could only resolve to address 0.
    """
    defined = set(LINKER_DEFINED)
    needed_by = {}
    for obj in objects:
        obj_defined, obj_undefined = object_symbols(obj)
        defined |= obj_defined
        for name in obj_undefined:
            needed_by.setdefault(name, []).append(display_name(obj))
    missing = sorted(name for name in needed_by if name not in defined)
    if missing:
        details = "; ".join(f"{name} (needed by {', '.join(needed_by[name])})" for name in missing)
        raise CriupyError(f"undefined symbols: {details}")
