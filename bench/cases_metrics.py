"""The cost of watching: run latency with ``[metrics]`` on and off, and what one scrape costs.

- ``ctr run --rm busybox true`` against the bench's ctrpyd (metrics off) and against a second
  ctrpyd with ``[metrics] address`` and ``grpc_histogram`` on, scraped every second meanwhile
  (Prometheus' usual interval is 15 s: this is the harsher case), alternating, ``s.runs`` each.
  Both columns are ctrpyd: the report's "containerd" column holds the metrics-off runs here.
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

from .harness import BUSYBOX, Daemons, Measurement, Settings, progress

CASE = "metrics on vs off"
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
