"""criupy: checkpoint and restore of Linux process trees, the way CRIU does it.

The library API is what the command line uses:

    criupy.dump(pid, images_dir, leave_running=False)
    criupy.restore(images_dir, detach=False)

Both raise criupy.CriupyError with a one-line message on any failure a user can act on.
"""

from criupy.errors import CriupyError

__all__ = ["CriupyError", "dump", "restore"]


def dump(pid, images_dir, leave_running=False, **options):
    """Dump the process tree rooted at PID into images_dir (see criupy.dump.dump)."""
    # Imported here so that `import criupy` stays cheap for commands that do not dump.
    from criupy.dump import dump as dump_tree

    return dump_tree(pid, images_dir, leave_running=leave_running, **options)


def restore(images_dir, detach=False, **options):
    """Restore the process tree dumped in images_dir (see criupy.restore.restore)."""
    from criupy.restore import restore as restore_tree

    return restore_tree(images_dir, detach=detach, **options)
