"""The Diff service over the real socket: layers from content applied onto bind mounts of
temporary directories, and diffs of two directories written into content."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ctrpy import errors
from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.api.containerd.services.diff.v1 import diff_pb2 as api
from ctrpy.api.containerd.services.diff.v1 import diff_pb2_grpc
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from ctrpy.client import Client
from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.errors import NotImplemented as NotImplementedError_
from ctrpy.testimage import EVIL_NAME, Layer, directory, file, hostile_layers, layer_blob, symlink
from tests.support.ctrpyd import Daemon
from tests.test_content_service import Content, digest_of

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = OCI_TAR + "+gzip"
UNCOMPRESSED = "containerd.io/uncompressed"

LAYER = Layer((
    directory("/etc"),
    file("/etc/hostname", b"ctrpy\n"),
    directory("/bin", mode=0o711),
    file("/bin/tool", b"#!/bin/sh\necho hi\n" * 100, mode=0o755),
    symlink("/bin/sh", "tool"),
))


class Differ:
    def __init__(self, client: Client, lease: str | None = None) -> None:
        self.stub = diff_pb2_grpc.DiffStub(client.channel)
        self.metadata = client.metadata + ((("containerd-lease", lease),) if lease else ())

    def apply(self, digest: str, size: int, media_type: str, target: Path) -> descriptor_pb2.Descriptor:
        request = api.ApplyRequest(
            diff=descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size),
            mounts=[bind(target)],
        )
        try:
            return self.stub.Apply(request, metadata=self.metadata, timeout=60).applied
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def diff(self, left: Path | None, right: Path, media_type: str = "", **labels: str) -> descriptor_pb2.Descriptor:
        request = api.DiffRequest(
            left=[bind(left, readonly=True)] if left is not None else [],
            right=[bind(right, readonly=True)],
            media_type=media_type,
            labels=labels,
        )
        try:
            return self.stub.Diff(request, metadata=self.metadata, timeout=60).diff
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None


def bind(path: Path, readonly: bool = False) -> mount_pb2.Mount:
    return mount_pb2.Mount(type="bind", source=str(path), options=["ro" if readonly else "rw", "rbind"])


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as instance:
        yield instance


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_apply_layer_onto_a_bind_mount(client: Client, tmp_path: Path, compress: bool) -> None:
    blob, info = layer_blob(LAYER, compress=compress)
    Content(client).put("layer", blob)
    target = tmp_path / "target"
    target.mkdir()
    applied = Differ(client).apply(info.digest, len(blob), OCI_GZIP if compress else OCI_TAR, target)
    assert applied.media_type == OCI_TAR
    assert applied.digest == info.diff_id
    assert applied.size == info.uncompressed_size
    assert (target / "etc" / "hostname").read_bytes() == b"ctrpy\n"
    assert os.stat(target / "bin" / "tool").st_mode & 0o7777 == 0o755
    assert os.stat(target / "bin").st_mode & 0o7777 == 0o711
    assert os.readlink(target / "bin" / "sh") == "tool"


def test_apply_needs_the_blob_in_the_namespace(daemon: Daemon, tmp_path: Path) -> None:
    blob, info = layer_blob(LAYER)
    with daemon.client("owner") as owner, daemon.client("stranger") as stranger:
        Content(owner).put("layer", blob)
        with pytest.raises(NotFound, match=f"content digest {info.digest}: not found"):
            Differ(stranger).apply(info.digest, len(blob), OCI_GZIP, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_apply_refuses_unknown_media_types(client: Client, tmp_path: Path) -> None:
    blob, info = layer_blob(LAYER)
    Content(client).put("layer", blob)
    with pytest.raises(NotImplementedError_):
        Differ(client).apply(info.digest, len(blob), "application/vnd.example.layer+rar", tmp_path)


# What each hostile layer gets: refused outright, or applied with every entry kept inside.
HOSTILE = {
    "path_traversal": "refused",
    "path_traversal_nested": "refused",
    "absolute_path": "contained",
    "symlink_escape": "contained",
    "symlink_escape_relative": "contained",
    "hardlink_escape": "refused",
    "hardlink_absolute": "refused",
    "hardlink_via_symlink": "refused",
}


def test_every_hostile_layer_is_covered() -> None:
    assert set(HOSTILE) == set(hostile_layers()) - {"decompression_bomb"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_layer_writes_nothing_outside(client: Client, tmp_path: Path, kind: str) -> None:
    layer = hostile_layers()[kind]
    Content(client).put(kind, layer.blob)
    target = tmp_path / "a" / "b" / "target"
    target.mkdir(parents=True)
    passwd = os.stat("/etc/passwd")
    if HOSTILE[kind] == "refused":
        with pytest.raises(InvalidArgument):
            Differ(client).apply(layer.digest, len(layer.blob), layer.media_type, target)
    else:
        applied = Differ(client).apply(layer.digest, len(layer.blob), layer.media_type, target)
        assert applied.digest == layer.diff_id
        assert list(target.rglob(EVIL_NAME))
    outside = [p for p in tmp_path.rglob(EVIL_NAME) if target not in p.parents]
    assert outside == []
    for place in ("/", "/etc", "/tmp"):
        assert not os.path.lexists(os.path.join(place, EVIL_NAME))
    after = os.stat("/etc/passwd")
    assert (after.st_nlink, after.st_mtime_ns, after.st_size) == (passwd.st_nlink, passwd.st_mtime_ns, passwd.st_size)


def _tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("left\n")
    (root / "etc" / "gone").write_text("deleted on the right\n")
    (root / "same").write_text("unchanged\n")


def _tar_names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {member.name: member for member in tf.getmembers()}


def test_diff_of_two_directories_is_written_to_content(daemon: Daemon, client: Client, tmp_path: Path) -> None:
    left, right = tmp_path / "left", tmp_path / "right"
    left.mkdir()
    right.mkdir()
    _tree(left)
    _tree(right)
    os.utime(right / "etc", ns=(os.stat(left / "etc").st_atime_ns, os.stat(left / "etc").st_mtime_ns))
    (right / "etc" / "gone").unlink()
    (right / "etc" / "hostname").write_text("right\n")
    (right / "new").write_bytes(b"x" * 100_000)
    os.utime(right / "same", ns=(os.stat(left / "same").st_atime_ns, os.stat(left / "same").st_mtime_ns))

    descriptor = Differ(client).diff(left, right, custom="label")
    assert descriptor.media_type == OCI_GZIP
    content = Content(client)
    info = content.info(descriptor.digest)
    assert info.size == descriptor.size
    blob = b"".join(m.data for m in content.read(descriptor.digest))
    assert digest_of(blob) == descriptor.digest
    tar = gzip.decompress(blob)
    assert dict(info.labels) == {"custom": "label", UNCOMPRESSED: digest_of(tar)}
    names = _tar_names(tar)
    assert set(names) == {"etc", "etc/hostname", "etc/.wh.gone", "new"}
    assert names["new"].size == 100_000

    # The same diff again is the same blob: kept, and still labelled.
    again = Differ(client).diff(left, right)
    assert again.digest == descriptor.digest
    assert content.info(again.digest).labels[UNCOMPRESSED] == digest_of(tar)

    # Applying the diff onto a copy of the left side gives the right side.
    copy = tmp_path / "copy"
    copy.mkdir()
    _tree(copy)
    applied = Differ(client).apply(descriptor.digest, descriptor.size, descriptor.media_type, copy)
    assert applied.digest == digest_of(tar)
    assert sorted(p.name for p in copy.rglob("*")) == sorted(p.name for p in right.rglob("*"))
    assert (copy / "etc" / "hostname").read_text() == "right\n"


def test_plain_diff_and_unsupported_media_type(client: Client, tmp_path: Path) -> None:
    right = tmp_path / "right"
    right.mkdir()
    (right / "only").write_text("one file\n")
    descriptor = Differ(client).diff(None, right, OCI_TAR)
    assert descriptor.media_type == OCI_TAR
    blob = b"".join(m.data for m in Content(client).read(descriptor.digest))
    assert set(_tar_names(blob)) == {"only"}
    # As containerd's walking differ: only a compressed layer gets the uncompressed label.
    assert UNCOMPRESSED not in Content(client).info(descriptor.digest).labels
    with pytest.raises(NotImplementedError_, match="unsupported diff media type"):
        Differ(client).diff(None, right, OCI_TAR + "+zstd")
    # A failed diff leaves no ingest behind.
    statuses = Content(client).call("ListStatuses", content_pb2.ListStatusesRequest())
    assert isinstance(statuses, content_pb2.ListStatusesResponse) and list(statuses.statuses) == []


def test_diff_under_a_lease(daemon: Daemon, tmp_path: Path) -> None:
    assert daemon.ctr("leases", "create", "--id", "diffing").returncode == 0
    right = tmp_path / "right"
    right.mkdir()
    (right / "f").write_text("leased diff\n")
    with daemon.client() as client:
        descriptor = Differ(client, lease="diffing").diff(None, right)
        listed = client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="diffing"))
    assert {(r.type, r.id) for r in listed.resources} == {("content", descriptor.digest)}
