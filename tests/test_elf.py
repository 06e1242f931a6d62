"""criupy.elf: an ELF file's build-id, read with pyelftools."""

import os
import subprocess

from criupy import elf

VICTIM = os.path.join(os.path.dirname(__file__), "victims", "counter.c")


def test_a_file_cut_inside_its_build_id_note_has_no_build_id(tmp_path):
    binary = tmp_path / "binary"
    subprocess.run(["gcc", "-O1", "-o", str(binary), VICTIM, "-Wl,--build-id=0x1122334455667788"], check=True)
    assert elf.build_id(binary) == bytes.fromhex("1122334455667788")
    data = binary.read_bytes()
    note_end = data.index(bytes.fromhex("1122334455667788")) + 8
    binary.write_bytes(data[:note_end - 4])  # the note's descriptor loses its last 4 bytes
    assert elf.build_id(binary) is None
