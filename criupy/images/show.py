"""`criupy show`: images decoded to the JSON that `crit show` prints.

crit's conventions (pycriu's pb2dict in its "pretty" mode), driven by the (criu) field options of
our schemas: fields in field-number order, enums by name, bytes in base64 (a unix socket name in
quoted-printable), integers marked hex as "0x..", flags as "A | B | 0x..", a few dictionary fields by
name, and the raw bytes after an entry as its "extra" (base64). A pages image prints only its size.
"""

import base64
import json
import os
import quopri
import socket
import struct

from google.protobuf.descriptor import FieldDescriptor

from criupy.errors import CriupyError
from criupy.images.imagesdir import ImagesDir, ImageMissing, decode_image
from criupy.images.kinds import kind_of
from criupy.images.pb import opts_pb2

_MMAP_PROT = (("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4))
_MMAP_FLAGS = (("MAP_SHARED", 0x1), ("MAP_PRIVATE", 0x2), ("MAP_ANON", 0x20), ("MAP_GROWSDOWN", 0x100))
# criupy's vma status bits are CRIU's (criu/include/image.h).
_VMA_STATUS = (
    ("VMA_AREA_REGULAR", 1 << 0), ("VMA_AREA_STACK", 1 << 1), ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3), ("VMA_AREA_HEAP", 1 << 5), ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7), ("VMA_ANON_SHARED", 1 << 8), ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10), ("VMA_AREA_SOCKET", 1 << 11), ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13), ("VMA_UNSUPP", 1 << 31),
)
_OPEN_FLAGS = (
    ("O_WRONLY", 0o1), ("O_RDWR", 0o2), ("O_CREAT", 0o100), ("O_EXCL", 0o200), ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000), ("O_APPEND", 0o2000), ("O_NONBLOCK", 0o4000), ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000), ("O_DIRECT", 0o40000), ("O_LARGEFILE", 0o100000), ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000), ("O_NOATIME", 0o1000000), ("O_CLOEXEC", 0o2000000),
)
_PAGEMAP_FLAGS = (("PE_PARENT", 1 << 0), ("PE_LAZY", 1 << 1), ("PE_PRESENT", 1 << 2))
_SEALS = (("F_SEAL_SEAL", 0x1), ("F_SEAL_SHRINK", 0x2), ("F_SEAL_GROW", 0x4), ("F_SEAL_WRITE", 0x8),
          ("F_SEAL_FUTURE_WRITE", 0x10))
FLAG_NAMES = {
    "mmap.prot": _MMAP_PROT, "mmap.flags": _MMAP_FLAGS, "mmap.status": _VMA_STATUS,
    "rfile.flags": _OPEN_FLAGS, "pmap.flags": _PAGEMAP_FLAGS, "seals.flags": _SEALS,
}
# (criu).dict = "<table>": field name -> value -> the name printed.
VALUE_NAMES = {
    "gen": {"task_state": {1: "Alive", 3: "Zombie", 6: "Stopped"}},
    "sk": {
        "family": {1: "UNIX", 2: "INET", 10: "INET6", 16: "NETLINK", 17: "PACKET"},
        "proto": {0: "IP", 6: "TCP", 17: "UDP", 136: "UDPLITE"},
        "type": {1: "STREAM", 2: "DGRAM", 3: "RAW", 5: "SEQPACKET", 10: "PACKET"},
        "state": {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
                  6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN"},
    },
}

_INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


def _flag_names(value, table):
    names = [name for name, bit in table if value & bit]
    rest = value & ~sum(bit for _, bit in table)
    if rest:
        names.append(f"{rest:#x}")
    return " | ".join(names)


def _value(field, value, in_hex):
    """One field value as crit prints it; in_hex: a hex-marked message field encloses it."""
    options = field.GetOptions().Extensions[opts_pb2.criu]
    in_hex = in_hex or options.hex
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value, in_hex)
    if field.type == FieldDescriptor.TYPE_BYTES:
        if options.conv == "unix_name":
            return quopri.encodestring(value).decode()
        return base64.encodebytes(value).decode()
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known else value
    if field.type not in _INTEGER_TYPES:
        return value  # bool, string, float
    if in_hex:
        return f"{value:#x}"
    if options.dev:  # "major:minor": the kernel's internal dev_t, or the old (userspace) one
        major, minor = (os.major(value), os.minor(value)) if options.odev else (value >> 20, value & 0xFFFFF)
        return f"{major}:{minor}"
    if options.flags:
        table = FLAG_NAMES.get(options.flags)
        return _flag_names(value, table) if table else f"{value:#x}"
    if options.dict:
        return VALUE_NAMES[options.dict].get(field.name, {}).get(value, value)
    return value


def message_to_dict(message, in_hex=False):
    """A message as crit prints it: set fields only, in field-number order."""
    result = {}
    for field, value in message.ListFields():
        if field.GetOptions().Extensions[opts_pb2.criu].ipadd:  # an address's words: [its text], as crit
            family = socket.AF_INET6 if len(value) == 4 else socket.AF_INET
            result[field.name] = [socket.inet_ntop(family, struct.pack(f"={len(value)}I", *value))]
        elif field.is_repeated:
            result[field.name] = [_value(field, item, in_hex) for item in value]
        else:
            result[field.name] = _value(field, value, in_hex)
    return result


def image_to_dict(file_name, data):
    """{"magic": ..., "entries": [...]} of image file_name from its bytes."""
    kind = kind_of(file_name)
    if kind.raw:
        return {"magic": "PAGES", "size": len(data)}
    entries = []
    for message, payload in decode_image(file_name, data):
        entry = message_to_dict(message)
        if kind.payload_field is not None:
            entry["extra"] = base64.encodebytes(payload).decode()
        entries.append(entry)
    return {"magic": kind.magic_name, "entries": entries}


def _load(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageMissing(f"no image {path}") from None
    except OSError as e:
        raise CriupyError(f"cannot read {path}: {e.strerror}") from None


def show(path):
    """JSON text of one image file, or of every image in a directory ({file name: image})."""
    if os.path.isdir(path):
        images = ImagesDir(path, "r")
        decoded = {}
        for name in images.names():
            file_name = name + ".img"
            decoded[file_name] = image_to_dict(file_name, _load(images.path(name)))
        return json.dumps(decoded, indent=4)
    return json.dumps(image_to_dict(os.path.basename(path), _load(path)), indent=4)
