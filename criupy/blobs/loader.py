"""Load a blob module written by criupy-blobgen (criupy/blobs/parasite.py, restorer.py).

    from criupy.blobs import parasite
    blob = Blob(parasite)
    blob.size                      # bytes to map: code + bss, page-rounded
    blob.image(base)               # the code with its relocations applied for load address base
    blob.address("name", base)     # where export NAME is once loaded at base
"""

import hashlib
import struct

from criupy.errors import CriupyError

PAGE_SIZE = 4096


def page_round(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Blob:
    def __init__(self, module):
        self.name = module.NAME
        self.code = module.CODE
        self.bss_size = module.BSS_SIZE
        self.exports = dict(module.EXPORTS)
        self.relocations = tuple(module.RELOCATIONS)
        if hashlib.sha256(self.code).hexdigest() != module.SHA256:
            raise CriupyError(f"blob {self.name}: CODE does not match its SHA256; run criupy-blobgen")

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
