"""What criupy reads from ELF files with pyelftools: the GNU build-id, which names one build of a binary."""

import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

ELF_MAGIC = b"\x7fELF"


def build_id(path):
    """The build-id bytes of the ELF file at path, or None (not ELF, or no build-id note)."""
    with open(path, "rb") as f:
        if f.read(4) != ELF_MAGIC:
            return None
        try:
            for segment in ELFFile(f).iter_segments("PT_NOTE"):
                for note in segment.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return bytes.fromhex(note["n_desc"])
        except ELFError:
            return None
    return None


# (st_dev, st_ino, st_size, st_mtime_ns) -> build_id_words of that file: parsing ELF takes milliseconds, so
# the dump reads the mapped files' build-ids before it stops the process (criupy.dump.memory.check_mappings)
_words_by_file = {}


def build_id_words(path, st=None):
    """The build-id as CRIU's reg_file_entry keeps it: little-endian 32-bit words; () if none or unreadable.

    st: the file's os.stat: the result is kept for it, and a file changed since (size or mtime) is read again."""
    if st is None:
        return _read_build_id_words(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _words_by_file:
        _words_by_file[key] = _read_build_id_words(path)
    return _words_by_file[key]


def _read_build_id_words(path):
    try:
        found = build_id(path)
    except OSError:
        return ()
    if not found:
        return ()
    found = found.ljust(-(-len(found) // 4) * 4, b"\0")
    return struct.unpack(f"<{len(found) // 4}I", found)
