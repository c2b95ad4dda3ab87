"""The pieces every benchmark case uses: the two daemons, alternation, statistics.

:func:`daemons` starts a private containerd (CRI off) and a ctrpyd side by side, each in its
own CPU-accounting cgroup (see :mod:`bench.procs`), records each one's idle memory, and on exit
tears both down with everything they started. Cases address a daemon by name, ``"containerd"``
or ``"ctrpyd"``; container ids carry a letter per daemon (``c-...``/``p-...``) and everything
runs in one namespace of its own, so that the two never share a cgroup path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctrpy.client import Client
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.containerd import ReferenceContainerd, reference_containerd, remove_cgroups, run_ctr
from tests.support.containerd import shim_pids as containerd_shim_pids
from tests.support.ctrpyd import Daemon

from .procs import CpuGroup, children, comm, read_pid, smaps

WHICH = ("containerd", "ctrpyd")
LETTER = {"containerd": "c", "ctrpyd": "p"}
BUSYBOX = "docker.io/library/busybox:latest"
TEMPLATE_COMM = "ctrpy-template"


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
    """One metric of one case: the values measured on each daemon, and what the ratio must be."""

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

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        return None if self.target is None or ratio is None else self.target.met(ratio)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["containerd"] = {"values": self.containerd, **self._summary(self.containerd)}
        data["ctrpyd"] = {"values": self.ctrpyd, **self._summary(self.ctrpyd)}
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


@dataclass(frozen=True)
class Settings:
    """How much each case does (``--quick`` shrinks everything for a smoke run)."""

    runs: int = 30  # ctr run --rm and API lifecycles per daemon
    rounds: int = 3  # rounds of the slow cases (throughput, metadata, import) per daemon
    containers: int = 50  # running at once in the throughput and memory case
    concurrency: int = 4  # ctr processes at a time in the throughput case
    metadata: int = 1000  # containers in the metadata case
    import_mb: int = 200  # size of the generated image in the import case
    scale: tuple[int, ...] = (0, 100, 500)  # containers running at each level of the scale case
    scale_runs: int = 7  # ctr run --rm per level and daemon in the scale case

    @classmethod
    def quick(cls) -> Settings:
        return cls(runs=5, rounds=1, containers=10, metadata=200, import_mb=50, scale=(0, 10), scale_runs=3)


@dataclass
class Daemons:
    """Both systems, running, with the same stock ctr pointed at each."""

    containerd: ReferenceContainerd
    ctrpyd: Daemon
    work: Path
    namespace: str
    cpu: dict[str, CpuGroup]
    idle: dict[str, dict[str, int]] = field(default_factory=dict)
    busybox_chain: str = ""  # the chain id of the busybox image's top layer, once imported

    def address(self, which: str) -> str:
        return str(self.containerd.address if which == "containerd" else self.ctrpyd.address)

    def ctr(
        self, which: str, *args: str, namespace: str | None = None, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the stock ctr against ``which`` (in the bench namespace unless told otherwise).

        Raises RuntimeError with ctr's stderr when it fails and ``check`` is true.
        """
        result = run_ctr(self.address(which), *args, namespace=namespace or self.namespace, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} against {which} failed: {result.stderr.strip()}")
        return result

    def client(self, which: str, namespace: str | None = None) -> Client:
        """A Python API client (ctrpy.client) for ``which``."""
        return Client(self.address(which), namespace or self.namespace, timeout=120)

    def container_id(self, which: str, *parts: object) -> str:
        """A container id for ``which``: ``<c|p>-<parts...>``."""
        return "-".join([LETTER[which], *map(str, parts)])

    def run_flags(self, which: str) -> list[str]:
        """``ctr run`` flags that keep ctr's FIFOs and runc's state in the work directory."""
        letter = LETTER[which]
        return ["--fifo-dir", str(self.work / f"fifo-{letter}"), "--runc-root", str(self.work / f"runc-{letter}")]

    def pid(self, which: str) -> int:
        process = self.containerd.process if which == "containerd" else self.ctrpyd.process
        assert process is not None
        return process.pid

    def shim_pids(self, which: str) -> list[int]:
        """Pids of the live shims of ``which``."""
        if which == "containerd":
            return containerd_shim_pids(self.containerd.address)
        pids = (read_pid(path) for path in (self.ctrpyd.state / "tasks").glob("*/*/shim.pid"))
        return [pid for pid in pids if pid is not None and comm(pid) == "ctrpy-shim"]

    def template_pid(self) -> int | None:
        """ctrpyd's shim template process, a child of ctrpyd."""
        for pid in children(self.pid("ctrpyd")):
            if comm(pid) == TEMPLATE_COMM:
                return pid
        return None

    def busybox(self) -> str:
        """Import the busybox test image into both daemons (once); return its reference."""
        if not self.busybox_chain:
            archive = self.work / "busybox.tar"
            info = write_oci_layout_tar(busybox_image(BUSYBOX), archive)
            for which in WHICH:
                self.ctr(which, "images", "import", str(archive))
            self.busybox_chain = info.chain_ids[-1]
        return BUSYBOX


def _tear_down_ctrpyd(ours: Daemon) -> None:
    """Remove every task and container of ctrpyd through ctr, then kill by pid what is left
    (shims, and init processes still in a cgroup of their namespace)."""
    if ours.process is not None and ours.process.poll() is None:

        def quiet(*args: str, ns: str = "default") -> list[str]:
            try:
                result = ours.ctr(*args, namespace=ns, timeout=30)
            except subprocess.TimeoutExpired:
                return []
            return result.stdout.split() if result.returncode == 0 else []

        for ns in quiet("namespaces", "ls", "-q"):
            for task in quiet("tasks", "ls", "-q", ns=ns):
                quiet("tasks", "kill", "--all", "--signal", "SIGKILL", task, ns=ns)
                quiet("tasks", "delete", "--force", task, ns=ns)
            for container in quiet("containers", "ls", "-q", ns=ns):
                quiet("containers", "delete", container, ns=ns)
    for bundle in (ours.state / "tasks").glob("*/*"):
        init = read_pid(bundle / "init.pid")
        cgroup = Path(f"/proc/{init}/cgroup")
        with contextlib.suppress(OSError):
            if init is not None and f"/{bundle.parent.name}/" in cgroup.read_text():
                os.kill(init, signal.SIGKILL)
        shim = read_pid(bundle / "shim.pid")
        if shim is not None and comm(shim) == "ctrpy-shim":
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim, signal.SIGKILL)


def _settle(seconds: float = 1.0) -> None:
    time.sleep(seconds)


@contextmanager
def daemons(work: Path) -> Iterator[Daemons]:
    """Start a private containerd (CRI off) and a ctrpyd (log level info), each in ``work`` and
    in its own CPU cgroup; on exit stop both and remove what they left."""
    work.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(3)
    namespace = f"bench-{token}"
    with ExitStack() as stack:
        groups = {which: CpuGroup(f"ctrpy-bench-{token}/{which}") for which in WHICH}
        for group in groups.values():
            stack.callback(group.remove)
        stack.callback(remove_cgroups, namespace)
        with groups["containerd"].entered():
            containerd = stack.enter_context(reference_containerd(work / "containerd"))
        ours = Daemon(base=work / "ctrpyd")
        ours.base.mkdir(parents=True, exist_ok=True)
        ours.command = lambda: [a if a != "debug" else "info" for a in Daemon.command(ours)]  # type: ignore[method-assign]
        stack.callback(ours.cleanup)
        stack.callback(_tear_down_ctrpyd, ours)
        with groups["ctrpyd"].entered():
            ours.start()
        d = Daemons(containerd=containerd, ctrpyd=ours, work=work, namespace=namespace, cpu=groups)
        _settle()
        d.idle = {which: smaps(d.pid(which)) for which in WHICH}
        template = d.template_pid()
        if template is not None:
            d.idle["template"] = smaps(template)
        yield d


def alternate(rounds: int, run: Callable[[str, int], float], into: Measurement) -> Measurement:
    """Run ``run(which, round)`` for containerd and ctrpyd in turn, A B A B, ``rounds`` times each."""
    for number in range(rounds):
        for which in order(number):
            getattr(into, which).append(run(which, number))
    return into


def order(number: int) -> tuple[str, str]:
    """Who goes first in round ``number``: containerd in even rounds, ctrpyd in odd ones."""
    return WHICH if number % 2 == 0 else (WHICH[1], WHICH[0])


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
