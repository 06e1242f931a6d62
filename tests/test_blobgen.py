"""criupy-blobgen: builds position-independent blobs, refuses what a blob loader cannot load,
and its --check, --disasm and --c-header options.  Test blobs live in tests/blobs/."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from criupy.blobs.loader import Blob
from criupy.errors import CriupyError

TEST_BLOBS = Path(__file__).parent / "blobs"

# Run in a child process (a wrong jump must not take pytest down): map the blob module argv[1]
# at each address of argv[3] (comma-separated), copy in its image (relocated, or the raw CODE
# when argv[2] is "raw"), make it executable, and print on one line per address the results of
# the calls argv[4:], each "export" or "export:argument".
RUN_BLOB = r"""
import ctypes, importlib.util, sys
from criupy.blobs.loader import Blob

spec = importlib.util.spec_from_file_location("blob_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
blob = Blob(module)

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000

for base in (int(a, 0) for a in sys.argv[3].split(",")):
    got = libc.mmap(base, blob.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    assert got == base, f"mmap at {base:#x} gave {got}"
    image = blob.code if sys.argv[2] == "raw" else blob.image(base)
    ctypes.memmove(base, image, len(image))
    # Writable too: the blob's data and bss share its pages.
    assert libc.mprotect(base, blob.size, PROT_READ | PROT_WRITE | PROT_EXEC) == 0
    results = []
    for call in sys.argv[4:]:
        name, _, argument = call.partition(":")
        function = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)(blob.address(name, base))
        results.append(function(int(argument or 0)))
    print(*results, flush=True)
"""

# Far apart, above 4 GiB: a pointer that was not relocated, or was cut to 32 bits, points elsewhere.
LOAD_ADDRESSES = "0x100000000,0x7e0000000000"
PIC_CALLS = ("compute:0", "compute:1", "compute:2", "calls")
# strlen("alpha")*100 + 1, strlen("bravo")*100 + 2, strlen("charlie")*100 + 3, then 3 calls.
EXPECTED = "501 502 703 3"


def blobgen(*args):
    """Run criupy-blobgen as a user does; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "blobgen.cli", *map(str, args)], capture_output=True, text=True)


def build(src, out):
    result = blobgen("--src", src, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def load_module(path):
    spec = importlib.util.spec_from_file_location(f"blob_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_blob(module_path, mode, addresses, *calls, **popen_kwargs):
    return subprocess.run(
        [sys.executable, "-c", RUN_BLOB, str(module_path), mode, addresses, *calls],
        capture_output=True,
        text=True,
        **popen_kwargs,
    )


def assert_refused(result, *words):
    """blobgen failed with one line naming each of words, and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("criupy-blobgen:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture(scope="module")
def pic_module(tmp_path_factory):
    return build(TEST_BLOBS / "pic", tmp_path_factory.mktemp("blobs") / "pic.py")


def test_blob_runs_at_two_addresses(pic_module):
    result = run_blob(pic_module, "relocated", LOAD_ADDRESSES, *PIC_CALLS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [EXPECTED, EXPECTED]


def test_blob_needs_its_relocations(pic_module):
    module = load_module(pic_module)
    # The table of string pointers is the one thing that needs fixing up at load.
    assert len(module.RELOCATIONS) == 3
    # Unrelocated, it crashes: the kernel logs "python3[PID]: segfault at 8ee ip 00000001000008b0" each run.
    result = run_blob(pic_module, "raw", LOAD_ADDRESSES, *PIC_CALLS)
    assert result.returncode != 0 or EXPECTED not in result.stdout


def test_module_records_exports_bss_and_checksum(pic_module):
    module = load_module(pic_module)
    assert module.NAME == "pic"
    assert module.EXPORTS["head"] == 0
    assert set(module.EXPORTS) == {"head", "compute", "calls"}
    assert module.BSS_SIZE >= 8  # the call counter
    blob = Blob(module)
    assert blob.size % 4096 == 0 and blob.size >= len(module.CODE) + module.BSS_SIZE
    assert blob.address("compute", 0x10000) == 0x10000 + module.EXPORTS["compute"]


def test_module_is_reproducible_and_has_no_paths(tmp_path, pic_module):
    copy = tmp_path / "elsewhere" / "pic"
    shutil.copytree(TEST_BLOBS / "pic", copy)
    again = build(copy, tmp_path / "pic.py")
    text = again.read_text()
    assert text == pic_module.read_text()
    assert text.startswith("# Generated by criupy-blobgen")
    assert str(tmp_path) not in text and str(TEST_BLOBS) not in text


def test_loader_refuses_a_module_whose_code_was_edited(pic_module):
    module = load_module(pic_module)
    module.CODE = module.CODE[:-1] + b"\x00"
    with pytest.raises(CriupyError, match="CRC32"):
        Blob(module)


def test_loader_names_a_missing_export(pic_module):
    with pytest.raises(CriupyError, match="no_such_export"):
        Blob(load_module(pic_module)).address("no_such_export", 0)


def test_undefined_symbol_is_refused(tmp_path):
    result = blobgen("--src", TEST_BLOBS / "undefined", "--out", tmp_path / "undefined.py")
    assert_refused(result, "not_defined_anywhere", "caller.o")
    assert not (tmp_path / "undefined.py").exists()


def test_section_outside_the_ld_script_is_refused(tmp_path):
    result = blobgen("--src", TEST_BLOBS / "weird_section", "--out", tmp_path / "weird.py")
    assert_refused(result, ".weird", "weird.o")


def test_relocation_other_than_relative_is_refused(tmp_path):
    result = blobgen("--src", TEST_BLOBS / "ifunc_reloc", "--out", tmp_path / "ifunc.py")
    assert_refused(result, "R_X86_64_IRELATIVE", ".got+0x")


def test_check_passes_after_a_build_and_fails_after_a_source_change(tmp_path):
    src = tmp_path / "pic"
    shutil.copytree(TEST_BLOBS / "pic", src)
    out = build(src, tmp_path / "pic.py")
    assert blobgen("--check", "--src", src, "--out", out).returncode == 0

    source = src / "pic.c"
    source.write_text(source.read_text().replace('"alpha"', '"alphabet"'))
    assert_refused(blobgen("--check", "--src", src, "--out", out), str(out), "differs")

    out.unlink()
    assert_refused(blobgen("--check", "--src", src, "--out", out), str(out), "missing")


def test_disasm_labels_every_export(pic_module):
    result = blobgen("--disasm", pic_module)
    assert result.returncode == 0, result.stderr
    labels = {line[:-1] for line in result.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")}
    assert labels == set(load_module(pic_module).EXPORTS)


def test_disasm_shows_data_as_data(pic_module):
    """Only the code section is decoded: the strings after it are listed as bytes, not as instructions."""
    module = load_module(pic_module)
    (text_end,) = [end for name, start, end, kind in module.SECTIONS if name == ".text"]
    assert [kind for name, *_, kind in module.SECTIONS if name == ".rodata"] == ["data"]
    listing = blobgen("--disasm", pic_module).stdout
    instructions = [line for line in listing.splitlines() if re.match(r"\s+[0-9a-f]+:  ", line) and ".byte" not in line]
    assert instructions and all(int(line.split(":")[0], 16) < text_end for line in instructions)
    assert "|alpha" in listing or "alpha" in "".join(re.findall(r"\|(.*)\|", listing))


def test_c_header_compiles(tmp_path):
    header = tmp_path / "pic-blob.h"
    result = blobgen("--src", TEST_BLOBS / "pic", "--out", tmp_path / "pic.py", "--c-header", header)
    assert result.returncode == 0, result.stderr
    user = tmp_path / "user.c"
    user.write_text(
        '#include "pic-blob.h"\n'
        "unsigned long entry(void) { return pic_offset____export_compute + sizeof(pic_blob) + pic_relocs[0][0]; }\n"
    )
    subprocess.run(["gcc", "-Wall", "-Werror", "-c", str(user), "-o", str(tmp_path / "user.o")], check=True)
    module = load_module(tmp_path / "pic.py")
    assert f"#define pic_offset____export_compute {module.EXPORTS['compute']:#x}" in header.read_text()


def test_pie_logger_and_string_functions(tmp_path):
    module = build(TEST_BLOBS / "pielib", tmp_path / "pielib.py")
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as pipe:
        try:
            result = run_blob(
                module, "relocated", "0x200000000", f"log_lines:{write_end}", "string_checks", pass_fds=(write_end,)
            )
        finally:
            os.close(write_end)
        log = pipe.read()  # the few lines fit in the pipe's buffer
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]  # log_lines returned, string_checks found no error
    lines = log.splitlines()
    assert lines[:4] == [
        "ints -42 42 beef z",
        "longs -1234567890123 18446744073709551615 deadbeefcafe",
        "strings pie (null) 100%",
        "pointer 0x1000",
    ]
    assert re.fullmatch(r"pid [1-9][0-9]*", lines[4]) and len(lines) == 5
    assert log.endswith("\n") and "\n\n" not in log  # a line that ends in \n gets no second one
