"""Docker Engine on each daemon: ``docker run --rm busybox true`` through a private dockerd.

One private dockerd (Debian's docker.io 20.10, overlay2, no bridge, see
``tests/docker/support.py``) per daemon, each with the busybox image loaded, and the same
Debian docker client for both; the runs alternate A B A B. dockerd itself is the same program
on both sides and runs outside the daemons' CPU groups, so the CPU figure counts the daemon,
its shims and runc only, as in the other cases. Skipped (with a note) when docker.io is not
installed.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from tests.docker.support import BUSYBOX, DockerEngine, available, busybox_archive

from .harness import WHICH, Daemons, Measurement, Settings, Target, order, progress

CASE = "docker run latency"
# CPU read this long after docker returned, so that the shim's own exit is counted too.
SETTLE = 0.1


def docker_run(d: Daemons, s: Settings) -> list[Measurement]:
    """``docker run --rm busybox true`` latency and its CPU cost, ``s.runs`` each."""
    wall = Measurement(CASE, "docker run --rm busybox true", "ms", target=Target(1.0))
    cpu = Measurement(CASE, "CPU per docker run --rm (daemon + shim + runc)", "ms")
    if not available():
        wall.note = "skipped: Debian's docker.io (dockerd, docker) is not installed"
        return [wall]
    archive = busybox_archive(d.work / "docker-busybox.tar")
    with ExitStack() as stack:
        engines: dict[str, DockerEngine] = {}
        for which in WHICH:
            engine = DockerEngine(d.address(which))
            stack.callback(engine.cleanup)
            engines[which] = engine.start()
            engine.load(archive)
            engine.ok("run", "--rm", BUSYBOX, "true")  # warm-up: first-use costs are not compared
        progress(f"docker: {s.runs} runs per daemon")
        for number in range(s.runs):
            for which in order(number):
                before = d.cpu[which].usage_ns()
                start = time.perf_counter()
                engines[which].ok("run", "--rm", BUSYBOX, "true")
                getattr(wall, which).append((time.perf_counter() - start) * 1000)
                time.sleep(SETTLE)
                getattr(cpu, which).append((d.cpu[which].usage_ns() - before) / 1e6)
    wall.note = ("dockerd 20.10 (Debian docker.io) on each daemon, overlay2, --bridge none; "
                 "the same docker client")
    return [wall, cpu]
