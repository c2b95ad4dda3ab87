"""How much of a run the start-up timeline accounts for (``ctrpy tasks timeline``).

For ``s.runs`` runs each of ``ctr run --rm busybox true`` and ``ctrpy run --rm busybox true``
(our CLI) against the bench's ctrpyd, alternating, the wall time around the client process
and the total of the run's timeline (its rows, steps and gaps, from Images.Get to
Containers.Delete, plus ``client start`` when the client sends one, known to a clock tick, so
that "outside" can be a few ms below zero for ``ctrpy``). Both columns are ctrpyd:
the report's "containerd" column holds the wall time, the ctrpyd column the timeline total, so
that the ratio is the share of the wall time the timeline covers.

What the timeline cannot see is the client's process before its first call and after its last
one (start, configuration, dial, exit): measured on its own as the wall time of ``ctr
version``, one process making two calls, less the same two calls made from a warm client in
this process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from google.protobuf import empty_pb2

from ctrpy.cli.timeline import fetch

from .harness import BUSYBOX, Daemons, Measurement, Settings, progress

CASE = "timeline coverage"


def _ctrpy_command() -> list[str]:
    """The ``ctrpy`` console script next to this interpreter (how users run it), else ``-m``."""
    script = Path(sys.executable).parent / "ctrpy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ctrpy.cli.main"]


def timeline(d: Daemons, s: Settings) -> list[Measurement]:
    d.busybox()
    address = d.address("ctrpyd")
    flags = d.run_flags("ctrpyd")
    commands = {
        "ctr": lambda cid: [*d.ctrpyd.ctr_command(d.namespace), "run", "--rm", *flags, BUSYBOX, cid, "true"],
        "ctrpy": lambda cid: [*_ctrpy_command(), "--address", address, "--namespace", d.namespace, "run", "--rm",
                              *flags, BUSYBOX, cid, "true"],
    }
    note = "both ctrpyd: containerd column = measured wall time, ctrpyd column = timeline total"
    covered = {name: Measurement(CASE, f"{name} run --rm busybox true: wall vs timeline total", "ms", note=note)
               for name in commands}
    outside = {name: Measurement(CASE, f"{name} run --rm: wall minus timeline (outside it)", "ms")
               for name in commands}
    share = {name: Measurement(CASE, f"{name} run --rm: timeline total / wall, per run", "of wall")
             for name in commands}
    with d.client("ctrpyd") as client:
        for name, command in commands.items():  # warm-up: ctrpyd loads its code on the first run
            subprocess.run(command(f"tw-{name}-warm"), capture_output=True, check=True, timeout=120)
        for number in range(s.runs):
            for name in (("ctr", "ctrpy") if number % 2 == 0 else ("ctrpy", "ctr")):
                cid = f"tl-{name}-{number}"
                start = time.perf_counter()
                subprocess.run(commands[name](cid), capture_output=True, check=True, timeout=120)
                wall = (time.perf_counter() - start) * 1000
                total = float(fetch(client, "task", cid)["total_ms"])
                covered[name].containerd.append(wall)
                covered[name].ctrpyd.append(total)
                outside[name].ctrpyd.append(wall - total)
                share[name].ctrpyd.append(total / wall)
    version = Measurement(CASE, "ctr version (ctr's own process start, dial, two calls, exit)", "ms",
                          note="the part of a ctr run no server-side timeline can see")
    calls = Measurement(CASE, "the same two calls from a warm Python client (the server's share, and then some)",
                        "ms", note="ctr's own process cost = ctr version minus these two calls")
    with d.client("ctrpyd") as client:
        for _ in range(s.runs):
            start = time.perf_counter()
            subprocess.run([*d.ctrpyd.ctr_command(d.namespace), "version"], capture_output=True, check=True,
                           timeout=60)
            version.ctrpyd.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            client.call(client.version.Version, empty_pb2.Empty())
            client.call(client.introspection.Server, empty_pb2.Empty())
            calls.ctrpyd.append((time.perf_counter() - start) * 1000)
    progress("timeline coverage done")
    return [covered["ctr"], share["ctr"], outside["ctr"], covered["ctrpy"], share["ctrpy"], outside["ctrpy"], version,
            calls]
