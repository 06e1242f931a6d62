"""Step a: compile a blob's C and assembly sources into freestanding position-independent objects."""

import subprocess
from pathlib import Path

from criupy.errors import CriupyError

# Why each flag:
#   -fpie                    code that runs at any address: locals are reached RIP-relative.
#   -fvisibility=hidden      every symbol binds inside the blob, so calls are direct (no PLT)
#                            and addresses need no GOT lookups beyond what ld relaxes away.
#   -ffreestanding -fno-builtin -nostdlib
#                            no libc: only pie/ functions exist, and gcc must not assume libc
#                            semantics for names like printf.
#   -fno-tree-loop-distribute-patterns
#                            keeps gcc from turning the loops in pie/lib/string.c (or any blob
#                            loop) into calls to memset/memcpy, which would recurse.
#   -fno-stack-protector     the canary lives in TLS (%fs:0x28); the restorer has no TLS of its
#                            own, and the parasite must not touch the victim's.  (No TLS at all:
#                            pie.lds places no .tdata/.tbss, so a __thread variable is refused.)
#   -fno-asynchronous-unwind-tables -fno-unwind-tables
#                            no .eh_frame: nothing in a blob unwinds.
#   -fno-jump-tables         switch statements compile to compares, not tables of addresses.
#   -mno-red-zone            the injector and the kernel's signal code may write just below rsp
#                            while blob code runs; do not keep live data there.
#   -fno-common              tentative definitions go to each object's .bss, not COMMON.
#   -fcf-protection=none     no endbr64 or property notes: nothing here enforces CET.
#   SSE stays enabled: gcc may use it for copies.  It needs a 16-byte aligned stack at each
#   call, which each head.S must set up.
#   No -g, and -ffile-prefix-map: no absolute path ends up in an object (__FILE__ included).
CFLAGS = (
    "-O2",
    "-std=gnu11",
    "-fpie",
    "-ffreestanding",
    "-nostdlib",
    "-fno-builtin",
    "-fno-tree-loop-distribute-patterns",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-jump-tables",
    "-fvisibility=hidden",
    "-mno-red-zone",
    "-fno-common",
    "-fcf-protection=none",
    "-Wall",
    "-Werror",
)

SOURCE_SUFFIXES = (".c", ".S")


def find_sources(directory):
    """The *.c and *.S files directly in directory, sorted so that builds are reproducible."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix in SOURCE_SUFFIXES and p.is_file())


def compile_source(source, obj, include_dirs, prefix_maps):
    """Compile one source file into obj; gcc's diagnostics go to stderr as they are."""
    command = ["gcc", *CFLAGS]
    if source.suffix == ".S":
        command.append("-D__ASSEMBLY__")
    for directory in include_dirs:
        command += ["-I", str(directory)]
    for old, new in prefix_maps:
        command.append(f"-ffile-prefix-map={old}={new}")
    command += ["-c", str(source), "-o", str(obj)]
    try:
        result = subprocess.run(command)
    except FileNotFoundError:
        raise CriupyError("gcc not found: install gcc to build blobs")
    if result.returncode != 0:
        raise CriupyError(f"gcc failed to compile {source.name} (see its messages above)")


def compile_sources(sources, build_dir, include_dirs, prefix_maps=()):
    """Compile each (source, object name) pair into build_dir; returns the object paths in order.

    prefix_maps are (directory, replacement) pairs so that paths inside the objects are relative.
    """
    names = [obj_name for _, obj_name in sources]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise CriupyError(f"two sources would build the same object: {', '.join(clashes)} (rename one)")
    objects = []
    for source, obj_name in sources:
        obj = Path(build_dir) / obj_name
        obj.parent.mkdir(parents=True, exist_ok=True)
        compile_source(Path(source), obj, include_dirs, prefix_maps)
        objects.append(obj)
    return objects
