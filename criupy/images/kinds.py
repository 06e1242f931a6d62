"""Which image an image name is: its magic, its entry message, and how entries are laid out.

Names are CRIU's file names without ".img": "core-42", "pagemap-42", "files", "stats-dump".
"""

import functools
import importlib
from typing import NamedTuple

from criupy.errors import CriupyError
from criupy.images import magic


@functools.cache
def _message_class(name):
    """"core_pb2.core_entry" -> the class; schema modules load only when an image of theirs is used."""
    module, _, message = name.partition(".")
    return getattr(importlib.import_module(f"criupy.images.pb.{module}"), message)


class ImageKind(NamedTuple):
    magic: int              # the image's own magic; None for a raw image (no header, no entries)
    entry_name: str = None  # "module.message" of the entries' class (in criupy.images.pb)
    head_name: str = None   # of the first entry's class, when it differs (pagemap_head)
    head_magic: int = magic.IMG_COMMON   # the magic before the image's own one; None for inventory
    payload_field: str = None            # entry field giving the length of raw bytes after each entry
    payload_align: int = 1               # the raw bytes are zero-padded to this

    @property
    def entry(self):
        """Message class of the entries."""
        return _message_class(self.entry_name) if self.entry_name else None

    @property
    def head(self):
        """Message class of the first entry, when it differs from the others'."""
        return _message_class(self.head_name) if self.head_name else None

    @property
    def raw(self):
        return self.magic is None

    @property
    def magic_name(self):
        return magic.NAMES[self.magic] if not self.raw else "RAW"


PAGES = ImageKind(magic=None)

# (name pattern, kind); N is a decimal id.
_KINDS = (
    (r"inventory", ImageKind(magic.INVENTORY, "inventory_pb2.inventory_entry", head_magic=None)),
    (r"pstree", ImageKind(magic.PSTREE, "pstree_pb2.pstree_entry")),
    (r"core-N", ImageKind(magic.CORE, "core_pb2.core_entry")),
    (r"ids-N", ImageKind(magic.IDS, "core_pb2.task_kobj_ids_entry")),
    (r"mm-N", ImageKind(magic.MM, "mm_pb2.mm_entry")),
    (r"vmas-N", ImageKind(magic.VMAS, "vma_pb2.vma_entry")),
    (r"pagemap-N", ImageKind(magic.PAGEMAP, "pagemap_pb2.pagemap_entry", head_name="pagemap_pb2.pagemap_head")),
    (r"pagemap-shmem-N", ImageKind(magic.PAGEMAP, "pagemap_pb2.pagemap_entry", head_name="pagemap_pb2.pagemap_head")),
    (r"pages-N", PAGES),
    (r"files", ImageKind(magic.FILES, "fdinfo_pb2.file_entry")),
    (r"fdinfo-N", ImageKind(magic.FDINFO, "fdinfo_pb2.fdinfo_entry")),
    (r"file-lock", ImageKind(magic.FILE_LOCKS, "file_lock_pb2.file_lock_entry")),
    (r"fs-N", ImageKind(magic.FS, "fs_pb2.fs_entry")),
    (r"creds-N", ImageKind(magic.CREDS, "creds_pb2.creds_entry")),
    (r"sigacts-N", ImageKind(magic.SIGACT, "sa_pb2.sa_entry")),
    (r"itimers-N", ImageKind(magic.ITIMERS, "timer_pb2.itimer_entry")),
    (r"posix-timers-N", ImageKind(magic.POSIX_TIMERS, "timer_pb2.posix_timer_entry")),
    (r"rlimit-N", ImageKind(magic.RLIMIT, "rlimit_pb2.rlimit_entry")),
    (r"reg-files", ImageKind(magic.REG_FILES, "regfile_pb2.reg_file_entry")),
    (r"remap-fpath", ImageKind(magic.REMAP_FPATH, "remap_file_path_pb2.remap_file_path_entry")),
    # One entry, the whole file's contents after it (no chunks).
    (r"ghost-file-N", ImageKind(magic.GHOST_FILE, "ghost_file_pb2.ghost_file_entry", payload_field="size")),
    (r"pipes", ImageKind(magic.PIPES, "pipe_pb2.pipe_entry")),
    (r"pipes-data", ImageKind(magic.PIPES_DATA, "pipe_data_pb2.pipe_data_entry", payload_field="bytes")),
    (r"fifo", ImageKind(magic.FIFO, "fifo_pb2.fifo_entry")),
    (r"fifo-data", ImageKind(magic.FIFO_DATA, "pipe_data_pb2.pipe_data_entry", payload_field="bytes")),
    (r"unixsk", ImageKind(magic.UNIXSK, "sk_unix_pb2.unix_sk_entry")),
    (r"sk-queues", ImageKind(magic.SK_QUEUES, "sk_packet_pb2.sk_packet_entry", payload_field="length")),
    (r"eventfd", ImageKind(magic.EVENTFD_FILE, "eventfd_pb2.eventfd_file_entry")),
    (r"eventpoll", ImageKind(magic.EVENTPOLL_FILE, "eventpoll_pb2.eventpoll_file_entry")),
    (r"eventpoll-tfd", ImageKind(magic.EVENTPOLL_TFD, "eventpoll_pb2.eventpoll_tfd_entry")),
    (r"signalfd", ImageKind(magic.SIGNALFD, "signalfd_pb2.signalfd_entry")),
    (r"timerfd", ImageKind(magic.TIMERFD, "timerfd_pb2.timerfd_entry")),
    (r"memfd", ImageKind(magic.MEMFD_INODE, "memfd_pb2.memfd_inode_entry")),
    (r"tty", ImageKind(magic.TTY_FILES, "tty_pb2.tty_file_entry")),
    (r"tty-info", ImageKind(magic.TTY_INFO, "tty_pb2.tty_info_entry")),
    (r"tty-data", ImageKind(magic.TTY_DATA, "tty_pb2.tty_data_entry")),
    # The segment's bytes follow its entry, padded to 4 (the layout crit 3.17 reads).
    (r"ipcns-shm-N", ImageKind(magic.IPCNS_SHM, "ipc_shm_pb2.ipc_shm_entry", payload_field="size", payload_align=4)),
    (r"ipcns-var-N", ImageKind(magic.IPC_VAR, "ipc_var_pb2.ipc_var_entry")),
    (r"utsns-N", ImageKind(magic.UTSNS, "utsns_pb2.utsns_entry")),
    (r"pidns-N", ImageKind(magic.PIDNS, "pidns_pb2.pidns_entry")),
    (r"ns-files", ImageKind(magic.NS_FILES, "ns_pb2.ns_file_entry")),
    (r"stats-dump", ImageKind(magic.STATS, "stats_pb2.stats_entry", head_magic=magic.IMG_SERVICE)),
    (r"stats-restore", ImageKind(magic.STATS, "stats_pb2.stats_entry", head_magic=magic.IMG_SERVICE)),
)
_NAMED = {pattern: kind for pattern, kind in _KINDS if not pattern.endswith("-N")}
_NUMBERED = {pattern.removesuffix("-N"): kind for pattern, kind in _KINDS if pattern.endswith("-N")}  # by prefix

# Every kind with entries, by its own magic (pagemap-shmem shares pagemap's, stats-restore stats-dump's).
BY_MAGIC = {}
for _pattern, _kind in _KINDS:
    if not _kind.raw:
        BY_MAGIC.setdefault(_kind.magic, _kind)


def kind_of(name):
    """The ImageKind of image name ("core-42" or "core-42.img")."""
    name = name.removesuffix(".img")
    # By dict, not by regular expressions: compiling one per kind cost every command milliseconds.
    prefix, _, number = name.rpartition("-")
    kind = _NUMBERED.get(prefix) if number.isdecimal() else _NAMED.get(name)
    if kind is not None:
        return kind
    raise CriupyError(f"{name}.img is not an image criupy knows")


def names():
    """The name patterns criupy knows, N standing for a number (for documentation and tests)."""
    return [pattern for pattern, _ in _KINDS]
