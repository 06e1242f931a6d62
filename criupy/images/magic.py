"""CRIU's image magic numbers (criu/include/magic.h) for the image kinds criupy knows.

Every image starts with two u32: IMG_COMMON (IMG_SERVICE for the stats images) and then the
image's own magic. inventory.img alone has only its own magic. pages-N.img has no header at all.
"""

IMG_COMMON = 0x54564319
IMG_SERVICE = 0x55105940

# inventory_entry.img_version of images laid out as above (CRTOOLS_IMAGES_V1_1).
IMAGES_V1_1 = 2

# Image magic -> the name crit prints for it.
INVENTORY = 0x58313116
PSTREE = 0x50273030
CORE = 0x55053847
IDS = 0x54432030
MM = 0x57492820
VMAS = 0x54123737
PAGEMAP = 0x56084025
FDINFO = 0x56213732
FILES = 0x56303138
FS = 0x51403912
CREDS = 0x54023547
SIGACT = 0x55344201
ITIMERS = 0x57464056
POSIX_TIMERS = 0x52603957
RLIMIT = 0x57113925
REG_FILES = 0x50363636
PIPES = 0x56513555
PIPES_DATA = 0x56453709
FIFO = 0x58364939
FIFO_DATA = 0x59333054
UNIXSK = 0x54373943
EVENTFD_FILE = 0x44523722
EVENTPOLL_FILE = 0x45023858
EVENTPOLL_TFD = 0x44433746
SIGNALFD = 0x57323820
TIMERFD = 0x50493712
MEMFD_INODE = 0x48453499
TTY_FILES = 0x59433025
TTY_INFO = 0x59453036
TTY_DATA = 0x59413026
IPCNS_SHM = 0x46283044
IPC_VAR = 0x53115007
UTSNS = 0x54473203
PIDNS = 0x61157326
NS_FILES = 0x61394011
STATS = 0x57093306

NAMES = {value: name for name, value in globals().items()
         if name.isupper() and name not in ("IMG_COMMON", "IMG_SERVICE", "IMAGES_V1_1", "NAMES")}
