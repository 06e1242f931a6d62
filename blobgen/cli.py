"""The `criupy-blobgen` command.

    criupy-blobgen                 build every blob directory (parasite/, restorer/) that has sources
    criupy-blobgen NAME...         build just those blobs into criupy/blobs/NAME.py
    criupy-blobgen --check [NAME...]
                                   rebuild in a temporary directory; fail naming each module that differs
    criupy-blobgen --disasm NAME|FILE
                                   disassemble a built blob module or PIE plugin (no compiler needed)
    criupy-blobgen --plugin FILE.c -o PLUGIN
                                   build a PIE plugin for `criupy restore --pie-plugin`
    criupy-blobgen --c-header FILE also write the built blobs as a CRIU-style C header
    criupy-blobgen --src DIR --out FILE [--name NAME]
                                   the same for any directory and module file (tests use this)
"""

import argparse
import sys
from pathlib import Path

from blobgen.build import BLOB_NAMES, REPO_ROOT, blob_dirs_with_sources, build_blob, module_path
from blobgen.disasm import disassemble, load_module
from blobgen.output import render_c_header, render_module, render_plugin
from blobgen.plugin import build_plugin
from criupy.errors import CriupyError


def _parser():
    parser = argparse.ArgumentParser(
        prog="criupy-blobgen", description="Build the parasite and restorer blobs into criupy/blobs/*.py."
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"blobs to build (default: those of {', '.join(BLOB_NAMES)} with sources)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check that the committed modules match their sources")
    mode.add_argument("--disasm", metavar="NAME|FILE", help="print a disassembly of a built blob module or plugin")
    mode.add_argument("--plugin", metavar="FILE.c", help="build a PIE plugin from FILE.c (with -o PLUGIN)")
    parser.add_argument("-o", dest="plugin_out", metavar="PLUGIN", help="with --plugin: the plugin file to write")
    parser.add_argument("--c-header", metavar="FILE", help="also write the built blobs as a C header")
    parser.add_argument("--src", metavar="DIR", help="build the blob sources in DIR instead of a named blob")
    parser.add_argument("--out", metavar="FILE", help="with --src: the module file to write (or check)")
    parser.add_argument("--name", help="with --src: the blob's NAME (default: DIR's name)")
    return parser


def blobs_to_build(args, parser):
    """[(name, source dir, module path)] from the command line."""
    if args.src:
        if args.names or not args.out:
            parser.error("--src takes --out FILE and no NAME")
        src = Path(args.src)
        return [(args.name or src.resolve().name, src, Path(args.out))]
    if args.out or args.name:
        parser.error("--out and --name go with --src")
    names = args.names or blob_dirs_with_sources()
    for name in names:
        if name not in BLOB_NAMES:
            raise CriupyError(f"unknown blob {name!r}: choose from {', '.join(BLOB_NAMES)}")
    return [(name, REPO_ROOT / name, module_path(name)) for name in names]


def display_path(path):
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def build_all(targets):
    """Build each target; returns (built blobs, failure messages).  A failure does not stop the others."""
    built, failures = [], []
    for name, src, out in targets:
        try:
            built.append((build_blob(name, src), out))
        except CriupyError as e:
            failures.append(f"{name}: {e}")
    return built, failures


def write_modules(built):
    for blob, out in built:
        text = render_module(blob)
        if not (out.exists() and out.read_text() == text):
            out.write_text(text)


def check_modules(built):
    """A message for each module file that is missing or differs from what its sources build."""
    problems = []
    for blob, out in built:
        if not out.exists():
            problems.append(f"{display_path(out)} is missing: run criupy-blobgen {blob.name}")
        elif out.read_text() != render_module(blob):
            problems.append(f"{display_path(out)} differs from its sources: run criupy-blobgen {blob.name}")
    return problems


def run(args, parser):
    if args.plugin or args.plugin_out:
        if not (args.plugin and args.plugin_out) or args.names or args.src or args.out or args.c_header:
            parser.error("--plugin FILE.c takes -o PLUGIN and nothing else")
        Path(args.plugin_out).write_text(render_plugin(build_plugin(args.plugin)))
        return 0
    if args.disasm:
        if args.names or args.src or args.c_header:
            parser.error("--disasm takes one NAME or FILE and nothing else")
        path = module_path(args.disasm) if args.disasm in BLOB_NAMES else Path(args.disasm)
        sys.stdout.write(disassemble(load_module(path)))
        return 0

    built, problems = build_all(blobs_to_build(args, parser))
    if args.check:
        problems += check_modules(built)
    else:
        write_modules(built)
    if args.c_header:
        Path(args.c_header).write_text(render_c_header([blob for blob, _ in built]))
    for problem in problems:
        print(f"criupy-blobgen: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return run(args, parser)
    except CriupyError as e:
        print(f"criupy-blobgen: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("criupy-blobgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
