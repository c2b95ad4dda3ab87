"""The native (copying) snapshotter: the conformance suite, and what is particular to it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctrpy.errors import NotFound
from ctrpy.mount import Mount
from ctrpy.snapshotter.native import NativeSnapshotter

from .conformance import CHECKS
from .harness import Harness, tree, write


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(NativeSnapshotter, tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(check: Callable[[Harness], None], harness: Harness) -> None:
    check(harness)


def test_mounts_are_binds(harness: Harness) -> None:
    sn = harness.sn
    root = harness.root / "snapshots"
    first = sn.prepare("a", "")
    assert first == [Mount("bind", str(root / "1" / "fs"), options=("rw", "rbind"))]
    sn.commit("c", "a")
    assert sn.view("v", "c") == [Mount("bind", str(root / "1" / "fs"), options=("ro", "rbind"))]
    assert sn.prepare("b", "c") == [Mount("bind", str(root / "3" / "fs"), options=("rw", "rbind"))]
    assert sn.view("v0", "") == [Mount("bind", str(root / "4" / "fs"), options=("ro", "rbind"))]


def test_active_is_an_independent_copy(harness: Harness) -> None:
    sn = harness.sn
    with harness.mounted(sn.prepare("a", ""), "a") as mnt:
        write(mnt / "file", "parent")
    sn.commit("c", "a")
    with harness.mounted(sn.prepare("b", "c"), "b") as mnt:
        write(mnt / "file", "child")
        os.link(mnt / "file", mnt / "again")
    parent_fs = harness.root / "snapshots" / "1" / "fs"
    assert tree(parent_fs) == {"file": "parent"}
    # The copy is complete, so a native snapshot's usage includes its parent's files.
    assert sn.usage("b").inodes == 2


def test_failed_copy_leaves_nothing(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prepare that fails half-way leaves no record and no directory, and the key is free."""
    sn = harness.sn
    sn.prepare("a", "")
    sn.commit("c", "a")
    before = sorted(os.listdir(harness.root / "snapshots"))

    def broken_copy(source: object, destination: object) -> None:
        os.mkdir(str(destination))
        raise OSError(5, "disk on fire")

    monkeypatch.setattr("ctrpy.snapshotter.native.copy_tree", broken_copy)
    with pytest.raises(OSError, match="disk on fire"):
        sn.prepare("b", "c")
    monkeypatch.undo()
    with pytest.raises(NotFound):
        sn.stat("b")
    assert sorted(os.listdir(harness.root / "snapshots")) == before
    sn.prepare("b", "c")
