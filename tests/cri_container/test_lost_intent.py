"""Half-made containers whose records say less than the database after a crash: a lost
``creating`` intent (written without an fsync, so a power cut may take it) and a created record
whose spec commit was lost. Neither leaves anything after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.cri_container.support import assert_only_the_pod_left, crash_in_create, import_busybox, make_pod
from tests.cri_sandbox.support import PodDaemon


def test_container_without_its_intent_record_is_swept(crashd: PodDaemon, tmp_path: Path) -> None:
    pod, config = crash_in_create(crashd, tmp_path, "lost")
    records = list((crashd.root / "cri" / "containers").glob("*.json"))
    assert len(records) == 1
    records[0].unlink()  # what a power cut may do to a record that was never fsynced
    crashd.start()
    assert_only_the_pod_left(crashd, pod)
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
