"""A directory of CRIU images: the reader and writer.

Layout of one image (criu/image.c, criu/protobuf.c):

    u32 IMG_COMMON (IMG_SERVICE for stats-*; absent in inventory.img)
    u32 the image's magic
    entries: u32 length, then that many bytes of protobuf; in pipes-data/fifo-data (and ipcns-shm)
             the raw bytes the entry counts follow it
    pagemap-N.img: its first entry is a pagemap_head, the others pagemap_entry

All integers are little-endian. pages-N.img is raw page data, reached through open_raw().
"""

import contextlib
import glob
import os
import struct

from google.protobuf.message import DecodeError, EncodeError

from criupy.errors import CriupyError
from criupy.images.kinds import kind_of

_U32 = struct.Struct("<I")
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class ImageMissing(CriupyError, FileNotFoundError):
    """An image that is not in the directory (a FileNotFoundError too, for callers with optional images)."""


# CRIU names its stats files without ".img" (stats-dump, stats-restore): so do we, for its tools.
_BARE_PREFIX = "stats-"


def _file_name(name):
    return name if name.endswith(".img") or name.startswith(_BARE_PREFIX) else name + ".img"


def _create(path):
    """A new file, 0600 whatever the umask; an existing file (or symlink) is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        raise CriupyError(f"image {os.path.basename(path)} already exists in {os.path.dirname(path)}") from None
    except OSError as e:
        raise CriupyError(f"cannot create image {path}: {e.strerror}") from None
    os.fchmod(fd, _FILE_MODE)
    return fd


def _check_type(entry, expected, file_name, index):
    if type(entry).DESCRIPTOR.full_name != expected.DESCRIPTOR.full_name:
        raise TypeError(f"{file_name} entry {index} is a {type(entry).DESCRIPTOR.full_name}, "
                        f"not a {expected.DESCRIPTOR.full_name}")


def encode_image(file_name, entries, payloads=None):
    """The bytes of image file_name ("core-1.img") holding entries (and payloads after them)."""
    kind = kind_of(file_name)
    if kind.raw:
        raise ValueError(f"{file_name} is raw data: write it through open_raw()")
    if (payloads is not None) != (kind.payload_field is not None):
        raise ValueError(f"{file_name}: payloads go with exactly the images that carry raw bytes after entries")
    if payloads is not None and len(payloads) != len(entries):
        raise ValueError(f"{file_name}: {len(entries)} entries but {len(payloads)} payloads")

    parts = []
    if kind.head_magic is not None:
        parts.append(_U32.pack(kind.head_magic))
    parts.append(_U32.pack(kind.magic))
    for index, entry in enumerate(entries):
        expected = kind.head if (kind.head is not None and index == 0) else kind.entry
        _check_type(entry, expected, file_name, index)
        try:
            data = entry.SerializeToString()
        except EncodeError:
            missing = ", ".join(entry.FindInitializationErrors())
            raise CriupyError(f"cannot write {file_name}: entry {index} lacks required {missing}") from None
        parts += [_U32.pack(len(data)), data]
        if payloads is not None:
            payload = bytes(payloads[index])
            declared = getattr(entry, kind.payload_field)
            if len(payload) != declared:
                raise ValueError(f"{file_name} entry {index}: {kind.payload_field} is {declared} "
                                 f"but the payload has {len(payload)} bytes")
            parts += [payload, bytes(-len(payload) % kind.payload_align)]
    return b"".join(parts)


def decode_image(file_name, data):
    """[(message, payload bytes)] of image file_name from its bytes; CriupyError on any damage."""
    kind = kind_of(file_name)
    if kind.raw:
        raise ValueError(f"{file_name} is raw data: read it through open_raw()")
    offset = 0

    def take(size, what):
        nonlocal offset
        if offset + size > len(data):
            raise CriupyError(f"image {file_name} is truncated: {what} needs {size} bytes at offset {offset}, "
                              f"{len(data) - offset} left")
        chunk = data[offset:offset + size]
        offset += size
        return chunk

    for expected in (kind.head_magic, kind.magic):
        if expected is None:
            continue
        (found,) = _U32.unpack(take(4, "the magic"))
        if found != expected:
            raise CriupyError(f"image {file_name} has a bad magic {found:#010x} (expected {expected:#010x})")

    result = []
    while offset < len(data):
        index = len(result)
        (size,) = _U32.unpack(take(4, f"entry {index}'s length"))
        body = take(size, f"entry {index}")
        message_class = kind.head if (kind.head is not None and index == 0) else kind.entry
        message = message_class()
        try:
            message.ParseFromString(body)
        except DecodeError:
            raise CriupyError(f"image {file_name} is corrupt: entry {index} is not a valid "
                              f"{message_class.DESCRIPTOR.full_name}") from None
        missing = message.FindInitializationErrors()
        if missing:
            raise CriupyError(f"image {file_name} is corrupt: entry {index} lacks required {', '.join(missing)}")
        payload = b""
        if kind.payload_field is not None:
            length = getattr(message, kind.payload_field)
            payload = take(length, f"entry {index}'s {length} bytes of data")
            take(-length % kind.payload_align, f"entry {index}'s padding")
        result.append((message, payload))
    return result


class ImagesDir:
    """The images in directory path, opened to read ("r") or to write ("w").

    Writing creates the directory (0700) if it is absent and refuses a symlink, a non-directory, or a
    directory already holding images; overwrite=True removes the *.img files already there instead.
    Every file is created new with mode 0600. Reading changes nothing.
    """

    def __init__(self, path, mode, overwrite=False):
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' or 'w', not {mode!r}")
        self.dir = path
        self.mode = mode
        self.created = False  # True when writing made the directory
        self._reserved = {}  # name: fd of a file made by reserve(), not yet written
        if mode == "w":
            self._prepare_for_writing(overwrite)
        elif not os.path.isdir(path):
            raise CriupyError(f"no images directory {path}")

    def _prepare_for_writing(self, overwrite):
        path = self.dir
        if os.path.islink(path):
            raise CriupyError(f"images directory {path} is a symlink; give the real directory")
        if not os.path.exists(path):
            try:
                os.mkdir(path, _DIR_MODE)
            except OSError as e:
                raise CriupyError(f"cannot create images directory {path}: {e.strerror}") from None
            os.chmod(path, _DIR_MODE)
            self.created = True
            return
        if not os.path.isdir(path):
            raise CriupyError(f"images directory {path} is not a directory")
        existing = self._image_paths()
        if existing and not overwrite:
            raise CriupyError(f"{path} already holds images ({os.path.basename(existing[0])} ...); "
                              f"choose an empty directory or overwrite")
        for image_path in existing:
            os.unlink(image_path)

    def path(self, name):
        """The file path of image name ("core-42" -> DIR/core-42.img, "stats-dump" -> DIR/stats-dump)."""
        return os.path.join(self.dir, _file_name(name))

    def exists(self, name):
        return os.path.lexists(self.path(name))

    def _image_paths(self):
        """The paths of the image files in the directory, sorted: *.img and CRIU's bare stats-* files."""
        directory = glob.escape(self.dir)
        bare = [p for p in glob.glob(os.path.join(directory, _BARE_PREFIX + "*")) if not p.endswith(".img")]
        return sorted(glob.glob(os.path.join(directory, "*.img")) + bare)

    def names(self):
        """The images in the directory, sorted, without ".img"."""
        return sorted(os.path.basename(p).removesuffix(".img") for p in self._image_paths())

    def reserve(self, names):
        """Create the files of images that will be written, now: write() and open_raw() then only fill them
        (a dump creates them before it freezes the tree). release_reserved() removes those not written."""
        self._require_mode("w", "reserve()")
        for name in names:
            if name not in self._reserved:
                self._reserved[name] = _create(self.path(name))

    def release_reserved(self):
        """Close and remove the reserved files that were not written: no empty image is left behind."""
        while self._reserved:
            name, fd = self._reserved.popitem()
            os.close(fd)
            with contextlib.suppress(OSError):  # an unlink that fails leaves an empty file, as a failed dump can
                os.unlink(self.path(name))

    def _new_file(self, name):
        fd = self._reserved.pop(name, None)
        return _create(self.path(name)) if fd is None else fd

    def _require_mode(self, mode, what):
        if self.mode != mode:
            raise ValueError(f"{what} needs an ImagesDir opened with mode {mode!r}")

    def write(self, name, entries, payloads=None):
        """Write image name with entries (messages of its kind); payloads: raw bytes after each entry."""
        self._require_mode("w", "write()")
        data = memoryview(encode_image(_file_name(name), list(entries), None if payloads is None else list(payloads)))
        fd = self._new_file(name)
        try:
            while data:  # no buffered file object in between: one write(2) for most images
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def read_with_payloads(self, name):
        """[(message, bytes)] of image name: bytes is the raw data after the entry (b"" for most kinds)."""
        file_name = _file_name(name)
        try:
            fd = os.open(self.path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageMissing(f"image {file_name} is missing from {self.dir}") from None
        except OSError as e:
            raise CriupyError(f"cannot read image {self.path(name)}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        return decode_image(file_name, data)

    def read(self, name):
        """The messages of image name (for pagemap-N the pagemap_head first)."""
        return [message for message, _ in self.read_with_payloads(name)]

    def open_raw(self, name, write=False):
        """An fd of a raw image (pages-N): a new 0600 file to write, or the existing one read-only."""
        if write:
            self._require_mode("w", "open_raw(write=True)")
            return self._new_file(name)
        try:
            return os.open(self.path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageMissing(f"image {_file_name(name)} is missing from {self.dir}") from None
