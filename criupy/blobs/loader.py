"""Load a blob module written by criupy-blobgen (criupy/blobs/parasite.py, restorer.py).

    from criupy.blobs import parasite
    blob = Blob(parasite)
    blob.size                      # bytes to map: code + bss, page-rounded
    blob.image(base)               # the code with its relocations applied for load address base
    blob.address("name", base)     # where export NAME is once loaded at base

    plugin = load_plugin(path)     # a PIE plugin file (criupy-blobgen --plugin), as a Blob
"""

import struct
import zlib
from types import SimpleNamespace

from criupy.errors import CriupyError

PAGE_SIZE = 4096
PLUGIN_FORMAT = "criupy-pie-plugin"
PLUGIN_VERSION = 2  # 2: a CRC-32 of the code, not a SHA-256 (hashlib costs milliseconds of start-up)
# The hooks a PIE plugin may define, in the order the restorer calls them (blobgen/pie/include/pie/plugin.h).
HOOK_NAMES = ("criupy_hook_post_restore_vmas", "criupy_hook_pre_sigreturn")


def page_round(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Blob:
    def __init__(self, module):
        self.name = module.NAME
        self.code = module.CODE
        self.bss_size = module.BSS_SIZE
        self.exports = dict(module.EXPORTS)
        self.relocations = tuple(module.RELOCATIONS)
        # a hand edit or a damaged install, caught before the code runs in a process
        if zlib.crc32(self.code) != module.CRC32:
            raise CriupyError(f"blob {self.name}: CODE does not match its CRC32; run criupy-blobgen")

    @property
    def size(self):
        """Bytes to map for the blob: code and bss, rounded up to whole pages."""
        return page_round(len(self.code) + self.bss_size)

    def image(self, base):
        """The bytes to copy at base (page-aligned): each relocation site holds base + addend.

        The bss that follows is not included: it must be zero, as fresh anonymous memory is.
        """
        if base % PAGE_SIZE:
            raise ValueError(f"blob {self.name}: load address {base:#x} is not page-aligned")
        image = bytearray(self.code)
        for offset, addend in self.relocations:
            struct.pack_into("<Q", image, offset, base + addend)
        return bytes(image)

    def address(self, export_name, base):
        """The address of export_name once the blob is loaded at base."""
        try:
            return base + self.exports[export_name]
        except KeyError:
            raise CriupyError(f"blob {self.name} has no export {export_name!r}; run criupy-blobgen") from None


def plugin_module(path):
    """A plugin file read into the attributes of a blob module (NAME, CODE, ..., SECTIONS)."""
    import base64  # imported here: only --pie-plugin reads a plugin file, and commands start faster without
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise CriupyError(f"cannot read PIE plugin {path}: {e.strerror}") from None
    except ValueError:
        raise CriupyError(f"{path} is not a PIE plugin (not JSON): build it with criupy-blobgen --plugin") from None
    if not isinstance(data, dict) or data.get("format") != PLUGIN_FORMAT:
        raise CriupyError(f"{path} is not a PIE plugin: build it with criupy-blobgen --plugin")
    if data.get("version") != PLUGIN_VERSION:
        raise CriupyError(f"PIE plugin {path} has version {data.get('version')}, criupy reads {PLUGIN_VERSION}: "
                          "rebuild it with this criupy-blobgen")
    try:
        hooks = {str(name): int(offset) for name, offset in data["hooks"].items()}
        module = SimpleNamespace(
            NAME=str(data["name"]),
            CODE=base64.b64decode(data["code"], validate=True),
            BSS_SIZE=int(data["bss_size"]),
            EXPORTS=hooks,
            RELOCATIONS=tuple((int(offset), int(addend)) for offset, addend in data["relocations"]),
            SECTIONS=tuple((str(n), int(start), int(end), str(kind)) for n, start, end, kind in data["sections"]),
            CRC32=int(data["crc32"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CriupyError(f"PIE plugin {path} is damaged: {type(e).__name__} {e}") from None
    unknown = sorted(set(hooks) - set(HOOK_NAMES))
    if unknown or not hooks:
        raise CriupyError(f"PIE plugin {path} is damaged: hooks {', '.join(unknown) or 'missing'}")
    for offset, _ in module.RELOCATIONS:
        if not 0 <= offset <= len(module.CODE) - 8:
            raise CriupyError(f"PIE plugin {path} is damaged: relocation at {offset:#x} outside its code")
    for name, offset in hooks.items():
        if not 0 <= offset < len(module.CODE):
            raise CriupyError(f"PIE plugin {path} is damaged: {name} at {offset:#x} outside its code")
    return module


def load_plugin(path):
    """The PIE plugin at path as a Blob whose exports are its hooks; CriupyError if it is not one."""
    return Blob(plugin_module(path))
