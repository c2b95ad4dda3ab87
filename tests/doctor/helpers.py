"""Running ``ctrpy doctor`` as a user would, and reading what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.ctrpyd import Daemon


def doctor(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``ctrpy doctor --root <root> --state <state> ARGS`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "ctrpy.cli.main", "doctor", "--root", str(daemon.root),
         "--state", str(daemon.state), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def doctor_json(daemon: Daemon, *args: str) -> tuple[int, dict[str, Any]]:
    """The exit status and the JSON report of a doctor run."""
    result = doctor(daemon, "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def rows(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The table's lines after the header."""
    lines = result.stdout.splitlines()
    assert lines and lines[0].split() == ["CHECK", "OBJECT", "PROBLEM", "ACTION"], result.stdout
    return lines[1:]


def problems(report: dict[str, Any]) -> set[tuple[str, str]]:
    """(check, object) of every finding of a JSON report."""
    return {(f["check"], f["object"]) for f in report["findings"]}


def mounted_below(path: object) -> list[str]:
    """Mount points at or below ``path``."""
    base = str(path)
    with open("/proc/self/mountinfo") as table:
        points = [line.split()[4] for line in table]
    return [p for p in points if p == base or p.startswith(base + "/")]
