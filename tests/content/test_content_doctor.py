"""Leftovers of crashes and abandoned clients: reported, then cleaned up."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from ctrpy.manager.content import ContentStore
from ctrpy.manager.content.ingest import dirname_for

from .content_helpers import put, sha256


def make_old(path: Path) -> None:
    """Make an ingest look untouched for two days."""
    old = (os.stat(path).st_mtime_ns - 2 * 86_400 * 10**9)
    (path / "updatedat").write_text(str(old))
    (path / "startedat").write_text(str(old))
    os.utime(path / "data", ns=(old, old))
    os.utime(path, ns=(old, old))


def test_leftovers_report_and_cleanup(store: ContentStore, tmp_path: Path) -> None:
    ingest = tmp_path / "root" / "content" / "ingest"
    with store.writer("fresh") as writer:
        writer.write(b"fresh")
    with store.writer("stale") as writer:
        writer.write(b"stale")
    make_old(ingest / dirname_for("stale"))
    with store.writer("broken") as writer:
        writer.write(b"broken")
    (ingest / dirname_for("broken") / "ref").unlink()
    (ingest / ".tmp-0123").mkdir()  # an interrupted create, long ago
    os.utime(ingest / ".tmp-0123", ns=(0, 0))
    (ingest / ".trash-4567").mkdir()  # an interrupted remove, just now
    (ingest / dirname_for("fresh") / "total.tmp").write_text("1")
    open_writer = store.writer("active")
    make_old(ingest / dirname_for("active"))
    blobs = tmp_path / "root" / "content" / "blobs"
    (blobs / "sha256").mkdir()
    (blobs / "sha256" / "junk").write_text("x")

    found = {(item.kind, item.ref) for item in store.leftovers()}
    assert found == {
        ("stale-ingest", "stale"),
        ("broken-ingest", ""),
        ("temp", ""),
        ("temp", "fresh"),
        ("stray", ""),
    }  # the open "active" writer is not a leftover

    removed = {(item.kind, item.ref) for item in store.cleanup_ingests(timedelta(days=1))}
    assert removed == {("stale-ingest", "stale"), ("broken-ingest", ""), ("temp", ""),
                       ("temp", "fresh")}
    assert [status.ref for status in store.list_statuses()] == ["active", "fresh"]
    assert sorted(os.listdir(ingest)) == sorted(
        [dirname_for("fresh"), dirname_for("active"), ".trash-4567"]
    )  # the recent temporary directory may still be in use by another process

    removed = store.cleanup_ingests()  # everything not in use
    assert {(item.kind, item.ref) for item in removed} == {("stale-ingest", "fresh"), ("temp", "")}
    assert [status.ref for status in store.list_statuses()] == ["active"]
    open_writer.close()
    assert [item.ref for item in store.cleanup_ingests()] == ["active"]
    assert os.listdir(ingest) == []


def test_verify_finds_corrupt_blobs(store: ContentStore, tmp_path: Path) -> None:
    good = put(store, b"good", ref="g")
    bad = put(store, b"bad", ref="b")
    path = tmp_path / "root" / "content" / "blobs" / "sha256" / bad.split(":")[1]
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    assert store.leftovers() == []
    [corrupt] = store.leftovers(verify=True)
    assert (corrupt.kind, corrupt.path) == ("corrupt-blob", str(path))
    assert sha256(b"tampered") in corrupt.detail
    assert store.exists(good)
