"""The overlayfs snapshotter: the conformance suite, and what is particular to it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctrpy.errors import FailedPrecondition
from ctrpy.mount import PAGE_SIZE, Mount, mount_all, unmount_all
from ctrpy.snapshotter import overlay
from ctrpy.snapshotter.overlay import OverlaySnapshotter

from .conformance import CHECKS
from .harness import Harness, tree, write


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(OverlaySnapshotter, tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(check: Callable[[Harness], None], harness: Harness) -> None:
    check(harness)


def _fs(h: Harness, snapshot_id: int) -> str:
    return str(h.root / "snapshots" / str(snapshot_id) / "fs")


def test_mount_shapes(harness: Harness) -> None:
    """The mounts of each kind of snapshot, exactly."""
    sn, h = harness.sn, harness
    index = ("index=off",) if overlay._supports_index_option() else ()
    assert sn.prepare("a1", "") == [Mount("bind", _fs(h, 1), options=("rw", "rbind"))]
    assert sn.view("v0", "") == [Mount("bind", _fs(h, 2), options=("ro", "rbind"))]
    sn.commit("l1", "a1")
    assert sn.view("v1", "l1") == [Mount("bind", _fs(h, 1), options=("ro", "rbind"))]
    work = str(h.root / "snapshots" / "4" / "work")
    assert sn.prepare("a2", "l1") == [
        Mount(
            "overlay",
            "overlay",
            options=(*index, f"workdir={work}", f"upperdir={_fs(h, 4)}", f"lowerdir={_fs(h, 1)}"),
        )
    ]
    sn.commit("l2", "a2")
    assert sn.view("v2", "l2") == [
        Mount("overlay", "overlay", options=(*index, f"lowerdir={_fs(h, 4)}:{_fs(h, 1)}"))
    ]
    assert sn.prepare("a3", "l2")[0].options[-1] == f"lowerdir={_fs(h, 4)}:{_fs(h, 1)}"


def test_stock_mount_command_can_mount(harness: Harness) -> None:
    """mount(8) performs the returned overlay mount as it is (what ctr and shims rely on)."""
    sn = harness.sn
    parent = ""
    for i in range(3):
        with harness.mounted(sn.prepare(f"a{i}", parent), f"a{i}") as mnt:
            write(mnt / f"f{i}", str(i))
        sn.commit(f"l{i}", f"a{i}")
        parent = f"l{i}"
    (m,) = sn.prepare("top", parent)
    target = harness.target("by-mount-8")
    try:
        subprocess.run(
            ["mount", "-t", m.type, "-o", ",".join(m.options), m.source, str(target)],
            check=True,
        )
        write(target / "new", "via mount(8)")
        assert tree(target) == {"f0": "0", "f1": "1", "f2": "2", "new": "via mount(8)"}
    finally:
        unmount_all(target)
    assert sn.usage("top").inodes == 2


def test_deep_stack_beyond_a_page(harness: Harness) -> None:
    """160 absolute lowerdirs exceed a page; mount_all shortens them and the mount works."""
    sn = harness.sn
    parent = ""
    for i in range(160):
        sn.prepare(f"a{i}", parent)
        write(Path(_fs(harness, i + 1)) / f"layer-{i}", str(i))  # the upper dir itself
        sn.commit(f"l{i}", f"a{i}")
        parent = f"l{i}"
    mounts = sn.prepare("top", parent)
    assert sum(len(o) for o in mounts[0].options) > PAGE_SIZE
    with harness.mounted(mounts, "top") as mnt:
        assert len(tree(mnt)) == 160
        write(mnt / "on-top", "yes")
    assert (harness.root / "snapshots" / "161" / "fs" / "on-top").read_text() == "yes"


def test_no_overlay_in_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "filesystems"
    fake.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    monkeypatch.setattr(overlay, "_FILESYSTEMS", str(fake))
    with pytest.raises(FailedPrecondition, match="overlay"):
        OverlaySnapshotter(tmp_path / "root")


def test_root_on_overlayfs_is_refused(tmp_path: Path) -> None:
    """An upper directory cannot live on overlayfs: the construction check says so."""
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    m = Mount(
        "overlay",
        "overlay",
        options=(
            f"lowerdir={tmp_path / 'lower'}",
            f"upperdir={tmp_path / 'upper'}",
            f"workdir={tmp_path / 'work'}",
        ),
    )
    mount_all([m], tmp_path / "merged")
    try:
        with pytest.raises(FailedPrecondition, match="native"):
            OverlaySnapshotter(tmp_path / "merged" / "root")
    finally:
        unmount_all(tmp_path / "merged")
