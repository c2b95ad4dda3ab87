"""Pulls that break half-way: resumed from the partial ingest, shared between concurrent pulls,
and behind basic auth."""

from __future__ import annotations

import base64
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.images import content, store
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, Reply, Request, forward, json_reply, scripted, skopeo_copy

from .conftest import CTRPY, USER, Filled, ctrpy

GC_EXPIRE = "containerd.io/gc.expire"


def _layer_gets(requests: list[Request], digest: str) -> list[Request]:
    return [r for r in requests if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")]


def test_registry_dies_mid_layer_then_retry_resumes(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    layer = filled.busybox.layers[0]
    state = {"broken": True}

    def handler(request: Request) -> Reply:
        if request.method == "GET" and request.path.endswith(f"/blobs/{layer.digest}") and state["broken"]:
            if "range" in request.headers:
                return Reply(503, {"Content-Type": "text/plain"}, b"down")
            reply = forward(filled.port, request)
            reply.cut_after = layer.size // 2  # the connection drops half-way through the layer
            return reply
        return forward(filled.port, request)

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        failed = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        assert failed.returncode != 0
        assert front.host in failed.stderr and layer.digest in failed.stderr
        with ctrpyd.client(namespace) as client:
            with pytest.raises(Exception, match="not found"):
                store.get(client, ref)
            partial = [s for s in content.list_statuses(client) if layer.digest in s.ref]
            assert partial and 0 < partial[0].offset < layer.size
            # What the failed pull holds, it holds under an expiring lease: GC takes it later.
            leases = client.call(client.leases.List, leases_pb2.ListRequest()).leases
            assert leases and all(GC_EXPIRE in lease.labels for lease in leases)

        state["broken"] = False
        front.requests.clear()
        retried = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        assert retried.returncode == 0, retried.stderr
        gets = _layer_gets(front.requests, layer.digest)
        assert len(gets) == 1
        assert gets[0].headers.get("range") == f"bytes={partial[0].offset}-"
        with ctrpyd.client(namespace) as client:
            assert store.get(client, ref).target.digest == filled.busybox.manifest_digest
            assert content.info(client, layer.digest).size == layer.size


def test_concurrent_pulls_share_one_download(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    layer = filled.busybox.layers[0]

    def handler(request: Request) -> Reply:
        reply = forward(filled.port, request)
        if request.method == "GET" and request.path.endswith(f"/blobs/{layer.digest}"):
            reply.stall_after, reply.stall_for = layer.size // 2, 1.5  # both pulls are in flight
        return reply

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        env = {**os.environ, "CTRPY_ADDRESS": str(ctrpyd.address), "CTRPY_NAMESPACE": namespace}
        pulls = [subprocess.Popen([CTRPY, "images", "pull", "--plain-http", ref], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in pulls]
        assert [p.returncode for p in pulls] == [0, 0], outputs
        assert len(_layer_gets(front.requests, layer.digest)) == 1


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, ImageInfo]]:
    work: Path = tmp_path_factory.mktemp("transfer-auth")
    with LocalRegistry(work / "registry", htpasswd=USER) as registry:
        info = write_archive(busybox_image(f"{registry.host}/private/busybox:1"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{registry.host}/private/busybox:1", creds=USER)
        yield registry, info


def test_basic_auth_with_user(ctrpyd: Daemon, namespace: str,
                              auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    registry, info = auth_registry
    ref = f"{registry.host}/private/busybox:1"
    anonymous = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert anonymous.returncode != 0
    assert registry.host in anonymous.stderr
    wrong = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", "--user", f"{USER[0]}:nope", ref)
    assert wrong.returncode != 0
    assert registry.host in wrong.stderr
    good = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", "--user", f"{USER[0]}:{USER[1]}", ref)
    assert good.returncode == 0, good.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == info.manifest_digest


def test_cancelled_pull_leaves_no_image_and_resumes(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    layer = filled.busybox.layers[0]
    state = {"stall": True}

    def handler(request: Request) -> Reply:
        reply = forward(filled.port, request)
        if state["stall"] and request.method == "GET" and request.path.endswith(f"/blobs/{layer.digest}"):
            reply.stall_after, reply.stall_for = layer.size // 2, 20.0  # the client gives up meanwhile
        return reply

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        env = {**os.environ, "CTRPY_ADDRESS": str(ctrpyd.address), "CTRPY_NAMESPACE": namespace}
        pull = subprocess.Popen([CTRPY, "images", "pull", "--plain-http", ref], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not _layer_gets(front.requests, layer.digest) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _layer_gets(front.requests, layer.digest)
            time.sleep(0.3)
        finally:
            pull.kill()  # the client goes away: the daemon cancels the pull
            pull.wait(30)
        with ctrpyd.client(namespace) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the cancelled pull releases its ingest
                statuses = [s for s in content.list_statuses(client) if layer.digest in s.ref]
                if statuses and statuses[0].offset > 0:
                    break
                time.sleep(0.1)
            assert statuses and 0 < statuses[0].offset < layer.size
            with pytest.raises(Exception, match="not found"):
                store.get(client, ref)

        state["stall"] = False
        front.requests.clear()
        retried = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        assert retried.returncode == 0, retried.stderr
        gets = _layer_gets(front.requests, layer.digest)
        assert [g.headers.get("range") for g in gets] == [f"bytes={statuses[0].offset}-"]


def test_stalled_registry_fails_clearly(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """The module's daemon has ``[transfer] stall_timeout = 3``: a registry that stops sending
    mid-layer fails the pull with an error that says so, instead of hanging."""
    layer = filled.busybox.layers[0]

    def handler(request: Request) -> Reply:
        reply = forward(filled.port, request)
        if request.method == "GET" and request.path.endswith(f"/blobs/{layer.digest}"):
            reply.stall_after, reply.stall_for = layer.size // 2, 60.0
        return reply

    with scripted(handler) as front:
        ref = f"{front.host}/library/busybox:1"
        started = time.monotonic()
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "no progress for 3 s" in result.stderr and layer.digest in result.stderr, result.stderr
    assert elapsed < 50  # liveness: well before the registry would have resumed
    with ctrpyd.client(namespace) as client, pytest.raises(Exception, match="not found"):
        store.get(client, ref)


def test_bearer_token_realm_with_user(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """A registry behind a token realm that wants basic credentials for its tokens: the daemon
    asks the client for them on the auth stream, gets a token per scope and pulls."""
    user, password = "frank", "f-pw"
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    issued: list[str] = []
    port = {"value": 0}

    def handler(request: Request) -> Reply:
        url = urllib.parse.urlsplit(request.path)
        if url.path == "/token":
            if request.headers.get("authorization") != basic:
                return json_reply(401, {"details": "bad credentials"})
            scope = urllib.parse.parse_qs(url.query).get("scope", [""])[0]
            issued.append(scope)
            return json_reply(200, {"token": f"tok:{scope}", "expires_in": 300})
        repository = url.path.removeprefix("/v2/").split("/manifests/")[0].split("/blobs/")[0]
        need = f"repository:{repository}:pull"
        if request.headers.get("authorization") != f"Bearer tok:{need}":
            challenge = f'Bearer realm="http://127.0.0.1:{port["value"]}/token",service="t",scope="{need}"'
            return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
        return forward(filled.port, request)

    with scripted(handler) as front:
        port["value"] = front.port
        ref = f"{front.host}/library/busybox:1"
        wrong = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", "--user", f"{user}:nope", ref)
        assert wrong.returncode != 0 and front.host in wrong.stderr, wrong.stderr
        good = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", "--user", f"{user}:{password}", ref)
        assert good.returncode == 0, good.stderr
    assert issued == ["repository:library/busybox:pull"]  # one token, cached for every request
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest
