"""Half-made containers whose records say less than the database after a crash: a lost
``creating`` intent (written without an fsync, so a power cut may take it) and a created record
whose spec commit was lost. Neither leaves anything after a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager import failpoints
from tests.cri_container.support import import_busybox, make_pod
from tests.cri_sandbox.support import PodDaemon


@pytest.fixture
def crashd() -> Iterator[PodDaemon]:
    daemon = PodDaemon()
    try:
        yield daemon
    finally:
        daemon.reap()


def test_container_without_its_intent_record_is_swept(crashd: PodDaemon, tmp_path: Path) -> None:
    point = failpoints.CRI_CONTAINER_CREATE_AFTER_SNAPSHOT
    crashd.failpoints = point
    crashd.start()
    import_busybox(crashd, tmp_path)
    pod = make_pod(crashd, tmp_path)
    config = pod.container_config("lost", "sleep", "600")
    with pytest.raises(errors.CtrpyError):
        pod.create(config)
    pod.made.clear()
    crashd.died(point)
    records = list((crashd.root / "cri" / "containers").glob("*.json"))
    assert len(records) == 1
    records[0].unlink()  # what a power cut may do to a record that was never fsynced
    crashd.failpoints = ""
    crashd.start()
    assert pod.list() == []
    assert crashd.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == [pod.id]
    active = [line.split()[0] for line in crashd.ctr("snapshots", "ls", namespace="k8s.io").stdout.splitlines()
              if "Active" in line]
    assert active == [pod.id]
    container_id = pod.create(config)  # the name is free
    pod.start(container_id)
    assert pod.state(container_id) == api.CONTAINER_RUNNING
    pod.cleanup()


def test_created_record_without_its_spec_is_undone(crashd: PodDaemon, tmp_path: Path) -> None:
    """The created record and the spec's commit are written side by side: a crash that kept the
    record but not the spec leaves the placeholder spec, and the restart undoes the container."""
    crashd.start()
    import_busybox(crashd, tmp_path)
    pod = make_pod(crashd, tmp_path)
    config = pod.container_config("half", "sleep", "600")
    container_id = pod.create(config)
    pod.made.clear()
    crashd.kill()
    with sqlite3.connect(crashd.root / "meta.db") as db:  # what the lost commit leaves
        db.execute("UPDATE containers SET spec = ?, message = NULL WHERE id = ?", (b"{}", container_id))
    db.close()
    crashd.start()
    assert pod.list() == []
    assert crashd.ctr("containers", "ls", "-q", namespace="k8s.io").stdout.split() == [pod.id]
    assert list((crashd.root / "cri" / "containers").glob("*.json")) == []
    again = pod.create(config)  # the name is free
    pod.start(again)
    assert pod.state(again) == api.CONTAINER_RUNNING
    pod.cleanup()
