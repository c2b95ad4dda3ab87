"""The results: ``bench/results/latest.json`` (every value) and ``latest.md`` (the tables)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .harness import Measurement

RESULTS = Path(__file__).parent / "results"
REPOSITORY = Path(__file__).resolve().parent.parent


def _first_line(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPOSITORY).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError):
        return "?"


def machine() -> dict[str, str]:
    """The machine and the versions of everything compared."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    commit = _first_line("git", "rev-parse", "--short", "HEAD")
    if _first_line("git", "status", "--porcelain", "--untracked-files=no") not in ("", "?"):
        commit += " (with local changes)"
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "containerd": _first_line("containerd", "--version"),
        "runc": _first_line("runc", "--version"),
        "ctr": _first_line("ctr", "--version"),
        "ctrpy": commit,
    }


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def cell(values: Sequence[float], unit: str) -> str:
    """``median unit (min-max)``, or ``-`` when nothing was measured."""
    if not values:
        return "-"
    median = _number(statistics.median(values))
    if len(values) == 1:
        return f"{median} {unit}"
    return f"{median} {unit} ({_number(min(values))}-{_number(max(values))})"


def _ratio(m: Measurement) -> str:
    return "-" if m.ratio is None else f"{m.ratio:.2f}"


def _met(m: Measurement) -> str:
    return {None: "-", True: "yes", False: "**no**"}[m.met]


def targets_table(measurements: Sequence[Measurement]) -> list[str]:
    """The markdown table of the measurements that have a target."""
    lines = [
        "| case | metric | containerd median (min-max) | ctrpyd median (min-max) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        if m.target is not None:
            lines.append(
                f"| {m.case} | {m.metric} | {cell(m.containerd, m.unit)} | {cell(m.ctrpyd, m.unit)} "
                f"| {_ratio(m)} | {m.target.text()} | {_met(m)} |"
            )
    return lines


def details(measurements: Sequence[Measurement]) -> list[str]:
    """One table per case with every measurement of it, then the notes."""
    lines: list[str] = []
    cases: list[str] = []
    for m in measurements:
        if m.case not in cases:
            cases.append(m.case)
    for case in cases:
        lines += [
            "",
            f"### {case}",
            "",
            "| metric | containerd median (min-max) | ctrpyd median (min-max) | ratio |",
            "|---|---|---|---|",
        ]
        for m in measurements:
            if m.case == case:
                lines.append(f"| {m.metric} | {cell(m.containerd, m.unit)} | {cell(m.ctrpyd, m.unit)} | {_ratio(m)} |")
        notes = [m.note for m in measurements if m.case == case and m.note]
        if notes:
            lines += ["", *(f"- {note}" for note in dict.fromkeys(notes))]
    return lines


def write_report(measurements: Sequence[Measurement], settings: dict[str, Any] | None = None) -> Path:
    """Write ``latest.json`` and ``latest.md``; return the markdown path."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    payload = {
        "date": when,
        "machine": info,
        "settings": settings or {},
        "measurements": [m.as_dict() for m in measurements],
    }
    (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    run = ", ".join(f"{k} {v}" for k, v in (settings or {}).items())
    lines = [
        "# ctrpyd vs containerd",
        "",
        f"{when}. Machine: {info['cpu']}, {info['cpus']} CPUs, {info['machine']}, kernel {info['kernel']}. "
        f"{info['containerd']}; {info['runc']}; {info['ctr']}; Python {info['python']}; ctrpy {info['ctrpy']}.",
        f"Settings: {run}." if run else "",
        "",
        "Ratios are ctrpyd / containerd of the medians; both daemons ran in the same run, alternating.",
        "",
        *targets_table(measurements),
        "",
        "## Every measurement",
        *details(measurements),
    ]
    path = RESULTS / "latest.md"
    path.write_text("\n".join(lines) + "\n")
    return path
