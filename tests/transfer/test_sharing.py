"""Pulling an image a second time, into another namespace, under the default content sharing
policy ("shared", as containerd's): the blobs are on disk already, so neither the stock ctr
1.6 (client side, through Content.Write) nor ctrpyd's Transfer service downloads them again;
only the manifest is asked for. Requests are counted by a forwarder in front of the registry."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from ctrpy.images import store
from tests.support.ctrpyd import Daemon
from tests.support.registry import Reply, Request, ScriptedServer, forward, scripted

from .conftest import Filled, ctrpy


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """A ctrpyd on the default configuration (content shared between namespaces)."""
    instance = Daemon()
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def front(filled: Filled) -> Iterator[ScriptedServer]:
    """A forwarder to the filled registry that keeps every request it passed on."""
    def handler(request: Request) -> Reply:
        return forward(filled.port, request)

    with scripted(handler) as server:
        yield server


def _blob_gets(server: ScriptedServer) -> list[str]:
    return [r.path for r in server.requests if r.method == "GET" and "/blobs/" in r.path]


def _runs(daemon: Daemon, ref: str, namespace: str) -> None:
    run = daemon.ctr("run", "--rm", ref, f"s-{namespace}", "/bin/echo", "shared", namespace=namespace, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "shared"


def test_ctr_pull_into_a_second_namespace_downloads_no_blob(shared: Daemon, front: ScriptedServer,
                                                           filled: Filled) -> None:
    ref = f"{front.host}/library/multi:latest"  # (its config is not busybox:1's: the first pull downloads)
    first, second = f"a{secrets.token_hex(3)}", f"b{secrets.token_hex(3)}"
    pulled = shared.ctr("images", "pull", "--plain-http", ref, namespace=first, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert _blob_gets(front)  # the first pull downloads
    front.requests.clear()

    pulled = shared.ctr("images", "pull", "--plain-http", ref, namespace=second, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert _blob_gets(front) == []
    with shared.client(second) as client:
        assert store.get(client, ref).target.digest == filled.index_digest
    check = shared.ctr("images", "check", namespace=second)
    assert "complete" in check.stdout, check.stdout
    _runs(shared, ref, second)


def test_ctrpy_pull_into_a_second_namespace_downloads_no_blob(shared: Daemon, front: ScriptedServer,
                                                             filled: Filled) -> None:
    ref = f"{front.host}/library/busybox:1"
    first, second = f"c{secrets.token_hex(3)}", f"d{secrets.token_hex(3)}"
    pulled = ctrpy(shared, first, "images", "pull", "--plain-http", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert _blob_gets(front)
    front.requests.clear()

    pulled = ctrpy(shared, second, "images", "pull", "--plain-http", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert _blob_gets(front) == []  # neither layers nor the config
    with shared.client(second) as client:
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest
    listed = shared.ctr("content", "ls", namespace=second)
    layers = [layer.digest for layer in filled.busybox.layers]
    for digest in [*layers, filled.busybox.config_digest]:
        assert digest in listed.stdout
    # The labels of a pull are on the linked layers too.
    label_lines = [line for line in listed.stdout.splitlines() if layers[0] in line]
    assert "containerd.io/distribution.source" in label_lines[0]
    _runs(shared, ref, second)
