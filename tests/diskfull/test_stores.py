"""The stores themselves on a small tmpfs, without a daemon: the native snapshotter's copy, its
metadata, the content store's writer and the daemon's sqlite database, each meeting a full
disk, each raising ResourceExhausted, keeping nothing of the failed work, and working again
once there is room."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctrpy import diskspace
from ctrpy.errors import NotFound, ResourceExhausted
from ctrpy.manager.content.store import ContentStore
from ctrpy.manager.metadata.db import Database
from ctrpy.snapshotter.native import NativeSnapshotter
from tests.diskfull.conftest import fill, used_bytes

MIB = 1 << 20


def test_native_copy_that_does_not_fit(small_disk: Path) -> None:
    root = small_disk / "native"
    with NativeSnapshotter(root) as snapshotter:
        mounts = snapshotter.prepare("base-active")
        with open(Path(mounts[0].source) / "payload", "wb") as out:
            out.write(os.urandom(14 * MIB))
        snapshotter.commit("base", "base-active")
        before = used_bytes(small_disk)

        with pytest.raises(ResourceExhausted) as caught:
            snapshotter.prepare("child", "base")
        assert str(caught.value).startswith('no space left on device: creating snapshot "child"')
        assert f"on the filesystem mounted at {small_disk}: resource exhausted" in str(caught.value)
        with pytest.raises(NotFound):
            snapshotter.stat("child")
        assert [n for n in os.listdir(root / "snapshots") if not n.isdigit()] == []
        assert used_bytes(small_disk) <= before + MIB

        # Still usable: an empty snapshot fits.
        snapshotter.prepare("small")
        assert snapshotter.stat("small").name == "small"


def test_snapshotter_metadata_on_a_full_disk(small_disk: Path) -> None:
    root = small_disk / "native"
    filler = small_disk / "filler"
    with NativeSnapshotter(root) as snapshotter:
        fill(filler)
        with pytest.raises(ResourceExhausted) as caught:
            for number in range(2000):
                snapshotter.prepare(f"k{number}", labels={f"l{n}": "x" * 4000 for n in range(4)})
        assert "no space left on device" in str(caught.value)
        assert [n for n in os.listdir(root / "snapshots") if not n.isdigit()] == []
        filler.unlink()
        snapshotter.prepare("after")
        assert snapshotter.stat("after").name == "after"


def test_snapshot_commit_on_a_full_disk(small_disk: Path) -> None:
    root = small_disk / "native"
    filler = small_disk / "filler"
    labels = {f"l{n}": "x" * 4000 for n in range(8)}
    with NativeSnapshotter(root) as snapshotter:
        for number in range(200):
            snapshotter.prepare(f"active-{number}")
        fill(filler)
        with pytest.raises(ResourceExhausted) as caught:
            for number in range(200):
                snapshotter.commit(f"committed-{number}", f"active-{number}", labels)
        assert "no space left on device: writing snapshot metadata" in str(caught.value)
        # The refused commit was rolled back: still active, and it commits once there is room.
        assert snapshotter.stat(f"active-{number}").kind.name == "ACTIVE"
        filler.unlink()
        snapshotter.commit(f"committed-{number}", f"active-{number}", labels)
        assert snapshotter.stat(f"committed-{number}").kind.name == "COMMITTED"


def test_content_writer_drops_the_ingest(small_disk: Path) -> None:
    store = ContentStore(small_disk / "content-root")
    before = used_bytes(small_disk)
    writer = store.writer("too-big", total=40 * MIB)
    with pytest.raises(ResourceExhausted) as caught:
        for _ in range(40):
            writer.write(os.urandom(MIB))
    assert str(caught.value).startswith('no space left on device: writing ingest "too-big" on the filesystem')
    assert writer.closed
    assert store.list_statuses() == []
    assert not store.is_locked("too-big")
    assert used_bytes(small_disk) <= before + MIB
    writer.close()  # harmless after the failure

    with store.writer("fits") as again:
        again.write(b"data")
        digest = again.commit()
    assert store.info(digest).size == 4


def test_metadata_database_on_a_full_disk(small_disk: Path) -> None:
    db = Database(small_disk / "meta.db")
    filler = small_disk / "filler"

    def insert(number: int) -> None:
        with db.transaction() as conn:
            conn.execute(
                "INSERT INTO server (key, value) VALUES (?, ?)", (f"k{number}", "x" * 16000)
            )

    try:
        fill(filler)
        with pytest.raises(ResourceExhausted) as caught:
            for number in range(2000):
                db.call(insert, number)
        assert str(caught.value).startswith("no space left on device: writing the metadata database")
        # No transaction is left open: reads work, and writes do once there is room.
        assert db.call(lambda: db.conn.in_transaction) is False
        count = db.call(lambda: db.conn.execute("SELECT count(*) FROM server").fetchone()[0])
        filler.unlink()
        db.call(insert, 100_000)
        assert db.call(lambda: db.conn.execute("SELECT count(*) FROM server").fetchone()[0]) == count + 1
        assert db.call(lambda: db.conn.execute("PRAGMA integrity_check").fetchone()[0]) == "ok"
    finally:
        db.close()


def test_mount_point_and_reasons(small_disk: Path) -> None:
    assert diskspace.mount_point(small_disk / "not" / "there") == str(small_disk)
    assert diskspace.mount_point(small_disk) == str(small_disk)
    assert diskspace.mount_point("/") == "/"
    assert diskspace.reason(OSError(28, "x")) == "no space left on device"
    assert diskspace.reason(OSError(122, "x")) == "disk quota exceeded"
    assert diskspace.reason(OSError(5, "x")) is None
    with pytest.raises(OSError), diskspace.guard("doing", small_disk):
        raise OSError(5, "other errors pass through")
    cleaned: list[bool] = []
    expected = r"^disk quota exceeded: doing on the filesystem mounted at "
    with (
        pytest.raises(ResourceExhausted, match=expected),
        diskspace.guard("doing", small_disk, lambda: cleaned.append(True)),
    ):
        raise OSError(122, "quota")
    assert cleaned == [True]
