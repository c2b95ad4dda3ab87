"""``ctrpy images pull`` through ctrpyd's Transfer service, against a real docker-registry.

Faults come from a scripted HTTP front (tests/support/registry.py) that forwards to the real
registry and breaks what the test says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.images import content, snapshots, store
from tests.support.ctrpyd import Daemon
from tests.support.registry import Reply, Request, forward, scripted, skopeo_copy

from .conftest import Filled, ctrpy

GC_SNAPSHOT = "containerd.io/gc.ref.snapshot.overlayfs"


def _blob_gets(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.method == "GET" and "/blobs/" in r.path]


def _no_image(daemon: Daemon, namespace: str, name: str) -> bool:
    with daemon.client(namespace) as client:
        try:
            store.get(client, name)
        except errors.NotFound:
            return True
    return False


def _leases(daemon: Daemon, namespace: str) -> list[str]:
    with daemon.client(namespace) as client:
        return [lease.id for lease in client.call(client.leases.List, leases_pb2.ListRequest()).leases]


def test_pull_then_ctr_run(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    layer = filled.busybox.layers[0]
    # Off a terminal: one line per layer, then the image.
    assert f"{layer.digest[:19]}: complete" in result.stdout
    assert f"{layer.digest[:19]}: extracted" in result.stdout
    assert result.stdout.strip().endswith(f"{ref}: {filled.busybox.manifest_digest}")

    with ctrpyd.client(namespace) as client:
        image = store.get(client, ref)
        assert image.target.digest == filled.busybox.manifest_digest
        top = filled.busybox.chain_ids[-1]
        assert snapshots.stat(client, "overlayfs", top).name == top
        config = content.info(client, filled.busybox.config_digest)
        assert config.labels[GC_SNAPSHOT] == top
        manifest = content.info(client, filled.busybox.manifest_digest)
        assert manifest.labels["containerd.io/gc.ref.content.config"] == filled.busybox.config_digest
        assert manifest.labels["containerd.io/gc.ref.content.l.0"] == layer.digest
        blob = content.info(client, layer.digest)
        assert blob.labels["containerd.io/uncompressed"] == layer.diff_id
        assert blob.labels[f"containerd.io/distribution.source.{filled.host}"] == "library/busybox"
        assert not content.list_statuses(client)  # no ingest left behind
    assert _leases(ctrpyd, namespace) == []  # the pull's lease is gone: the image holds it all

    run = ctrpyd.ctr("run", "--rm", ref, f"c-{namespace}", "echo", "pulled", namespace=namespace)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "pulled"


def test_second_pull_fetches_nothing(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    with scripted(lambda request: forward(filled.port, request)) as front:
        ref = f"{front.host}/library/busybox:1"
        first = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        assert first.returncode == 0, first.stderr
        assert len(_blob_gets(front.requests)) == 2  # config and layer (documents by manifest GET too)
        front.requests.clear()
        second = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        assert second.returncode == 0, second.stderr
        assert "already exists" in second.stdout
        # Only the tag is resolved again: no blob (layer or config) and no manifest is fetched.
        assert _blob_gets(front.requests) == []
        assert [r.method for r in front.requests] == ["HEAD"]


def test_missing_blob_leaves_no_image(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    layer = filled.busybox.layers[0].digest

    def handler(request: Request) -> Reply:
        if request.path.endswith(f"/blobs/{layer}"):
            return Reply(404, {"Content-Type": "application/json"},
                         b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}')
        return forward(filled.port, request)

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode != 0
    assert "not found" in result.stderr and layer in result.stderr
    assert _no_image(ctrpyd, namespace, ref)
    # A retry from a registry that has it succeeds.
    good = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", f"{filled.host}/library/busybox:1")
    assert good.returncode == 0, good.stderr


def test_digest_mismatch_leaves_no_image(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    layer = filled.busybox.layers[0].digest

    def handler(request: Request) -> Reply:
        reply = forward(filled.port, request)
        if request.method == "GET" and request.path.endswith(f"/blobs/{layer}") and reply.status == 200:
            body = bytearray(reply.body)
            body[len(body) // 2] ^= 0xFF  # same size, other bytes
            return dataclasses.replace(reply, body=bytes(body))
        return reply

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode != 0
    assert "digest" in result.stderr and layer in result.stderr
    assert _no_image(ctrpyd, namespace, ref)
    with ctrpyd.client(namespace) as client:
        with pytest.raises(errors.NotFound):
            content.info(client, layer)
        assert not content.list_statuses(client)  # the corrupt ingest is not kept for a resume


def test_index_pulls_only_this_platform(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/multi:latest"
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == filled.index_digest
        index = content.info(client, filled.index_digest)
        assert filled.native.manifest_digest in index.labels.values()
        content.info(client, filled.native.manifest_digest)
        for digest in (filled.other.manifest_digest, filled.other.config_digest):
            with pytest.raises(errors.NotFound):
                content.info(client, digest)

    other_namespace = namespace + "all"
    result = ctrpy(ctrpyd, other_namespace, "images", "pull", "--plain-http", "--all-platforms", ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(other_namespace) as client:
        for digest in (filled.native.manifest_digest, filled.other.manifest_digest, filled.other.config_digest):
            content.info(client, digest)
        # Still unpacked for this machine.
        snapshots.stat(client, "overlayfs", filled.native.chain_ids[-1])


def test_platform_missing_from_index_is_a_clear_error(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/multi:latest"
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", "--platform", "windows/amd64", ref)
    assert result.returncode != 0
    assert "no match for platform" in result.stderr
    assert _no_image(ctrpyd, namespace, ref)


def test_mirror_from_hosts_dir(ctrpyd: Daemon, namespace: str, filled: Filled, tmp_path: Path) -> None:
    """A hosts.toml maps registry.k8s.io to the loopback registry (pull and resolve): the image
    keeps its upstream name, the bytes come from the mirror."""
    skopeo_copy(filled.busybox_archive, f"{filled.host}/pause:3.9")
    hosts = tmp_path / "certs.d"
    (hosts / "registry.k8s.io").mkdir(parents=True)
    with scripted(lambda request: forward(filled.port, request)) as front:
        (hosts / "registry.k8s.io" / "hosts.toml").write_text(
            'server = "https://registry.k8s.io"\n\n'
            f'[host."http://{front.host}"]\n  capabilities = ["pull", "resolve"]\n')
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--hosts-dir", str(hosts), "registry.k8s.io/pause:3.9")
        assert result.returncode == 0, result.stderr
        assert any(r.path.startswith("/v2/pause/manifests/3.9") for r in front.requests)
    with ctrpyd.client(namespace) as client:
        assert store.get(client, "registry.k8s.io/pause:3.9").target.digest == filled.busybox.manifest_digest


def test_unpack_is_pipelined(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """The bottom layer is applied while the top one still downloads (held back by the front)."""
    layers = filled.multilayer.layers
    top = layers[-1].digest

    def handler(request: Request) -> Reply:
        reply = forward(filled.port, request)
        if request.method == "GET" and request.path.endswith(f"/blobs/{top}"):
            reply.stall_after, reply.stall_for = 1, 1.5  # under the daemon's 3 s stall limit
        return reply

    with scripted(handler) as front:
        ref = f"{front.host}/library/multilayer:1"
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    bottom_extracted = next(i for i, line in enumerate(lines) if line.startswith(f"{layers[0].digest[:19]}: extracted"))
    top_complete = next(i for i, line in enumerate(lines) if line.startswith(f"{top[:19]}: complete"))
    assert bottom_extracted < top_complete, result.stdout
    with ctrpyd.client(namespace) as client:
        for chain in filled.multilayer.chain_ids:
            snapshots.stat(client, "overlayfs", chain)


def test_pull_into_another_snapshotter(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", "--snapshotter", "native", ref)
    assert result.returncode == 0, result.stderr
    top = filled.busybox.chain_ids[-1]
    with ctrpyd.client(namespace) as client:
        snapshots.stat(client, "native", top)
        assert content.info(client, filled.busybox.config_digest).labels["containerd.io/gc.ref.snapshot.native"] == top
    unknown = ctrpy(ctrpyd, namespace + "x", "images", "pull", "--plain-http", "--snapshotter", "nope", ref)
    assert unknown.returncode != 0 and "nope" in unknown.stderr
