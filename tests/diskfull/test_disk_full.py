"""A full disk must not stay full: ctrpyd on a 24 MiB tmpfs.

What fails for lack of space answers RESOURCE_EXHAUSTED with a message naming the full
filesystem's mount point, removes what it wrote, and leaves the daemon serving: the next
request that fits succeeds. Through the stock ctr (an image that cannot fit, then busybox
imported and run) and through the Python client (Content.Write, Snapshots.Prepare,
Diff.Apply, metadata writes).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.api.containerd.services.diff.v1 import diff_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from ctrpy.client import Client
from ctrpy.errors import NotFound, ResourceExhausted
from ctrpy.testimage import Layer, RandomContent, directory, file, layer_blob
from tests.diskfull.conftest import BUSYBOX, HALF, fill, used_bytes, wait_for
from tests.support.ctrpyd import Daemon
from tests.test_content_service import Content
from tests.test_diff_service import OCI_GZIP, Differ

STAT, WRITE, COMMIT = (
    content_pb2.WriteAction.STAT,
    content_pb2.WriteAction.WRITE,
    content_pb2.WriteAction.COMMIT,
)
SLACK = 2 << 20  # what may stay in use after a failure: metadata, logs, sqlite's WAL


def ingests(daemon: Daemon) -> list[str]:
    return sorted(os.listdir(daemon.root / "content" / "ingest"))


def serving(daemon: Daemon) -> bool:
    with daemon.client() as client:
        client.call(client.version.Version, empty_pb2.Empty())
    return daemon.process is not None and daemon.process.poll() is None


def test_ctr_import_too_big_then_a_small_one_runs(full_daemon: Daemon, images: dict[str, Path]) -> None:
    start = used_bytes(full_daemon.base)

    result = full_daemon.ctr("images", "import", str(images["big"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no space left on device: writing ingest" in result.stderr
    assert f"on the filesystem mounted at {full_daemon.base}: resource exhausted" in result.stderr
    assert "OSError" not in result.stderr

    # The ingest went with the failed write; ctr's lease and whatever it held go at the next
    # collection.
    assert ingests(full_daemon) == []
    assert wait_for(lambda: used_bytes(full_daemon.base) <= start + SLACK), used_bytes(full_daemon.base)
    assert serving(full_daemon)
    assert "test.local/big" not in full_daemon.ctr("images", "ls", "-q").stdout

    small = full_daemon.ctr("images", "import", str(images["busybox"]))
    assert small.returncode == 0, small.stderr
    hi = full_daemon.ctr("run", "--rm", BUSYBOX, "after-full", "echo", "hi")
    assert (hi.returncode, hi.stdout) == (0, "hi\n"), hi.stderr


def test_ctr_import_whose_unpack_does_not_fit(full_daemon: Daemon, images: dict[str, Path]) -> None:
    start = used_bytes(full_daemon.base)
    result = full_daemon.ctr("images", "import", str(images["half"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no space left on device: applying a layer onto" in result.stderr, result.stderr
    assert f"on the filesystem mounted at {full_daemon.base}: resource exhausted" in result.stderr

    # ctr removed its extract snapshot (the daemon had emptied it already); the image and its
    # blobs stay, as they do after any failed unpack, until the image is removed.
    assert full_daemon.ctr("snapshots", "ls").stdout.splitlines()[1:] == []
    assert serving(full_daemon)
    removed = full_daemon.ctr("images", "rm", "--sync", HALF)
    assert removed.returncode == 0, removed.stderr
    assert wait_for(lambda: used_bytes(full_daemon.base) <= start + SLACK), used_bytes(full_daemon.base)

    small = full_daemon.ctr("images", "import", str(images["busybox"]))
    assert small.returncode == 0, small.stderr
    hi = full_daemon.ctr("run", "--rm", BUSYBOX, "after-unpack", "echo", "hi")
    assert (hi.returncode, hi.stdout) == (0, "hi\n"), hi.stderr


def test_content_write_that_does_not_fit(full_daemon: Daemon) -> None:
    start = used_bytes(full_daemon.base)
    chunk = RandomContent(1 << 20, 7)
    with full_daemon.client() as client:
        content = Content(client)
        stream = client.duplex(client.content.Write)
        stream.send(content_pb2.WriteContentRequest(action=STAT, ref="too-big", total=40 << 20))
        offset = 0
        with pytest.raises(ResourceExhausted) as caught:
            for _ in range(40):
                data = next(iter(chunk.chunks()))
                stream.send(content_pb2.WriteContentRequest(action=WRITE, offset=offset, data=data))
                offset += len(data)
        stream.close()
        message = str(caught.value)
        assert message.startswith('no space left on device: writing ingest "default/too-big"'), message
        assert message.endswith(f"on the filesystem mounted at {full_daemon.base}: resource exhausted")
        assert 0 < offset < 40 << 20

        # Nothing of it is left: no ingest to resume, the space is back at once.
        with pytest.raises(NotFound):
            content.call("Status", content_pb2.StatusRequest(ref="too-big"))
        assert ingests(full_daemon) == []
        assert used_bytes(full_daemon.base) <= start + SLACK

        # The daemon goes on, and a blob that fits is written.
        reply = content.put("fits", b"small blob")
        assert reply.offset == len(b"small blob")
    assert serving(full_daemon)


def snapshot_call(client: Client, method: str, request: object) -> object:
    return client.call(getattr(client.snapshots, method), request)


def test_diff_apply_that_does_not_fit_leaves_the_snapshot_empty(full_daemon: Daemon) -> None:
    # 13 MiB of random data: the blob fits, the blob and its unpacked copy do not.
    layer = Layer((directory("/data"), file("/data/blob.bin", RandomContent(13 << 20, 3))), compresslevel=0)
    blob, info = layer_blob(layer)
    with full_daemon.client() as client:
        Content(client).put("big-layer", blob)
        after_blob = used_bytes(full_daemon.base)
        prepared = snapshot_call(client, "Prepare", snapshots_pb2.PrepareSnapshotRequest(
            snapshotter="overlayfs", key="extract-big"))
        assert isinstance(prepared, snapshots_pb2.PrepareSnapshotResponse)

        differ = Differ(client)
        with pytest.raises(ResourceExhausted) as caught:
            _apply(differ, info.digest, len(blob), list(prepared.mounts))
        message = str(caught.value)
        assert message.startswith("no space left on device: applying a layer onto"), message
        assert f"on the filesystem mounted at {full_daemon.base}" in message

        # What the layer wrote is gone already; removing the snapshot, as ctr's unpacker does,
        # works on the daemon that is still serving.
        assert used_bytes(full_daemon.base) <= after_blob + SLACK
        snapshot_call(client, "Remove", snapshots_pb2.RemoveSnapshotRequest(
            snapshotter="overlayfs", key="extract-big"))

        # A layer that fits applies.
        small_blob, small_info = layer_blob(Layer((file("/hello", b"hi\n"),)))
        Content(client).put("small-layer", small_blob)
        prepared = snapshot_call(client, "Prepare", snapshots_pb2.PrepareSnapshotRequest(
            snapshotter="overlayfs", key="extract-small"))
        assert isinstance(prepared, snapshots_pb2.PrepareSnapshotResponse)
        applied = _apply(differ, small_info.digest, len(small_blob), list(prepared.mounts))
        assert applied.digest == small_info.diff_id
    assert serving(full_daemon)


def _apply(differ: Differ, digest: str, size: int, mounts: list[mount_pb2.Mount]) -> descriptor_pb2.Descriptor:
    request = diff_pb2.ApplyRequest(
        diff=descriptor_pb2.Descriptor(media_type=OCI_GZIP, digest=digest, size=size), mounts=mounts
    )
    try:
        return differ.stub.Apply(request, metadata=differ.metadata, timeout=120).applied
    except grpc.RpcError as exc:
        raise errors.from_grpc(exc) from None


def test_snapshots_and_metadata_on_a_full_disk(full_daemon: Daemon) -> None:
    filler = full_daemon.base / "filler"
    fill(filler)
    with full_daemon.client() as client:
        # Prepare until the metadata (the daemon's or the snapshotter's database) can grow no
        # more: sqlite's WAL may have room for a few.
        with pytest.raises(ResourceExhausted) as prepare_failed:
            for number in range(500):
                snapshot_call(client, "Prepare", snapshots_pb2.PrepareSnapshotRequest(
                    snapshotter="overlayfs", key=f"k{number}"))
        assert "no space left on device" in str(prepare_failed.value)
        assert f"on the filesystem mounted at {full_daemon.base}" in str(prepare_failed.value)

        # Namespace labels: the daemon's own database, refused, not crashed.
        labels = {f"l{n}": "x" * 4000 for n in range(4)}
        with pytest.raises(ResourceExhausted) as create_failed:
            for number in itertools.count():
                assert number < 2000, "the metadata database never ran out of space"
                client.call(client.namespaces.Create, namespace_pb2.CreateNamespaceRequest(
                    namespace=namespace_pb2.Namespace(name=f"full-{number}", labels=labels)))
        assert str(create_failed.value).startswith("no space left on device: writing the metadata database")

        # Reads still work on the full disk.
        listed = client.call(client.namespaces.List, namespace_pb2.ListNamespacesRequest())
        names = [n.name for n in listed.namespaces]
        assert f"full-{number}" not in names  # the refused one is not half there
        leftovers = [n for n in os.listdir(_overlay_root(full_daemon) / "snapshots") if n.startswith("new-")]
        assert leftovers == []

        filler.unlink()
        snapshot_call(client, "Prepare", snapshots_pb2.PrepareSnapshotRequest(
            snapshotter="overlayfs", key="after"))
        client.call(client.namespaces.Create, namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name="after-full")))
    assert serving(full_daemon)


def _overlay_root(daemon: Daemon) -> Path:
    found = [p.parent for p in daemon.root.rglob("metadata.db") if (p.parent / "snapshots").is_dir()]
    assert found, list(daemon.root.iterdir())
    return found[0]
