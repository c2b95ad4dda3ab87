"""Cost as work grows: the same figures with 0, 100 and 500 containers running (``--scale``).

For one daemon at a time (the other idle, with nothing running), and for each level N in
ascending order: containers (``sleep 3600``) are started with ``ctr run -d``, ``s.concurrency``
at a time, until N run; then, with the N running and after a warm-up call of each:

- ``ctr run --rm busybox true`` latency (``s.scale_runs`` times);
- Containers.List and Tasks.List latency through the Python API client (one connection), and
  ``ctr tasks ls`` wall time (a new ctr process each time, as people use it);
- the daemon's RSS, and the PSS of all its shims (ctrpyd's shim template included, shared out);
- the restart: the daemon is killed with SIGKILL and started again, and the time from its start
  until Tasks.List lists all N RUNNING is taken (polled every 10 ms over fresh connections).

The restart is the last figure of each level; the next level adds containers to the restarted
daemon. Each level must fit in memory (``MiB_PER_CONTAINER`` each, checked against
MemAvailable) and start within ``START_LIMIT`` seconds, else the case stops there and says so.
After the last level the daemon's containers are removed (``ctr tasks rm -f``, ``containers
rm``) before the other daemon's turn.

Besides the measurements (in latest.json and latest.md), the curves go to
``bench/results/scale.md`` (a table) and ``bench/results/scale.png`` (a plot, with matplotlib
from the dev extra; skipped with a note when it is not installed).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.api.containerd.types.task import task_pb2
from ctrpy.client import Client
from ctrpy.errors import CtrpyError
from tests.support.containerd import CONTAINERD

from .harness import WHICH, Daemons, Measurement, Settings, progress, timed
from .procs import smaps

CASE = "scale"
MIB = 1024.0
# A ctrpy shim is ~6.5 MiB PSS, containerd's ~2.5; with the container's own sleep, runc's
# leftovers and the daemons' growth, this much free memory per container is asked for.
MiB_PER_CONTAINER = 16
START_LIMIT = 300.0  # seconds to bring one level up
RESTART_LIMIT = 120.0  # seconds for a restarted daemon to list every task RUNNING
POLL = 0.01
SETTLE = 1.0  # after the starts, before memory is read
LISTS = 7  # timed List calls of each kind per level
RESULTS = Path(__file__).parent / "results"

METRICS = (  # key, metric, unit
    ("run", "ctr run --rm busybox true", "ms"),
    ("containers_list", "Containers.List (API)", "ms"),
    ("tasks_list", "Tasks.List (API)", "ms"),
    ("ctr_tasks_ls", "ctr tasks ls", "ms"),
    ("daemon_rss", "daemon RSS", "MiB"),
    ("shims_pss", "PSS of all shims (+ template)", "MiB"),
    ("restart", "kill -9, restart, all listed RUNNING", "s"),
)


def _available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / MIB
    return 0.0


def _socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _running(d: Daemons, which: str, timeout: float = 10.0) -> int:
    """How many tasks Tasks.List shows RUNNING (one fresh connection); raises CtrpyError."""
    with Client(d.address(which), d.namespace, timeout=timeout) as client:
        listed = client.call(client.tasks.List, tasks_pb2.ListTasksRequest())
    return sum(1 for task in listed.tasks if task.status == task_pb2.RUNNING)


def _start(d: Daemons, which: str, ids: list[str], pool: ThreadPoolExecutor) -> None:
    """Start ``ids`` (``ctr run -d ... sleep 3600``), giving up after START_LIMIT seconds."""
    if not ids:
        return
    began = time.monotonic()
    run = ("run", "-d", *d.run_flags(which), d.busybox())

    def one(container: str) -> None:
        if time.monotonic() - began > START_LIMIT:
            raise RuntimeError(f"{which}: starting {len(ids)} containers took over {START_LIMIT:g} s")
        d.ctr(which, *run, container, "sleep", "3600", timeout=120)

    list(pool.map(one, ids))


def _remove(d: Daemons, which: str, ids: list[str], pool: ThreadPoolExecutor) -> None:
    def one(container: str) -> None:
        d.ctr(which, "tasks", "rm", "-f", container, check=False, timeout=120)
        d.ctr(which, "containers", "rm", container, check=False, timeout=120)

    list(pool.map(one, ids))


def _median_ms(call: Callable[[], object], times: int) -> float:
    return statistics.median(timed(call) for _ in range(times)) * 1000


def _shims_pss_mib(d: Daemons, which: str) -> float:
    total = sum(smaps(pid).get("Pss", 0) for pid in d.shim_pids(which))
    if which == "ctrpyd" and (template := d.template_pid()) is not None:
        total += smaps(template).get("Pss", 0)
    return total / MIB


def _restart(d: Daemons, which: str, n: int) -> float:
    """Kill the daemon with SIGKILL, start it again; seconds from its start until Tasks.List
    shows ``n`` tasks RUNNING (and the daemon is back in the harness's hands)."""
    if which == "ctrpyd":
        ours = d.ctrpyd
        ours.kill()
        with d.cpu[which].entered(), open(ours.log_path, "ab") as log:
            began = time.perf_counter()
            ours.process = process = subprocess.Popen(
                ours.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
    else:
        ref = d.containerd
        assert ref.process is not None
        os.kill(ref.process.pid, signal.SIGKILL)
        ref.process.wait()
        with d.cpu[which].entered(), open(ref.log_path, "ab") as log:
            began = time.perf_counter()
            ref.process = process = subprocess.Popen(
                [CONTAINERD, "--config", str(ref.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
    address = d.address(which)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{which} exited with {process.returncode} after a restart")
        if _socket_answers(address):
            try:
                if _running(d, which) >= n:
                    return time.perf_counter() - began
            except CtrpyError:
                pass  # not serving yet
        if time.perf_counter() - began > RESTART_LIMIT:
            raise RuntimeError(
                f"{which} did not list {n} tasks RUNNING within {RESTART_LIMIT:g} s of a restart"
            )
        time.sleep(POLL)


def _level(d: Daemons, which: str, n: int, runs: int) -> dict[str, float]:
    """Every figure with ``n`` running (see the module docstring)."""
    image = d.busybox()
    if (running := _running(d, which)) != n:
        raise RuntimeError(f"{which}: {running} tasks RUNNING, not {n}")
    figures: dict[str, float] = {}
    numbers = itertools.count()

    def run_rm() -> float:
        container = d.container_id(which, "scrun", n, next(numbers))
        return timed(lambda: d.ctr(which, "run", "--rm", *d.run_flags(which), image, container, "true"))

    run_rm()  # warm-up
    figures["run"] = statistics.median(run_rm() for _ in range(runs)) * 1000
    with Client(d.address(which), d.namespace, timeout=60) as client:

        def containers() -> object:
            return client.call(client.containers.List, containers_pb2.ListContainersRequest())

        def tasks() -> object:
            return client.call(client.tasks.List, tasks_pb2.ListTasksRequest())

        containers(), tasks()  # warm-up: what a first call costs is not what is compared
        figures["containers_list"] = _median_ms(containers, LISTS)
        figures["tasks_list"] = _median_ms(tasks, LISTS)
    figures["ctr_tasks_ls"] = _median_ms(lambda: d.ctr(which, "tasks", "ls"), LISTS)
    figures["daemon_rss"] = smaps(d.pid(which)).get("Rss", 0) / MIB
    figures["shims_pss"] = _shims_pss_mib(d, which)
    figures["restart"] = _restart(d, which, n)
    return figures


def scale(d: Daemons, s: Settings) -> list[Measurement]:
    levels = sorted(set(s.scale))
    curves: dict[str, dict[int, dict[str, float]]] = {which: {} for which in WHICH}
    stopped = ""
    for which in WHICH:
        ids: list[str] = []
        with ThreadPoolExecutor(s.concurrency) as pool:
            try:
                for n in levels:
                    need = (n - len(ids)) * MiB_PER_CONTAINER
                    if need > _available_mib():
                        stopped = f"{which}: level {n} skipped, {need} MiB more needed, {_available_mib():.0f} available"
                        progress(stopped)
                        break
                    more = [d.container_id(which, "sc", i) for i in range(len(ids), n)]
                    began = time.perf_counter()
                    _start(d, which, more, pool)
                    ids += more
                    progress(
                        f"scale {which}: {n} running ({len(more)} started in {time.perf_counter() - began:.1f} s)"
                    )
                    time.sleep(SETTLE)
                    figures = _level(d, which, n, s.scale_runs)
                    curves[which][n] = figures
                    progress(
                        f"scale {which} at {n}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
                    )
            finally:
                began = time.perf_counter()
                _remove(d, which, ids, pool)
                progress(f"scale {which}: {len(ids)} removed in {time.perf_counter() - began:.1f} s")
    found = _measurements(curves, levels)
    if stopped:
        for m in found:
            m.note = stopped
    _write_curves(curves, levels)
    return found


def _measurements(curves: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> list[Measurement]:
    found = []
    for key, metric, unit in METRICS:
        for n in levels:
            m = Measurement(CASE, f"{metric}, {n} running", unit)
            for which in WHICH:
                if n in curves[which]:
                    getattr(m, which).append(curves[which][n][key])
            if m.containerd or m.ctrpyd:
                found.append(m)
    return found


def _table(curves: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> list[str]:
    lines = [
        "| metric | running | containerd | ctrpyd | ratio |",
        "|---|---|---|---|---|",
    ]
    for key, metric, unit in METRICS:
        for n in levels:
            values = {which: curves[which].get(n, {}).get(key) for which in WHICH}
            theirs, ours = values["containerd"], values["ctrpyd"]
            ratio = f"{ours / theirs:.2f}" if theirs and ours is not None else "-"
            cells = [f"{v:.3g} {unit}" if v is not None else "-" for v in (theirs, ours)]
            lines.append(f"| {metric} | {n} | {cells[0]} | {cells[1]} | {ratio} |")
    return lines


def _write_curves(curves: dict[str, dict[int, dict[str, float]]], levels: list[int]) -> None:
    """``scale.md`` (the table, also printed) and ``scale.png`` (the plot)."""
    RESULTS.mkdir(exist_ok=True)
    table = _table(curves, levels)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (RESULTS / "scale.md").write_text(
        "\n".join(
            [f"# Cost as work grows ({when})", "", "`python -m bench --only scale`; medians.", "", *table]
        )
        + "\n"
    )
    print("\n".join(table), flush=True)
    try:
        _plot(curves, levels, RESULTS / "scale.png")
    except ImportError:
        progress("matplotlib is not installed (pip install -e .[dev]): no scale.png")


def _plot(curves: dict[str, dict[int, dict[str, float]]], levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for axis, (key, metric, unit) in zip(axes.flat, METRICS, strict=False):
        for which, style in (("containerd", "o-"), ("ctrpyd", "s-")):
            points = [(n, curves[which][n][key]) for n in levels if n in curves[which]]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], style, label=which)
        axis.set_title(metric, fontsize=10)
        axis.set_xlabel("containers running")
        axis.set_ylabel(unit)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(METRICS) :]:
        axis.axis("off")
    figure.suptitle("ctrpyd vs containerd: cost as work grows")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
