"""Build a blob: compile, check symbols, link, check the result, extract the image.

build_blob(name, src_dir) builds a blob directory (parasite/, restorer/, a test's);
build_sources(name, sources, ...) is the same pipeline for any list of sources, so that a
single extra C file (a plugin) can be built the same way.
"""

import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

from blobgen.compile import compile_sources, find_sources
from blobgen.image import BlobImage, collect_exports, collect_relocations, collect_sections, extract_image
from blobgen.link import check_relocations, check_sections, link
from blobgen.symbols import check_undefined_symbols
from criupy.errors import CriupyError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
PIE_DIR = PACKAGE_DIR / "pie"
PIE_LDS = PIE_DIR / "pie.lds"
PIE_INCLUDE = PIE_DIR / "include"
BLOB_NAMES = ("parasite", "restorer")
BLOBS_PACKAGE_DIR = REPO_ROOT / "criupy" / "blobs"

# The entry is offset 0, where pie.lds puts .head.text (ld reads a number given to -e as an address).
ENTRY = "0"


def module_path(name):
    """Where the committed module of blob NAME lives."""
    return BLOBS_PACKAGE_DIR / f"{name}.py"


def blob_dirs_with_sources():
    """The names among BLOB_NAMES whose directory has sources to build."""
    return [name for name in BLOB_NAMES if (REPO_ROOT / name).is_dir() and find_sources(REPO_ROOT / name)]


def pie_library_sources():
    return find_sources(PIE_DIR / "lib")


def build_sources(name, sources, include_dirs, prefix_maps=(), exports=collect_exports):
    """Build sources (a list of (path, object name)) plus the pie library into a BlobImage.

    exports(elf) -> {name: offset} picks the entry points (plugins have hooks, not __export_ names)."""
    sources = list(sources) + [(src, f"pie/{src.stem}.o") for src in pie_library_sources()]
    prefix_maps = [*prefix_maps, (PIE_DIR, "pie")]
    with tempfile.TemporaryDirectory(prefix=f"blobgen-{name}-") as tmp:
        build_dir = Path(tmp)
        objects = compile_sources(sources, build_dir, [PIE_INCLUDE, *include_dirs], prefix_maps)

        def display_name(obj):
            return str(obj.relative_to(build_dir))

        check_undefined_symbols(objects, display_name)
        linked = build_dir / f"{name}.elf"
        link(objects, PIE_LDS, ENTRY, linked)
        with open(linked, "rb") as f:
            elf = ELFFile(f)
            # Relocations first: their kind (IRELATIVE, GLOB_DAT, TPOFF64) names the construct
            # at fault better than the linker sections (.plt, .got) that come with it.
            check_relocations(elf)
            check_sections(elf, PIE_LDS, objects, display_name)
            code, bss_size = extract_image(elf)
            return BlobImage(
                name=name,
                code=code,
                bss_size=bss_size,
                exports=exports(elf),
                relocations=collect_relocations(elf, len(code)),
                sections=collect_sections(elf),
            )


def build_blob(name, src_dir):
    """Build every *.c and *.S directly in src_dir, with src_dir on the include path."""
    src_dir = Path(src_dir).resolve()
    sources = find_sources(src_dir)
    if not sources:
        raise CriupyError(f"{src_dir.name}/ has no .c or .S sources to build")
    return build_sources(
        name,
        [(src, f"{src.stem}.o") for src in sources],
        include_dirs=[src_dir],
        prefix_maps=[(src_dir, name)],
    )
