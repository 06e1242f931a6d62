"""The `criupy-blobgen` command.

    criupy-blobgen                 build every blob directory (parasite/, restorer/) that has sources
    criupy-blobgen NAME...         build just those blobs into criupy/blobs/NAME.py
    criupy-blobgen --src DIR --out FILE [--name NAME]
                                   build any directory into any module file (tests use this)
"""

import argparse
import sys
from pathlib import Path

from blobgen.build import BLOB_NAMES, REPO_ROOT, blob_dirs_with_sources, build_blob, module_path
from blobgen.output import render_module
from criupy.errors import CriupyError


def write_if_changed(path, text):
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return
    path.write_text(text)


def _parser():
    parser = argparse.ArgumentParser(
        prog="criupy-blobgen", description="Build the parasite and restorer blobs into criupy/blobs/*.py."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"blobs to build (default: those of {', '.join(BLOB_NAMES)} with sources)")
    parser.add_argument("--src", metavar="DIR", help="build the blob sources in DIR instead of a named blob")
    parser.add_argument("--out", metavar="FILE", help="with --src: the module file to write")
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


def run(args, parser):
    """Build each blob; a blob that fails is reported and the others are still built."""
    failed = 0
    for name, src, out in blobs_to_build(args, parser):
        try:
            blob = build_blob(name, src)
        except CriupyError as e:
            print(f"criupy-blobgen: {name}: {e}", file=sys.stderr)
            failed += 1
            continue
        write_if_changed(out, render_module(blob))
    return 1 if failed else 0


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
