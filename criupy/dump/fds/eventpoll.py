"""epoll instances: each registered fd with its events and data, from the "tfd:" lines of fdinfo
(CRIU's eventpoll.c). An epoll watches a (file, fd number) pair; criupy dumps it when that fd number
of the task still holds that very file, and refuses it otherwise (a watched fd closed or replaced
since, while a copy of its file keeps the registration alive)."""

import re

from criupy import proc
from criupy.errors import CriupyError
from criupy.images.pb import eventpoll_pb2

_TFD = re.compile(r"\s*(\d+) events:\s*([0-9a-f]+) data:\s*([0-9a-f]+)\s+pos:(\d+) ino:([0-9a-f]+) sdev:([0-9a-f]+)")


def registered(pid, fd):
    """[eventpoll_tfd_entry without id] of the epoll at fd of the task (its fdinfo's raw "tfd:" values)."""
    entries = []
    for line in proc.fdinfo_text(pid, fd).splitlines():
        if not line.startswith("tfd:"):
            continue
        match = _TFD.match(line[4:])
        if not match:
            raise CriupyError(f"fd {fd} is an epoll whose fdinfo line {line.strip()!r} criupy cannot read")
        tfd, events, data, pos, ino, dev = match.groups()
        entries.append(eventpoll_pb2.eventpoll_tfd_entry(id=0, tfd=int(tfd), events=int(events, 16),
                                                         data=int(data, 16), pos=int(pos), inode=int(ino, 16),
                                                         dev=int(dev, 16)))
    return entries


def check(fd, watched, open_fds):
    """Raise naming fd unless every watched fd number holds the file it was registered with."""
    by_number = {open_fd.fd: open_fd for open_fd in open_fds}
    for tfd in watched:
        target = by_number.get(tfd.tfd)
        if target is None or target.st.st_ino != tfd.inode:
            raise CriupyError(f"fd {fd} is an epoll watching fd {tfd.tfd}, which was closed or replaced since: "
                              "not supported yet")


def eventpoll_entry(file_id, flags, watched, fown):
    tfds = [eventpoll_pb2.eventpoll_tfd_entry(id=file_id, tfd=t.tfd, events=t.events, data=t.data)
            for t in watched]
    return eventpoll_pb2.eventpoll_file_entry(id=file_id, flags=flags, fown=fown, tfd=tfds)
