"""``ctrpy tasks timeline``: where a ``ctr run`` went, step by step, adding up to its span.

The timeline is kept after ``ctr run --rm`` deleted the task and the container; its rows
(steps and the gaps between them) add up to the span from the server's side of Images.Get
(ctr's first call, before its lease) to the end of Containers.Delete, which is inside the wall
time measured around the ctr process, and covers most of it (the rest is ctr's own process
start and exit): 0.90-0.97 over ten runs here, 0.84 at worst under heavy load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.cli.main import main
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon

IMAGE = "docker.io/library/busybox:latest"
# What ctr run --rm does that ctrpyd sees, in order (ctr holds its lease only while it creates
# the container, and removes the snapshot before the container).
IN_ORDER = ["image get", "lease create", "snapshot prepare", "container create", "lease delete", "bundle", "shim start",
            "rootfs mount", "stdio", "runc create", "runc start", "task delete", "snapshot remove",
            "container delete"]


@pytest.fixture
def ready(daemon: Daemon) -> Iterator[Daemon]:
    archive = daemon.base / "busybox.tar"
    write_oci_layout_tar(busybox_image(), archive)
    result = daemon.ctr("images", "import", str(archive))
    assert result.returncode == 0, result.stderr
    yield daemon


def timeline(daemon: Daemon, capsys: pytest.CaptureFixture[str], container_id: str) -> dict[str, object]:
    capsys.readouterr()
    code = main(["--address", str(daemon.address), "--format", "json", "tasks", "timeline", container_id])
    out = capsys.readouterr().out
    assert code == 0, out
    answer: dict[str, object] = json.loads(out)
    return answer


def test_ctr_run_timeline_adds_up_to_its_latency(ready: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    ready.ctr("run", "--rm", IMAGE, "warm", "true")  # the first run also loads code in ctrpyd
    began = time.monotonic()
    result = ready.ctr("run", "--rm", IMAGE, "tl1", "true")
    measured_ms = (time.monotonic() - began) * 1000
    assert result.returncode == 0, result.stderr

    answer = timeline(ready, capsys, "tl1")
    steps = answer["steps"]
    assert isinstance(steps, list)
    names = [row["step"] for row in steps]
    assert [name for name in names if name in IN_ORDER] == IN_ORDER, names
    assert {row["source"] for row in steps if row["step"] in ("rootfs mount", "runc create", "runc start")} == {"shim"}
    assert answer["exited"] is True
    total = sum(row["ms"] for row in steps)
    assert total == pytest.approx(answer["total_ms"], abs=0.01 * len(steps))
    offsets = [row["offset_ms"] for row in steps]
    assert offsets == sorted(offsets) and offsets[0] == 0
    ratio = total / measured_ms
    print(f"ctr run: measured {measured_ms:.1f} ms, timeline {total:.1f} ms, ratio {ratio:.3f}; "
          + ", ".join(f"{row['step']} {row['ms']:.1f}" for row in steps))
    # Inside the measured time, and most of it (10% apart on an idle machine; generous here).
    assert 0.5 * measured_ms <= total <= measured_ms


def test_running_step_and_table(ready: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    result = ready.ctr("run", IMAGE, "tl2", "sleep", "1")  # the container stays: the task is deleted
    assert result.returncode == 0, result.stderr
    answer = timeline(ready, capsys, "tl2")
    steps = answer["steps"]
    assert isinstance(steps, list)
    running = [row for row in steps if row["step"].startswith("running")]
    assert len(running) == 1 and running[0]["ms"] >= 500, steps  # it slept a second (generous under load)

    assert main(["--address", str(ready.address), "tasks", "timeline", "tl2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["STEP", "MEASURED"] and table[-1].startswith("total ")
    assert ready.ctr("containers", "rm", "tl2").returncode == 0


def test_unknown_task_and_namespace(ready: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert ready.ctr("run", "--rm", IMAGE, "tl3", "true").returncode == 0
    assert main(["--address", str(ready.address), "tasks", "timeline", "nope"]) == 1
    assert "timeline of task nope: not found" in capsys.readouterr().err
    assert main(["--address", str(ready.address), "-n", "other", "tasks", "timeline", "tl3"]) == 1


def test_containerd_has_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.containerd import reference_containerd

    with reference_containerd(tmp_path) as containerd:
        assert main(["--address", containerd.address, "tasks", "timeline", "any"]) == 1
    assert "the daemon keeps no start-up timelines" in capsys.readouterr().err
