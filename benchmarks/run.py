#!/usr/bin/env python3
"""criupy's benchmark: dump and restore times against the machine's own memory-to-file speed.

    python3 benchmarks/run.py [--sizes 16M,256M,1G,4G] [--repeat 3] [--criu /usr/sbin/criu] [--json FILE]
                              [--python VENV/bin/python]

Run as root from the repository. For every case (C victims from benchmarks/victims holding written
anonymous memory, a tiny C counter, a 100-thread victim and a 20-process tree) and every target
directory (a tmpfs and a disk), each repeat runs the physical baseline (the same bytes written from
memory to a file on the same filesystem, then read back into fresh memory), then `criupy dump` and
`criupy restore -d` (and the same with criu if --criu is given; the tools take turns going first), and
checks the restored memory's checksum. Prints the best and median of each figure and writes everything as JSON.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VICTIMS = Path(__file__).resolve().parent / "victims"
COUNTER_SOURCE = REPO / "tests" / "victims" / "counter.c"
PR_SET_CHILD_SUBREAPER = 36
MIB = 1 << 20


@dataclass
class Case:
    name: str
    mib: int           # written anonymous memory
    threads: int = 0   # extra threads
    children: int = 0  # child processes (the tree has children + 1 processes)
    counter: bool = False  # the tiny C counter of tests/victims instead of memhold


@dataclass
class Run:
    """One repeat of one tool on one case and target: seconds, and criupy's peak RSS in KiB."""

    dump_wall: float = None
    restore_wall: float = None
    frozen: float = None     # from stats-dump
    memdump: float = None
    memwrite: float = None
    dump_maxrss_kib: int = None
    restore_maxrss_kib: int = None
    dump_cpu: float = None     # user + system time of the command: less swayed by a busy machine than wall
    restore_cpu: float = None
    verified: bool = False
    dumped_pss_kib: int = None    # memory of the victim's tree (its Pss summed) before the dump
    restored_pss_kib: int = None  # and of the restored tree: a copy each of what processes shared would show


@dataclass
class Result:
    case: str
    target: str
    tool: str
    runs: list = field(default_factory=list)
    baseline: list = field(default_factory=list)  # {"write": s, "read": s} per repeat
    error: str = None


def parse_size(text):
    units = {"M": 1, "G": 1024}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def build(out_dir):
    """Compile the victims and the baseline program; returns {name: path}."""
    sources = {"memhold": VICTIMS / "memhold.c", "baseline": VICTIMS / "baseline.c", "counter": COUNTER_SOURCE}
    built = {}
    for name, source in sources.items():
        built[name] = str(out_dir / name)
        subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", built[name], str(source)], check=True)
    return built


class Victim:
    """A victim started in its own session, its output (and input) a regular file in work_dir."""

    def __init__(self, programs, case, work_dir):
        self.case = case
        self.output = work_dir / f"victim-{case.name}.out"
        self.output.write_text("")
        argv = ([programs["counter"], "5"] if case.counter
                else [programs["memhold"], str(case.mib), str(case.threads), str(case.children)])
        with open(self.output, "r+") as out:
            self.process = subprocess.Popen(argv, stdin=out, stdout=out, stderr=out, start_new_session=True)
        self.pid = self.process.pid
        self.checksum = self._wait_for_line("ready" if not case.counter else "0", timeout=600)
        self.children = []
        if not case.counter:
            deadline = time.monotonic() + 60
            while len(self.children) < case.children and time.monotonic() < deadline:
                time.sleep(0.01)
                self.children = descendants(self.pid)

    def _wait_for_line(self, word, timeout, after=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.output.read_text().splitlines()[after:]
            for line in lines:
                if line.split()[:1] == [word]:
                    return line.split()[-1]
            time.sleep(0.01)
        raise RuntimeError(f"victim {self.case.name}: no '{word}' line within {timeout} s")

    def verify_restored(self, pid):
        """After a restore: memhold's checksum of the restored memory matches; the counter goes on."""
        before = len(self.output.read_text().splitlines())
        if self.case.counter:
            time.sleep(0.05)
            numbers = [int(n) for n in self.output.read_text().split()]
            return len(numbers) > before and numbers == list(range(len(numbers)))
        os.kill(pid, signal.SIGUSR1)
        return self._wait_for_line("checksum", timeout=120, after=before) == self.checksum

    def reap_dumped(self):
        """The dumped victim (killed by the dump): reap it; kill it (and its children) if still there."""
        if self.process.poll() is None:
            kill_tree(self.pid)
        self.process.wait()
        # Its children were re-parented to us (subreaper): reap them, so their PIDs are free to restore.
        deadline = time.monotonic() + 30
        for child in self.children:
            while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
                reap_orphans()
                time.sleep(0.01)


def descendants(pid):
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    for child in list(found):
        found += descendants(child)
    return found


def tree_pss_kib(pid):
    """The memory PID and its descendants take: their Pss (each shared page counted once in all), in KiB."""
    total = 0
    for member in [pid] + descendants(pid):
        for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def kill_tree(pid):
    """Kill PID and its descendants (all started by this run), by PID; reap what is ours (we are subreaper)."""
    for target in [pid] + descendants(pid):
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_orphans()


def reap_orphans():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def timed(argv, env=None, stdout=subprocess.DEVNULL):
    """Run argv; (exit status, wall seconds, peak RSS in KiB, last stderr line, user + system seconds)."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    return process.returncode, wall, usage.ru_maxrss, lines[-1] if lines else "", usage.ru_utime + usage.ru_stime


class Tool:
    def __init__(self, name, command, env=None):
        self.name = name
        self.command = command
        self.env = env

    def dump(self, pid, images):
        return timed(self.command + ["dump", "-t", str(pid), "-D", str(images)] + self.dump_extra(images),
                     env=self.env)

    def restore(self, images, pidfile):
        return timed(self.command + ["restore", "-d", "-D", str(images), "--pidfile", str(pidfile)]
                     + self.restore_extra(images), env=self.env)

    def dump_extra(self, images):
        return []

    def restore_extra(self, images):
        return []


class Criu(Tool):
    def dump_extra(self, images):
        return ["-o", "dump.log"]

    def restore_extra(self, images):
        return ["-o", "restore.log"]

    @staticmethod
    def failure(images, line, log):
        """criu prints little on failure: its log's first and last error lines say why."""
        try:
            errors = [l for l in (images / log).read_text(errors="replace").splitlines()
                      if l.startswith("Error") and "exited, status" not in l]
        except OSError:
            errors = []
        if not errors:
            return line or "failed"
        return errors[0] if len(errors) == 1 else f"{errors[0]} ... {errors[-1]}"


def criupy_env(work_dir):
    """criupy's environment: the repository first on the path, and its modules' bytecode compiled once.

    Installed with pip, criupy's .pyc files exist; from a checkout with PYTHONDONTWRITEBYTECODE every
    command would compile its modules again. The bytecode goes to work_dir, not into the checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(work_dir / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    warm_up = ("import importlib, pkgutil, criupy\n"
               "for m in pkgutil.walk_packages(criupy.__path__, 'criupy.'):\n"
               "    if m.name.rpartition('.')[2] not in ('__main__', 'protogen'): importlib.import_module(m.name)\n")
    subprocess.run([sys.executable, "-c", warm_up], env=env, check=True)
    return env


def installed_env(python):
    """The environment to run the criupy installed for python (a venv, say), after checking that it is
    this checkout's: every module of the installed package the same as the repository's."""
    try:
        found = subprocess.run([python, "-P", "-c", "import criupy, os; print(os.path.dirname(criupy.__file__))"],
                               capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"run.py: cannot run {python}: {e.strerror}")
    if found.returncode:
        sys.exit(f"run.py: {python} has no criupy installed (python3 -m venv V && V/bin/pip install .)")
    installed = Path(found.stdout.strip())
    differing = [str(source.relative_to(REPO)) for source in (REPO / "criupy").rglob("*.py")
                 if not (installed / source.relative_to(REPO / "criupy")).is_file()
                 or (installed / source.relative_to(REPO / "criupy")).read_bytes() != source.read_bytes()]
    if differing:
        sys.exit(f"run.py: the criupy installed for {python} is not this checkout's ({differing[0]} differs): "
                 "reinstall it with pip install .")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def python_startup(repeat, python):
    """The floor of every command's wall time: `python3 -c pass` (site and .pth files included)."""
    result = Result("python3 -c pass", "-", "python")
    for _ in range(repeat):
        _, wall, maxrss, _, cpu = timed([python, "-c", "pass"])
        result.runs.append(Run(dump_wall=wall, restore_wall=wall, dump_maxrss_kib=maxrss, restore_maxrss_kib=maxrss,
                               dump_cpu=cpu, restore_cpu=cpu))
    return result


def read_stats(images):
    from criupy.images import ImagesDir

    (entry,) = ImagesDir(str(images), "r").read("stats-dump")
    return entry.dump


def one_run(tool, programs, case, work_dir, images):
    """Dump and restore one fresh victim with tool: (Run, error or None)."""
    run = Run()
    victim = Victim(programs, case, work_dir)
    restored = None
    try:
        images.mkdir()
        run.dumped_pss_kib = tree_pss_kib(victim.pid)
        status, run.dump_wall, run.dump_maxrss_kib, line, run.dump_cpu = tool.dump(victim.pid, images)
        if status:
            return run, (Criu.failure(images, line, "dump.log") if isinstance(tool, Criu) else line) or "dump failed"
        victim.reap_dumped()
        stats = read_stats(images)
        run.frozen, run.memdump, run.memwrite = (stats.frozen_time / 1e6, stats.memdump_time / 1e6,
                                                 stats.memwrite_time / 1e6)
        pidfile = work_dir / "restored.pid"
        pidfile.unlink(missing_ok=True)
        status, run.restore_wall, run.restore_maxrss_kib, line, run.restore_cpu = tool.restore(images, pidfile)
        if pidfile.exists():
            restored = int(pidfile.read_text())
        if status:
            return run, ((Criu.failure(images, line, "restore.log") if isinstance(tool, Criu) else line)
                         or "restore failed")
        run.verified = victim.verify_restored(restored)
        if not run.verified:
            return run, "restored memory or output differs from the dumped one"
        run.restored_pss_kib = tree_pss_kib(restored)
        return run, None
    finally:
        if restored:  # first: the restored tree has the dumped PIDs, which reap_dumped waits to see gone
            kill_tree(restored)
        victim.reap_dumped()
        shutil.rmtree(images, ignore_errors=True)
        reap_orphans()


def baseline(programs, case, directory):
    out = subprocess.run([programs["baseline"], str(max(case.mib, 1)), str(directory / "baseline.data")],
                         check=True, capture_output=True, text=True).stdout.split()
    return {"write": float(out[1]), "read": float(out[3])}


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"best": min(values), "median": statistics.median(values)}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_time(s):
    if s is None:
        return "-"
    return f"{s * 1000:.1f}ms" if s < 1 else f"{s:.2f}s"


def fmt_memory(dumped_kib, restored_kib):
    if dumped_kib is None or restored_kib is None:
        return "-"
    return f"{dumped_kib / 1024:.0f}/{restored_kib / 1024:.0f} MiB"


def fmt_pair(pair, fmt=fmt_time):
    return "-" if pair is None else f"{fmt(pair['best'])} / {fmt(pair['median'])}"


def ratio(pair, base):
    if pair is None or base is None or not base["median"]:
        return "-"
    return f"{pair['median'] / base['median']:.2f}x"


def report(results):
    """The table: each figure as best / median over the repeats, with its baseline and the ratios of medians."""
    header = ("case", "target", "tool", "dump wall", "frozen", "mem write", "baseline write", "write/base",
              "frozen/base", "restore wall", "baseline read", "restore/base", "cpu dump/restore", "peak RSS dump/restore",
              "victim memory dumped/restored")
    rows, notes = [header], []
    for r in results:
        if r.runs:
            write = summary([b["write"] for b in r.baseline])
            read = summary([b["read"] for b in r.baseline])
            frozen = summary([x.frozen for x in r.runs])
            memwrite = summary([x.memwrite for x in r.runs])
            restore_wall = summary([x.restore_wall for x in r.runs])
            rss = (max(x.dump_maxrss_kib for x in r.runs), max(x.restore_maxrss_kib for x in r.runs))
            rows.append((r.case, r.target, r.tool, fmt_pair(summary([x.dump_wall for x in r.runs])),
                         fmt_pair(frozen), fmt_pair(memwrite), fmt_pair(write), ratio(memwrite, write),
                         ratio(frozen, write), fmt_pair(restore_wall), fmt_pair(read), ratio(restore_wall, read),
                         f"{fmt_time(median([x.dump_cpu for x in r.runs]))}/"
                         f"{fmt_time(median([x.restore_cpu for x in r.runs]))}",
                         f"{rss[0] // 1024}/{rss[1] // 1024} MiB",
                         fmt_memory(median([x.dumped_pss_kib for x in r.runs]),
                                    median([x.restored_pss_kib for x in r.runs]))))
        if r.error:
            error = r.error.removeprefix("criupy: ")
            notes.append(f"{r.case} {r.target} {r.tool}: {error[:150]}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ["", "times: best / median of the repeats; ratios: of the medians; cpu: median user+system; "
                                "victim memory: median Pss of its tree"]
                     + notes)


def plot(results, sizes, path):
    """Time against size for the memory victims (sizes: their case names -> MiB), if matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots()
    series = {}
    for r in results:
        if r.runs and r.case in sizes and not r.error:
            mib = sizes[r.case]
            for label, values in ((f"{r.tool} dump {r.target}", [x.dump_wall for x in r.runs]),
                                  (f"{r.tool} restore {r.target}", [x.restore_wall for x in r.runs]),
                                  (f"baseline write {r.target}", [b["write"] for b in r.baseline]),
                                  (f"baseline read {r.target}", [b["read"] for b in r.baseline])):
                series.setdefault(label, {})[mib] = statistics.median(values)
    styles = {"baseline": "--", "criu": ":", "criupy": "-"}  # by who: colours alone repeat after ten series
    for label, points in sorted(series.items()):
        mibs = sorted(points)
        axis.plot(mibs, [points[m] for m in mibs], marker="o", linestyle=styles[label.split()[0]], label=label)
    axis.set_xlabel("MiB")
    axis.set_ylabel("seconds (median)")
    axis.legend(fontsize="small")
    figure.savefig(path)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16M,256M,1G,4G", help="memory victims (default 16M,256M,1G,4G)")
    parser.add_argument("--no-extras", action="store_true", help="skip the counter, 100-thread and tree victims")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every figure (default 3)")
    parser.add_argument("--tmpfs", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    parser.add_argument("--disk", default="/var/tmp", help="disk directory (default /var/tmp)")
    parser.add_argument("--targets", default="tmpfs,disk", help="which of tmpfs,disk (default both)")
    parser.add_argument("--criu", metavar="PATH", help="also measure this criu binary")
    parser.add_argument("--json", default="benchmark-results.json", help="where to write the results")
    parser.add_argument("--python", metavar="PATH", help="run the criupy installed for this interpreter (a venv "
                        "with `pip install .`: start-up without this checkout's editable install)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run.py: run as root (dump and restore need it)")

    sys.path.insert(0, str(REPO))
    cases = [Case(size.upper(), parse_size(size)) for size in args.sizes.split(",") if size]
    memory_sizes = {case.name: case.mib for case in cases}  # the cases the plot shows, before the extras
    if not args.no_extras:
        cases += [Case("counter", 0, counter=True), Case("100 threads 256M", 256, threads=100),
                  Case("20 procs 16M", 16, children=19)]
    targets = {"tmpfs": Path(args.tmpfs), "disk": Path(args.disk)}
    targets = {name: targets[name] for name in args.targets.split(",")}

    # Restored victims are re-parented to us, so we can reap them.
    import ctypes
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    results = []
    work_dirs = {name: Path(tempfile.mkdtemp(prefix="criupy-bench-", dir=path)) for name, path in targets.items()}
    try:
        first_work_dir = work_dirs[next(iter(work_dirs))]
        programs = build(first_work_dir)
        python = args.python or sys.executable
        env = installed_env(python) if args.python else criupy_env(first_work_dir)
        # -P: the criupy installed for python, not this checkout's from the current directory
        tools = [Tool("criupy", [python, "-P", "-m", "criupy"] if args.python else [python, "-m", "criupy"], env)]
        if args.criu:
            tools.append(Criu("criu", [args.criu]))
        results.append(python_startup(args.repeat, python))
        for case in cases:
            for target, work_dir in work_dirs.items():
                by_tool = {tool.name: Result(case.name, target, tool.name) for tool in tools}
                for repeat in range(args.repeat):
                    base = None if case.counter else baseline(programs, case, work_dir)
                    # the tools take turns going first after the baseline: this VM's memory is slower
                    # for whatever touches it first, and that should not always be the same tool
                    for tool in tools if repeat % 2 == 0 else tools[::-1]:
                        result = by_tool[tool.name]
                        if result.error:
                            continue
                        if base:
                            result.baseline.append(base)
                        run, error = one_run(tool, programs, case, work_dir, work_dir / "images")
                        if error:
                            result.error = error
                        else:
                            result.runs.append(run)
                        print(f"{case.name} {target} {tool.name} #{repeat + 1}: "
                              f"{error or f'dump {fmt_time(run.dump_wall)} restore {fmt_time(run.restore_wall)}'}",
                              file=sys.stderr, flush=True)
                results += by_tool.values()
    finally:
        for work_dir in work_dirs.values():
            shutil.rmtree(work_dir, ignore_errors=True)
        reap_orphans()

    print(report(results))
    with open(args.json, "w") as f:
        json.dump([dict(asdict(r), runs=[asdict(x) for x in r.runs]) for r in results], f, indent=1)
    print(f"results in {args.json}" + (", plot in benchmark-results.png"
                                       if plot(results, memory_sizes, "benchmark-results.png") else ""))


if __name__ == "__main__":
    main()
