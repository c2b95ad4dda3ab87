"""The behaviour every snapshotter must show, as checks run against each implementation.

Each ``check_*`` takes a :class:`~harness.Harness` around a fresh snapshotter; the test files
for overlayfs and native run every check in :data:`CHECKS`. Modelled on containerd's
snapshot test suite: real mounts, real files, the error kinds of ``ctrpy.errors``.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from ctrpy.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from ctrpy.snapshotter.types import Info, Kind, Usage

from .harness import Harness, tree, write

GC = {"containerd.io/gc.root": "2024-01-01T00:00:00Z"}


def _layer(h: Harness, key: str, parent: str, name: str, change: Callable[[Path], None]) -> None:
    """prepare ``key`` on ``parent``, apply ``change`` through its mounts, commit as ``name``."""
    with h.mounted(h.sn.prepare(key, parent, labels=GC), key) as root:
        change(root)
    h.sn.commit(name, key, labels=GC)


def _view_tree(h: Harness, parent: str, key: str) -> dict[str, str]:
    with h.mounted(h.sn.view(key, parent), key) as root:
        content = tree(root)
    h.sn.remove(key)
    return content


def check_basic_chain(h: Harness) -> None:
    """Prepare, write, commit; a child sees the parent's files and captures its own changes."""

    def first(root: Path) -> None:
        write(root / "foo", "foo\n")
        write(root / "bar", "bar\n")
        (root / "a" / "b" / "c").mkdir(parents=True)

    _layer(h, "p1", "", "c1", first)
    info = h.sn.stat("c1")
    assert (info.name, info.parent, info.kind) == ("c1", "", Kind.COMMITTED)
    with pytest.raises(NotFound):
        h.sn.stat("p1")

    with h.mounted(h.sn.prepare("p2", "c1", labels=GC), "p2") as root:
        assert tree(root) == {"foo": "foo\n", "bar": "bar\n", "a": "<dir>", "a/b": "<dir>", "a/b/c": "<dir>"}
        write(root / "foo", "changed\n")
        (root / "bar").unlink()
        os.rmdir(root / "a" / "b" / "c")
        os.rmdir(root / "a" / "b")
        write(root / "baz", "baz\n")
    info = h.sn.stat("p2")
    assert (info.name, info.parent, info.kind) == ("p2", "c1", Kind.ACTIVE)
    h.sn.commit("c2", "p2", labels=GC)
    assert h.sn.stat("c2").parent == "c1"

    assert _view_tree(h, "c2", "v2") == {"foo": "changed\n", "a": "<dir>", "baz": "baz\n"}
    # The lower layer is untouched by its child's deletions.
    assert _view_tree(h, "c1", "v1") == {
        "foo": "foo\n",
        "bar": "bar\n",
        "a": "<dir>",
        "a/b": "<dir>",
        "a/b/c": "<dir>",
    }
    h.sn.remove("c2")
    h.sn.remove("c1")
    assert list(h.sn.walk()) == []


def check_deletion_persists_through_layers(h: Harness) -> None:
    """A file deleted in layer 2 stays deleted in layer 3 and in every view above."""

    def first(root: Path) -> None:
        write(root / "foo", "foo")
        write(root / "foobar", "x")

    _layer(h, "a1", "", "l1", first)
    _layer(h, "a2", "l1", "l2", lambda r: (r / "foobar").unlink())
    _layer(h, "a3", "l2", "l3", lambda r: None)
    assert _view_tree(h, "l3", "v3") == {"foo": "foo"}
    assert _view_tree(h, "l2", "v2") == {"foo": "foo"}
    assert _view_tree(h, "l1", "v1") == {"foo": "foo", "foobar": "x"}


def check_move_and_link_from_lower(h: Harness) -> None:
    """Renames, hard links and directory removals of lower files show correctly above."""

    def first(root: Path) -> None:
        write(root / "dir1" / "f1", "Hello")
        write(root / "dir2" / "f2", "...")

    def second(root: Path) -> None:
        write(root / "dir3" / "f1", "Hello")
        for p in sorted((root / "dir1").iterdir()):
            p.unlink()
        (root / "dir1").rmdir()
        os.link(root / "dir2" / "f2", root / "dir3" / "f2")
        (root / "dir2" / "f2").unlink()

    _layer(h, "a1", "", "l1", first)
    _layer(h, "a2", "l1", "l2", second)
    assert _view_tree(h, "l2", "v") == {
        "dir2": "<dir>",
        "dir3": "<dir>",
        "dir3/f1": "Hello",
        "dir3/f2": "...",
    }


def check_metadata_preserved(h: Harness) -> None:
    """Owners, modes, times, xattrs, hard links, symlinks and special files reach the child."""

    def first(root: Path) -> None:
        write(root / "owned", "o")
        os.chown(root / "owned", 1234, 5678)
        os.chmod(root / "owned", 0o4750)  # after chown, which clears set-id bits
        os.setxattr(root / "owned", "user.ctrpy", b"value")
        os.utime(root / "owned", ns=(1_000_000_000, 2_000_000_000))
        write(root / "linked", "same inode")
        os.link(root / "linked", root / "linked2")
        os.symlink("owned", root / "sym")
        os.mkfifo(root / "fifo")
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (root / "private").mkdir(mode=0o700)
        os.chmod(root / "private", 0o700)

    _layer(h, "a1", "", "l1", first)
    with h.mounted(h.sn.prepare("a2", "l1"), "a2") as root:
        st = os.lstat(root / "owned")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
        assert st.st_mtime_ns == 2_000_000_000
        assert os.getxattr(root / "owned", "user.ctrpy") == b"value"
        assert os.lstat(root / "linked").st_ino == os.lstat(root / "linked2").st_ino
        assert os.readlink(root / "sym") == "owned"
        assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
        null = os.lstat(root / "null")
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        assert stat.S_IMODE(os.lstat(root / "private").st_mode) == 0o700
        # Writing to the child leaves the layer below alone.
        write(root / "linked", "child's")
    assert _view_tree(h, "l1", "v")["linked"] == "same inode"


def check_root_permission(h: Harness) -> None:
    """The root of a fresh snapshot is a 0755 directory."""
    with h.mounted(h.sn.prepare("a", ""), "a") as root:
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755


def check_views_are_read_only(h: Harness) -> None:
    """Writing through a view fails, with no parent, one parent or a stack of parents."""
    _layer(h, "a1", "", "l1", lambda r: write(r / "one", "1"))
    _layer(h, "a2", "l1", "l2", lambda r: write(r / "two", "2"))
    for key, parent in (("v0", ""), ("v1", "l1"), ("v2", "l2")):
        with h.mounted(h.sn.view(key, parent), key) as root:
            with pytest.raises(OSError) as caught:
                write(root / "new", "x")
            assert caught.value.errno == errno.EROFS
        info = h.sn.stat(key)
        assert (info.kind, info.parent) == (Kind.VIEW, parent)
    assert h.sn.mounts("v2") == h.sn.view("v3", "l2")


def check_stat_and_update(h: Harness) -> None:
    """Labels are the only mutable field; junk in the other fields is ignored."""
    h.sn.prepare("c-a", "", labels={"a": "1"})
    h.sn.commit("c", "c-a", labels={"keep": "k", "l1": "v1", "l2": "v2"})
    h.sn.prepare("act", "c", labels={"x": "1"})
    h.sn.view("vw", "c")
    for key, kind, parent in (("c", Kind.COMMITTED, ""), ("act", Kind.ACTIVE, "c"), ("vw", Kind.VIEW, "c")):
        before = h.sn.stat(key)
        assert (before.name, before.kind, before.parent) == (key, kind, parent)
        assert before.created_at == before.updated_at
        assert before.created_at.utcoffset() == timedelta(0)

        junk = Info(
            name=key,
            parent="doesnotexist",
            kind=Kind.COMMITTED if kind != Kind.COMMITTED else Kind.VIEW,
            labels={"l1": "updated", "l4": "v4"},
        )
        after = h.sn.update(junk, ["labels.l1", "labels.l2", "labels.l3"])
        assert (after.kind, after.parent, after.created_at) == (kind, parent, before.created_at)
        assert after.updated_at >= before.updated_at
        expected = dict(before.labels)
        expected["l1"] = "updated"
        expected.pop("l2", None)
        assert dict(after.labels) == expected
        assert h.sn.stat(key) == after

        # A dotted label key: split at the first dot only.
        after = h.sn.update(
            Info(name=key, labels={"containerd.io/gc.root": "now"}), ["labels.containerd.io/gc.root"]
        )
        assert after.labels["containerd.io/gc.root"] == "now"

        # No paths, or "labels": replace them all.
        assert dict(h.sn.update(Info(name=key, labels={"only": "this"})).labels) == {"only": "this"}
        assert dict(h.sn.update(Info(name=key, labels={"z": "1"}), ["labels"]).labels) == {"z": "1"}

        for path in ("parent", "kind", "name", "created_at", "labels."):
            with pytest.raises(InvalidArgument):
                h.sn.update(Info(name=key, parent="x"), [path])
        assert dict(h.sn.stat(key).labels) == {"z": "1"}

    with pytest.raises(NotFound):
        h.sn.update(Info(name="missing", labels={"a": "b"}))
    with pytest.raises(InvalidArgument):
        h.sn.update(Info(name="c", labels={"k": "v" * 5000}))


def check_commit_labels_replace(h: Harness) -> None:
    """Commit gives the committed snapshot its own labels; the active one's are not kept."""
    h.sn.prepare("a", "", labels={"from-prepare": "1", "containerd.io/gc.root": "x"})
    h.sn.commit("c", "a", labels={"from-commit": "2"})
    assert dict(h.sn.stat("c").labels) == {"from-commit": "2"}
    h.sn.prepare("b", "")
    h.sn.commit("d", "b")
    assert dict(h.sn.stat("d").labels) == {}


def check_remove_order(h: Harness) -> None:
    """A snapshot with children cannot be removed; leaves first, then their parents."""
    _layer(h, "base-a", "", "base", lambda r: None)
    _layer(h, "mid-a", "base", "mid", lambda r: None)
    h.sn.prepare("top", "mid")
    h.sn.view("peek", "base")
    for busy in ("base", "mid"):
        with pytest.raises(FailedPrecondition) as caught:
            h.sn.remove(busy)
        assert "remove" in str(caught.value)
        assert h.sn.stat(busy).kind == Kind.COMMITTED
    h.sn.remove("top")
    h.sn.remove("mid")
    with pytest.raises(FailedPrecondition):
        h.sn.remove("base")
    h.sn.remove("peek")
    h.sn.remove("base")
    assert list(h.sn.walk()) == []


def check_commit_errors(h: Harness) -> None:
    """Only an active snapshot can be committed, and only to a free name."""
    h.sn.prepare("a", "")
    h.sn.commit("c", "a")
    h.sn.view("v", "c")
    h.sn.prepare("b", "c")
    with pytest.raises(FailedPrecondition):
        h.sn.commit("c2", "c")  # committed
    with pytest.raises(FailedPrecondition):
        h.sn.commit("c3", "v")  # view
    with pytest.raises(AlreadyExists):
        h.sn.commit("c", "b")  # name taken by a committed snapshot
    with pytest.raises(AlreadyExists):
        h.sn.commit("v", "b")  # name taken by a view
    with pytest.raises(NotFound):
        h.sn.commit("c4", "missing")
    with pytest.raises(InvalidArgument):
        h.sn.commit("", "b")
    # Nothing above changed anything.
    assert {(i.name, i.kind) for i in h.sn.walk()} == {
        ("c", Kind.COMMITTED),
        ("v", Kind.VIEW),
        ("b", Kind.ACTIVE),
    }


def check_key_reuse(h: Harness) -> None:
    """Keys and names share one space; a removed key is free again (containerd's checkRemove)."""
    h.sn.prepare("committed-a", "")
    h.sn.commit("committed-1", "committed-a")
    h.sn.prepare("same", "committed-1")
    attempts: list[Callable[[], object]] = [
        lambda: h.sn.prepare("same", "committed-1"),
        lambda: h.sn.view("same", "committed-1"),
        lambda: h.sn.prepare("committed-1", ""),
        lambda: h.sn.view("committed-1", ""),
    ]
    for attempt in attempts:
        with pytest.raises(AlreadyExists):
            attempt()
    h.sn.remove("same")
    h.sn.view("same", "committed-1")
    h.sn.remove("same")
    h.sn.prepare("same", "")
    h.sn.remove("committed-1")
    h.sn.commit("committed-1", "same")
    assert h.sn.stat("committed-1").parent == ""


def check_not_found_and_bad_input(h: Harness) -> None:
    """Missing snapshots raise NotFound; a bad key or parent raises InvalidArgument."""
    calls: list[Callable[[], object]] = [
        lambda: h.sn.stat("nope"),
        lambda: h.sn.usage("nope"),
        lambda: h.sn.mounts("nope"),
        lambda: h.sn.remove("nope"),
        lambda: h.sn.commit("n", "nope"),
        lambda: h.sn.prepare("k", "no-parent"),
        lambda: h.sn.view("k", "no-parent"),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    h.sn.prepare("active", "")
    with pytest.raises(InvalidArgument):
        h.sn.prepare("k", "active")  # only committed snapshots are parents
    for bad in ("", "nul\x00byte"):
        with pytest.raises(InvalidArgument):
            h.sn.prepare(bad, "")
    with pytest.raises(InvalidArgument):
        h.sn.prepare("k", "", labels={"": "v"})
    assert [i.name for i in h.sn.walk()] == ["active"]
    # Keys are opaque: containerd's unpack keys have spaces and colons.
    h.sn.prepare("extract-1 sha256:abc/def", "")
    assert h.sn.stat("extract-1 sha256:abc/def").kind == Kind.ACTIVE


def check_mounts(h: Harness) -> None:
    """mounts() returns what prepare/view returned; a committed snapshot has none."""
    first = h.sn.prepare("a", "")
    assert h.sn.mounts("a") == first
    h.sn.commit("c", "a")
    with pytest.raises(FailedPrecondition):
        h.sn.mounts("c")
    active = h.sn.prepare("b", "c")
    view = h.sn.view("v", "c")
    assert h.sn.mounts("b") == active and h.sn.mounts("v") == view
    for mounts in (first, active, view):
        for m in mounts:
            assert m.type in ("bind", "overlay")
            if m.type == "bind":
                assert os.path.isabs(m.source)
            for option in m.options:
                if option.startswith(("lowerdir=", "upperdir=", "workdir=")):
                    assert all(os.path.isabs(p) for p in option.split("=", 1)[1].split(":"))


def check_usage(h: Harness) -> None:
    """Usage counts the blocks and inodes written; hard links count once; commit keeps it."""
    _layer(h, "base-a", "", "base", lambda r: write(r / "lower", "lower"))
    with h.mounted(h.sn.prepare("a", "base"), "a") as root:
        empty = h.sn.usage("a")
        (root / "data").write_bytes(os.urandom(256 * 1024))
        grown = h.sn.usage("a")
        assert grown.size - empty.size >= 256 * 1024
        assert grown.inodes == empty.inodes + 1
        os.link(root / "data", root / "data-link")
        linked = h.sn.usage("a")
        assert linked.inodes == grown.inodes
        assert linked.size - grown.size < 256 * 1024
    before = h.sn.usage("a")
    h.sn.commit("c", "a")
    assert h.sn.usage("c") == before
    assert isinstance(h.sn.usage("base"), Usage)


def check_walk_filters(h: Harness) -> None:
    """walk() honours name, parent, kind and label filters (containerd's checkWalk)."""
    gc = {"containerd.io/gc.root": "check-walk"}
    h.sn.prepare("a-np", "", labels=gc)
    h.sn.prepare("p-tmp", "", labels=gc)
    h.sn.commit("p", "p-tmp", labels=gc)
    h.sn.prepare("a", "p", labels=gc)
    h.sn.view("v", "p", labels=gc)
    h.sn.prepare("p-wl-tmp", "", labels=gc)
    h.sn.commit("p-wl", "p-wl-tmp", labels={"l": "1", **gc})
    h.sn.prepare("a-wl", "p-wl", labels={"l": "2", **gc})
    h.sn.view("v-wl", "p-wl", labels={"l": "3", **gc})
    h.sn.prepare("a-np-wl", "", labels={"l": "2", **gc})
    cases = [
        (
            ['labels."containerd.io/gc.root"==check-walk'],
            {"a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"},
        ),
        (['kind==active,labels."containerd.io/gc.root"==check-walk'], {"a-np", "a", "a-wl", "a-np-wl"}),
        (["kind==view"], {"v", "v-wl"}),
        (["kind==committed"], {"p", "p-wl"}),
        (["name==p"], {"p"}),
        (["parent==p"], {"a", "v"}),
        (["parent==p", "parent==p-wl"], {"a", "v", "a-wl", "v-wl"}),
        (["labels.l"], {"p-wl", "a-wl", "v-wl", "a-np-wl"}),
        (["labels.l==2"], {"a-wl", "a-np-wl"}),
        (["labels.l==2,kind==active,parent==p-wl"], {"a-wl"}),
        (["name~=^a-"], {"a-np", "a-wl", "a-np-wl"}),
        ([], {"a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"}),
    ]
    for filters, expected in cases:
        assert {i.name for i in h.sn.walk(filters)} == expected, filters
    with pytest.raises(InvalidArgument):
        h.sn.walk(["name=="])
    # The walk's snapshots are read up front: other calls may run while iterating.
    for info in h.sn.walk():
        assert h.sn.stat(info.name) == info


def check_concurrent_prepares(h: Harness) -> None:
    """Prepares from many threads at once each get their own snapshot; one key wins once."""
    _layer(h, "base-a", "", "base", lambda r: write(r / "shared", "base"))
    keys = [f"worker-{i}" for i in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda k: h.sn.prepare(k, "base"), keys))
    assert len({tuple(m) for m in results}) == len(keys)
    assert {i.name for i in h.sn.walk(["kind==active"])} == set(keys)

    outcomes: list[str] = []
    lock = threading.Lock()

    def contend(_: int) -> None:
        try:
            h.sn.prepare("contended", "base")
            result = "ok"
        except AlreadyExists:
            result = "exists"
        with lock:
            outcomes.append(result)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(contend, range(16)))
    assert sorted(outcomes) == ["exists"] * 15 + ["ok"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(h.sn.remove, keys))
    with h.mounted(h.sn.mounts("contended"), "contended") as root:
        assert tree(root) == {"shared": "base"}


def _snapshot_dir_of(h: Harness, key: str) -> Path:
    source = Path(h.sn.mounts(key)[0].source)  # <root>/snapshots/<id>/fs
    assert source.name == "fs" and source.parent.parent == h.root / "snapshots"
    return source.parent


def check_cleanup_removes_leftovers(h: Harness) -> None:
    """cleanup() deletes crash leftovers and orphan directories, and nothing else."""
    _layer(h, "keep-a", "", "keep", lambda r: write(r / "file", "kept"))
    h.sn.prepare("active", "keep")
    snapshots = h.root / "snapshots"
    owned = set(os.listdir(snapshots))
    write(snapshots / "new-crashed" / "fs" / "half", "written")
    (snapshots / "new-crashed" / "work").mkdir()
    write(snapshots / "987654" / "fs" / "orphan", "no record")
    write(snapshots / "rm-interrupted" / "fs" / "x", "x")
    h.sn.cleanup()
    assert set(os.listdir(snapshots)) == owned
    assert _view_tree(h, "keep", "v") == {"file": "kept"}
    with h.mounted(h.sn.mounts("active"), "active") as root:
        assert tree(root) == {"file": "kept"}
    h.sn.cleanup()  # nothing left to do
    assert set(os.listdir(snapshots)) == owned


def check_stale_directory_of_new_id(h: Harness) -> None:
    """A directory left at the next id (crash between rename and commit) does not leak in."""
    h.sn.prepare("first", "")
    first_dir = _snapshot_dir_of(h, "first")
    stale = first_dir.parent / str(int(first_dir.name) + 1)
    write(stale / "fs" / "stale-file", "must not show")
    mounts = h.sn.prepare("second", "")
    with h.mounted(mounts, "second") as root:
        assert tree(root) == {}


def check_reopen_keeps_everything(h: Harness) -> None:
    """After close and reopen on the same root, every snapshot, label and file is there."""
    _layer(h, "a1", "", "l1", lambda r: write(r / "one", "1"))
    _layer(h, "a2", "l1", "l2", lambda r: write(r / "two", "2"))
    with h.mounted(h.sn.prepare("work", "l2", labels={"w": "x"}), "work") as root:
        write(root / "three", "3")
    h.sn.view("look", "l1")
    before = {i.name: i for i in h.sn.walk()}
    usage = h.sn.usage("l2")
    mounts = h.sn.mounts("work")

    old = h.sn
    h.reopen()
    old.close()  # closing twice is fine
    with pytest.raises(Unavailable):
        old.stat("l1")

    assert {i.name: i for i in h.sn.walk()} == before
    assert h.sn.usage("l2") == usage
    assert h.sn.mounts("work") == mounts
    with h.mounted(mounts, "work") as root:
        assert tree(root) == {"one": "1", "two": "2", "three": "3"}
    h.sn.commit("l3", "work")
    assert _view_tree(h, "l3", "v") == {"one": "1", "two": "2", "three": "3"}


def check_many_layers(h: Harness) -> None:
    """A stack of 130 layers mounts and shows the right files (containerd's 128 layers test)."""
    parent = ""
    for i in range(130):

        def change(root: Path, i: int = i) -> None:
            write(root / "overwrite-me", f"{i} was here\n")
            write(root / "add-here" / f"file-{i}", "same\n")
            if (root / "only-me").exists():
                for p in (root / "only-me").iterdir():
                    p.unlink()
                (root / "only-me").rmdir()
            write(root / "only-me" / f"file-{i}", "only me!\n")

        _layer(h, f"prepare-{i}", parent, f"layer-{i}", change)
        parent = f"layer-{i}"
    content = _view_tree(h, parent, "full")
    assert content["overwrite-me"] == "129 was here\n"
    assert sorted(k for k in content if k.startswith("add-here/")) == sorted(
        f"add-here/file-{i}" for i in range(130)
    )
    assert [k for k in content if k.startswith("only-me/")] == ["only-me/file-129"]


CHECKS: list[Callable[[Harness], None]] = [
    check_basic_chain,
    check_deletion_persists_through_layers,
    check_move_and_link_from_lower,
    check_metadata_preserved,
    check_root_permission,
    check_views_are_read_only,
    check_stat_and_update,
    check_commit_labels_replace,
    check_remove_order,
    check_commit_errors,
    check_key_reuse,
    check_not_found_and_bad_input,
    check_mounts,
    check_usage,
    check_walk_filters,
    check_concurrent_prepares,
    check_cleanup_removes_leftovers,
    check_stale_directory_of_new_id,
    check_reopen_keeps_everything,
    check_many_layers,
]
