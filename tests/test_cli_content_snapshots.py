"""``ctrpy content`` and ``ctrpy snapshots`` against a real daemon, cross-checked with ctr."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.client import Client
from ctrpy.images import snapshots as snap
from ctrpy.mount import mounted
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.images.backends import Backend, backend_fixture  # noqa: F401  (the fixture)
from tests.support.containerd import mounts_under


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_content_ingest_get_label_rm(backend: Backend) -> None:
    data = os.urandom(3 << 20) + b"tail"  # several read windows
    digest = digest_of(data)
    assert backend.ctrpy("content", "ingest", "blob-1", input=data).stdout.strip() == digest
    assert digest in backend.ctr("content", "ls", "-q").stdout.split()
    assert backend.ctrpy_bytes("content", "get", digest) == data
    # Written by ctr, read by ctrpy, and the other way round.
    small = b"hello from ctr\n"
    backend.ctr("content", "ingest", "blob-2", input=small.decode())
    assert backend.ctrpy_bytes("content", "get", digest_of(small)) == small
    assert backend.ctr("content", "get", digest, text=False).stdout == data  # type: ignore[comparison-overlap]

    assert backend.ctrpy("content", "label", digest, "a=b", "c=d").stdout.strip() == "a=b,c=d"
    assert backend.ctrpy("content", "label", digest, "c=").stdout.strip() == "a=b"
    table = {r[0]: r for r in rows(backend.ctr("content", "ls").stdout)}
    assert table[digest][-1] == "a=b"
    listed = {i["digest"]: i for i in json.loads(backend.ctrpy("--format", "json", "content", "ls").stdout)}
    assert listed[digest]["size"] == len(data) and listed[digest]["labels"] == {"a": "b"}
    mine = rows(backend.ctrpy("content", "ls").stdout)
    assert [digest, "3.146MB"] == next(r for r in mine if r[0] == digest)[:2]
    assert backend.ctrpy("content", "ls", "-q", f"digest=={digest}").stdout.split() == [digest]

    removed = backend.ctrpy("content", "rm", digest, digest_of(small)).stdout.split()
    if backend.kind == "containerd":
        # ctr's ingest held the small blob by a lease only while it ran: containerd's collector
        # may have taken it since (it runs after a lease is deleted), and then there is nothing
        # left to remove.
        assert removed in ([digest, digest_of(small)], [digest])
    else:
        assert removed == [digest, digest_of(small)]
    assert backend.ctrpy("content", "rm", digest).stdout == ""  # already gone: fine, and quiet
    missing = backend.ctrpy("content", "get", digest, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    bad = backend.ctrpy("content", "get", "sha256:nope", check=False)
    assert bad.returncode == 1 and "invalid" in bad.stderr


def test_content_ingest_refuses_a_wrong_digest_and_active_lists_ingests(backend: Backend) -> None:
    wrong = backend.ctrpy("content", "ingest", "--expected-digest", digest_of(b"other"), "blob-3",
                          input=b"data", check=False)
    assert wrong.returncode == 1
    assert backend.ctrpy("content", "active").stdout.splitlines()[1:] == []  # the ingest was aborted
    assert digest_of(b"data") not in backend.ctr("content", "ls", "-q").stdout.split()

    # An ingest left half-way shows up in `content active` (here and in ctr).
    with Client(backend.address, backend.namespace) as client:
        stream = client.duplex(client.content.Write)
        stream.send(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref="half-way", total=100))
        stream.send(content_pb2.WriteContentRequest(action=content_pb2.WRITE, offset=0, data=b"x" * 40))
        stream.close()
    active = rows(backend.ctrpy("content", "active").stdout)
    assert active and active[0][0] == "half-way" and active[0][1] == "40B"
    assert "half-way" in backend.ctr("content", "active").stdout
    listed = json.loads(backend.ctrpy("--format", "json", "content", "active").stdout)
    assert listed[0]["offset"] == 40 and listed[0]["total"] == 100
    # Writing the same ref again resumes where it stopped (the first 40 bytes are not resent).
    whole = b"x" * 100
    resumed = backend.ctrpy("content", "ingest", "--expected-size", "100", "half-way", input=whole)
    assert resumed.stdout.strip() == digest_of(whole)
    assert backend.ctrpy_bytes("content", "get", digest_of(whole)) == whole
    assert backend.ctrpy("content", "active").stdout.splitlines()[1:] == []

    with Client(backend.address, backend.namespace) as client:
        stream = client.duplex(client.content.Write)
        stream.send(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref="dropped", total=10))
        stream.send(content_pb2.WriteContentRequest(action=content_pb2.WRITE, offset=0, data=b"y" * 4))
        stream.close()
        client.call(client.content.Abort, content_pb2.AbortRequest(ref="dropped"))
    assert backend.ctrpy("content", "active").stdout.splitlines()[1:] == []


def test_snapshots_commands(backend: Backend, tmp_path: Path) -> None:
    info = write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    backend.ctrpy("images", "import", str(tmp_path / "bb.tar"))
    chain = info.chain_ids[-1]
    assert rows(backend.ctrpy("snapshots", "ls").stdout) == [[chain, "Committed"]]

    backend.ctrpy("snapshots", "prepare", "work", chain)
    backend.ctrpy("snapshots", "--snapshotter", "overlayfs", "prepare", "--target", "/mnt/y", "other", chain)
    # A view carries no gc.root label (as with ctr), so containerd may collect it at any time:
    # only what View answered is checked.
    view = json.loads(backend.ctrpy("snapshots", "view", "--mounts", "look", chain).stdout)
    assert view and view[0]["type"] in ("bind", "overlay")
    backend.ctrpy("snapshots", "rm", "look", check=False)
    listed = {r[0]: r[1:] for r in rows(backend.ctr("snapshots", "ls").stdout)}
    assert listed["work"] == [chain, "Active"] and listed["other"] == [chain, "Active"]
    work = json.loads(backend.ctrpy("snapshots", "info", "work").stdout)
    assert work["Kind"] == "Active" and work["Parent"] == chain and "containerd.io/gc.root" in work["Labels"]
    tree = backend.ctrpy("snapshots", "tree").stdout.splitlines()
    assert tree[0] == f" {chain}" and sorted(tree[1:]) == ["  \\_ other", "  \\_ work"]
    line = backend.ctrpy("snapshots", "mounts", "/mnt/x", "work").stdout.strip()
    assert line.startswith("mount -t ") and " /mnt/x -o " in line
    assert line == backend.ctr("snapshots", "mounts", "/mnt/x", "work").stdout.strip()

    # Change the active snapshot through its mounts, then commit it.
    target = backend.scratch / "work"
    target.mkdir()
    with Client(backend.address, backend.namespace) as client, \
            mounted(snap.mounts(client, "overlayfs", "work"), target):
        (target / "etc/motd").write_text("hello\n")
        (target / "bin/sh").unlink()
    assert not mounts_under(target)
    usage = rows(backend.ctrpy("snapshots", "usage", "work").stdout)
    assert usage[0][0] == "work" and int(usage[0][-1]) >= 2
    in_bytes = json.loads(backend.ctrpy("--format", "json", "snapshots", "usage", "work").stdout)
    assert in_bytes[0]["size"] > 0

    digest = backend.ctrpy("snapshots", "diff", "--keep", "work").stdout.strip()
    layer = backend.ctr("content", "get", digest, text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:  # type: ignore[arg-type]
        names = tar.getnames()
    assert "etc/motd" in names and "bin/.wh.sh" in names
    assert not [k for k in rows(backend.ctr("snapshots", "ls").stdout) if "view" in k[0]]
    assert backend.ctr("leases", "ls", "-q").stdout.split() == []

    backend.ctrpy("snapshots", "commit", "done", "work")
    assert json.loads(backend.ctr("snapshots", "info", "done").stdout)["Kind"] == "Committed"
    assert backend.ctrpy("snapshots", "label", "done", "x=y").stdout.strip().endswith("x=y")
    assert json.loads(backend.ctr("snapshots", "info", "done").stdout)["Labels"]["x"] == "y"
    assert backend.ctrpy("snapshots", "label", "done", "x=").stdout.find("x=y") < 0

    in_use = backend.ctrpy("snapshots", "rm", chain, check=False)
    assert in_use.returncode == 1 and "failed to remove" in in_use.stderr
    backend.ctrpy("snapshots", "rm", "other", "done")
    missing = backend.ctrpy("snapshots", "rm", "other", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert [r[0] for r in rows(backend.ctrpy("snapshots", "ls").stdout)] == [chain]


def test_snapshots_diff_between_two_snapshots(backend: Backend, tmp_path: Path) -> None:
    info = write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    backend.ctrpy("images", "import", str(tmp_path / "bb.tar"))
    chain = info.chain_ids[-1]
    backend.ctrpy("snapshots", "prepare", "a", chain)
    target = backend.scratch / "a"
    target.mkdir()
    with Client(backend.address, backend.namespace) as client, \
            mounted(snap.mounts(client, "overlayfs", "a"), target):
        (target / "new.txt").write_text("new\n")
    out = tmp_path / "diff.tar"
    result = json.loads(backend.ctrpy("--format", "json", "snapshots", "diff", "--media-type",
                                      "application/vnd.oci.image.layer.v1.tar", "-o", str(out), chain, "a").stdout)
    assert result["media_type"] == "application/vnd.oci.image.layer.v1.tar"
    assert digest_of(out.read_bytes()) == result["digest"]
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["new.txt"]
    backend.ctrpy("snapshots", "rm", "a")
