"""criupy.dump: images of a single process that crit decodes and that hold what the process had."""

import ctypes
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from waiting import crit_show, start_sleep, wait_for

import criupy
from criupy import proc
from criupy.dump import pagemap
from criupy.errors import CriupyError
from criupy.images import ImagesDir

PAGE_SIZE = 4096
QUIET = dict(stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def decode_all(images_dir):
    """crit's decoding of every image but the raw pages, by name."""
    names = sorted(os.listdir(images_dir))
    return {n.removesuffix(".img"): crit_show(images_dir / n) for n in names if not n.startswith("pages-")}


def assert_running_untraced(pid):
    status = proc.status(pid)
    assert status["TracerPid"] == "0"
    assert status["State"].split()[0] in ("S", "R")
    # only the process's own mappings: the parasite (shared anonymous memory, rwx) is gone
    assert not any(m.perms == "rwxs" for m in proc.maps(pid))


def read_line(process):
    line = process.stdout.readline()
    assert line, "the victim exited"
    return line.decode().strip()


def process_vm_read(pid, address, size):
    libc = ctypes.CDLL(None, use_errno=True)

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    buffer = ctypes.create_string_buffer(size)
    local, remote = Iovec(ctypes.addressof(buffer), size), Iovec(address, size)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    count = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    assert count == size, os.strerror(ctypes.get_errno())
    return buffer.raw


# A Python process with a known anonymous region: 64 pages, the even ones written with a pattern,
# the odd ones only read (the zero page: not saved). It prints the region's address, then loops.
PYTHON_VICTIM = """
import mmap, sys, time
region = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for page in range(0, 64, 2):
    region[page * 4096:(page + 1) * 4096] = bytes([page + 1]) * 4096
for page in range(1, 64, 2):
    region[page * 4096]
import ctypes
print(hex(ctypes.addressof(ctypes.c_char.from_buffer(region))), flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def python_victim(processes):
    process = processes.start([sys.executable, "-c", PYTHON_VICTIM], stdout=subprocess.PIPE, **QUIET)
    address = int(read_line(process), 16)
    return process, address


def vmas_of(decoded, pid):
    return [(int(v["start"], 16), int(v["end"], 16), v["prot"]) for v in decoded[f"mm-{pid}"]["entries"][0]["vmas"]]


def prot_text(perms):
    names = [name for letter, name in zip(perms, ("PROT_READ", "PROT_WRITE", "PROT_EXEC")) if letter != "-"]
    return " | ".join(names) if names else "0x0"


def expected_vmas(pid):
    return [(m.start, m.end, prot_text(m.perms)) for m in proc.maps(pid) if m.path != "[vsyscall]"]


def pages_at(images_dir, pid, address, size):
    """The bytes pages-N.img holds for [address, address + size), b"" for pages it does not hold."""
    images = ImagesDir(str(images_dir), "r")
    head, *entries = images.read(f"pagemap-{pid}")
    with open(images_dir / f"pages-{head.pages_id}.img", "rb") as f:
        data = f.read()
    offset = 0
    held = {}
    for entry in entries:
        for page in range(entry.nr_pages):
            page_address = entry.vaddr + page * PAGE_SIZE
            if address <= page_address < address + size:
                held[page_address] = data[offset + page * PAGE_SIZE:offset + (page + 1) * PAGE_SIZE]
        offset += entry.nr_pages * PAGE_SIZE
    assert offset == len(data), "pages image size differs from what the pagemap lists"
    return held


# --- a dump that leaves the process running --------------------------------------------------


def test_smaps_has_every_mapping_of_maps_with_its_vm_flags(processes, victim):
    counter = processes.start([victim("counter"), "1000"], stdout=subprocess.DEVNULL, **QUIET)
    os.kill(counter.pid, signal.SIGSTOP)  # its mappings stay as they are between the two reads
    try:
        entries = proc.smaps(counter.pid)
        assert [e.mapping for e in entries] == proc.maps(counter.pid)
        assert len(entries) > 5
        for e in entries:
            assert ("rd" in e.vm_flags, "ex" in e.vm_flags) == ("r" in e.mapping.perms, "x" in e.mapping.perms)
    finally:
        os.kill(counter.pid, signal.SIGCONT)


def test_counter_goes_on_without_gap_or_repeat_and_crit_decodes_every_image(processes, victim, tmp_path):
    out = tmp_path / "counter.out"
    with open(out, "w") as f:
        counter = processes.start([victim("counter")], stdout=f, **QUIET)
    wait_for(lambda: out.read_text().count("\n") > 10, "the counter to print")

    criupy.dump(counter.pid, str(tmp_path / "images"), leave_running=True)
    before = out.read_text().count("\n")
    wait_for(lambda: out.read_text().count("\n") > before + 20, "the counter to go on after the dump")

    assert_running_untraced(counter.pid)
    numbers = [int(line) for line in out.read_text().split("\n")[:-1]]
    assert numbers == list(range(len(numbers)))
    decoded = decode_all(tmp_path / "images")
    pid = counter.pid
    assert (tmp_path / "images" / "stats-dump").is_file()  # CRIU's name: no ".img"
    assert set(decoded) == {"inventory", "pstree", f"core-{pid}", f"ids-{pid}", f"mm-{pid}", f"pagemap-{pid}",
                            "files", f"fdinfo-{decoded[f'ids-{pid}']['entries'][0]['files_id']}", f"fs-{pid}",
                            "stats-dump"}
    core = decoded[f"core-{pid}"]["entries"][0]
    assert core["tc"]["comm"] == "counter"
    assert len(core["tc"]["sigactions"]) == 62
    # the counter is in criupy's namespaces: the inventory's root_ids name them with the same ids
    task_ids = decoded[f"ids-{pid}"]["entries"][0]
    root_ids = decoded["inventory"]["entries"][0]["root_ids"]
    namespaces = [key for key in task_ids if key.endswith("_ns_id")]
    assert len(namespaces) >= 6 and all(root_ids[key] == task_ids[key] for key in namespaces)
    # stdout is the output file: a regular file at the position the counter had reached
    files = {e["id"]: e for e in decoded["files"]["entries"]}
    stdout = next(e for e in decoded["fdinfo-1"]["entries"] if e["fd"] == 1)
    assert files[stdout["id"]]["reg"]["name"] == str(out)
    assert 0 < files[stdout["id"]]["reg"]["pos"] <= os.path.getsize(out)
    stats = decoded["stats-dump"]["entries"][0]["dump"]
    assert stats["pages_written"] > 0 and stats["pages_scanned"] >= stats["pages_written"]


# Run in a fresh interpreter: the modules imported between the end of the seize and the last image, and
# how many times the CPU's XSAVE layout was read (CPUID) meanwhile.
FROZEN_IMPORTS = """
import importlib, sys
import criupy
from criupy import xsave
from criupy.dump import tree
dump = importlib.import_module("criupy.dump")
loaded = {}
seize_all, write_stats = tree.FrozenTree.seize_all, dump._write_stats

def seize_and_note(self, pid):
    seize_all(self, pid)
    loaded["seized"] = set(sys.modules), xsave.component.cache_info().misses

def note_and_write(*args):
    loaded["written"] = set(sys.modules), xsave.component.cache_info().misses
    write_stats(*args)

tree.FrozenTree.seize_all, dump._write_stats = seize_and_note, note_and_write
criupy.dump(int(sys.argv[1]), sys.argv[2], leave_running=True)
print(" ".join(sorted(loaded["written"][0] - loaded["seized"][0])))
print(loaded["written"][1] - loaded["seized"][1])
"""


def test_no_module_is_imported_nor_the_cpu_asked_while_the_process_is_frozen(processes, victim, tmp_path):
    counter = processes.start([victim("counter")], stdout=subprocess.DEVNULL, **QUIET)
    result = subprocess.run([sys.executable, "-c", FROZEN_IMPORTS, str(counter.pid), str(tmp_path / "images")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # an import costs milliseconds, a first CPUID about one: _load_frozen_modules does them before
    assert result.stdout == "\n0\n"


def test_dump_without_leave_running_kills_the_process(processes, victim, tmp_path):
    counter = processes.start([victim("counter")], stdout=subprocess.DEVNULL, **QUIET)
    criupy.dump(counter.pid, str(tmp_path / "images"))
    # killed and reaped (criupy traced it, so criupy collected its end)
    assert not os.path.exists(f"/proc/{counter.pid}")


@pytest.mark.parametrize("argv", [
    pytest.param([sys.executable, "-c", "import time\nwhile True: time.sleep(0.05)"], id="python"),
    pytest.param(["sleep", "1000"], id="sleep"),
])
def test_every_mapping_is_listed(processes, tmp_path, argv):
    process = processes.start(argv, stdout=subprocess.DEVNULL, **QUIET)
    wait_for(lambda: any(m.path.endswith("[stack]") for m in proc.maps(process.pid)) and
             proc.stat(process.pid).state == "S", "the process to start")
    time.sleep(0.3)  # let the interpreter finish starting up: its mappings must stay still
    before = expected_vmas(process.pid)

    criupy.dump(process.pid, str(tmp_path / "images"), leave_running=True)

    assert expected_vmas(process.pid) == before, "the mappings changed around the dump"
    decoded = decode_all(tmp_path / "images")
    assert vmas_of(decoded, process.pid) == before
    vmas = decoded[f"mm-{process.pid}"]["entries"][0]["vmas"]
    by_path = {m.path: v for m, v in zip([m for m in proc.maps(process.pid) if m.path != "[vsyscall]"], vmas)}
    assert "VMA_AREA_VDSO" in by_path["[vdso]"]["status"]
    assert "VMA_AREA_VVAR" in by_path["[vvar]"]["status"]
    assert "MAP_GROWSDOWN" in by_path["[stack]"]["flags"]
    assert_running_untraced(process.pid)


def test_pages_image_holds_the_written_pages_and_not_the_zero_page(python_victim, tmp_path):
    process, address = python_victim
    criupy.dump(process.pid, str(tmp_path / "images"), leave_running=True)

    held = pages_at(tmp_path / "images", process.pid, address, 64 * PAGE_SIZE)
    written = [address + page * PAGE_SIZE for page in range(0, 64, 2)]
    assert sorted(held) == written  # the odd pages were only read: the zero page, not saved
    for page_address in written:
        assert held[page_address] == process_vm_read(process.pid, page_address, PAGE_SIZE)
    assert held[address] == b"\x01" * PAGE_SIZE
    assert_running_untraced(process.pid)


def test_pagemap_scan_and_pagemap_reads_find_the_same_pages(python_victim, processes):
    process, _ = python_victim
    os.kill(process.pid, 19)  # SIGSTOP: nothing changes between the two looks
    try:
        wait_for(lambda: proc.stat(process.pid).state == "T", "the victim to stop")
        with pagemap.PagemapReader(process.pid, use_scan=True) as scan, \
                pagemap.PagemapReader(process.pid, use_scan=False) as reads:
            assert scan.use_scan and not reads.use_scan
            private = [m for m in proc.maps(process.pid) if not m.shared and not m.path.startswith("[v")]
            found = [scan.ranges(m.start, m.end) for m in private]
            assert [reads.ranges(m.start, m.end) for m in private] == found
            assert sum(len(r) for r in found) > 0
    finally:
        os.kill(process.pid, 18)


def test_pipe_data_is_saved_without_taking_it_and_close_on_exec_is_recorded(processes, tmp_path):
    script = ("import os, time\nr, w = os.pipe()\nos.set_inheritable(w, True)\nos.write(w, b'in the pipe')\n"
              "print(r, w, flush=True)\nwhile True: time.sleep(0.05)")
    process = processes.start([sys.executable, "-c", script], stdout=subprocess.PIPE, **QUIET)
    read_end, write_end = (int(x) for x in read_line(process).split())

    criupy.dump(process.pid, str(tmp_path / "images"), leave_running=True)

    images = ImagesDir(str(tmp_path / "images"), "r")
    [(entry, data)] = images.read_with_payloads("pipes-data")
    assert data == b"in the pipe"
    fdinfo = {e.fd: e for e in images.read("fdinfo-1")}
    assert fdinfo[read_end].flags == 1 and fdinfo[write_end].flags == 0  # FD_CLOEXEC
    files = {e.id: e for e in images.read("files")}
    assert files[fdinfo[read_end].id].pipe.pipe_id == files[fdinfo[write_end].id].pipe.pipe_id == entry.pipe_id
    # still in the pipe: read it through a read end of our own
    fd = os.open(f"/proc/{process.pid}/fd/{read_end}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 100) == b"in the pipe"
    finally:
        os.close(fd)


# --- refusals ------------------------------------------------------------------------------------


NETLINK_SOCKET = ("import socket, time\ns = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n"
                  "print(s.fileno(), flush=True)\nwhile True: time.sleep(0.05)")


def test_a_socket_fails_the_dump_naming_the_fd_and_the_process_runs_on(processes, tmp_path):
    process = processes.start([sys.executable, "-c", NETLINK_SOCKET], stdout=subprocess.PIPE, **QUIET)
    fd = int(read_line(process))

    with pytest.raises(CriupyError) as failure:
        criupy.dump(process.pid, str(tmp_path / "images"), leave_running=True)

    assert str(failure.value) == f"fd {fd} is a socket of AF_NETLINK, protocol 0: not supported yet"
    assert_running_untraced(process.pid)
    assert not list((tmp_path / "images").glob("*.img"))


def test_a_dump_failing_while_the_process_is_stopped_resumes_it_and_removes_its_images(
        python_victim, tmp_path, monkeypatch):
    process, address = python_victim
    before = process_vm_read(process.pid, address, PAGE_SIZE)
    # the parasite crashes on its last command, when the task has been stopped and infected longest
    monkeypatch.setenv("CRIUPY_TEST_PARASITE_FAULT", "dump_pages:crash")
    images = tmp_path / "images"
    images.mkdir()
    (images / "notes.txt").write_text("mine")

    with pytest.raises(CriupyError):
        criupy.dump(process.pid, str(images), leave_running=True)

    assert_running_untraced(process.pid)
    assert process_vm_read(process.pid, address, PAGE_SIZE) == before
    assert sorted(os.listdir(images)) == ["notes.txt"]


def test_a_failed_dump_removes_the_images_directory_it_made(python_victim, tmp_path, monkeypatch):
    process, _ = python_victim
    monkeypatch.setenv("CRIUPY_TEST_PARASITE_FAULT", "dump_pages:crash")
    images = tmp_path / "new" / "images"
    images.parent.mkdir()

    with pytest.raises(CriupyError):
        criupy.dump(process.pid, str(images), leave_running=True)

    assert_running_untraced(process.pid)
    assert os.listdir(images.parent) == []


@pytest.mark.parametrize("setup, message", [
    pytest.param("import fcntl, os\nfd = os.memfd_create('m', os.MFD_ALLOW_SEALING)\n"
                 "fcntl.fcntl(fd, 1033, 0x10)  # F_ADD_SEALS, F_SEAL_FUTURE_WRITE\nprint(fd, flush=True)",
                 r"^fd {fd}: memfd m is sealed with F_SEAL_FUTURE_WRITE: not supported yet$",
                 id="memfd-future-write-seal"),
    pytest.param("import os, tempfile\nkeep = tempfile.NamedTemporaryFile()\nos.unlink(keep.name)\n"
                 "print(keep.fileno(), flush=True)",
                 r"^fd {fd}: file /tmp/\S+ was deleted: not supported yet$", id="deleted-file"),
])
def test_what_criupy_cannot_dump_yet_is_named_and_the_process_runs_on(processes, tmp_path, setup, message):
    script = setup + "\nimport time\nwhile True: time.sleep(0.05)"
    process = processes.start([sys.executable, "-c", script], stdout=subprocess.PIPE, **QUIET)
    fd = int(read_line(process))
    with pytest.raises(CriupyError, match=message.replace("{fd}", str(fd))):
        criupy.dump(process.pid, str(tmp_path / "images"))
    assert_running_untraced(process.pid)


def test_no_such_pid(tmp_path):
    with pytest.raises(CriupyError, match=r"^no process with PID 4194303$"):
        criupy.dump(4194303, str(tmp_path / "images"))
    assert not (tmp_path / "images").exists()


def test_images_dir_that_is_a_symlink_or_holds_images_is_refused(processes, tmp_path):
    process = start_sleep(processes)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(CriupyError, match="symlink"):
        criupy.dump(process.pid, str(tmp_path / "link"), leave_running=True)
    criupy.dump(process.pid, str(tmp_path / "real"), leave_running=True)
    with pytest.raises(CriupyError, match="already holds images"):
        criupy.dump(process.pid, str(tmp_path / "real"), leave_running=True)
    assert_running_untraced(process.pid)


def test_every_image_is_mode_0600(processes, tmp_path):
    process = start_sleep(processes)
    old_umask = os.umask(0)
    try:
        criupy.dump(process.pid, str(tmp_path / "images"))
    finally:
        os.umask(old_umask)
    names = os.listdir(tmp_path / "images")
    assert any(re.fullmatch(r"pages-\d+\.img", n) for n in names)
    for name in names:
        assert stat.S_IMODE(os.stat(tmp_path / "images" / name).st_mode) == 0o600, name


def test_log_file_and_verbose(processes, tmp_path):
    process = start_sleep(processes)
    log_file = tmp_path / "dump.log"
    criupy.dump(process.pid, str(tmp_path / "images"), leave_running=True, log_file=str(log_file), verbose=True)
    text = log_file.read_text()
    assert f"PID {process.pid} seized" in text
    assert "pagemap of PID" in text  # a DEBUG line


def test_an_fd_number_closed_and_opened_again_while_criupy_reads_it_is_read_again(processes, tmp_path,
                                                                                  monkeypatch):
    # Before the stop the task runs: between criupy's listing of its fds and its readlink of one, it may
    # close that fd and open another file under the same number (as `sleep` does while it loads its
    # locale). The first readlink of fd 0 here fails as after a close; the fd is there when checked.
    process = start_sleep(processes)
    real_fd_link = proc.fd_link
    failed = []

    def fd_link_closed_once(pid, fd):
        if pid == process.pid and fd == 0 and not failed:
            failed.append(fd)
            raise CriupyError(f"fd {fd} of PID {pid} closed while criupy looked at it")
        return real_fd_link(pid, fd)

    monkeypatch.setattr(proc, "fd_link", fd_link_closed_once)
    criupy.dump(process.pid, str(tmp_path / "images"), leave_running=True)

    assert failed == [0]
    images = ImagesDir(str(tmp_path / "images"), "r")
    fdinfo = {e.fd: e for e in images.read("fdinfo-1")}
    files = {e.id: e for e in images.read("files")}
    assert sorted(fdinfo) == [0, 1, 2]
    assert files[fdinfo[0].id].reg.name == "/dev/null"
    assert_running_untraced(process.pid)


def test_a_socket_is_refused_before_the_process_is_stopped(processes, tmp_path, monkeypatch):
    import criupy.infect
    process = processes.start([sys.executable, "-c", NETLINK_SOCKET], stdout=subprocess.PIPE, **QUIET)
    read_line(process)
    seized = []
    monkeypatch.setattr(criupy.infect, "seize", lambda pid: seized.append(pid))
    with pytest.raises(CriupyError, match="is a socket"):
        criupy.dump(process.pid, str(tmp_path / "images"))
    assert seized == []
