"""The stock ctr 1.6 pulls and pushes against ctrpyd: it does the registry work itself and goes
through the Content, Images, Snapshots and Diff services (the client-side path ctrpyd must keep
serving). A round trip: ctr pulls from the registry, pushes under another name, and the registry
then holds the same manifest; ctrpy pulls that copy back through the Transfer service."""

from __future__ import annotations

from ctrpy.images import mediatypes, store
from tests.support.ctrpyd import Daemon

from .conftest import Filled, ctrpy


def test_ctr_pull_push_round_trip(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    pulled = ctrpyd.ctr("images", "pull", "--plain-http", ref, namespace=namespace, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest

    copy = f"{filled.host}/roundtrip/{namespace}:1"
    tagged = ctrpyd.ctr("images", "tag", ref, copy, namespace=namespace)
    assert tagged.returncode == 0, tagged.stderr
    pushed = ctrpyd.ctr("images", "push", "--plain-http", copy, namespace=namespace, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    status, headers, _ = filled.registry.get(f"roundtrip/{namespace}/manifests/1", mediatypes.OCI_MANIFEST)
    assert status == 200
    assert headers["docker-content-digest"] == filled.busybox.manifest_digest

    # The pushed copy comes back through the Transfer service, and runs.
    other = namespace + "back"
    back = ctrpy(ctrpyd, other, "images", "pull", "--plain-http", copy)
    assert back.returncode == 0, back.stderr
    run = ctrpyd.ctr("run", "--rm", copy, f"rt-{namespace}", "echo", "round trip", namespace=other)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "round trip"
