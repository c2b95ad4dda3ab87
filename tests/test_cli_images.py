"""``ctrpy images`` against a real daemon, checked with the stock ctr.

Every test runs against the reference containerd (and against ctrpyd, expected to fail until
its Content, Snapshots and Diff services land). Results are compared with what ``ctr`` does with
the same archive in another namespace of the same daemon: same names, digests, sizes,
platforms and chain ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path

import pytest

from ctrpy.testimage import (
    ImageInfo,
    busybox_image,
    diff_trees,
    expected_tree,
    host_arch,
    multilayer_image,
    scan_tree,
    write_archive,
    write_oci_layout_tar,
)
from ctrpy.testimage.model import Layer
from tests.images.archives import (
    blob_name,
    for_arch,
    foreign_arch,
    members,
    multi_platform_archive,
    write_tar,
    wrong_diff_id_image,
)
from tests.images.backends import Backend, backend_fixture  # noqa: F401  (the fixture)
from tests.support.containerd import mounts_under

BUSYBOX = "docker.io/library/busybox:latest"
MULTILAYER = "docker.io/library/multilayer:latest"


def rows(text: str) -> list[list[str]]:
    """A ctr/ctrpy table without its header, as lists of cells (cells hold no spaces here)."""
    return [line.split() for line in text.splitlines()[1:] if line.strip()]


def ls_row(backend: Backend, name: str, namespace: str | None = None) -> list[str]:
    """``ctr images ls`` for one image: REF TYPE DIGEST SIZE(2 cells) PLATFORMS LABELS."""
    found = [r for r in rows(backend.ctr("images", "ls", namespace=namespace).stdout) if r[0] == name]
    assert len(found) == 1, found
    return found[0]


def snapshot_keys(backend: Backend, namespace: str | None = None) -> list[str]:
    return [r[0] for r in rows(backend.ctr("snapshots", "ls", namespace=namespace).stdout)]


def content_labels(backend: Backend, namespace: str | None = None) -> dict[str, dict[str, str]]:
    listed = json.loads(backend.ctrpy("--format", "json", "content", "ls", namespace=namespace).stdout)
    return {item["digest"]: item["labels"] for item in listed}


def image_names(backend: Backend, namespace: str | None = None) -> list[str]:
    return backend.ctr("images", "ls", "-q", namespace=namespace).stdout.split()


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_import_matches_ctr(backend: Backend, tmp_path: Path, fmt: str) -> None:
    info: ImageInfo = write_archive(busybox_image(), tmp_path / "bb.tar", fmt)
    out = backend.ctrpy("images", "import", "--snapshotter", "overlayfs", str(tmp_path / "bb.tar")).stdout
    assert out.startswith(f"unpacking {BUSYBOX} (sha256:") and out.endswith("...done\n")

    theirs = backend.other_namespace()
    backend.ctr("images", "import", str(tmp_path / "bb.tar"), namespace=theirs)
    mine_row, their_row = ls_row(backend, BUSYBOX), ls_row(backend, BUSYBOX, theirs)
    assert mine_row == their_row  # name, type, digest, size, platforms, labels
    assert mine_row[5] == f"linux/{host_arch()}"
    if fmt == "oci":
        assert mine_row[2] == info.manifest_digest

    # The same chain id, committed, in both namespaces.
    assert info.chain_ids[-1] in snapshot_keys(backend)
    assert snapshot_keys(backend) == snapshot_keys(backend, theirs)

    # The blobs of the image carry the same GC labels as ctr's import left.
    mine, others = content_labels(backend), content_labels(backend, theirs)
    needed = {info.config_digest, mine_row[2]} | {layer.digest for layer in info.layers if fmt == "oci"}
    assert needed <= mine.keys() & others.keys()
    for digest in mine.keys() & others.keys():
        assert mine[digest] == others[digest], digest

    check = rows(backend.ctrpy("images", "check").stdout)
    assert check[0][0] == BUSYBOX and check[0][3] == "complete" and check[0][-1] == "true"
    ctr_check = rows(backend.ctr("images", "check").stdout)
    assert ctr_check[0][3] == "complete" and ctr_check[0][-1] == "true"


def test_ls_and_check_json(backend: Backend, tmp_path: Path) -> None:
    write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    backend.ctrpy("images", "import", "--no-unpack", str(tmp_path / "bb.tar"))
    table = rows(backend.ctrpy("images", "ls").stdout)
    assert table[0][:3] == ls_row(backend, BUSYBOX)[:3]
    assert table[0][3:6] == ls_row(backend, BUSYBOX)[3:6]  # size and platforms as ctr prints them
    listed = json.loads(backend.ctrpy("--format", "json", "images", "ls").stdout)
    assert listed[0]["name"] == BUSYBOX and listed[0]["platforms"] == [f"linux/{host_arch()}"]
    assert listed[0]["size"] > 0
    checked = json.loads(backend.ctrpy("--format", "json", "images", "check").stdout)
    assert checked[0]["complete"] is True and checked[0]["unpacked"] is False
    assert backend.ctrpy("images", "ls", "-q").stdout.split() == [BUSYBOX]


def test_import_from_stdin_with_base_name_and_digests(backend: Backend, tmp_path: Path) -> None:
    image = busybox_image("docker.io/library/busybox:1.0")
    info = write_oci_layout_tar(image, tmp_path / "bb.tar")
    backend.ctrpy("images", "import", "--no-unpack", "--digests", "--base-name", "docker.io/library/busybox",
                  "-", input=(tmp_path / "bb.tar").read_bytes())
    theirs = backend.other_namespace()
    backend.ctr("images", "import", "--no-unpack", "--digests", "--base-name", "docker.io/library/busybox",
                str(tmp_path / "bb.tar"), namespace=theirs)
    mine = sorted(image_names(backend))
    assert mine == sorted(image_names(backend, theirs))
    assert mine == ["docker.io/library/busybox:1.0", f"docker.io/library/busybox@{info.manifest_digest}"]


def test_unpack_reuses_committed_layers(backend: Backend, tmp_path: Path) -> None:
    image = multilayer_image()
    write_oci_layout_tar(image, tmp_path / "ml.tar")
    backend.ctrpy("images", "import", "--no-unpack", str(tmp_path / "ml.tar"))
    assert rows(backend.ctrpy("images", "check").stdout)[0][-1] == "false"
    assert snapshot_keys(backend) == []
    out = backend.ctrpy("images", "unpack", "--snapshotter", "overlayfs", MULTILAYER).stdout
    assert out.startswith(f"unpacking {MULTILAYER}") and out.endswith("done\n")
    assert len(snapshot_keys(backend)) == 3
    assert rows(backend.ctrpy("images", "check").stdout)[0][-1] == "true"

    # A second image sharing the two lower layers: only its top layer is applied.
    top = Layer((image.layers[2].entries[0],))  # type: ignore[union-attr]
    sibling = dataclasses.replace(image, name="docker.io/library/sibling:latest",
                                  layers=(image.layers[0], image.layers[1], top))
    write_oci_layout_tar(sibling, tmp_path / "sib.tar")
    backend.ctrpy("images", "import", str(tmp_path / "sib.tar"))
    keys = snapshot_keys(backend)
    assert len(keys) == 4 and not any(k.startswith("extract-") for k in keys)
    backend.ctrpy("images", "unpack", MULTILAYER)  # everything present: nothing to do
    assert snapshot_keys(backend) == keys


def test_export_reimports_with_ctr(backend: Backend, tmp_path: Path) -> None:
    info = write_oci_layout_tar(multilayer_image(), tmp_path / "ml.tar")
    backend.ctrpy("images", "import", "--no-unpack", str(tmp_path / "ml.tar"))
    backend.ctrpy("images", "tag", MULTILAYER, "docker.io/library/other:v1")
    backend.ctrpy("images", "export", str(tmp_path / "out.tar"), MULTILAYER, "docker.io/library/other:v1")
    backend.ctr("images", "export", str(tmp_path / "ctr.tar"), MULTILAYER, "docker.io/library/other:v1")

    ours, ctrs = members(tmp_path / "out.tar"), members(tmp_path / "ctr.tar")
    assert ours.keys() == ctrs.keys()
    assert ours["index.json"] == ctrs["index.json"]  # byte for byte: names, tags, digests
    manifest = json.loads(ours["manifest.json"])
    assert manifest == json.loads(ctrs["manifest.json"])
    assert manifest[0]["RepoTags"] == ["multilayer:latest", "other:v1"]
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert [m.name for m in tar][:2] == ["blobs", "blobs/sha256"]  # sorted, as ctr writes

    theirs = backend.other_namespace()
    backend.ctr("images", "import", str(tmp_path / "out.tar"), namespace=theirs)
    assert sorted(image_names(backend, theirs)) == ["docker.io/library/multilayer:latest", "docker.io/library/other:v1"]
    assert ls_row(backend, MULTILAYER, theirs)[2] == info.manifest_digest
    assert info.chain_ids[-1] in snapshot_keys(backend, theirs)


def test_tag(backend: Backend, tmp_path: Path) -> None:
    write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    backend.ctrpy("images", "import", "--no-unpack", str(tmp_path / "bb.tar"))
    assert backend.ctrpy("images", "tag", BUSYBOX, "bb:v1", "bb:v2").stdout.split() == ["bb:v1", "bb:v2"]
    assert ls_row(backend, "bb:v1")[2] == ls_row(backend, BUSYBOX)[2] == ls_row(backend, "bb:v2")[2]
    again = backend.ctrpy("images", "tag", BUSYBOX, "bb:v1", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert backend.ctrpy("images", "tag", "--force", BUSYBOX, "bb:v1").stdout.split() == ["bb:v1"]
    missing = backend.ctrpy("images", "tag", "nope:latest", "bb:v3", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert backend.ctrpy("images", "rm", "bb:v1", "bb:v2").stdout.split() == ["bb:v1", "bb:v2"]
    assert image_names(backend) == [BUSYBOX]
    # Leases made for the tag are gone again.
    assert backend.ctr("leases", "ls", "-q").stdout.split() == []


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_mount_multilayer_gives_the_expected_tree(backend: Backend, tmp_path: Path, fmt: str) -> None:
    image = multilayer_image()
    write_archive(image, tmp_path / "ml.tar", fmt)
    backend.ctrpy("images", "import", "--no-unpack", str(tmp_path / "ml.tar"))
    target = backend.scratch / "mnt"
    target.mkdir()
    try:
        out = backend.ctrpy("images", "mount", "--snapshotter", "overlayfs", MULTILAYER, str(target)).stdout
        differences = diff_trees(expected_tree(image), scan_tree(target))
        same_inode = os.stat(target / "data/hello.txt").st_ino == os.stat(target / "data/hello-link").st_ino
        assert str(target) in backend.ctr("leases", "ls", "-q").stdout.split()
        read_only = backend.ctr("snapshots", "info", str(target)).stdout
    finally:
        backend.ctrpy("images", "unmount", "--rm", str(target), check=False)
    assert out.splitlines()[1] == str(target)
    assert differences == []
    assert same_inode
    assert json.loads(read_only)["Kind"] == "View"
    assert not mounts_under(target)
    assert str(target) not in snapshot_keys(backend)
    assert str(target) not in backend.ctr("leases", "ls", "-q").stdout.split()


def test_mount_rw_then_unmount(backend: Backend, tmp_path: Path) -> None:
    write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    backend.ctrpy("images", "import", str(tmp_path / "bb.tar"))
    target = backend.scratch / "rw"
    target.mkdir()
    try:
        backend.ctrpy("images", "mount", "--rw", BUSYBOX, str(target))
        (target / "etc/new-file").write_text("written\n")
        kind = json.loads(backend.ctr("snapshots", "info", str(target)).stdout)["Kind"]
        # ctr sees ctrpy's mount and can take it down.
        backend.ctr("images", "unmount", str(target))
        assert not mounts_under(target)
    finally:
        backend.ctrpy("images", "unmount", "--rm", str(target), check=False)
    assert kind == "Active"
    assert str(target) not in snapshot_keys(backend)


def assert_nothing_recorded(backend: Backend) -> None:
    assert image_names(backend) == []
    assert not any(key.startswith("extract-") for key in snapshot_keys(backend))
    assert backend.ctr("leases", "ls", "-q").stdout.split() == []


def test_corrupt_tar_is_refused(backend: Backend, tmp_path: Path) -> None:
    write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    data = (tmp_path / "bb.tar").read_bytes()
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar archive at all\n" * 64)
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    for name in ("garbage.tar", "cut.tar"):
        result = backend.ctrpy("images", "import", str(tmp_path / name), check=False)
        assert result.returncode == 1, result
        assert "not a readable tar archive" in result.stderr or "unrecognized image format" in result.stderr
        assert "Traceback" not in result.stderr
    missing = backend.ctrpy("images", "import", str(tmp_path / "nope.tar"), check=False)
    assert missing.returncode == 1 and "No such file" in missing.stderr
    assert_nothing_recorded(backend)
    assert backend.ctrpy("content", "active").stdout.splitlines()[1:] == []


def test_missing_blob_is_refused(backend: Backend, tmp_path: Path) -> None:
    info = write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    files = members(tmp_path / "bb.tar")
    del files[blob_name(info.layers[0].digest)]
    write_tar(tmp_path / "missing.tar", files)
    result = backend.ctrpy("images", "import", str(tmp_path / "missing.tar"), check=False)
    assert result.returncode == 1
    assert info.layers[0].digest in result.stderr and "not in the archive" in result.stderr
    assert_nothing_recorded(backend)


def test_wrong_digest_blob_is_refused(backend: Backend, tmp_path: Path) -> None:
    info = write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    files = members(tmp_path / "bb.tar")
    name = blob_name(info.config_digest)
    files[name] = files[name].replace(b"linux", b"LINUX")
    write_tar(tmp_path / "bad.tar", files)
    result = backend.ctrpy("images", "import", str(tmp_path / "bad.tar"), check=False)
    assert result.returncode == 1
    assert name in result.stderr and "failed precondition" in result.stderr
    assert_nothing_recorded(backend)
    assert backend.ctrpy("content", "active").stdout.splitlines()[1:] == []


def test_wrong_diff_id_is_refused(backend: Backend, tmp_path: Path) -> None:
    write_oci_layout_tar(wrong_diff_id_image(), tmp_path / "bad.tar")
    result = backend.ctrpy("images", "import", str(tmp_path / "bad.tar"), check=False)
    assert result.returncode == 1 and "wrong diff id" in result.stderr
    assert_nothing_recorded(backend)
    assert snapshot_keys(backend) == []


def test_platform_mismatch_in_an_index(backend: Backend, tmp_path: Path) -> None:
    foreign = foreign_arch(host_arch())
    write_oci_layout_tar(for_arch(busybox_image(), foreign), tmp_path / "foreign.tar")
    result = backend.ctrpy("images", "import", str(tmp_path / "foreign.tar"), check=False)
    assert result.returncode == 1 and "filtered out" in result.stderr
    assert_nothing_recorded(backend)
    # ctr refuses it too, and both take it with --all-platforms, to the same result.
    theirs = backend.other_namespace()
    assert backend.ctr("images", "import", str(tmp_path / "foreign.tar"), namespace=theirs, check=False).returncode != 0
    backend.ctrpy("images", "import", "--all-platforms", "--no-unpack", str(tmp_path / "foreign.tar"))
    backend.ctr("images", "import", "--all-platforms", "--no-unpack", str(tmp_path / "foreign.tar"), namespace=theirs)
    assert ls_row(backend, BUSYBOX) == ls_row(backend, BUSYBOX, theirs)
    assert ls_row(backend, BUSYBOX)[5] == f"linux/{foreign}"


def test_index_picks_the_host_manifest(backend: Backend, tmp_path: Path) -> None:
    foreign = foreign_arch(host_arch())
    name = "docker.io/library/multi:latest"
    found = multi_platform_archive([for_arch(busybox_image(), foreign), busybox_image()], name,
                                   tmp_path / "multi.tar", tmp_path)
    backend.ctrpy("images", "import", str(tmp_path / "multi.tar"))
    theirs = backend.other_namespace()
    backend.ctr("images", "import", str(tmp_path / "multi.tar"), namespace=theirs)
    row = ls_row(backend, name)
    assert row == ls_row(backend, name, theirs)
    assert row[2] == found["index"]
    assert row[5] == ",".join(sorted([f"linux/{foreign}", f"linux/{host_arch()}"]))
    assert snapshot_keys(backend) == snapshot_keys(backend, theirs) != []
    labels = content_labels(backend)
    # Only the host's manifest is referenced from the index (the foreign one was filtered).
    assert labels[found["index"]] == {"containerd.io/gc.ref.content.m.0": found[host_arch()]}
    check = rows(backend.ctrpy("images", "check").stdout)[0]
    assert check[3] == "complete" and check[-1] == "true"
