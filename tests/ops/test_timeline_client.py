"""The start of a timeline: the client's Images.Get before its lease, and ``ctrpy run``'s own
process start (``client start``, :mod:`ctrpy.clientstart`).

The store is checked on its own (which Images.Get a task claims), then a real ``ctrpy run
--rm`` (the console script, a process of its own) against a real ctrpyd: its timeline begins
with ``client start`` and ``image get`` and stays inside the wall time measured around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy import clientstart
from ctrpy.cli.main import main
from ctrpy.manager.timeline import CLIENT_START, IMAGE_WINDOW_NS, Timelines
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon

MS = 1_000_000
IMAGE = "docker.io/library/busybox:latest"


def names(store: Timelines, container_id: str) -> list[str]:
    timeline = store.get("ns", container_id)
    assert timeline is not None
    return [row["step"] for row in timeline.rows()]


def test_a_task_claims_the_latest_image_get_before_its_lease() -> None:
    store = Timelines()
    base = time.monotonic_ns() - IMAGE_WINDOW_NS // 2  # r3 below claims by the clock: within the window
    store.image_got("ns", IMAGE, base - IMAGE_WINDOW_NS - 5 * MS, base - IMAGE_WINDOW_NS)  # too early for r1
    store.image_got("ns", IMAGE, base, base + 1 * MS)  # r1's
    store.image_got("ns", IMAGE, base + 2 * MS, base + 3 * MS)  # r2's, side by side
    store.image_got("ns", "other:latest", base + 4 * MS, base + 5 * MS)  # another image
    store.lease_created("ns", "lease-2", base + 6 * MS, base + 7 * MS)
    store.prepared("ns", "r2", base + 8 * MS, base + 9 * MS, "lease-2")
    store.begin("ns", "r2", "r2", IMAGE)
    timeline = store.get("ns", "r2")
    assert timeline is not None and timeline.rows()[0]["step"] == "image get"
    assert min(step.start_ns for step in timeline.steps) == base + 2 * MS  # the latest before its lease
    store.lease_created("ns", "lease-1", base + 10 * MS, base + 11 * MS)
    store.prepared("ns", "r1", base + 12 * MS, base + 13 * MS, "lease-1")
    store.begin("ns", "r1", "r1", IMAGE)
    timeline = store.get("ns", "r1")
    assert timeline is not None and min(step.start_ns for step in timeline.steps) == base  # r2 took the later one
    store.begin("ns", "r3", "", IMAGE)  # only the one out of the window is left
    assert names(store, "r3") == []
    store.begin("ns", "r4", "", "")  # a container without an image claims nothing
    assert names(store, "r4") == []


def test_a_client_start_is_kept_only_when_plausible() -> None:
    store = Timelines()
    base = time.monotonic_ns() - 100 * MS
    store.image_got("ns", IMAGE, base, base + 1 * MS, client_start_ns=base - 300 * MS)
    store.begin("ns", "c1", "", IMAGE)
    timeline = store.get("ns", "c1")
    assert timeline is not None
    rows = timeline.rows()
    assert [(r["step"], r["source"], r["ms"]) for r in rows[:2]] == [(CLIENT_START, "client", 300), ("image get", "ctrpyd", 1)]
    for start in (base + 5 * MS, 1):  # after the call, or absurdly long before it
        store.image_got("ns", IMAGE, base, base + 1 * MS, client_start_ns=start)
        store.begin("ns", "c2", "", IMAGE)
        assert names(store, "c2") == ["image get"]


def test_process_start_is_before_now_and_not_long_ago() -> None:
    started = clientstart.process_start_ns()
    assert started is not None
    assert 0 < time.monotonic_ns() - started < 24 * 3600 * 1_000_000_000


@pytest.fixture
def ready(daemon: Daemon) -> Iterator[Daemon]:
    archive = daemon.base / "busybox.tar"
    write_oci_layout_tar(busybox_image(), archive)
    assert daemon.ctr("images", "import", str(archive)).returncode == 0
    yield daemon


def ctrpy_command() -> list[str]:
    script = Path(sys.executable).parent / "ctrpy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ctrpy.cli.main"]


def test_ctrpy_run_timeline_starts_with_the_client(ready: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    command = [*ctrpy_command(), "--address", str(ready.address), "run", "--rm", "--fifo-dir",
               str(ready.base / "fifo"), IMAGE]
    assert subprocess.run([*command, "cw", "true"], capture_output=True, timeout=120).returncode == 0  # warm-up
    began = time.monotonic()
    result = subprocess.run([*command, "c1", "true"], capture_output=True, text=True, timeout=120)
    measured_ms = (time.monotonic() - began) * 1000
    assert result.returncode == 0, result.stderr
    capsys.readouterr()
    assert main(["--address", str(ready.address), "--format", "json", "tasks", "timeline", "c1"]) == 0
    answer = json.loads(capsys.readouterr().out)
    steps = answer["steps"]
    assert [row["step"] for row in steps[:2]] == [CLIENT_START, "image get"], steps
    assert steps[0]["source"] == "client" and steps[-1]["step"] == "container delete"
    total = answer["total_ms"]
    print(f"ctrpy run: measured {measured_ms:.1f} ms, timeline {total:.1f} ms, ratio {total / measured_ms:.3f}; "
          f"client start {steps[0]['ms']:.1f} ms")
    # The client's start is known to a clock tick (10 ms): the total may pass the wall by that much.
    assert 0.5 * measured_ms <= total <= measured_ms + 10
