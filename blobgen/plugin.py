"""`criupy-blobgen --plugin FILE.c -o PLUGIN`: a PIE plugin, built by the blobs' pipeline.

A plugin is one C file that defines one or both hooks of HOOK_NAMES (prototypes and the argument in
blobgen/pie/include/pie/plugin.h) and may call only the pie library. The plugin file is JSON (see
HACKING.md, PIE plugins): data only, so `criupy restore --pie-plugin` never runs Python from it.
"""

from pathlib import Path

from blobgen.build import build_sources
from criupy.blobs.loader import HOOK_NAMES
from criupy.errors import CriupyError

HOOK_PREFIX = "criupy_hook_"


def collect_hooks(elf):
    """{hook name: offset} of the defined hook functions; a misspelt hook name is refused."""
    symtab = elf.get_section_by_name(".symtab")
    hooks, unknown = {}, []
    for symbol in symtab.iter_symbols() if symtab else ():
        if not symbol.name.startswith(HOOK_PREFIX) or symbol["st_shndx"] == "SHN_UNDEF":
            continue
        if symbol.name in HOOK_NAMES and symbol["st_info"]["type"] == "STT_FUNC":
            hooks[symbol.name] = symbol["st_value"]
        else:
            unknown.append(symbol.name)
    if unknown:
        raise CriupyError(f"unknown hook {', '.join(sorted(unknown))}: the hooks are {', '.join(HOOK_NAMES)}")
    if not hooks:
        raise CriupyError(f"no hook defined: a plugin defines {' and/or '.join(HOOK_NAMES)}")
    return dict(sorted(hooks.items()))


def build_plugin(source):
    """Build the plugin source FILE.c into a BlobImage named after the file."""
    source = Path(source).resolve()
    if not source.is_file() or source.suffix != ".c":
        raise CriupyError(f"{source} is not a C file")
    return build_sources(
        source.stem,
        [(source, f"{source.stem}.o")],
        include_dirs=[source.parent],
        prefix_maps=[(source.parent, "plugin")],
        exports=collect_hooks,
    )
