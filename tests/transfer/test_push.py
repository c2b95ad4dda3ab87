"""``ctrpy images push`` through ctrpyd's Transfer service (image store -> registry)."""

from __future__ import annotations

from pathlib import Path

from ctrpy.images import mediatypes
from ctrpy.images.model import sha256_digest
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, forward, scripted, skopeo_inspect_raw

from .conftest import Filled, ctrpy


def test_push_round_trip(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    with scripted(lambda request: forward(filled.port, request)) as front:
        source = f"{front.host}/library/busybox:1"
        pulled = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", source)
        assert pulled.returncode == 0, pulled.stderr
        front.requests.clear()

        target = f"{front.host}/pushed/{namespace}:1"
        pushed = ctrpy(ctrpyd, namespace, "images", "push", "--plain-http", target, source)
        assert pushed.returncode == 0, pushed.stderr
        assert f"pushed {target}" in pushed.stdout
        # Same registry, another repository: the layer and config are mounted from where they
        # were pulled (their distribution source label), not uploaded again.
        posts = [r.path for r in front.requests if r.method == "POST"]
        assert len(posts) == 2 and all("mount=" in p and "from=library%2Fbusybox" in p for p in posts), posts
        assert [r.method for r in front.requests if "/manifests/" in r.path] == ["PUT"]

        front.requests.clear()
        again = ctrpy(ctrpyd, namespace, "images", "push", "--plain-http", target, source)
        assert again.returncode == 0, again.stderr
        assert [r.method for r in front.requests if "/blobs/" in r.path] == ["HEAD", "HEAD"]

    status, headers, _ = filled.registry.get(f"pushed/{namespace}/manifests/1", mediatypes.OCI_MANIFEST)
    assert status == 200 and headers["docker-content-digest"] == filled.busybox.manifest_digest
    raw = skopeo_inspect_raw(f"{filled.host}/pushed/{namespace}:1")
    assert sha256_digest(raw) == filled.busybox.manifest_digest


def test_push_to_a_new_registry_uploads(ctrpyd: Daemon, namespace: str, filled: Filled, tmp_path: Path) -> None:
    source = f"{filled.host}/library/busybox:1"
    pulled = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", source)
    assert pulled.returncode == 0, pulled.stderr
    with LocalRegistry(tmp_path / "registry") as other:
        target = f"{other.host}/copy/busybox:1"
        pushed = ctrpy(ctrpyd, namespace, "images", "push", "--plain-http", target, source)
        assert pushed.returncode == 0, pushed.stderr
        status, headers, _ = other.get("copy/busybox/manifests/1", mediatypes.OCI_MANIFEST)
        assert status == 200 and headers["docker-content-digest"] == filled.busybox.manifest_digest
        layer = filled.busybox.layers[0].digest
        status, _, body = other.get(f"copy/busybox/blobs/{layer}")
        assert status == 200 and sha256_digest(body) == layer
