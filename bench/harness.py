"""The pieces every benchmark case uses: the two daemons, alternation, statistics, reports."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.containerd import ReferenceContainerd, reference_containerd, run_ctr
from tests.support.ctrpyd import Daemon

RESULTS = Path(__file__).parent / "results"


@dataclass
class Target:
    """What the ratio ctrpyd / containerd must be: at most ``limit`` (or at least, for rates)."""

    limit: float
    higher_is_better: bool = False

    def met(self, ratio: float) -> bool:
        return ratio >= self.limit if self.higher_is_better else ratio <= self.limit

    def text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.limit:g}"


@dataclass
class Measurement:
    case: str
    metric: str
    unit: str
    containerd: list[float] = field(default_factory=list)
    ctrpyd: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""

    @staticmethod
    def _summary(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}

    @property
    def ratio(self) -> float | None:
        if not self.containerd or not self.ctrpyd:
            return None
        base = statistics.median(self.containerd)
        return statistics.median(self.ctrpyd) / base if base else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["containerd"] = {"values": self.containerd, **self._summary(self.containerd)}
        data["ctrpyd"] = {"values": self.ctrpyd, **self._summary(self.ctrpyd)}
        data["ratio"] = self.ratio
        data["met"] = None if self.target is None or self.ratio is None else self.target.met(self.ratio)
        return data


@dataclass
class Daemons:
    """Both systems, running, with the same stock ctr pointed at each."""

    containerd: ReferenceContainerd
    ctrpyd: Daemon

    def ctr(self, which: str, *args: str, namespace: str = "default", timeout: float = 600) -> subprocess.CompletedProcess[str]:
        address = str(self.containerd.address if which == "containerd" else self.ctrpyd.address)
        result = run_ctr(address, *args, namespace=namespace, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} against {which} failed: {result.stderr.strip()}")
        return result

    def pid(self, which: str) -> int:
        if which == "containerd":
            return int(self.containerd.pid)  # type: ignore[arg-type]
        assert self.ctrpyd.process is not None
        return self.ctrpyd.process.pid


@contextmanager
def daemons(work: Path) -> Iterator[Daemons]:
    """Start a private containerd (CRI off) and a ctrpyd (log level info), each in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        containerd = stack.enter_context(reference_containerd(work / "containerd"))
        ours = Daemon(base=work / "ctrpyd")
        ours.base.mkdir(parents=True, exist_ok=True)
        ours.command = lambda: [a if a != "debug" else "info" for a in Daemon.command(ours)]  # type: ignore[method-assign]
        stack.callback(ours.cleanup)
        ours.start()
        yield Daemons(containerd=containerd, ctrpyd=ours)


def alternate(rounds: int, run: Callable[[str, int], float], into: Measurement) -> Measurement:
    """Run ``run(which, round)`` for containerd and ctrpyd in turn, A B A B, ``rounds`` times each."""
    for number in range(rounds):
        order = ("containerd", "ctrpyd") if number % 2 == 0 else ("ctrpyd", "containerd")
        for which in order:
            getattr(into, which).append(run(which, number))
    return into


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def machine() -> dict[str, str]:
    def version(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "containerd": version("containerd", "--version"),
        "runc": version("runc", "--version"),
        "ctr": version("ctr", "--version"),
    }


def write_report(measurements: list[Measurement], extra: dict[str, Any] | None = None) -> Path:
    """Write ``latest.json`` and ``latest.md``; return the markdown path."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    payload = {"machine": info, "measurements": [m.as_dict() for m in measurements], **(extra or {})}
    (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# ctrpyd vs containerd",
        "",
        f"Machine: {info['machine']}, {info['cpus']} CPUs, kernel {info['kernel']}; "
        f"{info['containerd']}; {info['runc']}; Python {info['python']}.",
        "",
        "| case | metric | containerd median (min-max) | ctrpyd median (min-max) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    def cell(values: list[float], unit: str) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values):.3g} {unit} ({min(values):.3g}-{max(values):.3g})"

    for m in measurements:

        ratio = m.ratio
        met = "-" if m.target is None or ratio is None else ("yes" if m.target.met(ratio) else "**no**")
        lines.append(
            f"| {m.case} | {m.metric} | {cell(m.containerd, m.unit)} | {cell(m.ctrpyd, m.unit)} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {m.target.text() if m.target else '-'} | {met} |"
        )
    notes = [f"- {m.case}, {m.metric}: {m.note}" for m in measurements if m.note]
    if notes:
        lines += ["", *notes]
    path = RESULTS / "latest.md"
    path.write_text("\n".join(lines) + "\n")
    return path
