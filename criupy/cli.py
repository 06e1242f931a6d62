"""The `criupy` command: a thin layer over the library.

Each subcommand parses its options, calls one library function and turns a CriupyError into
`criupy: <message>` on stderr with exit status 1 (a usage error: one such line, status 2). Modules are imported inside the command that needs
them, so that a command starts fast.
"""

import argparse
import gc
import logging
import os
import sys

from criupy.errors import CriupyError
from criupy.log import log_to


def _log_to_stderr(everything):
    """Warnings and the final error reach stderr as `criupy: <message>`; everything does with -v and no -o."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if everything else logging.WARNING)
    handler.setFormatter(logging.Formatter("criupy: %(message)s"))
    logging.getLogger("criupy").addHandler(handler)


def cmd_check(args):
    from criupy.check import check

    return 0 if check() else 1


def cmd_dump(args):
    from criupy.dump import dump

    dump(args.tree, args.images_dir, leave_running=args.leave_running, overwrite=args.overwrite,
         call_hooks=args.call_hook, shell_job=args.shell_job)
    return 0


def cmd_restore(args):
    from criupy.restore import restore

    result = restore(args.images_dir, detach=args.restore_detached, pidfile=args.pidfile, pie_plugin=args.pie_plugin,
                     call_hooks=args.call_hook, shell_job=args.shell_job)
    # Detached: the restored PID was the answer and is in the pidfile; else the exit status.
    return 0 if args.restore_detached else result


def cmd_show(args):
    from criupy.images.show import show

    print(show(args.path))
    return 0


def cmd_demo(args):
    from criupy.demo import demo

    return demo()


class _Parser(argparse.ArgumentParser):
    """A usage error is one line like every other error (argparse prints the usage first), exit status 2."""

    def error(self, message):
        self.exit(2, f"criupy: {message} (see {self.prog} --help)\n")


def _parser():
    parser = _Parser(prog="criupy", description="Checkpoint and restore Linux process trees.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, function, help):
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(function=function)
        sub.add_argument("-o", "--log-file", metavar="FILE", help="write a log to FILE")
        sub.add_argument("-v", "--verbose", action="store_true", help="log more detail")
        return sub

    command("check", cmd_check, "report whether this kernel has what criupy needs")

    dump = command("dump", cmd_dump, "dump the process tree rooted at PID into DIR")
    dump.add_argument("-t", "--tree", type=int, required=True, metavar="PID", help="root of the tree to dump")
    dump.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="directory for the images")
    dump.add_argument("-R", "--leave-running", action="store_true", help="resume the tree after the dump")
    dump.add_argument("--overwrite", action="store_true", help="replace images already in DIR")
    dump.add_argument("-j", "--shell-job", action="store_true",
                      help="dump a job of a shell: its session is the shell's, its terminal the shell's")
    dump.add_argument("--call-hook", action="append", default=[], metavar="LIB:SYMBOL",
                      help="call int SYMBOL(void) of the mapped library LIB in the process before it is dumped; "
                           "non-zero fails the dump (may repeat)")

    restore = command("restore", cmd_restore, "restore the process tree dumped in DIR")
    restore.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="directory holding the images")
    restore.add_argument("-d", "--restore-detached", action="store_true", help="return once the tree runs")
    restore.add_argument("--pidfile", metavar="FILE", help="write the restored PID to FILE")
    restore.add_argument("-j", "--shell-job", action="store_true",
                         help="restore a job dumped with --shell-job into this shell's session and terminal")
    restore.add_argument("--pie-plugin", metavar="PLUGIN",
                         help="call the hooks of PLUGIN (built by criupy-blobgen --plugin) in the restorer")
    restore.add_argument("--call-hook", action="append", default=[], metavar="LIB:SYMBOL",
                         help="call int SYMBOL(void) of the mapped library LIB in the restored process before it "
                              "resumes; non-zero fails the restore (may repeat)")

    show = command("show", cmd_show, "print images (a directory or one file) as JSON, as crit show does")
    show.add_argument("path", metavar="DIR|FILE")

    command("demo", cmd_demo, "start an example program, dump it, restore it, and show it going on")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    _log_to_stderr(everything=args.verbose and not args.log_file)
    log = logging.getLogger("criupy")
    try:
        with log_to(args.log_file, args.verbose):
            try:
                return args.function(args)
            except CriupyError as e:
                log.error("%s", e)  # to stderr, and to the log file while it is open
                return 1
    except CriupyError as e:  # the log file itself could not be opened
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


def run():
    """The `criupy` command: main(), then an exit without the interpreter's teardown of every module it
    loaded (tens of milliseconds at the end of each command). Nothing of criupy's is left to clean up once
    main() returns: the log file is closed, and the output is flushed here. Under a profiler or a tracer
    (cProfile, coverage) the interpreter exits as usual, so that they can write what they gathered.

    The cycle collector runs every 50,000 allocations instead of 700: nearly everything a command
    allocates (modules, schemas, images read) lives until its end, and at the default the collector went
    through all of it again and again, 10 to 20 ms of a small dump or restore."""
    gc.set_threshold(50_000)
    status = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return status
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return status  # the interpreter's exit reports it, as it would have
    os._exit(status)
