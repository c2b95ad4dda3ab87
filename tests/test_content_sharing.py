"""Content sharing between namespaces, as containerd's ``content_sharing_policy``: under
"shared" (the default) a Write naming the digest of a blob stored for another namespace links
it without its bytes; under "isolated" every namespace sends them, unless a namespace labelled
``containerd.io/namespace.shareable=true`` holds the blob. The wire details are compared with
containerd in tests/differential/test_known_cases.py; here: ctrpyd's own policies, the label,
leases and garbage collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.api.containerd.services.content.v1 import content_pb2 as api
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound, OutOfRange
from ctrpy.manager import config as daemon_config
from tests.gc.helpers import blob_file, collect, content, create_lease, digest_of, ok
from tests.support.ctrpyd import Daemon

STAT, WRITE, COMMIT = api.WriteAction.STAT, api.WriteAction.WRITE, api.WriteAction.COMMIT
SHAREABLE = "containerd.io/namespace.shareable"
GC_ROOT = "containerd.io/gc.root"


def _write(daemon: Daemon, namespace: str, *requests: api.WriteContentRequest) -> list[api.WriteContentResponse]:
    with daemon.client(namespace) as client:
        stream = client.duplex(client.content.Write)
        try:
            return [stream.send(request) for request in requests]
        finally:
            stream.close()


def _store(daemon: Daemon, namespace: str, data: bytes, **labels: str) -> str:
    digest = digest_of(data)
    _write(daemon, namespace, api.WriteContentRequest(action=COMMIT, ref="w", total=len(data), expected=digest,
                                                      data=data, labels=labels))
    return digest


def _stat(daemon: Daemon, namespace: str, digest: str, ref: str = "s") -> api.WriteContentResponse:
    return _write(daemon, namespace, api.WriteContentRequest(action=STAT, ref=ref, expected=digest))[0]


def _link(daemon: Daemon, namespace: str, digest: str, size: int, **labels: str) -> api.WriteContentResponse:
    """What ctr does for a blob whose STAT answered offset == size: COMMIT there, no data."""
    replies = _write(daemon, namespace,
                     api.WriteContentRequest(action=STAT, ref="l", expected=digest, total=size),
                     api.WriteContentRequest(action=COMMIT, ref="l", offset=size, total=size, expected=digest,
                                             labels=labels))
    return replies[-1]


def _info_labels(daemon: Daemon, namespace: str, digest: str) -> dict[str, str]:
    with daemon.client(namespace) as client:
        return dict(client.call(client.content.Info, api.InfoRequest(digest=digest)).info.labels)


def _policy_daemon(tmp_path: Path, policy: str) -> Daemon:
    config = tmp_path / "ctrpyd.toml"
    config.write_text(f'version = 1\n[metadata]\ncontent_sharing_policy = "{policy}"\n')
    return Daemon(extra_args=("--config", str(config)))


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Daemon]:
    instance = _policy_daemon(tmp_path, "isolated")
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


def test_shared_by_default_linked_without_bytes_and_kept_until_both_namespaces_drop_it(daemon: Daemon) -> None:
    data = b"a blob both namespaces use" * 50
    digest = _store(daemon, "ns-a", data, **{GC_ROOT: "x", "owner": "a"})
    assert "policy" in ok(daemon.ctr("plugins", "ls", "-d", "id==sqlite")).stdout

    stat = _stat(daemon, "ns-b", digest)
    assert (stat.offset, stat.digest) == (len(data), digest)
    with pytest.raises(NotFound):  # nothing linked before the COMMIT
        _info_labels(daemon, "ns-b", digest)

    create_lease(daemon, "pull", namespace="ns-b")
    with daemon.client("ns-b") as client, client.using_lease("pull"):
        stream = client.duplex(client.content.Write)
        stream.send(api.WriteContentRequest(action=STAT, ref="l", expected=digest, total=len(data)))
        commit = stream.send(api.WriteContentRequest(action=COMMIT, ref="l", offset=len(data), total=len(data),
                                                     expected=digest, labels={"owner": "b"}))
        stream.close()
        resources = client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="pull")).resources
    assert (commit.offset, commit.digest) == (len(data), digest)
    assert [(r.id, r.type) for r in resources] == [(digest, "content")]
    assert _info_labels(daemon, "ns-b", digest) == {"owner": "b"}
    assert _info_labels(daemon, "ns-a", digest) == {GC_ROOT: "x", "owner": "a"}
    with pytest.raises(AlreadyExists, match=f"content {digest}"):
        _stat(daemon, "ns-b", digest)

    # A's copy goes; B's (held by B's lease) and the file stay, through a collection.
    ok(daemon.ctr("content", "rm", digest, namespace="ns-a"))
    collect(daemon, "ns-a")
    assert digest in content(daemon, "ns-b") and blob_file(daemon, digest).exists()
    assert ok(daemon.ctr("content", "get", digest, namespace="ns-b")).stdout.encode() == data
    # Once B's lease is gone too, the collector takes the blob.
    ok(daemon.ctr("leases", "rm", "--sync", "pull", namespace="ns-b"))
    assert digest not in content(daemon, "ns-b")
    assert not blob_file(daemon, digest).exists()


def test_isolated_policy_needs_the_bytes(isolated: Daemon) -> None:
    data = b"isolated blob" * 10
    digest = _store(isolated, "ns-a", data)
    assert "isolated" in ok(isolated.ctr("plugins", "ls", "-d", "id==sqlite")).stdout
    stat = _stat(isolated, "ns-b", digest)
    assert stat.offset == 0 and stat.digest == digest_of(b"")
    with pytest.raises(OutOfRange, match="must occur at current offset 0"):
        _link(isolated, "ns-b", digest, len(data))  # ctr's COMMIT where a shared STAT would be
    with pytest.raises(NotFound):
        _info_labels(isolated, "ns-b", digest)
    # Sending the bytes works as ever.
    _store(isolated, "ns-b", data, owner="b")
    assert _info_labels(isolated, "ns-b", digest) == {"owner": "b"}


def test_a_shareable_namespace_shares_its_blobs_under_isolated(isolated: Daemon) -> None:
    data = b"from a shareable namespace" * 10
    digest = _store(isolated, "base", data)
    assert _stat(isolated, "user", digest).offset == 0
    ok(isolated.ctr("namespaces", "label", "base", f"{SHAREABLE}=true"))
    assert _stat(isolated, "user", digest).offset == len(data)
    # The size announced must be the blob's, else the bytes are needed.
    wrong = _write(isolated, "user", api.WriteContentRequest(action=STAT, ref="w2", expected=digest,
                                                               total=len(data) + 1))[0]
    assert wrong.offset == 0
    commit = _link(isolated, "user", digest, len(data), owner="user")
    assert commit.digest == digest
    assert _info_labels(isolated, "user", digest) == {"owner": "user"}
    # A blob held only by namespaces that are not shareable stays theirs.
    other = _store(isolated, "private", b"private blob")
    assert _stat(isolated, "user", other).offset == 0
    # Only "true" shares.
    ok(isolated.ctr("namespaces", "label", "private", f"{SHAREABLE}=yes"))
    assert _stat(isolated, "user", other, ref="s2").offset == 0


def test_the_policy_is_configured_like_containerds(tmp_path: Path) -> None:
    assert daemon_config.Config().content_sharing_policy == "shared"
    parsed = daemon_config.parse('[metadata]\ncontent_sharing_policy = "isolated"\n')
    assert parsed.content_sharing_policy == "isolated"
    assert daemon_config.parse(daemon_config.render(parsed)) == parsed
    with pytest.raises(InvalidArgument, match="content_sharing_policy"):
        daemon_config.parse('[metadata]\ncontent_sharing_policy = "open"\n')
    with pytest.raises(InvalidArgument, match="unknown keys in \\[metadata\\]"):
        daemon_config.parse('[metadata]\npolicy = "shared"\n')
