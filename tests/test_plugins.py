"""PIE plugins in the restorer (criupy-blobgen --plugin, criupy restore --pie-plugin) and hooks called
inside the target (criupy dump/restore --call-hook)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waiting import start_sleep

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
    sleeper = start_sleep(processes)
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
    listing = run("blobgen.cli", "--disasm", plugin("marker")).stdout
    assert "criupy_hook_pre_sigreturn:" in listing and "criupy_hook_post_restore_vmas:" in listing
    assert re.search(r"section \.rodata .* \(data\)", listing) and "|plugin-marker" in listing


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


def dumped_threads(victim, processes, tmp_path, nr_threads):
    """The threads_counter victim (a leader and nr_threads threads) dumped; (its PID, the images dir)."""
    output = tmp_path / "counter.out"
    with open(output, "a") as out:
        counter = processes.start([victim("threads_counter"), str(nr_threads)], stdout=out,
                                  stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(os.listdir(f"/proc/{counter.pid}/task")) < nr_threads + 1 or not output.read_text():
        time.sleep(0.01)
    images = tmp_path / "images"
    dump(counter.pid, str(images))
    counter.wait()
    return counter.pid, images


@pytest.mark.parametrize("program", ["sleep", "threads"])
def test_marker_plugin_runs_once_per_thread_before_sigreturn(program, plugin, victim, processes, tmp_path):
    if program == "sleep":
        pid, images = dumped_sleep(processes, tmp_path)
    else:
        pid, images = dumped_threads(victim, processes, tmp_path, 4)
    before = tree_bytes(images)
    (pstree,) = ImagesDir(str(images), "r").read("pstree")
    dumped_threads_ids = sorted(pstree.threads) or [pid]
    log = tmp_path / "restore.log"
    result = run("criupy", "restore", "-D", images, "--pie-plugin", plugin("marker"), "-d", "-o", log)
    assert result.returncode == 0, result.stderr
    processes.track(pid)
    assert proc.status(pid)["TracerPid"] == "0"
    assert sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")) == dumped_threads_ids

    lines = log.read_text().splitlines()
    pre = [re.search(r"plugin-marker pre_sigreturn pid (\d+) tid (\d+) ip (\w+) sp (\w+) "
                     r"inventory magic (\w+) size (\d+)", line) for line in lines]
    pre = [m for m in pre if m]
    assert sorted(int(m[2]) for m in pre) == dumped_threads_ids  # exactly once for each restored thread
    for m in pre:
        assert int(m[1]) == pid
        assert int(m[5], 16) == 0x58313116  # it read inventory.img through the images dir fd
        (core,) = ImagesDir(str(images), "r").read(f"core-{m[2]}")
        # each thread's own registers, as its rt_sigreturn puts them back
        assert (int(m[3], 16), int(m[4], 16)) == (core.thread_info.gpregs.ip, core.thread_info.gpregs.sp)
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


# --- hooks inside the target (--call-hook LIB:SYMBOL) ------------------------------------------------


@pytest.fixture(scope="module")
def hooklib(tmp_path_factory):
    """tests/victims/hooklib.c as a shared library, named hooklib.so."""
    out = tmp_path_factory.mktemp("hooklib") / "hooklib.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out),
                    str(Path(__file__).parent / "victims" / "hooklib.c")], check=True)
    return out


def wait_for_lines(path, count):
    while not path.exists() or len(path.read_text().splitlines()) < count:
        time.sleep(0.01)


def hooked_counter(victim, processes, hooklib, tmp_path):
    """The counter victim with hooklib.so preloaded, logging to tmp_path/hook.log; (process, its output)."""
    output = tmp_path / "counter.out"
    env = dict(os.environ, LD_PRELOAD=str(hooklib), HOOKLIB_LOG=str(tmp_path / "hook.log"))
    with open(output, "a") as out:
        counter = processes.start([victim("counter")], stdout=out, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env)
    wait_for_lines(output, 5)
    return counter, output


def stack_range(pid):
    (stack,) = [m for m in proc.maps(pid) if m.path == "[stack]"]
    return stack.start, stack.end


def hook_lines(path):
    """[(pid, stack address)] of the lines pre_restore wrote."""
    return [(int(m[1]), int(m[2], 16)) for m in re.finditer(r"pre_restore pid (\d+) stack (0x[0-9a-f]+)",
                                                            path.read_text() if path.exists() else "")]


def assert_running_untraced(pid, output):
    status = proc.status(pid)
    assert status["TracerPid"] == "0" and status["State"][0] in "SR"
    count = len(output.read_text().splitlines())
    wait_for_lines(output, count + 3)  # still counting


def test_call_hook_runs_once_in_the_target_at_dump_and_at_restore(victim, processes, hooklib, tmp_path):
    counter, output = hooked_counter(victim, processes, hooklib, tmp_path)
    pid = counter.pid
    stack = stack_range(pid)
    log = tmp_path / "hook.log"
    log.rename(tmp_path / "hook.log.1")  # the log is rotated: the hook's job is to open the new one
    images = tmp_path / "images"
    result = run("criupy", "dump", "-t", pid, "-D", images, "--call-hook", "hooklib.so:pre_restore")
    assert result.returncode == 0, result.stderr
    counter.wait()
    assert hook_lines(tmp_path / "hook.log.1") == []
    ((hook_pid, address),) = hook_lines(log)  # once, in the target, in the re-opened file
    assert hook_pid == pid
    (core,) = ImagesDir(str(images), "r").read(f"core-{pid}")
    assert stack[0] <= address < core.thread_info.gpregs.sp - 128  # on its stack, below the red zone

    before = tree_bytes(images)
    count = len(output.read_text().splitlines())
    result = run("criupy", "restore", "-D", images, "-d", "--call-hook", f"{hooklib}:pre_restore")
    assert result.returncode == 0, result.stderr
    processes.track(pid)
    lines = hook_lines(log)
    assert len(lines) == 2 and lines[1][0] == pid
    assert stack_range(pid)[0] <= lines[1][1] < stack_range(pid)[1]
    wait_for_lines(output, count + 10)
    numbers = [int(line) for line in output.read_text().splitlines()]
    assert numbers == list(range(len(numbers)))  # the call changed nothing the program sees
    assert tree_bytes(images) == before


def test_failing_hook_at_dump_leaves_the_target_running_and_no_images(victim, processes, hooklib, tmp_path):
    counter, output = hooked_counter(victim, processes, hooklib, tmp_path)
    images = tmp_path / "images"
    for spec, named in (("hooklib.so:failing_hook", "returned 3"), ("hooklib.so:crashing_hook", "SIGSEGV")):
        line = one_error_line(run("criupy", "dump", "-t", counter.pid, "-D", images, "--call-hook", spec))
        assert spec in line and named in line
        assert_running_untraced(counter.pid, output)
        assert not images.exists()
    with pytest.raises(CriupyError, match="returned 3"):
        dump(counter.pid, str(images), call_hooks=["hooklib.so:failing_hook"])
    assert_running_untraced(counter.pid, output)
    assert not images.exists()


@pytest.mark.parametrize("spec, named", [("nosuch.so:pre_restore", "nosuch.so"), ("hooklib.so:nosuch", "nosuch"),
                                         ("hooklib.so", "LIB:SYMBOL")])
def test_missing_library_or_symbol_is_named_and_the_target_untouched(victim, processes, hooklib, tmp_path,
                                                                    spec, named):
    counter, output = hooked_counter(victim, processes, hooklib, tmp_path)
    images = tmp_path / "images"
    assert named in one_error_line(run("criupy", "dump", "-t", counter.pid, "-D", images, "--call-hook", spec))
    assert_running_untraced(counter.pid, output)
    assert not images.exists()


def test_failing_or_missing_hook_at_restore_leaves_nothing_behind(victim, processes, hooklib, tmp_path):
    counter, output = hooked_counter(victim, processes, hooklib, tmp_path)
    images = tmp_path / "images"
    dump(counter.pid, str(images))
    counter.wait()
    before = tree_bytes(images)
    printed = output.read_text()
    for spec, named in (("hooklib.so:failing_hook", "returned 3"), ("hooklib.so:crashing_hook", "SIGSEGV"),
                        ("hooklib.so:nosuch", "nosuch")):
        line = one_error_line(run("criupy", "restore", "-D", images, "-d", "--call-hook", spec))
        assert named in line
        assert not os.path.exists(f"/proc/{counter.pid}")
        assert tree_bytes(images) == before
        assert output.read_text() == printed  # it never ran on
    assert hook_lines(tmp_path / "hook.log") == []
