"""Registries that answer badly: a layer that climbs out of its root, a manifest far too large,
503s before a good answer. A small in-memory registry (the scripted HTTP server) serves the
hostile images; nothing of them may reach an image record or outside the snapshot."""

from __future__ import annotations

import io
import json
import tarfile

from ctrpy import errors
from ctrpy.images import mediatypes, snapshots, store
from ctrpy.images.model import sha256_digest
from ctrpy.images.platforms import default_spec
from tests.support.ctrpyd import Daemon
from tests.support.registry import Handler, Reply, Request, forward, scripted

from .conftest import Filled, ctrpy


def _tar(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _image(layer: bytes) -> tuple[bytes, dict[str, bytes]]:
    """A one-layer OCI image for this machine: the manifest and the blobs by digest."""
    spec = default_spec()
    config = json.dumps({"architecture": spec.architecture, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": mediatypes.OCI_LAYER, "digest": sha256_digest(layer), "size": len(layer)}],
    }).encode()
    return manifest, {sha256_digest(config): config, sha256_digest(layer): layer}


def _serve(repository: str, manifest: bytes, blobs: dict[str, bytes]) -> Handler:
    def handler(request: Request) -> Reply:
        path = request.path.split("?", 1)[0]
        if path.startswith(f"/v2/{repository}/manifests/"):
            return Reply(200, {"Content-Type": mediatypes.OCI_MANIFEST,
                               "Docker-Content-Digest": sha256_digest(manifest)}, manifest)
        for digest, data in blobs.items():
            if path == f"/v2/{repository}/blobs/{digest}":
                return Reply(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest},
                             data)
        return Reply(404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"NOT_FOUND"}]}')

    return handler


def test_layer_with_path_escape_is_refused(ctrpyd: Daemon, namespace: str) -> None:
    layer = _tar(("ok", b"fine\n"), ("../../../../escaped-by-a-layer", b"evil\n"))
    manifest, blobs = _image(layer)
    with scripted(_serve("evil/image", manifest, blobs)) as front:
        ref = f"{front.host}/evil/image:1"
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode != 0
    layer_digest = sha256_digest(layer)
    assert "escaped-by-a-layer" in result.stderr and f"extracting layer {layer_digest}" in result.stderr, result.stderr
    with ctrpyd.client(namespace) as client:
        try:
            store.get(client, ref)
            raise AssertionError("an image record was written")
        except errors.NotFound:
            pass
        # The extraction snapshot went away with the failure; nothing was committed.
        assert list(snapshots.list_snapshots(client, "overlayfs")) == []
    assert not list(ctrpyd.base.rglob("escaped-by-a-layer"))


def test_huge_manifest_is_refused(ctrpyd: Daemon, namespace: str) -> None:
    def handler(request: Request) -> Reply:
        return Reply(200, {"Content-Type": mediatypes.OCI_MANIFEST}, b"{" * 1024, length=50 << 20)

    with scripted(handler) as front:
        ref = f"{front.host}/big/manifest:1"
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode != 0
    assert "limit" in result.stderr and front.host in result.stderr, result.stderr


def test_503_then_success(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    refusals = {"left": 2}

    def handler(request: Request) -> Reply:
        if "/manifests/" in request.path and refusals["left"] > 0:
            refusals["left"] -= 1
            return Reply(503, {"Retry-After": "0", "Content-Type": "text/plain"}, b"busy")
        return forward(filled.port, request)

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        assert result.returncode == 0, result.stderr
        assert refusals["left"] == 0
