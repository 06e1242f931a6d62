"""criupy.elf: build-ids as files.img keeps them."""

import os
import shutil
import subprocess

from criupy import elf

VICTIM = os.path.join(os.path.dirname(__file__), "victims", "counter.c")


def test_build_id_kept_for_a_file_is_read_again_once_the_file_changes(tmp_path):
    builds = {}
    for build_id in ("0x11111111", "0x22222222"):
        out = tmp_path / build_id
        subprocess.run(["gcc", "-O1", "-o", str(out), VICTIM, f"-Wl,--build-id={build_id}"], check=True)
        builds[build_id] = out
    binary = tmp_path / "binary"
    shutil.copyfile(builds["0x11111111"], binary)
    first = os.stat(binary)
    assert elf.build_id_words(binary, first) == (0x11111111,)

    shutil.copyfile(builds["0x22222222"], binary)  # same inode, same size: rebuilt in place
    os.utime(binary, ns=(first.st_atime_ns, first.st_mtime_ns + 1_000_000))
    assert elf.build_id_words(binary, os.stat(binary)) == (0x22222222,)


def test_build_id_kept_for_a_file_is_read_again_once_rewritten_with_its_mtime_set_back(tmp_path):
    binary = tmp_path / "binary"
    for build_id in ("0x11111111", "0x22222222"):
        subprocess.run(["gcc", "-O1", "-o", str(tmp_path / build_id), VICTIM, f"-Wl,--build-id={build_id}"],
                       check=True)
    shutil.copyfile(tmp_path / "0x11111111", binary)
    first = os.stat(binary)
    assert elf.build_id_words(binary, first) == (0x11111111,)

    shutil.copyfile(tmp_path / "0x22222222", binary)  # same inode, same size, the same mtime again
    os.utime(binary, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert elf.build_id_words(binary, os.stat(binary)) == (0x22222222,)


def test_a_file_cut_inside_its_build_id_note_has_no_build_id(tmp_path):
    binary = tmp_path / "binary"
    subprocess.run(["gcc", "-O1", "-o", str(binary), VICTIM, "-Wl,--build-id=0x1122334455667788"], check=True)
    assert elf.build_id(binary) == bytes.fromhex("1122334455667788")
    data = binary.read_bytes()
    note_end = data.index(bytes.fromhex("1122334455667788")) + 8
    binary.write_bytes(data[:note_end - 4])  # the note's descriptor loses its last 4 bytes
    assert elf.build_id(binary) is None
