"""PIE plugins in the restorer (criupy-blobgen --plugin, criupy restore --pie-plugin) and hooks called
inside the target (criupy dump/restore --call-hook)."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from criupy import proc
from criupy.blobs.loader import load_plugin
from criupy.dump import dump
from criupy.errors import CriupyError
from criupy.images import ImagesDir
from criupy.restore import restore

PLUGINS = Path(__file__).parent / "plugins"


def run(*argv):
    """A criupy or criupy-blobgen command run as a user does (text output)."""
    return subprocess.run([sys.executable, "-m", *map(str, argv)], capture_output=True, text=True)


def one_error_line(result, program="criupy"):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def tree_bytes(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """plugin(name) -> tests/plugins/NAME.c built with criupy-blobgen --plugin."""
    out_dir = tmp_path_factory.mktemp("plugins")

    def build(name):
        out = out_dir / f"{name}.plugin"
        if not out.exists():
            result = run("blobgen.cli", "--plugin", PLUGINS / f"{name}.c", "-o", out)
            assert result.returncode == 0, result.stderr
        return out

    return build


def dumped_sleep(processes, tmp_path):
    """`sleep 1000` dumped into tmp_path/images (and killed); (its PID, the images dir)."""
    sleeper = processes.start(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    while proc.status(sleeper.pid)["State"][0] != "S":
        pass
    images = tmp_path / "images"
    dump(sleeper.pid, str(images))
    sleeper.wait()
    return sleeper.pid, images


# --- PIE plugins -------------------------------------------------------------------------------------


def test_plugin_file_holds_its_hooks_and_loads(plugin):
    data = json.loads(plugin("marker").read_text())
    assert data["format"] == "criupy-pie-plugin"
    blob = load_plugin(plugin("marker"))
    assert set(blob.exports) == {"criupy_hook_post_restore_vmas", "criupy_hook_pre_sigreturn"}
    assert set(load_plugin(plugin("failing")).exports) == {"criupy_hook_pre_sigreturn"}


def test_plugin_with_an_undefined_symbol_is_refused_naming_it(tmp_path):
    out = tmp_path / "undefined.plugin"
    result = run("blobgen.cli", "--plugin", PLUGINS / "undefined.c", "-o", out)
    assert "not_in_the_pie_library" in one_error_line(result, "criupy-blobgen")
    assert not out.exists()


def test_plugin_without_a_hook_or_with_a_misspelt_one_is_refused(tmp_path):
    source = tmp_path / "nohook.c"
    source.write_text("int criupy_hook_pre_sigretrun(void *a) { return 0; }\n")
    line = one_error_line(run("blobgen.cli", "--plugin", source, "-o", tmp_path / "p"), "criupy-blobgen")
    assert "criupy_hook_pre_sigretrun" in line and "criupy_hook_pre_sigreturn" in line
    source.write_text("int helper(int x) { return x + 1; }\n")
    assert "no hook" in one_error_line(run("blobgen.cli", "--plugin", source, "-o", tmp_path / "p"), "criupy-blobgen")


def test_a_file_that_is_no_plugin_is_refused(tmp_path, processes):
    pid, images = dumped_sleep(processes, tmp_path)
    not_plugin = tmp_path / "not.plugin"
    not_plugin.write_text('{"format": "something else"}')
    line = one_error_line(run("criupy", "restore", "-D", images, "--pie-plugin", not_plugin, "-d"))
    assert "not a PIE plugin" in line
    assert not os.path.exists(f"/proc/{pid}")


def test_marker_plugin_runs_once_per_thread_before_sigreturn(plugin, processes, tmp_path):
    pid, images = dumped_sleep(processes, tmp_path)
    before = tree_bytes(images)
    (core,) = ImagesDir(str(images), "r").read(f"core-{pid}")
    log = tmp_path / "restore.log"
    result = run("criupy", "restore", "-D", images, "--pie-plugin", plugin("marker"), "-d", "-o", log)
    assert result.returncode == 0, result.stderr
    processes.track(pid)
    assert proc.status(pid)["TracerPid"] == "0"
    threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))

    lines = log.read_text().splitlines()
    pre = [re.search(r"plugin-marker pre_sigreturn pid (\d+) tid (\d+) ip (\w+) sp (\w+) "
                     r"inventory magic (\w+) size (\d+)", line) for line in lines]
    pre = [m for m in pre if m]
    assert sorted(int(m[2]) for m in pre) == threads  # exactly once for each restored thread
    for m in pre:
        assert int(m[1]) == pid
        assert int(m[5], 16) == 0x58313116  # it read inventory.img through the images dir fd
    main = next(m for m in pre if int(m[2]) == pid)
    assert (int(main[3], 16), int(main[4], 16)) == (core.thread_info.gpregs.ip, core.thread_info.gpregs.sp)
    post = [line for line in lines if f"plugin-marker post_restore_vmas pid {pid} tid {pid}" in line]
    assert len(post) == 1
    assert lines.index(post[0]) < min(i for i, line in enumerate(lines) if "plugin-marker pre_sigreturn" in line)
    assert tree_bytes(images) == before


def test_library_api_takes_a_plugin(plugin, processes, tmp_path):
    pid, images = dumped_sleep(processes, tmp_path)
    log = tmp_path / "restore.log"
    assert processes.track(restore(str(images), detach=True, pie_plugin=str(plugin("marker")), log_file=str(log))) == pid
    assert log.read_text().count("plugin-marker pre_sigreturn") == 1


def test_failing_plugin_hook_stops_the_restore_cleanly(plugin, processes, tmp_path):
    pid, images = dumped_sleep(processes, tmp_path)
    before = tree_bytes(images)
    line = one_error_line(run("criupy", "restore", "-D", images, "--pie-plugin", plugin("failing"), "-d"))
    assert "criupy_hook_pre_sigreturn" in line and "returned 7" in line
    assert not os.path.exists(f"/proc/{pid}")
    assert tree_bytes(images) == before
    with pytest.raises(CriupyError, match="returned 7"):
        restore(str(images), detach=True, pie_plugin=str(plugin("failing")))
    assert not os.path.exists(f"/proc/{pid}")
