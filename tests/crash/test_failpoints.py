"""ctrpyd killed (SIGKILL, by a failpoint) at each named point, then restarted without it.

After each crash: the store opens and passes sqlite's integrity check, no container is lost or
duplicated, task state is right, and what the crash left (half bundles, temporary mounts,
ingests, half-unpacked snapshots) is cleaned at start-up or visible to the user.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from ctrpy.api.containerd.services.diff.v1 import diff_pb2
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from ctrpy.errors import CtrpyError
from ctrpy.manager import failpoints
from tests.crash.conftest import Archive
from tests.crash.support import IMAGE, CrashDaemon, ok, wait_until

# --- the switch itself ---------------------------------------------------------------------


def test_parse_names_and_counts() -> None:
    assert failpoints.parse("") == {}
    assert failpoints.parse("diff.apply.mid-layer=3, tasks.create.after-bundle") == {
        "diff.apply.mid-layer": 3,
        "tasks.create.after-bundle": 1,
    }
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.parse("tasks.create.after-bundel")
    with pytest.raises(ValueError, match="at least 1"):
        failpoints.parse("diff.apply.mid-layer=0")


def _hits(env: str, times: int) -> subprocess.CompletedProcess[str]:
    code = (
        "from ctrpy.manager import failpoints\n"
        f"for i in range({times}):\n"
        "    failpoints.hit('diff.apply.mid-layer')\n"
        "    print('survived', i + 1, flush=True)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, failpoints.ENV: env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_an_armed_point_kills_on_the_chosen_hit() -> None:
    first = _hits("diff.apply.mid-layer", 3)
    assert first.returncode == -9 and first.stdout == ""
    assert "ctrpy failpoint diff.apply.mid-layer: killing pid" in first.stderr
    third = _hits("diff.apply.mid-layer=3", 5)
    assert third.returncode == -9
    assert third.stdout.split("\n")[:2] == ["survived 1", "survived 2"] and "survived 3" not in third.stdout
    other = _hits("tasks.create.after-bundle", 2)
    assert other.returncode == 0 and other.stdout.count("survived") == 2


# --- the matrix ------------------------------------------------------------------------------


def _arm(daemon: CrashDaemon, name: str) -> None:
    daemon.stop()
    daemon.failpoints = name
    daemon.start()


def _recover(daemon: CrashDaemon) -> None:
    daemon.failpoints = ""
    daemon.start()


def _store_is_sound(daemon: CrashDaemon) -> None:
    with sqlite3.connect(f"file:{daemon.root / 'meta.db'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def _no_task_leftovers(daemon: CrashDaemon) -> None:
    """Nothing mounted under the state dir, no bundle without a task, no shim without one."""
    assert [m for m in daemon.leftover_mounts() if m.startswith(str(daemon.state))] == []
    tasks = daemon.tasks()
    bundles = sorted(p.name for p in (daemon.state / "tasks" / daemon.namespace).glob("*"))
    assert bundles == sorted(t for t, (_, status) in tasks.items() if status != "STOPPED")
    wait_until(lambda: len(daemon.shims()) == len(bundles) + 1, "one shim per bundle, and the template")


def _run_and_remove(daemon: CrashDaemon, container_id: str) -> None:
    """Start the existing container's task, check it runs, and remove both."""
    ok(daemon.ctr("tasks", "start", "-d", container_id))
    assert daemon.status(container_id) == "RUNNING"
    ok(daemon.ctr("tasks", "kill", "-s", "KILL", container_id))
    assert daemon.wait_exit(container_id) == 137
    ok(daemon.ctr("tasks", "rm", container_id))
    ok(daemon.ctr("containers", "rm", container_id))
    assert daemon.leftover_mounts() == []
    assert daemon.cgroups_of(container_id) == []


def test_container_committed_but_event_not_published(ready: CrashDaemon) -> None:
    _arm(ready, failpoints.CONTAINERS_CREATE_AFTER_COMMIT)
    events = ready.spawn("events")
    refused = ready.ctr("run", "-d", IMAGE, "c1", "sleep", "1000")
    assert refused.returncode != 0
    ready.died(failpoints.CONTAINERS_CREATE_AFTER_COMMIT)
    events.wait(30)
    assert events.stdout is not None and "/containers/create" not in events.stdout.read()
    _recover(ready)
    _store_is_sound(ready)
    # The row was committed: the container is there, once; it has no task (none was asked for).
    assert ready.containers() == ["c1"]
    assert ready.tasks() == {}
    assert "already exists" in ready.ctr("run", "-d", IMAGE, "c1", "sleep", "1000").stderr
    assert [line.split()[0] for line in ready.ok("snapshots", "ls").splitlines()[1:]].count("c1") == 1
    _no_task_leftovers(ready)
    _run_and_remove(ready, "c1")


def test_bundle_written_but_no_shim_started(ready: CrashDaemon) -> None:
    _arm(ready, failpoints.TASKS_CREATE_AFTER_BUNDLE)
    assert ready.ctr("run", "-d", IMAGE, "c1", "sleep", "1000").returncode != 0
    ready.died(failpoints.TASKS_CREATE_AFTER_BUNDLE)
    half = ready.bundle("c1")
    assert (half / "config.json").is_file() and not (half / "address").exists()
    _recover(ready)
    _store_is_sound(ready)
    assert not half.exists(), "the half-written bundle was not cleaned at start-up"
    assert ready.containers() == ["c1"]
    assert ready.tasks() == {}
    assert "task left behind" not in ready.log()
    _no_task_leftovers(ready)
    _run_and_remove(ready, "c1")


def test_killed_in_the_middle_of_unpacking_an_image(crashd: CrashDaemon, busybox_archive: Archive) -> None:
    crashd.failpoints = f"{failpoints.DIFF_APPLY_MID_LAYER}=20"
    crashd.start()
    assert crashd.ctr("images", "import", str(busybox_archive.path)).returncode != 0
    crashd.died(failpoints.DIFF_APPLY_MID_LAYER)
    _recover(crashd)
    _store_is_sound(crashd)
    # What the import had committed is there: every blob, the image record.
    blobs = crashd.ok("content", "ls", "-q").split()
    layer = busybox_archive.info.layers[0]
    assert layer.digest in blobs and busybox_archive.info.config_digest in blobs
    # The half-unpacked layer is an active snapshot held by the import's lease: reported, not
    # committed under the layer's chain id.
    chain_id = busybox_archive.info.chain_ids[-1]
    rows = [line.split() for line in crashd.ok("snapshots", "ls").splitlines()[1:]]
    assert [r for r in rows if r[0] == chain_id] == []
    half = [r[0] for r in rows if r[-1] == "Active"]
    assert len(half) == 1 and half[0].startswith("extract-"), rows
    assert len(crashd.ok("leases", "ls", "-q").split()) == 1
    # Importing again unpacks afresh, and the image runs.
    ok(crashd.ctr("images", "import", str(busybox_archive.path)))
    assert chain_id in crashd.ok("snapshots", "ls")
    assert crashd.ok("run", "--rm", IMAGE, "c1", "echo", "whole") == "whole\n"
    # The leftover goes with its lease (collected then, or removed by hand without a collector).
    for lease in crashd.ok("leases", "ls", "-q").split():
        ok(crashd.ctr("leases", "rm", "--sync", lease))
    if half[0] in crashd.ok("snapshots", "ls"):
        ok(crashd.ctr("snapshots", "rm", half[0]))
    assert "Active" not in crashd.ok("snapshots", "ls")
    assert crashd.leftover_mounts() == []


def test_killed_while_applying_onto_a_temporary_mount(ready: CrashDaemon, busybox_archive: Archive) -> None:
    """A layer applied onto mounts that must be mounted first (a tmpfs here): the crash leaves the
    mount under <root>/tmpmounts, and start-up unmounts and removes it."""
    _arm(ready, f"{failpoints.DIFF_APPLY_MID_LAYER}=10")
    layer = busybox_archive.info.layers[0]
    request = diff_pb2.ApplyRequest(
        diff=descriptor_pb2.Descriptor(media_type=layer.media_type, digest=layer.digest, size=layer.size),
        mounts=[mount_pb2.Mount(type="tmpfs", source="tmpfs", options=["size=64m"])],
    )
    with ready.api() as client, pytest.raises(CtrpyError):
        client.call(client.diff.Apply, request)
    ready.died(failpoints.DIFF_APPLY_MID_LAYER)
    tmpmounts = ready.root / "tmpmounts"
    assert [m for m in ready.leftover_mounts() if m.startswith(str(tmpmounts))], "no mount was left to clean"
    _recover(ready)
    assert ready.leftover_mounts() == []
    assert list(tmpmounts.iterdir()) == []
    # The differ works as before.
    with ready.api() as client:
        applied = client.call(client.diff.Apply, request)
    assert applied.applied.digest == layer.diff_id
    assert ready.leftover_mounts() == []


def test_killed_between_fsync_and_rename_of_a_content_commit(
    crashd: CrashDaemon, busybox_archive: Archive
) -> None:
    crashd.failpoints = failpoints.CONTENT_COMMIT_BEFORE_RENAME
    crashd.start()
    assert crashd.ctr("images", "import", str(busybox_archive.path)).returncode != 0
    crashd.died(failpoints.CONTENT_COMMIT_BEFORE_RENAME)
    _recover(crashd)
    _store_is_sound(crashd)
    # No blob half-made: nothing was committed. The data written stays as a resumable ingest,
    # listed by `ctr content active`.
    assert crashd.ok("content", "ls", "-q").split() == []
    blobs = crashd.root / "content" / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    active = crashd.ok("content", "active").splitlines()[1:]
    assert len(active) == 1, active
    assert [p.name for p in (crashd.root / "content" / "ingest").iterdir() if p.name.startswith(".")] == []
    ok(crashd.ctr("images", "import", str(busybox_archive.path)))
    assert crashd.ok("content", "active").splitlines()[1:] == []  # the same ref, resumed and committed
    assert crashd.ok("run", "--rm", IMAGE, "c1", "echo", "whole") == "whole\n"
    wait_until(lambda: crashd.tasks() == {}, "the run to be cleaned up")
