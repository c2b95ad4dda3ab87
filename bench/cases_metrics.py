"""The cost of watching: run latency with ``[metrics]`` (and ``[tracing]``) on and off, and one scrape.

- ``ctr run --rm busybox true`` against the bench's ctrpyd (metrics off) and against a second
  ctrpyd with ``[metrics] address`` and ``grpc_histogram`` on, scraped every second meanwhile
  (Prometheus' usual interval is 15 s: this is the harsher case), alternating, ``s.runs`` each.
  Both columns are ctrpyd: the report's "containerd" column holds the metrics-off runs here.
- (the ``tracing`` case, :func:`tracing_latency`) ``ctr run --rm`` latency, daemon CPU time and
  RSS on two fresh ctrpyd, one with ``[tracing]`` exporting every span (sampling 1.0) to an
  OTLP/gRPC collector this process serves on loopback, one without, alternating.
- One scrape's rendering with ``SYNTHETIC`` containers: that many empty cgroups made in every v1
  hierarchy, read and rendered by the same code the daemon's metrics thread runs, in this
  process (the HTTP hop is left out; it adds a loopback copy of the text).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
import urllib.request
from pathlib import Path

from ctrpy.manager.metrics import cgroups, render
from ctrpy.manager.metrics.daemon import DaemonFigures, GcFigures
from tests.support.containerd import run_ctr
from tests.support.ctrpyd import Daemon
from tests.support.otlp import otlp_collector

from .harness import BUSYBOX, Daemons, Measurement, Settings, progress
from .procs import smaps

CASE = "metrics on vs off"
CASE_TRACING = "tracing on vs off"
SYNTHETIC = 500
SCRAPE_INTERVAL = 1.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scraper(port: int, stop: threading.Event, took: list[float]) -> None:
    while not stop.wait(SCRAPE_INTERVAL):
        start = time.perf_counter()
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=30) as answer:
            answer.read()
            took.append((time.perf_counter() - start) * 1000)


def run_latency(d: Daemons, s: Settings) -> list[Measurement]:
    port = _free_port()
    metered = Daemon(base=d.work / "ctrpyd-metrics")
    metered.base.mkdir(parents=True, exist_ok=True)
    config = metered.base / "ctrpyd.toml"
    config.write_text(f'[metrics]\naddress = "127.0.0.1:{port}"\ngrpc_histogram = true\n')
    metered.extra_args = ("--config", str(config), "--log-level", "info")
    wall = Measurement(CASE, "ctr run --rm busybox true (containerd column: metrics off; ctrpyd: on)", "ms",
                       note="both columns are ctrpyd")
    scrapes = Measurement(CASE, "one scrape over HTTP during the runs", "ms")
    stop = threading.Event()
    try:
        metered.start()
        archive = d.work / "busybox.tar"
        d.busybox()
        run_ctr(str(metered.address), "images", "import", str(archive), namespace=d.namespace, check=True)
        thread = threading.Thread(target=_scraper, args=(port, stop, scrapes.ctrpyd), daemon=True)
        thread.start()
        # column -> (address, ctr run flags that keep FIFOs and runc state apart, container id prefix)
        targets = {
            "containerd": (str(d.ctrpyd.address), d.run_flags("ctrpyd"), "m-off"),
            "ctrpyd": (str(metered.address), ["--fifo-dir", str(d.work / "fifo-m"), "--runc-root",
                                              str(d.work / "runc-m")], "m-on"),
        }
        for address, flags, prefix in targets.values():  # warm-up
            run_ctr(address, "run", "--rm", *flags, BUSYBOX, f"{prefix}-warm", "true", namespace=d.namespace,
                    check=True)
        for number in range(s.runs):
            for which in (("containerd", "ctrpyd") if number % 2 == 0 else ("ctrpyd", "containerd")):
                address, flags, prefix = targets[which]
                start = time.perf_counter()
                run_ctr(address, "run", "--rm", *flags, BUSYBOX, f"{prefix}-{number}", "true", namespace=d.namespace,
                        check=True)
                getattr(wall, which).append((time.perf_counter() - start) * 1000)
    finally:
        stop.set()
        metered.cleanup()
    progress("metrics on/off done")
    return [wall, scrapes]


def _cpu_ms(daemon: Daemon) -> float:
    """User + system CPU time of the daemon process so far, in ms (its threads, not children)."""
    assert daemon.process is not None
    fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def tracing_latency(d: Daemons, s: Settings) -> list[Measurement]:
    """``ctr run --rm`` on two fresh ctrpyd, one with ``[tracing]`` (sampling 1.0, every span
    exported by OTLP/gRPC to a collector served here on loopback) and one without, alternating;
    then each daemon's RSS after the same runs."""
    wall = Measurement(CASE_TRACING, "ctr run --rm busybox true (containerd column: tracing off; ctrpyd: on)", "ms",
                       note="both columns are fresh ctrpyd with the same runs")
    rss = Measurement(CASE_TRACING, "daemon RSS after the runs (containerd column: tracing off; ctrpyd: on)", "MiB")
    cpu = Measurement(CASE_TRACING, "daemon CPU time per run (containerd column: tracing off; ctrpyd: on)", "ms",
                      note="user + system time of the ctrpyd process alone (less noisy than latency under load)")
    spans = Measurement(CASE_TRACING, "spans the collector received", "spans",
                        note="from the image import, the warm-up and the runs")
    with otlp_collector(keep=False) as (receiver, port), contextlib.ExitStack() as stack:
        started: dict[str, Daemon] = {}
        d.busybox()
        # column -> ctr run flags that keep FIFOs and runc state apart, and a container id prefix
        flags: dict[str, tuple[list[str], str]] = {}
        for which, letter, text in (("containerd", "u", ""),
                                    ("ctrpyd", "t",
                                     f'[tracing]\nendpoint = "http://127.0.0.1:{port}"\nsampling_ratio = 1.0\n')):
            name = f"ctrpyd-tracing-{letter}"
            flags[which] = (["--fifo-dir", str(d.work / f"fifo-{letter}"), "--runc-root", str(d.work / f"runc-{letter}")],
                            f"tr{letter}")
            daemon = started[which] = Daemon(base=d.work / name)
            stack.callback(daemon.cleanup)  # registered before it starts
            daemon.base.mkdir(parents=True, exist_ok=True)
            (daemon.base / "ctrpyd.toml").write_text(text)
            daemon.extra_args = ("--config", str(daemon.base / "ctrpyd.toml"), "--log-level", "info")
            daemon.start()
            run_ctr(str(daemon.address), "images", "import", str(d.work / "busybox.tar"), namespace=d.namespace,
                    check=True)
        for which, daemon in started.items():  # warm-up
            run_ctr(str(daemon.address), "run", "--rm", *flags[which][0], BUSYBOX, f"{flags[which][1]}-warm", "true",
                    namespace=d.namespace, check=True)
        cpu_before = {which: _cpu_ms(daemon) for which, daemon in started.items()}
        for number in range(s.runs):
            for which in (("containerd", "ctrpyd") if number % 2 == 0 else ("ctrpyd", "containerd")):
                start = time.perf_counter()
                run_ctr(str(started[which].address), "run", "--rm", *flags[which][0], BUSYBOX,
                        f"{flags[which][1]}-{number}", "true", namespace=d.namespace, check=True)
                getattr(wall, which).append((time.perf_counter() - start) * 1000)
        for which, daemon in started.items():
            assert daemon.process is not None
            getattr(rss, which).append(smaps(daemon.process.pid).get("Rss", 0) / 1024)
            getattr(cpu, which).append((_cpu_ms(daemon) - cpu_before[which]) / max(s.runs, 1))
        traced = started["ctrpyd"]
        traced.stop()  # flushes the exporter
        with receiver.lock:
            spans.ctrpyd.append(receiver.count)
    progress("tracing on/off done")
    return [wall, cpu, rss, spans]


def synthetic_scrape(d: Daemons, s: Settings) -> list[Measurement]:
    where = cgroups.Hierarchies.find()
    if not where.usable:
        return []
    parent = f"ctrpy-bench-metrics-{secrets.token_hex(3)}"
    roots = {root for root in (where.cpuacct, where.cpu, where.memory, where.pids, where.blkio) if root}
    made: list[Path] = []
    scrape = Measurement(CASE, f"one scrape's rendering, {SYNTHETIC} containers (synthetic cgroups)", "ms")
    try:
        for root in roots:
            for number in range(SYNTHETIC):
                path = Path(root) / parent / f"c{number}"
                path.mkdir(parents=True, exist_ok=True)
                made.append(path)
        containers = [render.Container("bench", f"c{number}", "io.containerd.runc.v2", f"/{parent}/c{number}")
                      for number in range(SYNTHETIC)]
        figures = DaemonFigures({}, 0, None, GcFigures(0, 0, 0.0, 0.0, 0), 0, 0)
        for _ in range(max(s.rounds, 3)):
            start = time.perf_counter()
            text = render.render(render.Scrape([], False, containers, figures), where)
            scrape.ctrpyd.append((time.perf_counter() - start) * 1000)
        lines = text.count(b"\n")
        scrape.note = f"{len(text) // 1024} KiB of text, {lines} lines"
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
        for root in roots:
            with contextlib.suppress(OSError):
                os.rmdir(Path(root) / parent)
    return [scrape]


def metrics(d: Daemons, s: Settings) -> list[Measurement]:
    return [*synthetic_scrape(d, s), *run_latency(d, s)]
