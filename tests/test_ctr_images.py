"""The stock ctr importing, inspecting, unpacking, mounting and exporting images with ctrpyd."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.testimage import (
    busybox_image,
    diff_trees,
    expected_tree,
    multilayer_image,
    scan_tree,
    write_docker_archive,
    write_oci_layout_tar,
)
from tests.support.containerd import reference_containerd
from tests.support.ctrpyd import Daemon

BUSYBOX = "docker.io/library/busybox:latest"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("archives")
    made = {"oci": base / "busybox-oci.tar", "docker": base / "busybox-docker.tar", "multi": base / "multi.tar"}
    write_oci_layout_tar(busybox_image(), made["oci"])
    write_docker_archive(busybox_image(), made["docker"])
    write_oci_layout_tar(multilayer_image(name="example.com/multi:1"), made["multi"])
    return made


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"ctr failed: {result.args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def mountpoint(daemon: Daemon) -> Iterator[Path]:
    target = daemon.base / "mnt"
    target.mkdir()
    try:
        yield target
    finally:
        subprocess.run(["umount", "-R", str(target)], capture_output=True, check=False)


@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_import_ls_check_tag_rm(daemon: Daemon, archives: dict[str, Path], kind: str) -> None:
    imported = ok(daemon.ctr("images", "import", str(archives[kind])))
    assert BUSYBOX in imported.stdout
    listing = ok(daemon.ctr("images", "ls")).stdout.splitlines()
    row = next(line for line in listing if line.startswith(BUSYBOX))
    assert re.search(r"\s\d+(\.\d+)? [KMG]iB\s+linux/(amd64|arm64)\s", row), row
    check = ok(daemon.ctr("images", "check")).stdout
    assert re.search(rf"^{re.escape(BUSYBOX)}\s.*\scomplete \(\d+/\d+\)\s.*\strue\s*$", check, re.M), check
    ok(daemon.ctr("images", "tag", BUSYBOX, "example.com/bb:copy"))
    names = ok(daemon.ctr("images", "ls", "-q")).stdout.split()
    assert names == sorted([BUSYBOX, "example.com/bb:copy"])
    # A second import of the same archive reuses what is there.
    ok(daemon.ctr("images", "import", str(archives[kind])))
    assert ok(daemon.ctr("images", "rm", BUSYBOX, "example.com/bb:copy")).returncode == 0
    assert ok(daemon.ctr("images", "ls", "-q")).stdout == ""
    # The unpacked layer stays as a committed snapshot; the leases used by import are gone.
    snapshots = ok(daemon.ctr("snapshots", "ls")).stdout
    assert "Committed" in snapshots
    assert ok(daemon.ctr("leases", "ls", "-q")).stdout == ""


def test_export_reimports_into_containerd_with_the_same_digests(
    daemon: Daemon, archives: dict[str, Path], tmp_path: Path
) -> None:
    ok(daemon.ctr("images", "import", str(archives["oci"])))
    exported = tmp_path / "exported.tar"
    ok(daemon.ctr("images", "export", str(exported), BUSYBOX))
    with tarfile.open(exported) as tar:
        ours = sorted(name for name in tar.getnames() if name.startswith("blobs/sha256/"))
    with tarfile.open(archives["oci"]) as tar:
        original = sorted(name for name in tar.getnames() if name.startswith("blobs/sha256/"))
    assert ours == original
    with reference_containerd(tmp_path / "ref") as containerd:
        containerd.ctr("images", "import", str(exported))
        theirs = containerd.ctr("images", "ls").stdout
        ours_ls = ok(daemon.ctr("images", "ls")).stdout
        digest = lambda text: re.search(r"(sha256:[0-9a-f]{64})", text.splitlines()[1]).group(1)  # noqa: E731
        assert digest(theirs) == digest(ours_ls)


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_multilayer_image_unpacks_to_the_expected_tree(
    daemon: Daemon, archives: dict[str, Path], mountpoint: Path, snapshotter: str
) -> None:
    ok(daemon.ctr("images", "import", "--snapshotter", snapshotter, str(archives["multi"])))
    ok(daemon.ctr("images", "mount", "--snapshotter", snapshotter, "example.com/multi:1", str(mountpoint)))
    try:
        problems = diff_trees(expected_tree(multilayer_image(name="example.com/multi:1")), scan_tree(mountpoint))
        assert problems == []
    finally:
        ok(daemon.ctr("images", "unmount", "--snapshotter", snapshotter, "--rm", str(mountpoint)))
    assert str(mountpoint) not in Path("/proc/self/mountinfo").read_text()
    assert str(mountpoint) not in ok(daemon.ctr("leases", "ls", "-q")).stdout


def test_content_and_snapshot_commands_on_an_imported_image(daemon: Daemon, archives: dict[str, Path]) -> None:
    ok(daemon.ctr("images", "import", str(archives["oci"])))
    content = ok(daemon.ctr("content", "ls")).stdout
    assert "containerd.io/gc.ref.content.config=" in content
    assert "containerd.io/uncompressed=" in content
    tree = ok(daemon.ctr("snapshots", "tree")).stdout.split()
    assert len(tree) == 1 and tree[0].startswith("sha256:")
    ok(daemon.ctr("snapshots", "prepare", "work", tree[0]))
    usage = ok(daemon.ctr("snapshots", "usage")).stdout
    assert "work" in usage
    mounts = ok(daemon.ctr("snapshots", "mounts", "/tmp/unused", "work")).stdout
    assert mounts.startswith("mount -t overlay overlay ")
    diff = subprocess.run(
        [*daemon.ctr_command(), "snapshots", "diff", "work"], capture_output=True, check=True, timeout=60
    )
    assert diff.stdout[:2] == b"\x1f\x8b"  # a gzip layer, written into ctrpyd's content by Diff
    ok(daemon.ctr("snapshots", "rm", "work"))
    in_use = daemon.ctr("snapshots", "rm", tree[0])
    assert in_use.returncode == 0  # no children left, so the layer itself can go


def test_import_of_a_corrupt_archive_fails_cleanly(daemon: Daemon, tmp_path: Path, archives: dict[str, Path]) -> None:
    broken = tmp_path / "broken.tar"
    data = archives["oci"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    result = daemon.ctr("images", "import", str(broken))
    assert result.returncode == 1
    assert ok(daemon.ctr("images", "ls", "-q")).stdout == ""
    assert ok(daemon.ctr("content", "active")).stdout.split()[:3] == ["REF", "SIZE", "AGE"]


def test_images_ls_json_from_ctrpy_matches(daemon: Daemon, archives: dict[str, Path]) -> None:
    import sys

    ok(daemon.ctr("images", "import", str(archives["docker"])))
    out = subprocess.run(
        [sys.executable, "-m", "ctrpy.cli.main", "--address", str(daemon.address), "--format", "json", "images", "ls"],
        capture_output=True, text=True, check=True,
    ).stdout
    (image,) = json.loads(out)
    assert image["name"] == BUSYBOX
