"""criupy.buildid: build-ids as files.img keeps them, read again when a file changes, and by the helper
process that the dump and restore commands start so that pyelftools loads beside criupy's other modules."""

import json
import os
import shutil
import subprocess
import sys

from criupy import buildid

VICTIM = os.path.join(os.path.dirname(__file__), "victims", "counter.c")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_id_kept_for_a_file_is_read_again_once_the_file_changes(tmp_path):
    builds = {}
    for build_id in ("0x11111111", "0x22222222"):
        out = tmp_path / build_id
        subprocess.run(["gcc", "-O1", "-o", str(out), VICTIM, f"-Wl,--build-id={build_id}"], check=True)
        builds[build_id] = out
    binary = tmp_path / "binary"
    shutil.copyfile(builds["0x11111111"], binary)
    first = os.stat(binary)
    assert buildid.build_id_words(binary, first) == (0x11111111,)

    shutil.copyfile(builds["0x22222222"], binary)  # same inode, same size: rebuilt in place
    os.utime(binary, ns=(first.st_atime_ns, first.st_mtime_ns + 1_000_000))
    assert buildid.build_id_words(binary, os.stat(binary)) == (0x22222222,)


def test_build_id_kept_for_a_file_is_read_again_once_rewritten_with_its_mtime_set_back(tmp_path):
    binary = tmp_path / "binary"
    for build_id in ("0x11111111", "0x22222222"):
        subprocess.run(["gcc", "-O1", "-o", str(tmp_path / build_id), VICTIM, f"-Wl,--build-id={build_id}"],
                       check=True)
    shutil.copyfile(tmp_path / "0x11111111", binary)
    first = os.stat(binary)
    assert buildid.build_id_words(binary, first) == (0x11111111,)

    shutil.copyfile(tmp_path / "0x22222222", binary)  # same inode, same size, the same mtime again
    os.utime(binary, ns=(first.st_atime_ns, first.st_mtime_ns))
    assert buildid.build_id_words(binary, os.stat(binary)) == (0x22222222,)


def _in_new_python(code):
    """Run code in a new interpreter (pyelftools not loaded, so a helper can start); its printed JSON."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _three_files(tmp_path):
    """An ELF file with a known build-id, a text file, a missing file."""
    binary = tmp_path / "binary"
    subprocess.run(["gcc", "-O1", "-o", str(binary), VICTIM, "-Wl,--build-id=0x1122334455667788"], check=True)
    text = tmp_path / "text"
    text.write_text("not ELF\n")
    return [str(binary), str(text), str(tmp_path / "missing")]


def test_the_helper_reads_build_ids_and_criupy_never_loads_pyelftools(tmp_path):
    found = _in_new_python(f"""
import json, os, sys
from criupy import buildid
buildid.start_helper()
pid = buildid._helper[0]
words = [buildid.build_id_words(path) for path in {_three_files(tmp_path)!r}]
loaded = "elftools" in sys.modules
buildid.stop_helper()
left = os.path.exists(f"/proc/{{pid}}")
buildid.start_helper()  # a second dump or restore in this program reads build-ids itself
print(json.dumps({{"words": words, "loaded": loaded, "helper_left": left, "second": buildid._helper}}))
""")
    assert found == {"words": [[0x44332211, 0x88776655], [], []], "loaded": False, "helper_left": False,
                     "second": None}


def test_a_helper_killed_midway_leaves_criupy_reading_build_ids_itself(tmp_path):
    found = _in_new_python(f"""
import json, os, signal, sys
from criupy import buildid
buildid.start_helper()
pid = buildid._helper[0]
os.kill(pid, signal.SIGKILL)
words = [buildid.build_id_words(path) for path in {_three_files(tmp_path)!r}]
print(json.dumps({{"words": words, "helper": buildid._helper, "reaped": not os.path.exists(f"/proc/{{pid}}")}}))
""")
    assert found == {"words": [[0x44332211, 0x88776655], [], []], "helper": None, "reaped": True}


def test_a_restore_stops_the_helper_only_if_it_took_a_pid_of_the_tree():
    found = _in_new_python("""
import json, os
from criupy import buildid
buildid.start_helper()
pid = buildid._helper[0]
buildid.stop_helper(if_pid_in={pid + 1, 1})
kept = buildid._helper is not None
buildid.stop_helper(if_pid_in={pid})
print(json.dumps({"kept": kept, "stopped": buildid._helper is None and not os.path.exists(f"/proc/{pid}")}))
""")
    assert found == {"kept": True, "stopped": True}


def test_dump_and_restore_read_build_ids_through_the_helper(victim, processes, tmp_path):
    """The build-ids of the mapped files reach files.img, and criupy itself never loaded pyelftools."""
    counter = processes.start([victim("counter")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    images = tmp_path / "images"
    dumped = _in_new_python(f"""
import json, sys
import criupy
criupy.dump({counter.pid}, {str(images)!r})
print(json.dumps("elftools" in sys.modules))
""")
    counter.wait()  # reaped: its PID is free again
    restored = _in_new_python(f"""
import json, sys
import criupy
pid = criupy.restore({str(images)!r}, detach=True)
print(json.dumps([pid, "elftools" in sys.modules]))
""")
    processes.track(restored[0])
    assert (dumped, restored) == (False, [counter.pid, False])
    files = subprocess.run(["crit", "show", str(images / "files.img")], capture_output=True, text=True, check=True)
    ids = [entry["reg"]["build_id"] for entry in json.loads(files.stdout)["entries"]
           if "reg" in entry and entry["reg"]["name"] == victim("counter")]
    assert ids and ids[0] == list(buildid.build_id_words(victim("counter")))
