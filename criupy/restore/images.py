"""The images of a dumped tree of tasks, read and checked before anything is created.

Every image the restore needs is read here, once, so that a missing, truncated or corrupt one stops
the restore with a one-line CriupyError before a process exists. Images are opened read-only.
files.img and pipes-data.img belong to the whole tree: every task's DumpedTask refers to the same.
"""

import os

from criupy.errors import CriupyError
from criupy.images import ImagesDir
from criupy.images.pb import core_pb2, remap_file_path_pb2

PAGE_SIZE = 4096
TASK_DEAD = 2  # task_core_entry.task_state of a zombie
PID_MAX = 1 << 22


class DumpedTask:
    """What the images say about one task, a process and its threads (a zombie has only its pstree
    entry and core)."""

    def __init__(self, pid, ppid, pgid, sid, core):
        self.pid = pid
        self.ppid = ppid            # 0 for the root of the tree
        self.pgid = pgid
        self.sid = sid
        self.core = core            # core_entry
        self.mm = None              # mm_entry
        self.pagemap = []           # pagemap_entry, in the order of the pages image
        self.pages_id = 0           # pages-<pages_id>.img holds the page contents
        self.fdinfo = []            # fdinfo_entry
        self.files = {}             # file id -> file_entry (files.img, the tree's)
        self.fs = None              # fs_entry
        self.pipe_data = {}         # pipe_id -> (pipe_data_entry, bytes), the tree's
        self.sk_queues = {}         # socket file id -> [bytes of each queued message], the tree's
        self.fifo_data = {}         # FIFO pipe_id -> (pipe_data_entry, bytes), the tree's
        self.thread_cores = {}      # TID -> core_entry of each thread but the leader
        self.ghosts = {}            # files.img id -> (ghost_file_entry, contents), the tree's
        self.tty_infos = {}         # tty-info id -> tty_info_entry, the tree's
        self.tty_data = {}          # tty-info id -> bytes queued for reading on that end, the tree's
        self.memfd_inodes = {}      # inode_id -> memfd_inode_entry (memfd.img), the tree's
        self.file_locks = []        # file_lock_entry of each lock placed through one of its fds

    @property
    def zombie(self):
        return self.core.tc.task_state == TASK_DEAD

    @property
    def exit_code(self):
        return self.core.tc.exit_code


def _read(images, name, required=True):
    """The entries of image name ([] when it is absent and not required)."""
    try:
        return images.read(name)
    except FileNotFoundError:
        if required:
            raise CriupyError(f"image {name}.img is missing") from None
        return []
    except CriupyError:
        raise
    except Exception as e:  # a decoder's error on a damaged image: name the image, not the decoder
        raise CriupyError(f"image {name}.img is corrupt: {e}") from None


def _one(images, name):
    entries = _read(images, name)
    if len(entries) != 1:
        raise CriupyError(f"image {name}.img is corrupt: {len(entries)} entries where one belongs")
    return entries[0]


def _check_core(core, pid, leader=True):
    name = f"core-{pid}.img"
    if core.mtype != core_pb2.core_entry.X86_64 or not core.HasField("thread_info"):
        raise CriupyError(f"image {name} is not of an x86-64 task")
    if leader and not core.HasField("tc"):
        raise CriupyError(f"image {name} is corrupt: it has no task state")
    if not leader and not core.HasField("thread_core"):
        raise CriupyError(f"image {name} is corrupt: it has no thread state")
    if core.thread_info.gpregs.mode != 1:  # NATIVE
        raise CriupyError(f"image {name} is of a 32-bit task, which criupy cannot restore")


def _check_mm(mm, pid):
    name = f"mm-{pid}.img"
    previous_end = 0
    for vma in mm.vmas:
        if vma.start % PAGE_SIZE or vma.end % PAGE_SIZE or vma.start >= vma.end or vma.start < previous_end:
            raise CriupyError(f"image {name} is corrupt: bad mapping {vma.start:#x}-{vma.end:#x}")
        previous_end = vma.end
    if not mm.vmas:
        raise CriupyError(f"image {name} is corrupt: no mappings")


def read_tree(images_dir):
    """Read and check the images of every task dumped in images_dir: DumpedTask list, parents first."""
    if not os.path.isdir(images_dir):
        raise CriupyError(f"no images directory {images_dir}")
    images = ImagesDir(images_dir, "r")
    _one(images, "inventory")  # every dump has one: its absence or damage means the dump is not whole
    tree = _read(images, "pstree")
    if not tree:
        raise CriupyError("image pstree.img is corrupt: it lists no process")
    _check_tree(tree)

    files = {}
    for entry in _read(images, "files", required=False):
        files[entry.id] = entry
    pipe_data, fifo_data = _pipe_data(images, "pipes-data"), _pipe_data(images, "fifo-data")
    sk_queues = {}
    for entry, data in _read_with_payloads(images, "sk-queues"):
        if len(data) != entry.length:
            raise CriupyError(f"image sk-queues.img is truncated: a message of {len(data)} of {entry.length} bytes")
        sk_queues.setdefault(entry.id_for, []).append(data)
    ghosts = _read_ghosts(images, files)
    tty_infos = {entry.id: entry for entry in _read(images, "tty-info", required=False)}
    tty_data = {}
    for entry in _read(images, "tty-data", required=False):
        if entry.tty_id not in tty_infos:
            raise CriupyError(f"image tty-data.img is corrupt: no terminal {entry.tty_id} in tty-info.img")
        tty_data[entry.tty_id] = tty_data.get(entry.tty_id, b"") + entry.data
    memfd_inodes = {entry.inode_id: entry for entry in _read(images, "memfd", required=False)}
    tasks = [_read_task(images, entry, files, pipe_data, sk_queues, fifo_data, ghosts) for entry in tree]
    by_pid = {task.pid: task for task in tasks}
    for task in tasks:
        task.tty_infos, task.tty_data, task.memfd_inodes = tty_infos, tty_data, memfd_inodes
    for lock in _read(images, "file-lock", required=False):
        task = by_pid.get(lock.pid)
        if task is None or not any(fdinfo.fd == lock.fd for fdinfo in task.fdinfo):
            raise CriupyError(f"image file-lock.img is corrupt: a lock of fd {lock.fd} of PID {lock.pid}, which the "
                              "images do not have")
        task.file_locks.append(lock)
    return tasks


def _read_ghosts(images, files):
    """files.img id -> (ghost_file_entry, contents) of each deleted file remap-fpath.img names."""
    ghosts = {}
    for remap in _read(images, "remap-fpath", required=False):
        if remap.remap_type != remap_file_path_pb2.GHOST:
            raise CriupyError(f"image remap-fpath.img: file {remap.orig_id} is remapped in a way criupy cannot "
                              f"restore (type {remap.remap_type})")
        if remap.orig_id not in files or not files[remap.orig_id].HasField("reg"):
            raise CriupyError(f"image remap-fpath.img is corrupt: no regular file {remap.orig_id} in files.img")
        name = f"ghost-file-{remap.remap_id}"
        entries = _read_with_payloads(images, name)
        if len(entries) != 1:
            raise CriupyError(f"image {name}.img is missing or corrupt")
        entry, data = entries[0]
        if entry.chunks or len(data) != entry.size:
            raise CriupyError(f"image {name}.img is truncated or in chunks (not supported)")
        ghosts[remap.orig_id] = (entry, data)
    return ghosts


def _pipe_data(images, name):
    """pipe_id -> (pipe_data_entry, bytes) of image name (pipes-data, fifo-data)."""
    pipe_data = {}
    for entry, data in _read_with_payloads(images, name):
        if len(data) != entry.bytes:
            raise CriupyError(f"image {name}.img is truncated: pipe {entry.pipe_id} has {len(data)} of "
                              f"{entry.bytes} bytes")
        pipe_data[entry.pipe_id] = (entry, data)
    return pipe_data


def _check_tree(tree):
    pids = set()
    for i, entry in enumerate(tree):
        if not 0 < entry.pid < PID_MAX or entry.pid in pids:
            raise CriupyError(f"image pstree.img is corrupt: PID {entry.pid}")
        tids = list(entry.threads) or [entry.pid]
        if tids[0] != entry.pid or len(set(tids)) != len(tids) or not all(0 < tid < PID_MAX for tid in tids):
            raise CriupyError(f"image pstree.img is corrupt: threads {tids} of PID {entry.pid}")
        if (entry.ppid == 0) != (i == 0) or (i and entry.ppid not in pids):
            raise CriupyError(f"image pstree.img is corrupt: PID {entry.pid} comes before its parent "
                              f"{entry.ppid} or is a second root")
        pids.add(entry.pid)


def _read_task(images, entry, files, pipe_data, sk_queues, fifo_data, ghosts):
    pid = entry.pid
    core = _one(images, f"core-{pid}")
    if not core.HasField("tc"):
        raise CriupyError(f"image core-{pid}.img is corrupt: it has no task state")
    task = DumpedTask(pid, entry.ppid, entry.pgid, entry.sid, core)
    if task.zombie:
        return task
    _check_core(core, pid)
    for tid in list(entry.threads)[1:]:
        task.thread_cores[tid] = _one(images, f"core-{tid}")
        _check_core(task.thread_cores[tid], tid, leader=False)
    ids = _one(images, f"ids-{pid}")
    task.mm = _one(images, f"mm-{pid}")
    _check_mm(task.mm, pid)
    pagemap = _read(images, f"pagemap-{pid}")
    if not pagemap:
        raise CriupyError(f"image pagemap-{pid}.img is corrupt: it has no header")
    task.pages_id, task.pagemap = pagemap[0].pages_id, pagemap[1:]
    task.fdinfo = _read(images, f"fdinfo-{ids.files_id}")
    task.fs = _one(images, f"fs-{pid}")
    task.files = files
    task.pipe_data = pipe_data
    task.sk_queues = sk_queues
    task.fifo_data = fifo_data
    task.ghosts = ghosts
    return task


def _read_with_payloads(images, name):
    try:
        return images.read_with_payloads(name)
    except FileNotFoundError:
        return []
    except CriupyError:
        raise
    except Exception as e:
        raise CriupyError(f"image {name}.img is corrupt: {e}") from None


def open_pages(images_dir, pages_id):
    """A read-only fd of pages-<pages_id>.img and its size."""
    path = os.path.join(images_dir, f"pages-{pages_id}.img")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CriupyError(f"image pages-{pages_id}.img is missing from {images_dir}") from None
    return fd, os.fstat(fd).st_size
