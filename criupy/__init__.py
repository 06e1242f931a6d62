"""criupy: checkpoint and restore of Linux process trees, the way CRIU does it.

The library API is what the command line uses:

    criupy.dump(pid, images_dir, leave_running=False)
    criupy.restore(images_dir, detach=False)

Both raise criupy.CriupyError with a one-line message on any failure a user can act on.
"""

# The packages criupy.dump and criupy.restore import their heavy parts inside the functions, so these
# imports stay cheap. Binding the functions here, after the packages are loaded, keeps `criupy.dump`
# the function: Python sets a package's attribute to a subpackage only when it first loads it.
from criupy.dump import dump
from criupy.errors import CriupyError
from criupy.restore import restore

__all__ = ["CriupyError", "dump", "restore"]
