from criupy.cli import run

raise SystemExit(run())
