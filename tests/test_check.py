"""`criupy check` on this machine, and its verdict when a required feature is missing."""

import io
import subprocess

import criupy.check as check_module


def test_check_reports_every_feature_and_passes_here():
    result = subprocess.run(["criupy", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == [p.name for p in check_module.PROBES]
    by_name = {p.name: line for p, line in zip(check_module.PROBES, lines)}
    assert " yes " in by_name["clone3 with set_tid"]
    # This machine's kernel has the three-area vDSO and no soft-dirty tracking.
    assert "[vvar_vclock]" in by_name["vDSO layout"]
    assert " no " in by_name["soft-dirty"]


def _missing():
    raise OSError(0, "not here")


def test_check_fails_when_a_required_feature_is_missing(monkeypatch):
    probes = (
        check_module.Probe("memfd", check_module.probe_memfd, True),
        check_module.Probe("imaginary", _missing, True),
    )
    monkeypatch.setattr(check_module, "PROBES", probes)
    out = io.StringIO()
    assert check_module.check(out) is False
    assert "imaginary            MISSING  (required) not here" in out.getvalue()


def test_check_passes_when_only_an_optional_feature_is_missing(monkeypatch):
    probes = (check_module.Probe("imaginary", _missing, False),)
    monkeypatch.setattr(check_module, "PROBES", probes)
    out = io.StringIO()
    assert check_module.check(out) is True
    assert " no " in out.getvalue()
